"""Datamodules of the Countdown task (see :mod:`echorl_lightning.data.countdown`).

Implements two datamodules, the Countdown counterparts of the arithmetic task's:

- :class:`CountdownDataModule`, the RLVR one (a :class:`PromptDataModule`): a pool of ``num_train``
  training prompts, named evaluation sets (:class:`CountdownEvalSpec`: held-out split, difficulty, id/ood
  group), the strict :class:`~echorl_lightning.rewards.countdown.CountdownVerifier`, the step checker of
  search traces and the value of the ``Answer`` expression for maj@k. Every prompt carries one solver trace
  as ``expert`` (for LUFFY).
- :class:`CountdownSFTDataModule`, the supervised warm-start one: an endless, seeded stream of tokenized
  ``prompt + trace + EOS`` rows (the loss mask covers the trace and EOS; see
  :func:`~echorl_lightning.data.sft.sft_collate`; the shared
  :class:`~echorl_lightning.data.sft.SFTDataModule`), plus evaluation prompts and the verifier for
  the warm-start's sampled pass@1.

Without ``eval_sets`` the evaluation sets are the in-distribution ``id`` set and the two out-of-distribution
ones of issue 14, ``ood_numbers`` (one more number) and ``ood_large`` (larger numbers), from the ``val``
split. Leaves out chat templates (the tiny model reads raw ``Q: ...`` prompts). Built for EchoRL (arXiv
2605.31228) experiments that need responses with real decision points.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from echorl_lightning.data.base import EvalSet, PromptDataModule
from echorl_lightning.data.countdown import (
    DEFAULT_DIFFICULTY,
    AnyDifficulty,
    Split,
    larger_numbers,
    make_problem,
    more_numbers,
    parse_reference,
)
from echorl_lightning.data.sft import SFTDataModule
from echorl_lightning.data.types import PromptExample, StepChecker, Verifier, VerifierFn
from echorl_lightning.rewards.countdown import CountdownStepChecker, CountdownVerifier, countdown_answer

EvalSplit = Literal["val", "test"]
logger = logging.getLogger(__name__)


@dataclass
class CountdownEvalSpec:
    """One named evaluation set of the Countdown task (``data.init_args.eval_sets`` in YAML).

    Attributes:
        name: the set's name in metric keys (``val/<name>/avg@k``).
        split: the held-out hash bucket it draws from.
        difficulty: the generator knobs of this set; None = the datamodule's training difficulty.
        group: ``id`` / ``ood`` (averaged into ``val/id_avg`` / ``val/ood_avg``) or None.
        num: number of prompts; None = the datamodule's ``num_val``.
    """

    name: str
    split: EvalSplit = "val"
    difficulty: AnyDifficulty | None = None
    group: Literal["id", "ood"] | None = "id"
    num: int | None = None


def default_eval_specs(difficulty: AnyDifficulty) -> list[CountdownEvalSpec]:
    """``id`` (the training difficulty), ``ood_numbers`` (:func:`more_numbers`) and ``ood_large``
    (:func:`larger_numbers`), all from the ``val`` split."""
    return [
        CountdownEvalSpec("id", "val", difficulty, "id"),
        CountdownEvalSpec("ood_numbers", "val", more_numbers(difficulty), "ood"),
        CountdownEvalSpec("ood_large", "val", larger_numbers(difficulty), "ood"),
    ]


DISTINCT_DRAWS_PER_PROMPT = 20  # with ``distinct``: draws allowed per prompt asked for before giving up


def problem_key(numbers: Sequence[int], target: int) -> tuple[tuple[int, ...], int]:
    """What makes two Countdown problems the same: the numbers in any order and the target."""
    return tuple(sorted(numbers)), target


def countdown_prompts(
    split: Split,
    num: int,
    seed: int = 0,
    difficulty: AnyDifficulty = DEFAULT_DIFFICULTY,
    distinct: bool = False,
) -> list[PromptExample]:
    """``num`` problems of ``split`` as prompt examples (reference = ``"<numbers> -> <target>"``, expert =
    a solver trace, uid ``countdown-<split>-<seed>-<index>``).

    With ``distinct``, a draw that repeats a problem already taken (the same numbers in any order and the same
    target) is skipped and the next index drawn, until ``num`` distinct problems or
    ``DISTINCT_DRAWS_PER_PROMPT x num`` draws; the list is then shorter than ``num`` (the split's bucket holds
    no more problems at this difficulty).
    """
    examples: list[PromptExample] = []
    seen: set[tuple[tuple[int, ...], int]] = set()
    index = 0
    while len(examples) < num and (not distinct or index < DISTINCT_DRAWS_PER_PROMPT * num):
        problem = make_problem(split, index, seed, difficulty)
        key = problem_key(problem.numbers, problem.target)
        if not distinct or key not in seen:
            seen.add(key)
            examples.append(
                PromptExample(
                    prompt=problem.prompt,
                    reference=problem.reference,
                    expert=problem.solution,
                    uid=f"countdown-{split}-{seed}-{index}",
                )
            )
        index += 1
    return examples


def distinct_problems(examples: Sequence[PromptExample]) -> int:
    """How many different problems ``examples`` hold: the same numbers (in any order) and target count once."""
    parsed = [parse_reference(example.reference) for example in examples]
    return len({problem_key(*p) for p in parsed if p is not None})


class CountdownDataModule(PromptDataModule):
    """RLVR prompts of the Countdown task.

    Args:
        num_train: size of the training prompt pool (problems 0..num_train-1 of the ``train`` split).
        num_val: number of prompts of an evaluation set without its own ``num``.
        seed: the generator seed shared by all splits (a problem is fixed by split, seed and index).
        difficulty: the training difficulty (and that of evaluation sets without their own): a
            :class:`~echorl_lightning.data.countdown.CountdownDifficulty` or a
            :class:`~echorl_lightning.data.countdown.CountdownMixture` of several.
        verifier: None uses :class:`CountdownVerifier`.
        val_batch_size: prompts per validation batch.
        eval_sets: named evaluation sets; None = :func:`default_eval_specs` of ``difficulty``.
        distinct_eval: every evaluation prompt a different problem (a draw that repeats one is skipped, see
            :func:`countdown_prompts`), so a set's accuracy rests on as many problems as it has prompts;
            False keeps the generator's draws, repeats included.
    """

    def __init__(
        self,
        num_train: int = 4096,
        num_val: int = 256,
        seed: int = 0,
        difficulty: AnyDifficulty = DEFAULT_DIFFICULTY,
        verifier: VerifierFn | None = None,
        val_batch_size: int = 64,
        eval_sets: list[CountdownEvalSpec] | None = None,
        distinct_eval: bool = True,
    ) -> None:
        super().__init__(verifier=verifier, val_batch_size=val_batch_size)
        if num_train < 1 or num_val < 0:
            raise ValueError(
                f"CountdownDataModule: need num_train >= 1 and num_val >= 0, got {num_train}, {num_val}"
            )
        for spec in eval_sets or []:
            if spec.num is not None and spec.num < 1:
                raise ValueError(
                    f"CountdownDataModule: eval_sets[{spec.name!r}].num must be >= 1, got {spec.num}"
                )
        self.num_train = num_train
        self.num_val = num_val
        self.seed = seed
        self.difficulty = difficulty
        self.eval_specs = list(eval_sets) if eval_sets is not None else default_eval_specs(difficulty)
        self.distinct_eval = distinct_eval

    def _set_size(self, spec: CountdownEvalSpec) -> int:
        """Prompts asked for in ``spec``: its own ``num``, else the datamodule's ``num_val``."""
        return self.num_val if spec.num is None else spec.num

    def _eval_prompts(self, spec: CountdownEvalSpec) -> list[PromptExample]:
        return countdown_prompts(
            spec.split,
            self._set_size(spec),
            self.seed,
            self.difficulty if spec.difficulty is None else spec.difficulty,
            distinct=self.distinct_eval,
        )

    def load_train_prompts(self) -> Sequence[PromptExample]:
        return countdown_prompts("train", self.num_train, self.seed, self.difficulty)

    def load_val_prompts(self) -> Sequence[PromptExample]:
        """The prompts of the first evaluation set (none without evaluation sets or with ``num_val=0``)."""
        if not self.eval_specs or self.num_val == 0:
            return []
        return self._eval_prompts(self.eval_specs[0])

    def load_eval_sets(self) -> Sequence[EvalSet]:
        """The configured evaluation sets, each scored by the datamodule's verifier and step checker. A set
        with fewer distinct problems than prompts asked for (a narrow difficulty has few problems per held-out
        bucket) is logged as a warning naming it: its accuracy rests on those problems, not on its prompts."""
        if self.num_val == 0:
            return []
        checker = self.default_step_checker()
        sets = []
        for spec in self.eval_specs:
            examples = self._eval_prompts(spec)
            asked = self._set_size(spec)
            distinct = distinct_problems(examples)
            if distinct < asked:
                logger.warning(
                    "CountdownDataModule: eval set %r has %d distinct problems for the %d prompts asked for "
                    "(%s); widen its difficulty for more",
                    spec.name,
                    distinct,
                    asked,
                    "its held-out bucket holds no more"
                    if self.distinct_eval
                    else f"{len(examples)} prompts, repeats included",
                )
            sets.append(
                EvalSet(spec.name, examples, self.verifier, spec.group, self.default_answer_fn, checker)
            )
        return sets

    def default_verifier(self) -> Verifier:
        return CountdownVerifier()

    def default_step_checker(self) -> StepChecker | None:
        return CountdownStepChecker()

    def default_answer_fn(self, completion: str) -> str | None:
        """maj@k votes on the value of the ``Answer`` expression (None when it breaks the grammar/rule)."""
        return countdown_answer(completion)


class CountdownSFTDataModule(SFTDataModule):
    """Supervised warm-start data: tokenized solver traces; evaluation prompts for sampled pass@1 (see
    :class:`~echorl_lightning.data.sft.SFTDataModule`).

    Args:
        batch_size: sequences per training step.
        num_val: number of evaluation prompts.
        split: which held-out split the validation loop samples on.
        seed: the generator seed (a problem is fixed by split, seed and index).
        difficulty: the generator's knobs (a difficulty or a mixture of several).
        val_batch_size: prompts per validation batch.
    """

    def __init__(
        self,
        batch_size: int = 32,
        num_val: int = 256,
        split: EvalSplit = "val",
        seed: int = 0,
        difficulty: AnyDifficulty = DEFAULT_DIFFICULTY,
        val_batch_size: int = 128,
    ) -> None:
        super().__init__(
            make_problem,
            countdown_prompts,
            CountdownVerifier(),
            batch_size=batch_size,
            num_val=num_val,
            split=split,
            seed=seed,
            difficulty=difficulty,
            val_batch_size=val_batch_size,
        )
