"""The recipes that built the shipped tiny models (:mod:`recipes.tiny`): tokenizers, model configs, the SFT
warm-start, rejection-sampling fine-tuning and the head-size conversion. Not installed with the package; run
from the repository root (the commands are in each module's docstring and in the headers of
``configs/warmstart_sft.yaml`` and ``configs/warmstart_countdown.yaml``)."""
