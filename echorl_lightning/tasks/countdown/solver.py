"""Exhaustive and randomised search for the Countdown task (pure Python, no torch).

The rule (shared by the generator, the solver, the verifier and the step checker): combine two available
numbers with ``+ - * /`` into a new number that replaces them; every given number is used at most once,
and every intermediate result must be a positive integer (``a - b`` only when ``a > b``, ``a / b`` only
when ``b`` divides ``a``; no negatives, no fractions, no zero). The target may be reached with any subset.

Implements:

- :func:`moves`: the candidate operations on a pool of numbers, larger operand first
  (``"25-5"``, never ``"5-25"``), skipping results above a cap and the no-op moves ``x*1`` and ``x/1``.
- :func:`reachable`: every value some sequence of moves produces (memoised on the sorted pool).
- :func:`count_solutions`: distinct solution expressions of a target, up to the order of the operands of
  ``+`` and ``*`` (``(a+b)+c`` and ``a+(b+c)`` count as two).
- :func:`search_trace`: a randomised depth-first search written out one line per step, the response the
  warm-start imitates::

      25-5=20 [20 3 7 -> 27]    a move: 25 and 5 leave the pool, 20 enters it; the pool after it, the target
      20*3=60 [60 7 -> 27]
      60+7=67 (no) [60 7 -> 27] a final move (two numbers were left) that misses the target: not applied
      back [20 3 7 -> 27]       undo the latest applied move; the pool it restores
      ...
      20+7=27 [27 3 -> 27]      reaches the target
      Answer: 25-5+7            the expression of the result, minimal parentheses

  Every line but ``Answer`` ends with the pool it leaves (:func:`format_pool`: the new result first, then
  the untouched numbers in their order) and the target, so the next move's operands are copied from the
  line above instead of being tracked across the whole trace, and whether a result hits the target is
  decided next to a written copy of it: a 432k-parameter policy trained on traces without it missed the
  target on most failed samples (wrote ``(no)`` on a hit, or went on after one).

  Children of a node are tried in random order; a node with three or more numbers tries at most
  ``inner_tries`` of them before backtracking; a node with two numbers tries all of its moves. The search
  stops at the first move that yields the target. A trace is accepted when it has ``min_steps`` to
  ``max_steps`` lines (the ``Answer`` line included); otherwise it is drawn again with the same generator.

Leaves out heuristics (closest-first ordering, memoising failed pools across a trace): the trace's choices
are the forks EchoRL looks for, so they stay random.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from echorl_lightning.rewards.answer_line import ANSWER_PREFIX

OPS = "+-*/"
NO_MARK = " (no)"
BACK = "back"
POOL_OPEN = " ["
POOL_CLOSE = "]"
TARGET_MARK = " -> "
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
_ATOM = 3


def format_pool(values: Sequence[int], target: int | None = None) -> str:
    """The pool suffix of a trace line: ``" [20 3 7]"``, or with the target ``" [20 3 7 -> 27]"``."""
    written = " ".join(str(v) for v in values)
    if target is not None:
        written += f"{TARGET_MARK}{target}"
    return POOL_OPEN + written + POOL_CLOSE


def apply_op(a: int, op: str, b: int) -> int | None:
    """``a op b`` under the rule (a positive integer), or None when the rule forbids it."""
    if op == "+":
        return a + b
    if op == "*":
        return a * b
    if op == "-":
        return a - b if a > b else None
    if op == "/":
        return a // b if b > 0 and a % b == 0 else None
    raise ValueError(f"apply_op: unknown operator {op!r}; known: {OPS}")


def moves(pool: Sequence[int], cap: int) -> list[tuple[int, str, int, int]]:
    """Distinct moves ``(a, op, b, result)`` on ``pool`` with ``a >= b``, ``result <= cap``, in a fixed
    order (pairs by position, then ``+ - * /``); ``x*1`` and ``x/1`` are left out (they change nothing)."""
    seen: set[tuple[int, str, int]] = set()
    out: list[tuple[int, str, int, int]] = []
    for i in range(len(pool)):
        for j in range(i + 1, len(pool)):
            a, b = max(pool[i], pool[j]), min(pool[i], pool[j])
            for op in OPS:
                if op in "*/" and b == 1:
                    continue
                result = apply_op(a, op, b)
                if result is None or result > cap or (a, op, b) in seen:
                    continue
                seen.add((a, op, b))
                out.append((a, op, b, result))
    return out


def _remove(pool: Sequence[int], a: int, b: int) -> list[int]:
    rest = list(pool)
    rest.remove(a)
    rest.remove(b)
    return rest


@lru_cache(maxsize=200_000)
def _reachable_sorted(pool: tuple[int, ...], cap: int) -> frozenset[int]:
    found: set[int] = set()
    for a, _, b, result in moves(pool, cap):
        found.add(result)
        rest = _remove(pool, a, b)
        if rest:
            found |= _reachable_sorted(tuple(sorted([*rest, result])), cap)
    return frozenset(found)


def reachable(numbers: Sequence[int], cap: int) -> frozenset[int]:
    """Every value at most ``cap`` that at least one move (of any sequence) produces from ``numbers``."""
    return _reachable_sorted(tuple(sorted(numbers)), cap)


def count_solutions(numbers: Sequence[int], target: int, cap: int, limit: int | None = None) -> int:
    """The number of distinct expressions reaching ``target`` (operands of ``+`` and ``*`` unordered),
    searching every move sequence; stops counting at ``limit``."""
    found: set[str] = set()

    def dfs(pool: list[tuple[int, str]]) -> bool:
        values = [v for v, _ in pool]
        for a, op, b, result in moves(values, cap):
            ia = values.index(a)
            ib = next(i for i, v in enumerate(values) if v == b and i != ia)
            ta, tb = pool[ia][1], pool[ib][1]
            if op in "+*":
                ta, tb = sorted((ta, tb))
            text = f"({ta}{op}{tb})"
            if result == target:
                found.add(text)
                if limit is not None and len(found) >= limit:
                    return True
                continue
            rest = [item for k, item in enumerate(pool) if k not in (ia, ib)]
            if rest and dfs([*rest, (result, text)]):
                return True
        return False

    dfs([(n, str(n)) for n in numbers])
    return len(found)


@dataclass(frozen=True)
class Term:
    """A pool entry of the search: its value and its expression (``prec``: 3 atom, 2 ``* /``, 1 ``+ -``)."""

    value: int
    text: str
    prec: int


def combine_text(left: Term, op: str, right: Term) -> str:
    """``left op right`` with the fewest parentheses that keep the meaning (left-associative ``- /``)."""
    prec = _PREC[op]
    lt = f"({left.text})" if left.prec < prec else left.text
    rt = f"({right.text})" if right.prec < prec or (right.prec == prec and op in "-/") else right.text
    return f"{lt}{op}{rt}"


class _OverBudget(Exception):
    pass


def _search_once(
    numbers: Sequence[int], target: int, rng: random.Random, cap: int, inner_tries: int, max_lines: int
) -> list[str] | None:
    lines: list[str] = []
    answer: list[str] = []

    def emit(line: str) -> None:
        lines.append(line)
        if len(lines) >= max_lines:  # the Answer line still has to fit
            raise _OverBudget

    def dfs(pool: list[Term]) -> bool:
        values = [t.value for t in pool]
        options = moves(values, cap)
        rng.shuffle(options)
        leaf = len(pool) == 2
        for tries, (a, op, b, result) in enumerate(options):
            if not leaf and tries == inner_tries:
                break
            step = f"{a}{op}{b}={result}"
            ia = values.index(a)
            ib = next(i for i, v in enumerate(values) if v == b and i != ia)
            term = Term(result, combine_text(pool[ia], op, pool[ib]), _PREC[op])
            child = [term] + [t for k, t in enumerate(pool) if k not in (ia, ib)]
            if result == target:
                lines.append(step + format_pool([t.value for t in child], target))
                answer.append(term.text)
                return True
            if leaf:
                emit(step + NO_MARK + format_pool(values, target))
                continue
            emit(step + format_pool([t.value for t in child], target))
            if dfs(child):
                return True
            emit(BACK + format_pool(values, target))
        return False

    try:
        if not dfs([Term(n, str(n), _ATOM) for n in numbers]):
            return None
    except _OverBudget:
        return None
    return [*lines, f"{ANSWER_PREFIX}{answer[0]}"]


def search_trace(
    numbers: Sequence[int],
    target: int,
    rng: random.Random,
    cap: int,
    inner_tries: int = 3,
    min_steps: int = 6,
    max_steps: int = 20,
    attempts: int = 64,
) -> list[str] | None:
    """A randomised search trace (its lines, ending with ``Answer: <expression>``) of ``min_steps`` to
    ``max_steps`` lines, or None when ``attempts`` draws found none. The same ``rng`` state gives the same
    trace."""
    if len(numbers) < 3:
        raise ValueError(f"search_trace: need at least 3 numbers, got {list(numbers)}")
    for _ in range(attempts):
        lines = _search_once(numbers, target, rng, cap, inner_tries, max_steps)
        if lines is not None and min_steps <= len(lines) <= max_steps:
            return lines
    return None
