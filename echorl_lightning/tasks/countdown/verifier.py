"""The strict verifier of the Countdown task (:mod:`echorl_lightning.tasks.countdown.problems`).

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
  ``require_valid_trace=True`` a right answer also needs every line of the search before it to be a valid
  step (:func:`~echorl_lightning.tasks.countdown.steps.check_trace`), a process-checked reward: an
  answer-only reward lets RL learn to write a right ``Answer`` line after a broken trace (measured in
  ``experiments/results/countdown_regime.md``).
- :func:`countdown_answer`: the canonical value of the ``Answer`` expression (what maj@k votes on).

The verifiable reward of RLVR: r = 1 for a verified-correct answer. Leaves out partial credit for getting close to the target, and any leniency in the answer line's format.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

from echorl_lightning.rewards.answer_line import answer_line_text
from echorl_lightning.tasks.countdown.problems import parse_reference
from echorl_lightning.tasks.countdown.steps import check_trace

MAX_EXPRESSION_CHARS = 128
MAX_DIGITS = 6
MAX_COMPLETION_CHARS = 4096
_TOKEN = re.compile(r"\s*(?:(0|[1-9][0-9]*)|([-+*/()]))")


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
