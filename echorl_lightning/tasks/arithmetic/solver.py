"""The worked solution of an arithmetic expression (pure Python, no torch).

Implements :func:`solve`: one ``a op b=c`` line per operation, multiplications first (left to right), then
additions and subtractions (left to right), and the expression's value. The generator
(:func:`~echorl_lightning.tasks.arithmetic.problems.make_problem`) writes these lines as the expert solution;
the step checker (:mod:`echorl_lightning.tasks.arithmetic.steps`) accepts any other legal order too. Leaves out
division, parentheses and exponentiation (the task has none).
"""

from __future__ import annotations


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
