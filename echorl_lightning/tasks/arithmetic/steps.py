"""The step checker of the arithmetic task (pure Python, no torch).

Implements :func:`parse_expression` (the operands and operators of a prompt ``"Q: 47+8*3-12\\n"``),
:func:`check_steps` (every ``a op b=c`` line of a completion is correct arithmetic and a legal reduction of
the expression, and an ``Answer`` line gives the fully reduced value) and :class:`ArithmeticStepChecker`, the
:class:`~echorl_lightning.data.types.StepChecker` of the task. The answer itself is scored by the strict
:class:`~echorl_lightning.rewards.exact_match.ExactMatchVerifier`. Leaves out partial credit: one wrong
line makes the whole completion invalid.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from echorl_lightning.data.types import PromptExample
from echorl_lightning.rewards.answer_line import ANSWER_PREFIX
from echorl_lightning.tasks.arithmetic.problems import PROMPT_PREFIX

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
