"""The problems of the arithmetic task: multi-step integer arithmetic with mixed operations (pure Python).

Implements a procedural generator of expressions such as ``47+8*3-12`` (the default difficulty: 3-4
one-digit operands, ``+ - *``, products of two factors, e.g. ``7-8*6-2``) with a worked solution of one
operation per line, multiplications first (left to right), then additions and subtractions (left to right),
ending in a final-answer line::

    prompt:    "Q: 47+8*3-12\\n"
    solution:  "8*3=24\\n47+24=71\\n71-12=59\\nAnswer: 59"      (the policy then emits EOS)

Every step ends with ``"\\n"`` so EchoRL's step splitter sees one step per operation (the worked solution
is :func:`~echorl_lightning.tasks.arithmetic.solver.solve`'s). Problems are reproducible from ``(split, seed, index)`` (random access, no stream state), and
the splits are disjoint by construction: a hash of the expression assigns it to one of 16 buckets; ``val``,
``test`` and ``ood`` each own one bucket and ``train`` the remaining 13, so an evaluation expression can
never be drawn for training, whatever the difficulty. The step checker lives in
:mod:`echorl_lightning.tasks.arithmetic.steps`. Leaves out
division, parentheses and exponentiation (their worked solutions need rules a tiny model cannot learn in
minutes); no torch here.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, replace
from typing import Literal

from echorl_lightning.rewards.answer_line import ANSWER_PREFIX
from echorl_lightning.tasks.arithmetic.solver import solve

Split = Literal["train", "val", "test", "ood"]
SPLITS: tuple[Split, ...] = ("train", "val", "test", "ood")
_NUM_BUCKETS = 16
_EVAL_BUCKET: dict[Split, int] = {"val": 0, "test": 1, "ood": 2}
_MAX_DRAWS = 10_000
PROMPT_PREFIX = "Q: "


@dataclass(frozen=True)
class Difficulty:
    """How hard the generated expressions are.

    Attributes:
        min_operands: fewest operands per expression (>= 2); an expression with k operands has k-1 steps.
        max_operands: most operands per expression.
        min_digits: fewest digits of an operand of ``+``/``-`` (1-digit operands are 1..9).
        max_digits: most digits of an operand of ``+``/``-``.
        mul_digits: most digits of an operand next to ``*`` (keeps products learnable).
        ops: the operator set, a string of characters from ``"+-*"``.
        chain_mul: allow ``a*b*c`` (products of more than two factors); False keeps every product a
            single ``a*b`` (with ``mul_digits=1``: the 9x9 table).
    """

    min_operands: int = 3
    max_operands: int = 4
    min_digits: int = 1
    max_digits: int = 1
    mul_digits: int = 1
    ops: str = "+-*"
    chain_mul: bool = False

    def __post_init__(self) -> None:
        if not 2 <= self.min_operands <= self.max_operands:
            raise ValueError(f"Difficulty: need 2 <= min_operands <= max_operands, got {self}")
        if not 1 <= self.min_digits <= self.max_digits:
            raise ValueError(f"Difficulty: need 1 <= min_digits <= max_digits, got {self}")
        if self.mul_digits < 1:
            raise ValueError(f"Difficulty: mul_digits must be >= 1, got {self.mul_digits}")
        if not self.ops or set(self.ops) - set("+-*"):
            raise ValueError(f"Difficulty: ops must be a non-empty string over '+-*', got {self.ops!r}")
        if self.ops == "*" and not self.chain_mul and self.max_operands > 2:
            raise ValueError(
                "Difficulty: ops='*' without chain_mul allows only 2 operands; set max_operands=2"
            )


DEFAULT_DIFFICULTY = Difficulty()


def ood_difficulty(base: Difficulty) -> Difficulty:
    """The harder out-of-distribution variant of ``base``: two more operands (two more steps)."""
    return replace(base, min_operands=base.max_operands + 1, max_operands=base.max_operands + 2)


@dataclass(frozen=True)
class Problem:
    """One arithmetic problem.

    Attributes:
        prompt: the policy's input, ``"Q: <expression>\\n"``.
        solution: the reference worked solution (steps then ``Answer: <int>``), no trailing newline, no EOS.
        answer: the final answer in canonical integer form (``"-35"``, ``"0"``, ``"59"``).
        expression: the bare expression, e.g. ``"47+8*3-12"``.
    """

    prompt: str
    solution: str
    answer: str
    expression: str

    @property
    def reference(self) -> str:
        """What the verifier compares a completion against: the final answer."""
        return self.answer


def expression_bucket(expression: str) -> int:
    """The split bucket (0..15) of an expression: a stable hash, independent of ``PYTHONHASHSEED``."""
    return hashlib.sha256(expression.encode()).digest()[0] % _NUM_BUCKETS


def _in_split(expression: str, split: Split) -> bool:
    bucket = expression_bucket(expression)
    if split == "train":
        return bucket not in _EVAL_BUCKET.values()
    return bucket == _EVAL_BUCKET[split]


def _operand(rng: random.Random, min_digits: int, max_digits: int) -> int:
    digits = rng.randint(min_digits, max_digits)
    return rng.randint(1 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def _draw(rng: random.Random, difficulty: Difficulty) -> tuple[list[int], list[str]]:
    """Operands and operators of one random expression."""
    k = rng.randint(difficulty.min_operands, difficulty.max_operands)
    ops: list[str] = []
    for _ in range(k - 1):
        allowed = difficulty.ops
        if not difficulty.chain_mul and ops and ops[-1] == "*":
            allowed = allowed.replace("*", "")
        ops.append(rng.choice(allowed))
    operands = []
    for i in range(k):
        next_to_mul = (i > 0 and ops[i - 1] == "*") or (i < k - 1 and ops[i] == "*")
        if next_to_mul:
            operands.append(_operand(rng, 1, difficulty.mul_digits))
        else:
            operands.append(_operand(rng, difficulty.min_digits, difficulty.max_digits))
    return operands, ops


def make_problem(
    split: Split, index: int, seed: int = 0, difficulty: Difficulty = DEFAULT_DIFFICULTY
) -> Problem:
    """Problem number ``index`` of ``split`` for ``seed``: the same arguments always give the same problem.

    ``ood`` uses :func:`ood_difficulty` of ``difficulty``. Draws are rejected until the expression's hash
    bucket belongs to ``split`` (1 in 16 acceptance for the evaluation splits).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    if index < 0:
        raise ValueError(f"make_problem: index must be >= 0, got {index}")
    if split == "ood":
        difficulty = ood_difficulty(difficulty)
    rng = random.Random(f"arith:{split}:{seed}:{index}")
    for _ in range(_MAX_DRAWS):
        operands, ops = _draw(rng, difficulty)
        expression = "".join(f"{a}{op}" for a, op in zip(operands, ops, strict=False)) + str(operands[-1])
        if _in_split(expression, split):
            break
    else:  # pragma: no cover - needs a hash bucket that 10k draws never hit
        raise RuntimeError(f"make_problem: no {split} expression in {_MAX_DRAWS} draws for {difficulty}")
    steps, value = solve(operands, ops)
    answer = str(value)
    solution = "".join(f"{step}\n" for step in steps) + f"{ANSWER_PREFIX}{answer}"
    return Problem(
        prompt=f"{PROMPT_PREFIX}{expression}\n", solution=solution, answer=answer, expression=expression
    )


def make_problems(
    split: Split, num: int, seed: int = 0, difficulty: Difficulty = DEFAULT_DIFFICULTY, start: int = 0
) -> list[Problem]:
    """Problems ``start .. start+num-1`` of ``split`` (see :func:`make_problem`)."""
    return [make_problem(split, i, seed, difficulty) for i in range(start, start + num)]
