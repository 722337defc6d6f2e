"""The arithmetic task behind the generic :class:`~echorl_lightning.tasks.base.Task` interface.

Implements :class:`ArithmeticTask`: problems from :func:`~echorl_lightning.tasks.arithmetic.problems.make_problem`
at one :class:`~echorl_lightning.tasks.arithmetic.problems.Difficulty`, scored by the strict
:class:`~echorl_lightning.rewards.exact_match.ExactMatchVerifier` (the canonical integer of the ``Answer:``
line), steps checked by :class:`~echorl_lightning.tasks.arithmetic.steps.ArithmeticStepChecker`. Without
``eval_sets`` a datamodule evaluates on one set, ``val`` (no id/ood group). Evaluation sets keep repeated
problems by default (the held-out buckets are large).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import ClassVar

from echorl_lightning.data.types import PromptExample, StepChecker, Verifier
from echorl_lightning.rewards.exact_match import ExactMatchVerifier, extract_answer
from echorl_lightning.tasks.arithmetic.problems import DEFAULT_DIFFICULTY, Difficulty, Problem, make_problem
from echorl_lightning.tasks.arithmetic.steps import ArithmeticStepChecker
from echorl_lightning.tasks.base import EvalSpec, Task


class ArithmeticTask(Task):
    """Multi-step integer arithmetic (``Q: 47+8*3-12``) at one difficulty.

    Args:
        difficulty: the expression generator's knobs (the ``ood`` split adds two operands to them).
    """

    eval_splits: ClassVar[tuple[str, ...]] = ("val", "test", "ood")

    def __init__(self, difficulty: Difficulty = DEFAULT_DIFFICULTY) -> None:
        self.difficulty = difficulty

    def make_problem(self, split: str, index: int, seed: int) -> Problem:
        return make_problem(split, index, seed, self.difficulty)  # type: ignore[arg-type]

    def verifier(self) -> Verifier:
        return ExactMatchVerifier()

    def step_checker(self) -> StepChecker | None:
        """Every ``a op b=c`` line correct and a legal reduction of the prompt's expression."""
        return ArithmeticStepChecker()

    def answer(self, completion: str) -> str | None:
        """The canonical integer of the ``Answer:`` line (the verifier's own extraction)."""
        return extract_answer(completion)

    def problem_key(self, example: PromptExample) -> Hashable | None:
        """The prompt: it holds the whole expression."""
        return example.prompt

    def default_eval_specs(self) -> list[EvalSpec]:
        """One set ``val`` of the ``val`` split at this difficulty, in neither id/ood group."""
        return [EvalSpec("val", "val", None, None)]

    def __repr__(self) -> str:
        return f"ArithmeticTask({self.difficulty})"
