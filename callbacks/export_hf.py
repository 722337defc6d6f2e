"""Callback that exports the trained policy as a Hugging Face folder at the end of ``fit``.

Implements :class:`ExportHFModel`: ``pl_module.model.save_pretrained(output_dir)`` (safetensors, config,
generation config) and ``pl_module.tokenizer.save_pretrained(output_dir)`` on global rank 0, so the folder
loads with ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` and can serve as the
starting policy of an EchoRL run (EchoRL, arXiv 2605.31228). Leaves out sharded/FSDP state gathering and
LoRA merging (the module's ``model`` must hold full weights).
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L


class ExportHFModel(L.Callback):
    """Save ``pl_module.model`` and ``pl_module.tokenizer`` with ``save_pretrained`` when training ends.

    Args:
        output_dir: the folder to write (created if missing; existing files are overwritten).
    """

    def __init__(self, output_dir: str) -> None:
        self.output_dir = output_dir

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = getattr(pl_module, "model", None)
        tokenizer = getattr(pl_module, "tokenizer", None)
        if model is None or not hasattr(model, "save_pretrained"):
            raise AttributeError(
                f"ExportHFModel: {type(pl_module).__name__}.model is not a Hugging Face model"
            )
        if tokenizer is None:
            raise AttributeError(f"ExportHFModel: {type(pl_module).__name__} has no `tokenizer` attribute")
        if trainer.is_global_zero:
            path = Path(self.output_dir)
            path.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(path)
            tokenizer.save_pretrained(path)
        trainer.strategy.barrier("export_hf")
