"""The strict verifier and the step checker of the Countdown task (:mod:`echorl_lightning.data.countdown`).

Implements:

- :func:`parse_expression`: a hand-written recursive-descent parser (never ``eval``, no ``ast``) of
  expressions over decimal integers (no leading zeros, at most 6 digits), ``+ - * /`` and parentheses,
  spaces allowed between tokens. Anything else (``**``, unary minus, ``%``, names, unbalanced parentheses,
  more than ``MAX_EXPRESSION_CHARS`` characters) is rejected. Values are exact :class:`fractions.Fraction`
  arithmetic, and every intermediate result must be a positive integer (the task's rule), so division by
  zero, inexact division and negative differences all reject the expression.
- :class:`CountdownVerifier`: 1.0 when the last non-empty line of a completion is exactly
  ``Answer: <expression>``, the expression parses under the rule, its numbers form a sub-multiset of the
  given ones and its value equals the target; 0.0 otherwise (also for completions longer than
  ``max_chars``); None when the reference is not ``"<numbers> -> <target>"``. With
  ``require_valid_trace=True`` a right answer also needs every line of the search before it to be a valid step
  (:func:`check_trace`), a process-checked reward: an answer-only reward lets RL learn to write a right
  ``Answer`` line after a broken trace (measured in ``experiments/results/countdown_regime.md``).
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
- :func:`first_repeated_move`: where a search first re-tries a move from a pool it already tried it from
  (a loop; valid step by step, but it never ends).
- :func:`step_kind`: a line's kind in the step grammar (move, ``(no)`` move, back, answer, other).
- :func:`countdown_answer`: the canonical value of the ``Answer`` expression (what maj@k votes on).

The verifiable reward of RLVR as used by EchoRL (arXiv 2605.31228): r = 1 for a verified-correct answer.
Leaves out partial credit for getting close to the target, and any leniency in the answer line's format.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

from echorl_lightning.data.countdown import parse_reference
from echorl_lightning.data.countdown_solver import ANSWER_PREFIX, BACK, NO_MARK, TARGET_MARK, apply_op
from echorl_lightning.data.types import PromptExample
from echorl_lightning.rewards.answer_line import answer_line_text

MAX_EXPRESSION_CHARS = 128
MAX_DIGITS = 6
MAX_COMPLETION_CHARS = 4096
_TOKEN = re.compile(r"\s*(?:(0|[1-9][0-9]*)|([-+*/()]))")
_INT = r"(?:0|[1-9][0-9]*)"
_POOL = rf" \[({_INT}(?: {_INT})*)(?:{re.escape(TARGET_MARK)}({_INT}))?\]"
_MOVE = re.compile(rf"({_INT})([-+*/])({_INT})=({_INT})( \(no\))?{_POOL}")
_BACK = re.compile(rf"{BACK}{_POOL}")


class ExpressionError(ValueError):
    """The expression breaks the grammar or the rule."""


def _tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            if text[pos:].strip() == "":
                break
            raise ExpressionError(f"unexpected character {text[pos]!r} at {pos}")
        number, symbol = match.groups()
        if number is not None and len(number) > MAX_DIGITS:
            raise ExpressionError(f"number {number[:10]}... has more than {MAX_DIGITS} digits")
        tokens.append(number if number is not None else symbol)
        pos = match.end()
    return tokens


class _Parser:
    """expr := term (('+'|'-') term)*; term := factor (('*'|'/') factor)*; factor := INT | '(' expr ')'."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.numbers: list[int] = []

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise ExpressionError("unexpected end of expression")
        self.pos += 1
        return token

    def expr(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            value = _checked(value, self.take(), self.term())
        return value

    def term(self) -> Fraction:
        value = self.factor()
        while self.peek() in ("*", "/"):
            value = _checked(value, self.take(), self.factor())
        return value

    def factor(self) -> Fraction:
        token = self.take()
        if token == "(":
            value = self.expr()
            if self.take() != ")":
                raise ExpressionError("expected ')'")
            return value
        if not token.isdigit():
            raise ExpressionError(f"expected a number or '(', got {token!r}")
        self.numbers.append(int(token))
        return Fraction(int(token))


def _checked(left: Fraction, op: str, right: Fraction) -> Fraction:
    """``left op right`` in exact arithmetic; the result must be a positive integer."""
    if op == "+":
        value = left + right
    elif op == "-":
        value = left - right
    elif op == "*":
        value = left * right
    elif right == 0:
        raise ExpressionError("division by zero")
    else:
        value = left / right
    if value.denominator != 1 or value <= 0:
        raise ExpressionError(f"intermediate result {value} is not a positive integer")
    return value


def parse_expression(text: str) -> tuple[int, list[int]]:
    """The value and the numbers (in order of appearance) of a Countdown expression; raises
    :class:`ExpressionError` when it breaks the grammar or the rule (see the module docstring)."""
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    parser = _Parser(_tokenize(text))
    if not parser.tokens:
        raise ExpressionError("empty expression")
    value = parser.expr()
    if parser.peek() is not None:
        raise ExpressionError(f"unexpected {parser.peek()!r} after the expression")
    if value.denominator != 1 or value <= 0:  # a lone number: still must be a positive integer
        raise ExpressionError(f"value {value} is not a positive integer")
    return int(value), parser.numbers


def countdown_answer(completion: str) -> str | None:
    """The value of the ``Answer`` expression as a decimal string (None when missing or invalid)."""
    text = answer_line_text(completion)
    if text is None:
        return None
    try:
        return str(parse_expression(text)[0])
    except ExpressionError:
        return None


def score_completion(completion: str, numbers: Sequence[int], target: int, max_chars: int) -> float:
    """1.0 when ``completion`` ends with a valid ``Answer`` expression over a sub-multiset of ``numbers``
    whose value is ``target``, else 0.0."""
    if len(completion) > max_chars:
        return 0.0
    text = answer_line_text(completion)
    if text is None:
        return 0.0
    try:
        value, used = parse_expression(text)
    except ExpressionError:
        return 0.0
    if Counter(used) - Counter(numbers):  # some number used more often than given
        return 0.0
    return 1.0 if value == target else 0.0


class CountdownVerifier:
    """Strict Countdown verifier: 1.0 right, 0.0 wrong or malformed, None for an unreadable reference.

    Args:
        max_chars: completions longer than this score 0.0 without being parsed.
        require_valid_trace: a right answer scores 1.0 only when every line before it is a valid step of the
            search (:func:`check_trace`); a right answer after an invalid step (or with no step) scores 0.0.
    """

    def __init__(self, max_chars: int = MAX_COMPLETION_CHARS, require_valid_trace: bool = False) -> None:
        self.max_chars = max_chars
        self.require_valid_trace = require_valid_trace

    def __call__(self, completions: Sequence[str], references: Sequence[str]) -> list[float | None]:
        if len(completions) != len(references):
            raise ValueError(
                f"CountdownVerifier: {len(completions)} completions but {len(references)} references"
            )
        scores: list[float | None] = []
        for completion, reference in zip(completions, references, strict=True):
            parsed = parse_reference(reference)
            if parsed is None:
                scores.append(None)
                continue
            score = score_completion(completion, parsed[0], parsed[1], self.max_chars)
            if score > 0 and self.require_valid_trace and not check_trace(completion, parsed[0], parsed[1]):
                score = 0.0
            scores.append(score)
        return scores


STEP_FAULTS = (
    "format", "operand", "arithmetic", "target", "pool", "no_on_hit", "back_at_root", "answer_after_miss"
)  # fmt: skip
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
    return _replay(completion, numbers, target)[0]


def first_repeated_move(completion: str, numbers: Sequence[int], target: int) -> int | None:
    """Index of the first non-empty line of ``completion`` that tries a move already tried from the same
    pool (a search going round in a loop: ``10+5=15``, ..., ``back``, ``10+5=15`` again), None when no move
    repeats before the first invalid step (:func:`first_invalid_step`; lines from there on are not replayed).
    Operands of ``+`` and ``*`` count unordered; a ``(no)`` move and an applied one are the same move."""
    tried: set[tuple[tuple[int, ...], int, str, int]] = set()
    for index, key in _replay(completion, numbers, target)[1]:
        if key in tried:
            return index
        tried.add(key)
    return None


def _replay(
    completion: str, numbers: Sequence[int], target: int
) -> tuple[tuple[int, str] | None, list[tuple[int, tuple[tuple[int, ...], int, str, int]]]]:
    """One replay of ``completion``'s non-empty lines as a search from ``numbers``: the first invalid line
    (as :func:`first_invalid_step` returns it) and, for every valid move line before it, ``(index, (pool
    before it, sorted; a, op, b))`` with the operands of ``+`` and ``*`` as ``(max, min)``."""
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
        back = _BACK.fullmatch(line)
        if back is not None:
            if not history:
                return (index, "back_at_root"), moves
            pool = history.pop()
            if not _right_target(back.group(2), target):
                return (index, "target"), moves
            if _written_pool(back.group(1)) != pool:
                return (index, "pool"), moves
            continue
        match = _MOVE.fullmatch(line)
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


def step_kind(line: str) -> str:
    """The grammatical kind of one trace line, whatever its arithmetic: ``move``, ``no`` (a ``(no)`` move),
    ``back``, ``answer`` (starts with ``Answer:``) or ``other`` (no step of the grammar)."""
    if line.startswith(ANSWER_PREFIX):
        return "answer"
    if _BACK.fullmatch(line):
        return "back"
    match = _MOVE.fullmatch(line)
    if match is None:
        return "other"
    return "no" if match.group(5) == NO_MARK else "move"


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
