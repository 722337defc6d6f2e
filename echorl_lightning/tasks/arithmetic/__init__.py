"""The arithmetic task: problems (:mod:`.problems`), worked solutions (:mod:`.solver`), the step checker
(:mod:`.steps`) and the task interface (:mod:`.task`); its verifier is the generic
:class:`~echorl_lightning.rewards.exact_match.ExactMatchVerifier`."""

from echorl_lightning.tasks.arithmetic.problems import DEFAULT_DIFFICULTY, Difficulty, Problem
from echorl_lightning.tasks.arithmetic.task import ArithmeticTask

__all__ = ["DEFAULT_DIFFICULTY", "ArithmeticTask", "Difficulty", "Problem"]
