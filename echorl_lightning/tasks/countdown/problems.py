"""The problems of the Countdown task: reach a target from 3-5 given numbers with ``+ - * /`` (pure Python, no torch).

The rule: each given number is used at most once (any subset may be used), two available numbers combine
into a new available number, and every intermediate result must be a positive integer: subtraction only
when the result is positive, division only when it is exact; no negatives, fractions, zero or other
operators. A problem and its worked solution::

    prompt:    "Q: 25 5 3 7 -> 27\\n"
    solution:  "25-5=20 [20 3 7 -> 27]\\n20*3=60 [60 7 -> 27]\\n60+7=67 (no) [60 7 -> 27]\\n"
               "back [20 3 7 -> 27]\\n...\\n20+7=27 [27 3 -> 27]\\nAnswer: 25-5+7"

The solution is a randomised search trace (:func:`~echorl_lightning.tasks.countdown.solver.search_trace`):
one move per line, ``(no)`` for a last move that misses, ``back`` to undo a move, each of these lines ending
with the pool of numbers it leaves, then ``Answer:`` and the expression; 6-20 lines, so EchoRL's step
splitter (one step per ``"\\n"``) sees real decision points. The reference
handed to the verifier is ``"25 5 3 7 -> 27"``.

Implements the generator: problem ``(split, seed, index)`` is drawn from its own seeded RNG (random access):
``k`` numbers uniform in ``[min_number, max_number]``, a target uniform among the values they reach within
``[min_target, max_target]`` (not one of the numbers), kept when the sorted numbers and target hash into the
split's bucket (16 buckets: ``val`` owns 0, ``test`` 1, ``train`` the other 14, so held-out problems are
never trained on), when the target has at least ``min_solutions`` distinct solutions, and when the solver
finds a trace of the allowed length. The difficulty knobs (:mod:`echorl_lightning.tasks.countdown.difficulty`)
give the in-distribution setting and two out-of-distribution ones. Leaves out the TV show's fixed
number cards and its closest-answer scoring (here only the exact target scores).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Literal

from echorl_lightning.tasks.countdown.difficulty import DEFAULT_DIFFICULTY, AnyDifficulty, problem_difficulty
from echorl_lightning.tasks.countdown.solver import count_solutions, reachable, search_trace

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
_NUM_BUCKETS = 16
_EVAL_BUCKET: dict[Split, int] = {"val": 0, "test": 1}
_MAX_DRAWS = 10_000
PROMPT_PREFIX = "Q: "
ARROW = " -> "


@dataclass(frozen=True)
class CountdownProblem:
    """One Countdown problem.

    Attributes:
        numbers: the given numbers, in prompt order.
        target: the value to reach.
        prompt: the policy's input, ``"Q: 25 5 3 7 -> 27\\n"``.
        reference: what the verifier and step checker read, ``"25 5 3 7 -> 27"``.
        solution: a solver trace (lines joined by ``"\\n"``, ending with ``Answer: ...``; no EOS).
    """

    numbers: tuple[int, ...]
    target: int
    prompt: str
    reference: str
    solution: str


def format_reference(numbers: tuple[int, ...] | list[int], target: int) -> str:
    """``"25 5 3 7 -> 27"``."""
    return " ".join(str(n) for n in numbers) + f"{ARROW}{target}"


def parse_reference(reference: str) -> tuple[list[int], int] | None:
    """``(numbers, target)`` of ``"25 5 3 7 -> 27"`` (a prompt's ``Q: `` and newline allowed), or None
    when the text is not of that form."""
    text = reference.strip()
    if text.startswith(PROMPT_PREFIX):
        text = text[len(PROMPT_PREFIX) :]
    left, sep, right = text.partition(ARROW)
    items = left.split(" ")
    if not sep or not right.isdigit() or not all(item.isdigit() for item in items):
        return None
    return [int(item) for item in items], int(right)


def problem_bucket(numbers: tuple[int, ...] | list[int], target: int) -> int:
    """The split bucket (0..15) of a problem: a stable hash of its sorted numbers and target (independent
    of ``PYTHONHASHSEED`` and of the numbers' order)."""
    key = format_reference(tuple(sorted(numbers)), target)
    return hashlib.sha256(key.encode()).digest()[0] % _NUM_BUCKETS


def _in_split(bucket: int, split: Split) -> bool:
    if split == "train":
        return bucket not in _EVAL_BUCKET.values()
    return bucket == _EVAL_BUCKET[split]


def make_problem(
    split: Split, index: int, seed: int = 0, difficulty: AnyDifficulty = DEFAULT_DIFFICULTY
) -> CountdownProblem:
    """Problem number ``index`` of ``split`` for ``seed``: the same arguments always give the same problem
    (with the same solution trace)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    if index < 0:
        raise ValueError(f"make_problem: index must be >= 0, got {index}")
    d = problem_difficulty(split, index, seed, difficulty)
    rng = random.Random(f"countdown:{split}:{seed}:{index}")
    for _ in range(_MAX_DRAWS):
        k = rng.randint(d.min_numbers, d.max_numbers)
        numbers = tuple(rng.randint(d.min_number, d.max_number) for _ in range(k))
        candidates = sorted(
            v
            for v in reachable(numbers, d.max_intermediate)
            if d.min_target <= v <= d.max_target and v not in numbers
        )
        if not candidates:
            continue
        target = rng.choice(candidates)
        if not _in_split(problem_bucket(numbers, target), split):
            continue
        if count_solutions(numbers, target, d.max_intermediate, limit=d.min_solutions) < d.min_solutions:
            continue
        lines = search_trace(
            numbers,
            target,
            rng,
            d.max_intermediate,
            inner_tries=d.inner_tries,
            min_steps=d.min_steps,
            max_steps=d.max_steps,
        )
        if lines is None:
            continue
        reference = format_reference(numbers, target)
        return CountdownProblem(
            numbers=numbers,
            target=target,
            prompt=f"{PROMPT_PREFIX}{reference}\n",
            reference=reference,
            solution="\n".join(lines),
        )
    raise RuntimeError(f"make_problem: no {split} problem in {_MAX_DRAWS} draws for {difficulty}")


def make_problems(
    split: Split,
    num: int,
    seed: int = 0,
    difficulty: AnyDifficulty = DEFAULT_DIFFICULTY,
    start: int = 0,
) -> list[CountdownProblem]:
    """Problems ``start .. start+num-1`` of ``split`` (see :func:`make_problem`)."""
    return [make_problem(split, i, seed, difficulty) for i in range(start, start + num)]
