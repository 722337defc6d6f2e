"""The strict final-answer verifier of the embedded arithmetic task.

Implements a :class:`~echorl_lightning.data.types.Verifier` that scores 1.0 when the LAST non-empty line of a
completion is exactly ``Answer: <int>`` in canonical integer form (optional ``-``, no leading zeros, no ``+``,
no spaces or other characters anywhere in the line) and that integer equals the reference, else 0.0. A
reference that is not an integer cannot be judged (``None``). :meth:`ExactMatchVerifier.answer` gives the
integer it compares, for maj@k votes. The verifiable reward of RLVR: r = 1 for a verified-correct final
answer, 0 otherwise.

Leaves out any leniency on purpose: a lenient ``int()`` check let format drift (leading zeros, ``+5``,
trailing spaces) through, which RL then amplifies. Leaves out symbolic/LaTeX answers (use math-verify for
those).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from echorl_lightning.rewards.answer_line import answer_line_text

_CANONICAL_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")


def extract_answer(completion: str) -> str | None:
    """The canonical integer on the completion's last non-empty line, or None when that line is not exactly
    ``Answer: <canonical int>`` (``-0`` is not canonical; the line is read by :func:`answer_line_text`)."""
    text = answer_line_text(completion)
    if text is None or _CANONICAL_INT.fullmatch(text) is None or text == "-0":
        return None
    return text


def canonical_int(text: str) -> str | None:
    """``text`` (surrounding whitespace allowed) as a canonical integer string, or None if not an integer."""
    stripped = text.strip()
    if not re.fullmatch(r"[-+]?[0-9]+", stripped):
        return None
    return str(int(stripped))


class ExactMatchVerifier:
    """Strict ``Answer: <int>`` verifier: 1.0 right, 0.0 wrong or malformed, None for a non-integer
    reference."""

    def __call__(self, completions: Sequence[str], references: Sequence[str]) -> list[float | None]:
        if len(completions) != len(references):
            raise ValueError(
                f"ExactMatchVerifier: {len(completions)} completions but {len(references)} references"
            )
        scores: list[float | None] = []
        for completion, reference in zip(completions, references, strict=True):
            expected = canonical_int(reference)
            if expected is None:
                scores.append(None)
                continue
            scores.append(1.0 if extract_answer(completion) == expected else 0.0)
        return scores

    def answer(self, completion: str) -> str | None:
        """The canonical integer this verifier compares with the reference (maj@k votes on it), or None
        when the last non-empty line is not exactly ``Answer: <canonical int>``."""
        return extract_answer(completion)
