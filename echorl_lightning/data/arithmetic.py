"""The embedded verifiable task: multi-step integer arithmetic with mixed operations (pure Python).

Implements a procedural generator of expressions such as ``47+8*3-12`` (the default difficulty: 3-4
one-digit operands, ``+ - *``, products of two factors, e.g. ``7-8*6-2``) with a worked solution of one
operation per line, multiplications first (left to right), then additions and subtractions (left to right),
ending in a final-answer line::

    prompt:    "Q: 47+8*3-12\\n"
    solution:  "8*3=24\\n47+24=71\\n71-12=59\\nAnswer: 59"      (the policy then emits EOS)

Every step ends with ``"\\n"`` so EchoRL's step splitter sees one step per operation (EchoRL, arXiv
2605.31228). Problems are reproducible from ``(split, seed, index)`` (random access, no stream state), and
the splits are disjoint by construction: a hash of the expression assigns it to one of 16 buckets; ``val``,
``test`` and ``ood`` each own one bucket and ``train`` the remaining 13, so an evaluation expression can
never be drawn for training, whatever the difficulty. :class:`ArithmeticStepChecker` checks that every
step line is correct arithmetic and a legal reduction of the expression (:func:`check_steps`). Leaves out
division, parentheses and exponentiation (their worked solutions need rules a tiny model cannot learn in
minutes); no torch here.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from echorl_lightning.data.types import PromptExample
from echorl_lightning.rewards.answer_line import ANSWER_PREFIX

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


def solve(operands: list[int], ops: list[str]) -> tuple[list[str], int]:
    """The worked steps (``"a*b=c"`` lines, multiplications first, then ``+``/``-`` left to right) and the
    value of ``operands[0] ops[0] operands[1] ...``."""
    if len(ops) != len(operands) - 1:
        raise ValueError(
            f"solve: {len(operands)} operands need {len(operands) - 1} operators, got {len(ops)}"
        )
    steps: list[str] = []
    values, pending = [operands[0]], list(ops)
    terms_ops: list[str] = []
    for op, right in zip(pending, operands[1:], strict=True):
        if op == "*":
            product = values[-1] * right
            steps.append(f"{values[-1]}*{right}={product}")
            values[-1] = product
        else:
            terms_ops.append(op)
            values.append(right)
    total = values[0]
    for op, right in zip(terms_ops, values[1:], strict=True):
        new = total + right if op == "+" else total - right
        steps.append(f"{total}{op}{right}={new}")
        total = new
    return steps, total


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


_STEP_LINE = re.compile(r"(-?(?:0|[1-9][0-9]*))([-+*])(-?(?:0|[1-9][0-9]*))=(-?(?:0|[1-9][0-9]*))")
_EXPRESSION = re.compile(r"[1-9][0-9]*(?:[-+*][1-9][0-9]*)*")


def parse_expression(prompt: str) -> tuple[list[int], list[str]] | None:
    """Operands and operators of a prompt ``"Q: 47+8*3-12\\n"`` (or a bare expression), None when it is not
    one of this task's expressions."""
    text = prompt.strip()
    if text.startswith(PROMPT_PREFIX.strip()):
        text = text[len(PROMPT_PREFIX.strip()) :].strip()
    if not _EXPRESSION.fullmatch(text):
        return None
    return [int(t) for t in re.findall(r"[0-9]+", text)], re.findall(r"[-+*]", text)


def check_steps(completion: str, operands: list[int], ops: list[str]) -> bool | None:
    """True when every line of ``completion`` before ``Answer:`` is a correct step consistent with the
    expression ``operands ops`` and an ``Answer`` line, if present, gives the fully reduced value; False
    otherwise; None when the completion has no line.

    A step ``a op b=c`` must have ``c = a op b`` and reduce two neighbours of the current expression in an
    order that keeps its meaning: a ``*`` anywhere (products bind tighter and associate), a ``+``/``-`` only
    at the leftmost position and only when the next operator is not ``*`` (left to right).
    """
    lines = [line for line in completion.split("\n") if line.strip()]
    if not lines:
        return None
    values, pending = list(operands), list(ops)
    for k, line in enumerate(lines):
        if line.startswith(ANSWER_PREFIX):
            reduced = len(values) == 1 and line == f"{ANSWER_PREFIX}{values[0]}"
            return reduced and k == len(lines) - 1
        match = _STEP_LINE.fullmatch(line)
        if match is None:
            return False
        a, op, b, c = int(match.group(1)), match.group(2), int(match.group(3)), int(match.group(4))
        if c != {"+": a + b, "-": a - b, "*": a * b}[op]:
            return False
        if op == "*":
            places = [i for i, o in enumerate(pending) if o == "*" and (values[i], values[i + 1]) == (a, b)]
        elif pending[:1] == [op] and (values[0], values[1]) == (a, b) and pending[1:2] != ["*"]:
            places = [0]
        else:
            places = []
        if not places:
            return False
        i = places[0]
        values[i : i + 2] = [c]
        del pending[i]
    return True


class ArithmeticStepChecker:
    """Step checker of the arithmetic task (the :class:`~echorl_lightning.data.types.StepChecker`
    protocol): per completion :func:`check_steps` against the expression in its example's prompt; None
    when the prompt holds no expression of this task or the completion is empty."""

    def __call__(self, completions: Sequence[str], examples: Sequence[PromptExample]) -> list[bool | None]:
        if len(completions) != len(examples):
            raise ValueError(
                f"ArithmeticStepChecker: {len(completions)} completions but {len(examples)} examples"
            )
        out: list[bool | None] = []
        for completion, example in zip(completions, examples, strict=True):
            parsed = parse_expression(example.prompt)
            out.append(None if parsed is None else check_steps(completion, *parsed))
        return out
