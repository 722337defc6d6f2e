"""Base class of every RLVR datamodule.

A :class:`PromptDataModule` owns three things: the training prompt pool the rollout callback draws from
each epoch, the validation prompts, and the verifier that scores completions. Its training dataloader
serves the rollout buffer that the rollout callback fills at the start of every epoch (the buffer is data,
so it lives here, not on the LightningModule).

Subclasses implement :meth:`load_train_prompts` (and usually :meth:`load_val_prompts` and
:meth:`default_verifier`). Prompt text that needs the tokenizer (chat templates) is built after
:meth:`connect` has bound it; ``cli.py`` calls ``connect`` before every subcommand.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as L
from torch.utils.data import DataLoader, IterableDataset

from echorl_lightning.data.types import PromptExample, Verifier


class PromptDataModule(L.LightningDataModule):
    """Prompts, verifier and rollout buffer for RLVR.

    Args:
        verifier: the batch verifier; None uses :meth:`default_verifier`.
        val_batch_size: prompts per validation batch.
    """

    def __init__(self, verifier: Verifier | None = None, val_batch_size: int = 64) -> None:
        super().__init__()
        self._verifier = verifier
        self.val_batch_size = val_batch_size
        self.tokenizer: Any = None
        self.rollout_buffer: IterableDataset | None = None
        self._train: list[PromptExample] | None = None
        self._val: list[PromptExample] | None = None

    # ---- to implement -------------------------------------------------------------------------------
    def load_train_prompts(self) -> Sequence[PromptExample]:
        raise NotImplementedError

    def load_val_prompts(self) -> Sequence[PromptExample]:
        return []

    def default_verifier(self) -> Verifier:
        raise NotImplementedError(
            f"{type(self).__name__} has no default verifier: set data.init_args.verifier"
        )

    # ---- provided -----------------------------------------------------------------------------------
    def connect(self, tokenizer: Any) -> None:
        """Bind the policy's tokenizer (needed for chat templates)."""
        self.tokenizer = tokenizer

    @property
    def verifier(self) -> Verifier:
        if self._verifier is None:
            self._verifier = self.default_verifier()
        return self._verifier

    @property
    def train_prompts(self) -> list[PromptExample]:
        if self._train is None:
            self._train = list(self.load_train_prompts())
            if not self._train:
                raise ValueError(f"{type(self).__name__}: the training prompt set is empty")
        return self._train

    @property
    def val_prompts(self) -> list[PromptExample]:
        if self._val is None:
            self._val = list(self.load_val_prompts())
        return self._val

    def transfer_batch_to_device(self, batch: Any, device: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, list):  # evaluation prompts are text: nothing to move
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def train_dataloader(self) -> DataLoader:
        if self.rollout_buffer is None:
            raise RuntimeError(
                "the rollout buffer is empty: training needs callbacks.RolloutCallback in trainer.callbacks"
            )
        return DataLoader(self.rollout_buffer, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_prompts, batch_size=self.val_batch_size, collate_fn=list)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
