"""Callback that exports the trained policy as a Hugging Face folder at the end of ``fit``.

Implements :class:`ExportHFModel`: ``pl_module.policy.save_pretrained(output_dir)`` (safetensors, config,
generation config) and ``pl_module.tokenizer.save_pretrained(output_dir)`` on global rank 0, so the folder
loads with ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` and can serve as the
starting policy of an EchoRL run (EchoRL, arXiv 2605.31228). Every module of the project names its network
``policy`` (the RL module and the SFT warm-start alike). Leaves out sharded/FSDP state gathering and LoRA
merging (the module's ``policy`` must hold full weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as L
from torch import nn


@runtime_checkable
class HFExportable(Protocol):
    """A module with a Hugging Face network ``policy`` and its ``tokenizer``."""

    policy: nn.Module
    tokenizer: Any


class ExportHFModel(L.Callback):
    """Save ``pl_module.policy`` and ``pl_module.tokenizer`` with ``save_pretrained`` when training ends.

    Args:
        output_dir: the folder to write (created if missing; existing files are overwritten).
    """

    def __init__(self, output_dir: str) -> None:
        self.output_dir = output_dir

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Fail before training, not after it, when the module cannot be exported."""
        if not isinstance(pl_module, HFExportable) or not hasattr(pl_module.policy, "save_pretrained"):
            raise TypeError(
                f"ExportHFModel: {type(pl_module).__name__} needs a Hugging Face `policy` (save_pretrained) "
                "and a `tokenizer`"
            )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            path = Path(self.output_dir)
            path.mkdir(parents=True, exist_ok=True)
            pl_module.policy.save_pretrained(path)
            pl_module.tokenizer.save_pretrained(path)
        trainer.strategy.barrier("export_hf")
