"""Callback that exports the trained policy as a Hugging Face folder at the end of ``fit`` (and, when asked,
every few epochs during it).

Implements :class:`ExportHFModel`: the folder loads with ``AutoModelForCausalLM.from_pretrained`` /
``AutoTokenizer.from_pretrained`` and can serve as the starting policy of an EchoRL run. Every module of the
project names its network ``policy`` (the RL module and the SFT warm-start alike).

- Unsharded policy (one process, DDP): ``policy.save_pretrained(output_dir)`` on global rank 0.
- FSDP2-sharded policy (``ModelParallelStrategy`` / ``training.sharding.FSDP2Strategy``): every rank takes
  part in :func:`~echorl_lightning.training.sharding.save_hf_streamed`, which gathers one tensor at a time
  and lets rank 0 write safetensors files of at most ``max_shard_bytes``, so no rank holds a second full
  copy of the model.

- LoRA policy (peft): the merged model, written by
  :func:`~echorl_lightning.training.lora_merge.save_merged_pretrained` one file at a time without touching
  the base weights; with ``export_adapter`` also the adapter alone (peft's ``save_pretrained``) in
  ``output_dir/adapter``, loadable with ``peft.PeftModel.from_pretrained(base, output_dir/adapter)``.

The tokenizer is saved by rank 0 with ``save_pretrained``. Left out: FSDP1, LoRA under FSDP2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as L
from torch import nn

from echorl_lightning.training.lora import is_lora
from echorl_lightning.training.lora_merge import save_merged_pretrained
from echorl_lightning.training.sharding import is_fsdp2, save_hf_streamed


@runtime_checkable
class HFExportable(Protocol):
    """A module with a Hugging Face network ``policy`` and its ``tokenizer``."""

    policy: nn.Module
    tokenizer: Any


class ExportHFModel(L.Callback):
    """Save ``pl_module.policy`` and ``pl_module.tokenizer`` as a Hugging Face folder when training ends.

    Args:
        output_dir: the folder to write (created if missing; existing files are overwritten).
        max_shard_bytes: size of one safetensors file of a sharded (FSDP2) or LoRA policy's export.
        export_adapter: LoRA policy: also write the adapter alone to ``output_dir/adapter``.
        every_n_epochs: also export during training, after every this many epochs, to
            ``output_dir/epoch<k>`` (k = epochs done): the checkpoints a later run can branch from. None: at the
            end only.
    """

    def __init__(
        self,
        output_dir: str,
        max_shard_bytes: int = 2 * 1024**3,
        export_adapter: bool = False,
        every_n_epochs: int | None = None,
    ) -> None:
        if every_n_epochs is not None and (isinstance(every_n_epochs, bool) or every_n_epochs < 1):
            raise ValueError(
                f"ExportHFModel.every_n_epochs must be an integer >= 1 or None, got {every_n_epochs!r}"
            )
        self.output_dir = output_dir
        self.max_shard_bytes = max_shard_bytes
        self.export_adapter = export_adapter
        self.every_n_epochs = every_n_epochs

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Fail before training, not after it, when the module cannot be exported (the policy is loaded by
        now: ``configure_model`` runs before this hook)."""
        if not isinstance(pl_module, HFExportable) or not hasattr(pl_module.policy, "save_pretrained"):
            raise TypeError(
                f"ExportHFModel: {type(pl_module).__name__} needs a Hugging Face `policy` (save_pretrained) "
                "and a `tokenizer`"
            )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        done = trainer.current_epoch + 1
        if self.every_n_epochs is not None and done % self.every_n_epochs == 0:
            self.export(trainer, pl_module, Path(self.output_dir) / f"epoch{done}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.export(trainer, pl_module, Path(self.output_dir))

    def export(self, trainer: L.Trainer, pl_module: L.LightningModule, path: Path) -> None:
        """Write the policy and the tokenizer to ``path`` (every rank calls it)."""
        policy = pl_module.policy
        if is_fsdp2(policy):  # a collective: every rank gathers, rank 0 writes
            save_hf_streamed(
                policy, path, is_writer=trainer.is_global_zero, max_shard_bytes=self.max_shard_bytes
            )
        elif trainer.is_global_zero and is_lora(policy):
            save_merged_pretrained(policy, path, max_shard_bytes=self.max_shard_bytes)
            if self.export_adapter:
                policy.save_pretrained(path / "adapter")
        elif trainer.is_global_zero:
            path.mkdir(parents=True, exist_ok=True)
            policy.save_pretrained(path)
        if trainer.is_global_zero:
            pl_module.tokenizer.save_pretrained(path)
        trainer.strategy.barrier("export_hf")
