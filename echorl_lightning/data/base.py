"""Base class of every RLVR datamodule, and :class:`EvalSet`, one named evaluation set.

A :class:`PromptDataModule` owns three things: the training prompt pool the rollout pipeline draws from
each epoch, the evaluation sets (validation and test both use them), and the verifier that scores
completions. Its training dataloader serves the rollout buffer that the rollout callback fills at the start
of every epoch (the buffer is data, so it lives here, not on the LightningModule).

Subclasses implement :meth:`load_train_prompts` (and usually :meth:`load_val_prompts` and
:meth:`default_verifier`). By default there is one evaluation set, ``"val"``, built from the validation
prompts and the verifier; a subclass with several benchmarks overrides :meth:`load_eval_sets` (in-distribution
math and out-of-distribution multiple-choice sets are reported separately). One dataloader is served per set,
so ``dataloader_idx`` of ``validation_step`` indexes :meth:`eval_sets`.

Prompt text that needs the tokenizer (chat templates) is built after :meth:`connect` has bound it;
``cli.py`` calls ``connect`` before every subcommand. :meth:`check_data`, meant to run right after
``connect`` and before the policy's weights load, loads the training prompts and every evaluation set, drops
prompts longer than ``max_prompt_tokens`` tokens (counted per set in :attr:`PromptDataModule.skipped`, logged
with their uids), and returns the counts as ``data/...`` metrics. Left out: truncating long prompts (they are
dropped), and a default limit from the model (the caller passes it: context length minus response length).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, cast

import lightning.pytorch as L
from torch.utils.data import DataLoader, IterableDataset

from echorl_lightning.data.answers import extract_boxed
from echorl_lightning.data.eval_batches import EvalBatch, RankBatches
from echorl_lightning.data.rows import log_skips
from echorl_lightning.data.types import PromptExample, StepChecker, Verifier, VerifierFn

logger = logging.getLogger(__name__)

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
        verifier: the batch verifier, any callable ``(completions, references) -> list[float | None]``;
            None uses :meth:`default_verifier`.
        val_batch_size: prompts per validation batch.
        max_prompt_tokens: drop prompts longer than this many tokens of the connected tokenizer; when set it
            overrides the limit :meth:`check_data` is given. None: no limit unless ``check_data`` sets one.

    Attributes:
        skipped: set (``"train"`` or an evaluation set's name) -> skip reason -> rows left out of it.
        no_expert: set -> rows kept without an expert solution where one was expected.
        skipped_counts: the ``data/...`` counts of the last :meth:`check_data`.
    """

    def __init__(
        self,
        verifier: VerifierFn | None = None,
        val_batch_size: int = 64,
        max_prompt_tokens: int | None = None,
    ) -> None:
        super().__init__()
        if max_prompt_tokens is not None and max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be >= 1 or None, got {max_prompt_tokens}")
        self._verifier = cast(Verifier | None, verifier)
        self.val_batch_size = val_batch_size
        self.max_prompt_tokens = max_prompt_tokens
        self._prompt_limit = max_prompt_tokens
        self.skipped: dict[str, dict[str, int]] = {}
        self.no_expert: dict[str, int] = {}
        self.skipped_counts: dict[str, int] = {}
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
                "val",
                self.val_prompts,
                self.verifier,
                None,
                self.default_answer_fn,
                self.default_step_checker(),
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

    def has_train_source(self) -> bool:
        """Whether this datamodule is configured with training prompts (False: evaluation only)."""
        return True

    def describe_source(self, source: str) -> str:
        """How messages name a set (``"train"`` or an evaluation set); subclasses name its file or hub id."""
        return f"{type(self).__name__} {source!r} prompts"

    @property
    def train_prompts(self) -> list[PromptExample]:
        """The training prompt pool (within the prompt token limit, when one is set)."""
        if self._train is None:
            prompts = list(self.load_train_prompts())
            if not prompts:
                raise ValueError(f"{type(self).__name__}: the training prompt set is empty")
            self._train = self._within_limit("train", prompts)
        return self._train

    @property
    def val_prompts(self) -> list[PromptExample]:
        if self._val is None:
            self._val = list(self.load_val_prompts())
        return self._val

    def eval_sets(self) -> list[EvalSet]:
        """The evaluation sets, loaded once (names checked unique); validation and test iterate them."""
        if self._eval_sets is None:
            sets = [replace(s, prompts=self._within_limit(s.name, s.prompts)) for s in self.load_eval_sets()]
            names = [s.name for s in sets]
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"{type(self).__name__}: evaluation set names repeat: {duplicates}")
            self._eval_sets = sets
        return self._eval_sets

    def check_data(
        self, max_prompt_tokens: int | None = None, stage: Literal["fit", "validate", "test"] | None = None
    ) -> dict[str, int]:
        """Load the training prompts and every evaluation set now (before a model is loaded), so that bad
        data fails here with a message naming the file, and prompts over the token limit are dropped.

        Args:
            max_prompt_tokens: the longest prompt kept, in tokens of the connected tokenizer
                (``add_special_tokens=False``); the ``max_prompt_tokens`` init argument overrides it when set.
                None with no init argument: no limit.
            stage: ``"fit"`` checks the training prompts and the evaluation sets; ``"validate"`` and
                ``"test"`` only the evaluation sets (an evaluation needs no training data); None checks the
                training prompts when :meth:`has_train_source` says there are any.

        Returns:
            ``data/skipped_rows`` (every row left out: no prompt text, no reference, over the limit),
            ``data/skipped_rows/<set>`` per set, ``data/skipped_too_long``, ``data/train_prompts`` and
            ``data/eval_prompts`` (kept; ``data/train_prompts`` only for ``fit``); also stored as
            :attr:`skipped_counts`.

        Raises:
            ValueError: a set is empty, unreadable, or has no prompt within the limit (its source named).
            RuntimeError: a limit is set but no tokenizer is connected.
        """
        limit = self.max_prompt_tokens if self.max_prompt_tokens is not None else max_prompt_tokens
        if limit is not None and limit < 1:
            raise ValueError(f"max_prompt_tokens must be >= 1 or None, got {limit}")
        self._prompt_limit = limit
        self._train = None  # rebuilt under the limit
        self._eval_sets = None
        for reasons in self.skipped.values():  # counted again below (a previous limit may differ)
            reasons.pop("too_long", None)
        load_train = stage == "fit" or (stage is None and self.has_train_source())
        train = len(self.train_prompts) if load_train else None
        evaluation = sum(len(s.prompts) for s in self.eval_sets())
        self.skipped_counts = skip_counts(self.skipped, train, evaluation)
        logger.info("%s: data checked: %s", type(self).__name__, self.skipped_counts)
        return self.skipped_counts

    def _within_limit(self, source: str, prompts: list[PromptExample]) -> list[PromptExample]:
        """``prompts`` without those longer than the token limit (counted as ``too_long`` and logged)."""
        limit = self._prompt_limit
        if limit is None:
            return prompts
        if self.tokenizer is None:
            raise RuntimeError(
                f"{type(self).__name__}: max_prompt_tokens={limit} needs the tokenizer: call connect(tokenizer) first"
            )
        lengths = prompt_token_counts(self.tokenizer, [p.prompt for p in prompts])
        kept = [p for p, n in zip(prompts, lengths, strict=True) if n <= limit]
        long = [p.uid for p, n in zip(prompts, lengths, strict=True) if n > limit]
        self.skipped.setdefault(source, {})["too_long"] = len(long)
        log_skips(
            self.describe_source(source), len(prompts), {"too_long": long}, f"max_prompt_tokens={limit}"
        )
        if not kept:
            raise ValueError(
                f"{self.describe_source(source)}: all {len(prompts)} prompts are longer than max_prompt_tokens="
                f"{limit} tokens (shortest {min(lengths)}); raise the limit or shorten the prompts"
            )
        return kept

    def transfer_batch_to_device(self, batch: Any, device: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, (list, EvalBatch)):  # evaluation prompts are text: nothing to move
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def train_dataloader(self) -> DataLoader:
        if self.rollout_buffer is None:
            raise RuntimeError(
                "the rollout buffer is empty: training needs the rollout callback (cli.py's `rollout:` group, or echorl_lightning.callbacks.rollout.RolloutCallback in Trainer(callbacks=...))"
            )
        return DataLoader(self.rollout_buffer, batch_size=None)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """One DataLoader per evaluation set (a list when there are several; an empty one when none), serving
        this rank's whole :class:`~echorl_lightning.data.eval_batches.EvalBatch` es (each prompt once over all
        ranks, in the same batch on any number of ranks)."""
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        loaders = [
            DataLoader(RankBatches(s.prompts, self.val_batch_size, i, rank, world), batch_size=None)
            for i, s in enumerate(self.eval_sets())
        ]
        if not loaders:
            return DataLoader([], batch_size=self.val_batch_size, collate_fn=list)
        return loaders[0] if len(loaders) == 1 else loaders

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        return self.val_dataloader()


def prompt_token_counts(tokenizer: Any, texts: Sequence[str], batch_size: int = 1024) -> list[int]:
    """Tokens per text with ``tokenizer`` (no special tokens added: a chat template already holds them)."""
    counts: list[int] = []
    for start in range(0, len(texts), batch_size):
        ids = tokenizer(list(texts[start : start + batch_size]), add_special_tokens=False, verbose=False)
        counts.extend(len(row) for row in ids["input_ids"])
    return counts


def skip_counts(
    skipped: Mapping[str, Mapping[str, int]], train: int | None, evaluation: int
) -> dict[str, int]:
    """The ``data/...`` metrics of :meth:`PromptDataModule.check_data` from per-set skip counts.

    Example: ``{"train": {"no_prompt": 1, "too_long": 2}, "math500": {"no_reference": 1}}`` with 5 training
    and 3 evaluation prompts -> ``data/skipped_rows`` 4, ``data/skipped_rows/train`` 3,
    ``data/skipped_rows/math500`` 1, ``data/skipped_too_long`` 2, ``data/train_prompts`` 5,
    ``data/eval_prompts`` 3.
    """
    counts = {
        "data/skipped_rows": sum(sum(reasons.values()) for reasons in skipped.values()),
        "data/skipped_too_long": sum(reasons.get("too_long", 0) for reasons in skipped.values()),
        "data/eval_prompts": evaluation,
    }
    if train is not None:  # None: the training prompts were not loaded
        counts["data/train_prompts"] = train
    for source, reasons in sorted(skipped.items()):
        counts[f"data/skipped_rows/{source}"] = sum(reasons.values())
    return counts
