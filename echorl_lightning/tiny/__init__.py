"""The shipped tiny policies: where the package finds the warm-started models the CPU demos and the
end-to-end tests run on.

``TINY_MODEL_PATH`` (the arithmetic task: a Llama with q/k/v biases and a byte-level tokenizer) and
``TINY_COUNTDOWN_PATH`` (the Countdown task: a Llama of the same size with a 512-token BPE trained on Countdown
traces, and a 512-position context) are Hugging Face folders (config, generation config, safetensors,
tokenizer) loadable with ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``. Both have
attention head size 32 (hidden 96, 4 query / 2 KV heads), which vLLM's CPU attention serves. The recipes that
built them (tokenizers, configs, SFT, rejection-sampling fine-tuning, the head-size conversion) live outside
the package, in the repository's ``recipes/`` folder; the commands are in the headers of
``configs/warmstart_sft.yaml`` and ``configs/warmstart_countdown.yaml``.
"""

from __future__ import annotations

from pathlib import Path

TINY_MODEL_PATH: str = str(Path(__file__).resolve().parent.parent / "assets" / "tiny-arith")
TINY_COUNTDOWN_PATH: str = str(Path(__file__).resolve().parent.parent / "assets" / "tiny-countdown")

__all__ = ["TINY_COUNTDOWN_PATH", "TINY_MODEL_PATH"]
