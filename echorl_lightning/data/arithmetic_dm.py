"""Datamodules of the embedded arithmetic task (see :mod:`echorl_lightning.data.arithmetic`).

Implements two datamodules:

- :class:`ArithmeticDataModule`, the RLVR one (a :class:`PromptDataModule`): a pool of ``num_train``
  training prompts, ``num_val`` evaluation prompts from the ``val``/``test``/``ood`` split, the strict
  :class:`ExactMatchVerifier` and the step checker of worked solutions; every prompt carries its
  reference solution as ``expert`` (for LUFFY).
- :class:`ArithmeticSFTDataModule`, the supervised warm-start one: an endless, seeded stream of tokenized
  ``prompt + solution + EOS`` sequences whose loss mask covers the response tokens and EOS, plus the same
  evaluation prompts and verifier for sampled pass@1 (the shared
  :class:`~echorl_lightning.data.sft.SFTDataModule`).

The loss mask is built from the token counts, never from ``input_ids != pad``: when EOS doubles as the pad
token, a pad-based mask drops EOS from the loss and the model never learns to stop. Used by the EchoRL CPU
demo (EchoRL, arXiv 2605.31228). Leaves out chat templates (the tiny model reads raw ``Q: ...`` prompts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from echorl_lightning.data.arithmetic import (
    DEFAULT_DIFFICULTY,
    ArithmeticStepChecker,
    Difficulty,
    Split,
    make_problem,
)
from echorl_lightning.data.base import EvalSet, PromptDataModule
from echorl_lightning.data.sft import SFTDataModule
from echorl_lightning.data.sft import sft_collate as sft_collate  # re-exported: its home before data/sft.py
from echorl_lightning.data.types import PromptExample, StepChecker, Verifier, VerifierFn
from echorl_lightning.rewards.exact_match import ExactMatchVerifier, extract_answer

EvalSplit = Literal["val", "test", "ood"]


@dataclass
class ArithmeticEvalSpec:
    """One named evaluation set of the arithmetic task (``data.init_args.eval_sets`` in YAML).

    Attributes:
        name: the set's name in metric keys (``val/<name>/avg@k``).
        split: the held-out hash bucket it draws from (``ood`` also adds two operands, see
            :func:`~echorl_lightning.data.arithmetic.ood_difficulty`).
        difficulty: the generator knobs of this set; None = the datamodule's training difficulty.
        group: ``id`` / ``ood`` (averaged into ``val/id_avg`` / ``val/ood_avg``) or None.
        num: number of prompts; None = the datamodule's ``num_val``.
    """

    name: str
    split: EvalSplit = "val"
    difficulty: Difficulty | None = None
    group: Literal["id", "ood"] | None = "id"
    num: int | None = None


def arithmetic_prompts(
    split: Split, num: int, seed: int = 0, difficulty: Difficulty = DEFAULT_DIFFICULTY
) -> list[PromptExample]:
    """``num`` problems of ``split`` as prompt examples (reference = final answer, expert = solution)."""
    examples = []
    for i in range(num):
        problem = make_problem(split, i, seed, difficulty)
        examples.append(
            PromptExample(
                prompt=problem.prompt,
                reference=problem.answer,
                expert=problem.solution,
                uid=f"{split}-{seed}-{i}",
            )
        )
    return examples


class ArithmeticDataModule(PromptDataModule):
    """RLVR prompts of the arithmetic task.

    Args:
        num_train: size of the training prompt pool (problems 0..num_train-1 of the ``train`` split).
        num_val: number of evaluation prompts.
        split: which held-out split ``val_prompts`` serves (``ood`` = two more operands).
        seed: the generator seed shared by all splits (a problem is fixed by split, seed and index).
        difficulty: the expression generator's knobs.
        verifier: None uses :class:`ExactMatchVerifier`.
        val_batch_size: prompts per validation batch.
        eval_sets: named evaluation sets (e.g. an in-distribution ``val`` set and a harder out-of-distribution
            one); None = the single set ``val`` of ``num_val`` prompts from ``split``.
    """

    def __init__(
        self,
        num_train: int = 4096,
        num_val: int = 256,
        split: EvalSplit = "val",
        seed: int = 0,
        difficulty: Difficulty = DEFAULT_DIFFICULTY,
        verifier: VerifierFn | None = None,
        val_batch_size: int = 64,
        eval_sets: list[ArithmeticEvalSpec] | None = None,
    ) -> None:
        super().__init__(verifier=verifier, val_batch_size=val_batch_size)
        if num_train < 1 or num_val < 0:
            raise ValueError(
                f"ArithmeticDataModule: need num_train >= 1 and num_val >= 0, got {num_train}, {num_val}"
            )
        self.num_train = num_train
        self.num_val = num_val
        self.split: EvalSplit = split
        self.seed = seed
        self.difficulty = difficulty
        for spec in eval_sets or []:
            if spec.num is not None and spec.num < 1:
                raise ValueError(
                    f"ArithmeticDataModule: eval_sets[{spec.name!r}].num must be >= 1, got {spec.num}"
                )
        self.eval_specs = list(eval_sets) if eval_sets is not None else None

    def load_train_prompts(self) -> Sequence[PromptExample]:
        return arithmetic_prompts("train", self.num_train, self.seed, self.difficulty)

    def load_val_prompts(self) -> Sequence[PromptExample]:
        return arithmetic_prompts(self.split, self.num_val, self.seed, self.difficulty)

    def load_eval_sets(self) -> Sequence[EvalSet]:
        """The configured ``eval_sets`` (each scored by the datamodule's verifier), else the single ``val``."""
        if self.eval_specs is None:
            return super().load_eval_sets()
        return [
            EvalSet(
                spec.name,
                arithmetic_prompts(
                    spec.split,
                    self.num_val if spec.num is None else spec.num,
                    self.seed,
                    self.difficulty if spec.difficulty is None else spec.difficulty,
                ),
                self.verifier,
                spec.group,
                self.default_answer_fn,
                self.default_step_checker(),
            )
            for spec in self.eval_specs
        ]

    def default_verifier(self) -> Verifier:
        return ExactMatchVerifier()

    def default_step_checker(self) -> StepChecker | None:
        """Every ``a op b=c`` line correct and a legal reduction of the prompt's expression."""
        return ArithmeticStepChecker()

    def default_answer_fn(self, completion: str) -> str | None:
        """maj@k votes on the canonical integer of the ``Answer:`` line (the verifier's own extraction)."""
        return extract_answer(completion)


class ArithmeticSFTDataModule(SFTDataModule):
    """Supervised warm-start data: tokenized worked solutions; evaluation prompts for pass@1 (see
    :class:`~echorl_lightning.data.sft.SFTDataModule`).

    Args:
        batch_size: sequences per training step.
        num_val: number of evaluation prompts.
        split: which held-out split the validation loop samples on.
        seed: the generator seed (a problem is fixed by split, seed and index).
        difficulty: the expression generator's knobs.
        val_batch_size: prompts per validation batch.
    """

    def __init__(
        self,
        batch_size: int = 32,
        num_val: int = 256,
        split: EvalSplit = "val",
        seed: int = 0,
        difficulty: Difficulty = DEFAULT_DIFFICULTY,
        val_batch_size: int = 256,
    ) -> None:
        super().__init__(
            make_problem,
            arithmetic_prompts,
            ExactMatchVerifier(),
            batch_size=batch_size,
            num_val=num_val,
            split=split,
            seed=seed,
            difficulty=difficulty,
            val_batch_size=val_batch_size,
        )
