"""The Countdown task: difficulties (:mod:`.difficulty`), problems (:mod:`.problems`), the search solver that
writes expert traces (:mod:`.solver`), the verifier (:mod:`.verifier`), the step checker (:mod:`.steps`) and
the task interface (:mod:`.task`)."""

from echorl_lightning.tasks.countdown.difficulty import (
    DEFAULT_DIFFICULTY,
    AnyDifficulty,
    CountdownDifficulty,
    CountdownMixture,
    parse_difficulty,
)
from echorl_lightning.tasks.countdown.steps import CountdownStepChecker
from echorl_lightning.tasks.countdown.task import CountdownTask
from echorl_lightning.tasks.countdown.verifier import CountdownVerifier

__all__ = [
    "DEFAULT_DIFFICULTY",
    "AnyDifficulty",
    "CountdownDifficulty",
    "CountdownMixture",
    "CountdownStepChecker",
    "CountdownTask",
    "CountdownVerifier",
    "parse_difficulty",
]
