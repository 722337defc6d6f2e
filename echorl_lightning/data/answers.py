"""Turning a dataset's answer column into a verifier reference (pure string functions).

Two formats besides a raw answer, as used by the math sets of EchoRL and its baselines:

* ``boxed``: a worked solution whose final answer is the LAST ``\\boxed{...}`` (or ``\\fbox{...}``), with
  nested braces (``\\boxed{\\frac{1}{2}}``) handled by brace matching, not a regex;
* ``gsm8k``: a GSM8K solution ending in ``#### 1,234``; the reference is the text after the last ``####``
  with thousands separators removed.

:func:`to_reference` applies one of the formats (or ``raw``: the stripped text) to an answer cell's text.

Left out: the unbraced ``\\boxed 5`` form, and any normalisation of the answer itself (units, ``\\text``,
dollar signs): math-verify does that when comparing.
"""

from __future__ import annotations

import re
from typing import Literal

AnswerFormat = Literal["raw", "boxed", "gsm8k"]
ANSWER_FORMATS: tuple[AnswerFormat, ...] = ("raw", "boxed", "gsm8k")

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")


def _balanced_content(text: str, start: int) -> str | None:
    """The text between ``text[start - 1] == "{"`` and its matching ``}``, or None if it never closes.

    A backslash escapes the next character, so ``\\{`` and ``\\}`` (literal braces in LaTeX) do not count.
    """
    depth = 1
    i = start
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
        i += 1
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``, stripped.

    Boxes are tried from the last one backwards; one whose braces never close is passed over. None when
    there is no complete box. Nested boxes (``\\boxed{\\boxed{3}}``) give the innermost, the last to open.
    """
    for match in reversed(list(_BOX_OPEN.finditer(text))):
        content = _balanced_content(text, match.end())
        if content is not None:
            return content.strip()
    return None


def extract_gsm8k(text: str) -> str | None:
    """The answer after the last ``####`` of a GSM8K solution, commas removed; None if absent or empty.

    Example: ``"... so 1,200 + 34 = 1,234.\\n#### 1,234"`` -> ``"1234"``.
    """
    marker = text.rfind("####")
    if marker < 0:
        return None
    answer = text[marker + 4 :].strip().split("\n", 1)[0].replace(",", "").strip()
    return answer or None


def to_reference(answer: str | None, answer_format: AnswerFormat) -> str | None:
    """The verifier reference of an answer cell's text (None in, None out), or None when none can be
    extracted: ``raw`` strips the text, ``boxed`` takes the last ``\\boxed{}``, ``gsm8k`` the text after ``####``."""
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {list(ANSWER_FORMATS)}, got {answer_format!r}")
    if answer is None:
        return None
    if answer_format == "raw":
        reference: str | None = answer.strip()
    elif answer_format == "boxed":
        reference = extract_boxed(answer)
    else:
        reference = extract_gsm8k(answer)
    return reference or None
