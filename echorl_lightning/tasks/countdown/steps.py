"""The step checker of the Countdown task: replays a search trace against its problem (pure Python).

Implements:

- :class:`CountdownStepChecker`: replays the search trace against the problem. Valid steps are a move
  ``a op b=c [pool]`` (``a`` and ``b`` available at that point of the search, ``c`` the exact result and a
  positive integer), the same with `` (no)`` before the pool (then ``c`` must not be the target, and the
  move is not applied), and ``back [pool]`` (undoes the latest applied move; invalid when there is none).
  Every such line must end with the pool it leaves, equal as a multiset to the replayed one (its order is
  not checked), optionally followed by the target (``[20 3 7 -> 27]``, the generator's format), which must
  then be the problem's. The ``Answer`` line, when present, must directly follow an applied move whose result is
  the target.
- :func:`first_invalid_step`: where a trace first goes wrong and how (:data:`STEP_FAULTS`), the diagnosis
  behind the step checker's verdict.
- :func:`replay_trace`: the replay itself, also listing the valid moves before the first invalid line.

Leaves out partial credit: one invalid line makes the whole trace invalid.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from echorl_lightning.data.types import PromptExample
from echorl_lightning.tasks.countdown.problems import parse_reference
from echorl_lightning.tasks.countdown.solver import ANSWER_PREFIX, BACK, NO_MARK, TARGET_MARK, apply_op

_INT = r"(?:0|[1-9][0-9]*)"
_POOL = rf" \[({_INT}(?: {_INT})*)(?:{re.escape(TARGET_MARK)}({_INT}))?\]"
MOVE_LINE = re.compile(rf"({_INT})([-+*/])({_INT})=({_INT})( \(no\))?{_POOL}")
"""A move line ``a op b=c [pool]`` or ``a op b=c (no) [pool]`` (groups: a, op, b, c, `` (no)``, pool, target)."""
BACK_LINE = re.compile(rf"{BACK}{_POOL}")
"""A ``back [pool]`` line (groups: pool, target)."""


STEP_FAULTS = (
    "format",
    "operand",
    "arithmetic",
    "target",
    "pool",
    "no_on_hit",
    "back_at_root",
    "answer_after_miss",
)
"""The kinds of invalid step :func:`first_invalid_step` names: ``format`` (neither a move, a ``(no)`` move, a
``back`` nor an ``Answer`` line), ``operand`` (a number not in the pool at that point), ``arithmetic`` (a wrong
or non-integer result), ``target`` (a written target that is not the problem's), ``pool`` (a written pool that
is not the replayed one), ``no_on_hit`` (``(no)`` on a move that makes the target), ``back_at_root`` (``back``
with no move to undo) and ``answer_after_miss`` (an ``Answer`` line not directly after a move that made the
target)."""


def first_invalid_step(completion: str, numbers: Sequence[int], target: int) -> tuple[int, str] | None:
    """``(index, fault)`` of the first invalid non-empty line of ``completion`` replayed as a search from
    ``numbers`` (see the module docstring; ``fault`` is one of :data:`STEP_FAULTS`), None when every line is
    valid (a completion without lines included)."""
    return replay_trace(completion, numbers, target)[0]


def replay_trace(
    completion: str, numbers: Sequence[int], target: int
) -> tuple[tuple[int, str] | None, list[tuple[int, tuple[tuple[int, ...], int, str, int]]]]:
    """One replay of ``completion``'s non-empty lines as a search from ``numbers``: the first invalid line
    (as :func:`first_invalid_step` returns it) and, for every valid move line before it (``(no)`` moves
    included), ``(index, (pool before it, sorted; a, op, b))`` with the operands of ``+`` and ``*`` as
    ``(max, min)``."""
    lines = [line for line in completion.split("\n") if line.strip()]
    pool = Counter(numbers)
    history: list[Counter[int]] = []
    moves: list[tuple[int, tuple[tuple[int, ...], int, str, int]]] = []
    last_hit = False  # the previous line applied a move that made the target
    for index, line in enumerate(lines):
        if line.startswith(ANSWER_PREFIX):
            if not last_hit:
                return (index, "answer_after_miss"), moves
            last_hit = False
            continue
        last_hit = False
        back = BACK_LINE.fullmatch(line)
        if back is not None:
            if not history:
                return (index, "back_at_root"), moves
            pool = history.pop()
            if not _right_target(back.group(2), target):
                return (index, "target"), moves
            if _written_pool(back.group(1)) != pool:
                return (index, "pool"), moves
            continue
        match = MOVE_LINE.fullmatch(line)
        if match is None:
            return (index, "format"), moves
        a, op, b, c = int(match.group(1)), match.group(2), int(match.group(3)), int(match.group(4))
        need = Counter([a, b])
        if need - pool:
            return (index, "operand"), moves
        if apply_op(a, op, b) != c:
            return (index, "arithmetic"), moves
        if not _right_target(match.group(7), target):
            return (index, "target"), moves
        key = (tuple(sorted(pool.elements())), *((max(a, b), op, min(a, b)) if op in "+*" else (a, op, b)))
        if match.group(5) == NO_MARK:
            if c == target:
                return (index, "no_on_hit"), moves
            if _written_pool(match.group(6)) != pool:
                return (index, "pool"), moves
            moves.append((index, key))
            continue
        history.append(pool)
        pool = pool - need + Counter([c])
        if _written_pool(match.group(6)) != pool:
            return (index, "pool"), moves
        moves.append((index, key))
        last_hit = c == target
    return None, moves


def check_trace(completion: str, numbers: Sequence[int], target: int) -> bool | None:
    """True when every line of ``completion`` is a valid step of the search from ``numbers`` (see the
    module docstring), False at the first invalid one (:func:`first_invalid_step` names it), None when the
    completion has no line at all."""
    if not any(line.strip() for line in completion.split("\n")):
        return None
    return first_invalid_step(completion, numbers, target) is None


def _right_target(written: str | None, target: int) -> bool:
    """A line's optional written target (``-> 27`` in its pool) is the problem's, or absent."""
    return written is None or int(written) == target


def _written_pool(text: str) -> Counter[int]:
    """The multiset of a line's pool, ``"20 3 7"`` -> ``Counter({20: 1, 3: 1, 7: 1})``."""
    return Counter(int(item) for item in text.split(" "))


class CountdownStepChecker:
    """Step checker of Countdown traces (the :class:`~echorl_lightning.data.types.StepChecker` protocol):
    per completion :func:`check_trace` against its example's reference; None when the reference is
    unreadable or the completion is empty."""

    def __call__(self, completions: Sequence[str], examples: Sequence[PromptExample]) -> list[bool | None]:
        if len(completions) != len(examples):
            raise ValueError(
                f"CountdownStepChecker: {len(completions)} completions but {len(examples)} examples"
            )
        out: list[bool | None] = []
        for completion, example in zip(completions, examples, strict=True):
            parsed = parse_reference(example.reference)
            out.append(None if parsed is None else check_trace(completion, parsed[0], parsed[1]))
        return out
