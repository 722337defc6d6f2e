"""The Countdown task behind the generic :class:`~echorl_lightning.tasks.base.Task` interface.

Implements :class:`CountdownTask`: problems from :func:`~echorl_lightning.tasks.countdown.problems.make_problem`
at one difficulty (a :class:`~echorl_lightning.tasks.countdown.difficulty.CountdownDifficulty` or a
:class:`~echorl_lightning.tasks.countdown.difficulty.CountdownMixture`), scored by the strict
:class:`~echorl_lightning.tasks.countdown.verifier.CountdownVerifier`, search traces checked by
:class:`~echorl_lightning.tasks.countdown.steps.CountdownStepChecker`, maj@k voting on the value of the
``Answer`` expression. Without ``eval_sets`` a datamodule evaluates on the in-distribution ``id`` set and the
two out-of-distribution ones, ``ood_numbers`` (one more number) and ``ood_large`` (larger numbers), all from
the ``val`` split; evaluation sets hold distinct problems by default (a held-out bucket holds a few hundred
problems at the default difficulty, so draws repeat).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import ClassVar

from echorl_lightning.data.types import PromptExample, StepChecker, Verifier
from echorl_lightning.tasks.base import EvalSpec, Task
from echorl_lightning.tasks.countdown.difficulty import (
    DEFAULT_DIFFICULTY,
    AnyDifficulty,
    larger_numbers,
    more_numbers,
)
from echorl_lightning.tasks.countdown.problems import CountdownProblem, make_problem, parse_reference
from echorl_lightning.tasks.countdown.steps import CountdownStepChecker
from echorl_lightning.tasks.countdown.verifier import CountdownVerifier, countdown_answer


def problem_key(numbers: Sequence[int], target: int) -> tuple[tuple[int, ...], int]:
    """What makes two Countdown problems the same: the numbers in any order and the target."""
    return tuple(sorted(numbers)), target


class CountdownTask(Task):
    """Reach a target from a few numbers with ``+ - * /`` (``Q: 25 5 3 7 -> 27``) at one difficulty.

    Args:
        difficulty: the generator's knobs, a difficulty or a weighted mixture of several.
    """

    uid_prefix: ClassVar[str] = "countdown-"
    eval_splits: ClassVar[tuple[str, ...]] = ("val", "test")
    distinct_eval: ClassVar[bool] = True

    def __init__(self, difficulty: AnyDifficulty = DEFAULT_DIFFICULTY) -> None:
        self.difficulty = difficulty

    def make_problem(self, split: str, index: int, seed: int) -> CountdownProblem:
        return make_problem(split, index, seed, self.difficulty)  # type: ignore[arg-type]

    def verifier(self) -> Verifier:
        return CountdownVerifier()

    def step_checker(self) -> StepChecker | None:
        return CountdownStepChecker()

    def answer(self, completion: str) -> str | None:
        """The value of the ``Answer`` expression (None when it breaks the grammar or the rule)."""
        return countdown_answer(completion)

    def problem_key(self, example: PromptExample) -> Hashable | None:
        """The numbers (in any order) and the target of the example's reference."""
        parsed = parse_reference(example.reference)
        return None if parsed is None else problem_key(*parsed)

    def default_eval_specs(self) -> list[EvalSpec]:
        """``id`` (this difficulty), ``ood_numbers`` (:func:`more_numbers`) and ``ood_large``
        (:func:`larger_numbers`), all from the ``val`` split."""
        return [
            EvalSpec("id", "val", self, "id"),
            EvalSpec("ood_numbers", "val", CountdownTask(more_numbers(self.difficulty)), "ood"),
            EvalSpec("ood_large", "val", CountdownTask(larger_numbers(self.difficulty)), "ood"),
        ]

    def __repr__(self) -> str:
        return f"CountdownTask({self.difficulty})"
