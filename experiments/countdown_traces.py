"""Trace diagnostics of the Countdown task that only the experiments use (the task's own step checker is
:mod:`echorl_lightning.tasks.countdown.steps`).

Implements :func:`first_repeated_move` (where a search first re-tries a move from a pool it already tried it
from: a loop, valid step by step, that never ends), :func:`step_kind` (a line's kind in the step grammar) and
:func:`component_name` (which mixture component a problem was drawn from).
"""

from __future__ import annotations

from collections.abc import Sequence

from echorl_lightning.rewards.answer_line import ANSWER_PREFIX
from echorl_lightning.tasks.countdown.difficulty import AnyDifficulty, CountdownMixture
from echorl_lightning.tasks.countdown.solver import NO_MARK
from echorl_lightning.tasks.countdown.steps import BACK_LINE, MOVE_LINE, replay_trace


def first_repeated_move(completion: str, numbers: Sequence[int], target: int) -> int | None:
    """Index of the first non-empty line of ``completion`` that tries a move already tried from the same
    pool (``10+5=15``, ..., ``back``, ``10+5=15`` again), None when no move repeats before the first invalid
    step (lines from there on are not replayed). Operands of ``+`` and ``*`` count unordered; a ``(no)`` move
    and an applied one are the same move."""
    tried: set[tuple[tuple[int, ...], int, str, int]] = set()
    for index, key in replay_trace(completion, numbers, target)[1]:
        if key in tried:
            return index
        tried.add(key)
    return None


def step_kind(line: str) -> str:
    """The grammatical kind of one trace line, whatever its arithmetic: ``move``, ``no`` (a ``(no)`` move),
    ``back``, ``answer`` (starts with ``Answer:``) or ``other`` (no step of the grammar)."""
    if line.startswith(ANSWER_PREFIX):
        return "answer"
    if BACK_LINE.fullmatch(line):
        return "back"
    match = MOVE_LINE.fullmatch(line)
    if match is None:
        return "other"
    return "no" if match.group(5) == NO_MARK else "move"


def component_name(split: str, index: int, seed: int, difficulty: AnyDifficulty) -> str:
    """The name of the mixture component problem ``(split, seed, index)`` comes from (``""`` for a plain
    difficulty)."""
    if isinstance(difficulty, CountdownMixture):
        return difficulty.names[difficulty.component_index(split, index, seed)]
    return ""
