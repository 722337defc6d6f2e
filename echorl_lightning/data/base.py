"""Base class of every RLVR datamodule, and :class:`EvalSet`, one named evaluation set.

A :class:`PromptDataModule` owns three things: the training prompt pool the rollout callback draws from
each epoch, the evaluation sets (validation and test both use them), and the verifier that scores
completions. Its training dataloader serves the rollout buffer that the rollout callback fills at the start
of every epoch (the buffer is data, so it lives here, not on the LightningModule).

Subclasses implement :meth:`load_train_prompts` (and usually :meth:`load_val_prompts` and
:meth:`default_verifier`). By default there is one evaluation set, ``"val"``, built from the validation
prompts and the verifier; a subclass with several benchmarks overrides :meth:`load_eval_sets` (EchoRL, arXiv
2605.31228, reports in-distribution math and out-of-distribution multiple-choice sets separately). One
dataloader is served per set, so ``dataloader_idx`` of ``validation_step`` indexes :meth:`eval_sets`.

Prompt text that needs the tokenizer (chat templates) is built after :meth:`connect` has bound it;
``cli.py`` calls ``connect`` before every subcommand.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import lightning.pytorch as L
from torch.utils.data import DataLoader, IterableDataset

from echorl_lightning.data.answers import extract_boxed
from echorl_lightning.data.types import PromptExample, StepChecker, Verifier

EvalGroup = Literal["id", "ood"]


@dataclass(frozen=True)
class EvalSet:
    """One named evaluation set.

    Attributes:
        name: the set's name in metric keys (``val/<name>/avg@k``); letters, digits, ``_`` and ``-`` only.
        prompts: the templated prompts with their references.
        verifier: scores completions of this set against the references.
        group: ``"id"`` / ``"ood"`` (averaged into ``val/id_avg`` / ``val/ood_avg``), or None for neither.
        answer_fn: the normalised answer of one completion for maj@k (None where none can be extracted).
        step_checker: judges every reasoning step of a completion (``<stage>/<name>/step_valid_frac``), or
            None where the task's steps cannot be checked.
    """

    name: str
    prompts: list[PromptExample]
    verifier: Verifier
    group: EvalGroup | None
    answer_fn: Callable[[str], str | None]
    step_checker: StepChecker | None = None

    def __post_init__(self) -> None:
        if not self.name or not all(ch.isalnum() or ch in "_-" for ch in self.name):
            raise ValueError(f"EvalSet name must be letters, digits, '_' or '-', got {self.name!r}")
        if self.group not in (None, "id", "ood"):
            raise ValueError(f"EvalSet {self.name!r}: group must be 'id', 'ood' or None, got {self.group!r}")


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
        self._eval_sets: list[EvalSet] | None = None

    # ---- to implement -------------------------------------------------------------------------------
    def load_train_prompts(self) -> Sequence[PromptExample]:
        raise NotImplementedError

    def load_val_prompts(self) -> Sequence[PromptExample]:
        return []

    def default_verifier(self) -> Verifier:
        raise NotImplementedError(
            f"{type(self).__name__} has no default verifier: set data.init_args.verifier"
        )

    def default_step_checker(self) -> StepChecker | None:
        """The task's step checker (None: the steps of this task cannot be checked)."""
        return None

    def default_answer_fn(self, completion: str) -> str | None:
        """The answer maj@k votes on for the default ``"val"`` set: the last ``\\boxed{}`` content."""
        return extract_boxed(completion)

    def load_eval_sets(self) -> Sequence[EvalSet]:
        """The evaluation sets: by default one set ``"val"`` of :attr:`val_prompts` scored by
        :attr:`verifier` (no id/ood group); none when there are no validation prompts."""
        if not self.val_prompts:
            return []
        return [
            EvalSet(
                "val", self.val_prompts, self.verifier, None, self.default_answer_fn, self.default_step_checker()
            )
        ]

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

    def eval_sets(self) -> list[EvalSet]:
        """The evaluation sets, loaded once (names checked unique); validation and test iterate them."""
        if self._eval_sets is None:
            sets = list(self.load_eval_sets())
            names = [s.name for s in sets]
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"{type(self).__name__}: evaluation set names repeat: {duplicates}")
            self._eval_sets = sets
        return self._eval_sets

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

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """One DataLoader per evaluation set (a list when there are several; an empty one when none)."""
        loaders = [
            DataLoader(s.prompts, batch_size=self.val_batch_size, collate_fn=list) for s in self.eval_sets()
        ]
        if not loaders:
            return DataLoader([], batch_size=self.val_batch_size, collate_fn=list)
        return loaders[0] if len(loaders) == 1 else loaders

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        return self.val_dataloader()
