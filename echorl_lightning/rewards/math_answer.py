"""The answer a math completion states, as a normalised string, by pure string rules (no sympy).

Implements what :meth:`~echorl_lightning.rewards.math_verify.MathVerifier.answer` returns for maj@k voting
(reported beside avg@k and pass@k): the same places the verifier's math-verify extraction reads, in the same
order of preference, cut down to what a regex can tell:

1. every complete ``\\boxed{...}`` (brace matching, ``\\{`` escapes skipped); several boxes with different
   contents form one answer ``"a,b"`` in order of appearance, as math-verify reads them as a set (a hedge);
2. with ``require_boxed`` nothing else: no box, no answer;
3. otherwise the answer after the last "final answer ... is";
4. otherwise the answer within 50 characters after the last "answer" (``Answer: 5``, "the answer is $5$");
5. otherwise the last answer-like token of the text.

An answer-like token is the content of a LaTeX environment (``$$..$$``, ``\\[..\\]``, ``$..$``,
``\\(..\\)``), a bare ``\\frac{a}{b}``, or a number or simple arithmetic expression (``-12``, ``1,234.5``,
``3/4``). :func:`normalise_math_answer` makes spellings of one answer equal: no spaces, no ``\\left`` /
``\\right`` / ``\\displaystyle`` / spacing commands, ``\\dfrac`` and ``\\tfrac`` as ``\\frac``, no trailing
full stop, no thousands separators, no trailing zeros after a decimal point.

Left out: anything that needs parsing (``0.5`` and ``\\frac{1}{2}`` stay different strings, as do ``x^2+1``
and ``1+x^2``), units and ``\\text{}``, percentages, and math-verify's fallback from a box that does not parse
to the text around it (the box's content is the answer here).
"""

from __future__ import annotations

import bisect
import re

_BOX_OPEN = re.compile(r"\\boxed\s*\{")
_FINAL_ANSWER = re.compile(r"(?i:final answer).{0,100}?\s+is:?\s*")
_ANSWER_WORD = re.compile(r"(?i:answer)")
_ANSWER_WINDOW = 50  # characters after "answer" in which its answer must start
_NUMBER = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+"
_ENV_CHARS = 400  # longest LaTeX environment read: bounds the regex work per position (no quadratic scan)
_TOKEN = re.compile(
    rf"\$\$(?P<display>.{{1,{_ENV_CHARS}}}?)\$\$"
    rf"|\\\[(?P<bracket>.{{1,{_ENV_CHARS}}}?)\\\]"
    rf"|(?<![\\$])\$(?P<inline>[^$\n]{{1,{_ENV_CHARS}}}?)\$"
    rf"|\\\((?P<paren>.{{1,{_ENV_CHARS}}}?)\\\)"
    r"|(?P<frac>-?\\[dt]?frac\{\d+\}\{\d+\})"
    rf"|(?<![\w.])(?P<expr>(?:{_NUMBER})(?:\s*[-+*/^]\s*(?:{_NUMBER}))*)",
    re.DOTALL,
)
_BRACE_OR_ESCAPE = re.compile(r"\\.|[{}]", re.DOTALL)  # an escape (\\{ is a literal brace) or a brace
_DROP = re.compile(r"\\left(?![a-zA-Z])|\\right(?![a-zA-Z])|\\displaystyle|\\[,;:! ]|\s+")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_DECIMAL = re.compile(r"-?\d*\.\d+")


def boxed_contents(text: str) -> list[str]:
    """The contents of every complete ``\\boxed{...}`` of ``text`` that holds no box itself, in order of
    their opening brace; a box whose braces never close is left out.

    One pass over the braces with a stack, so thousands of unclosed boxes stay linear."""
    openings = {match.end() - 1 for match in _BOX_OPEN.finditer(text)}
    if not openings:
        return []
    stack: list[int] = []
    spans: list[tuple[int, int]] = []
    for brace in _BRACE_OR_ESCAPE.finditer(text):
        char = brace.group()
        if char == "{":
            stack.append(brace.start())
        elif char == "}" and stack:
            start = stack.pop()
            if start in openings:
                spans.append((start, brace.start()))
    contents = [text[start + 1 : end] for start, end in sorted(spans)]
    return [content for content in contents if _BOX_OPEN.search(content) is None]


def normalise_math_answer(answer: str) -> str:
    """``answer`` with spellings that cannot change its value made equal (see the module docstring).

    Example: ``" \\left( \\dfrac{1}{2}, 3 \\right). "`` -> ``"(\\frac{1}{2},3)"``; ``"1,234.50"`` -> ``"1234.5"``.
    """
    text = _DROP.sub("", answer)
    text = re.sub(r"\\[dt]frac(?![a-zA-Z])", r"\\frac", text)
    text = text.strip("$").rstrip(".")
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    if _DECIMAL.fullmatch(text):
        text = text.rstrip("0").rstrip(".") or "0"
    return text


def _token_text(match: re.Match[str]) -> str:
    return next(value for value in match.groupdict().values() if value is not None)


def _anchored_token(tokens: list[re.Match[str]], anchors: list[re.Match[str]], window: int) -> str | None:
    """The first token starting within ``window`` characters after the last anchor that has one.

    Args:
        tokens: the text's answer tokens, left to right (``_TOKEN.finditer``).
        anchors: the anchor matches, left to right.
        window: the most characters between an anchor's end and its token's start.
    """
    starts = [token.start() for token in tokens]
    for anchor in reversed(anchors):
        i = bisect.bisect_left(starts, anchor.end())
        if i < len(tokens) and starts[i] - anchor.end() <= window:
            return _token_text(tokens[i])
    return None


def extract_math_answer(completion: str, require_boxed: bool = False) -> str | None:
    """The normalised answer ``completion`` states (rules 1-5 of the module docstring), or None.

    Args:
        completion: a model completion.
        require_boxed: only boxed answers count (what ``MathVerifier(require_boxed=True)`` judges).
    """
    boxes = [normalise_math_answer(box) for box in boxed_contents(completion)]
    boxes = [box for box in boxes if box]
    if boxes:
        return ",".join(dict.fromkeys(boxes))  # distinct contents, in order of appearance
    if require_boxed:
        return None
    tokens = list(_TOKEN.finditer(completion))
    answer = _anchored_token(tokens, list(_FINAL_ANSWER.finditer(completion)), window=0)
    if answer is None:
        answer = _anchored_token(tokens, list(_ANSWER_WORD.finditer(completion)), _ANSWER_WINDOW)
    if answer is None and tokens:
        answer = _token_text(tokens[-1])
    if answer is None:
        return None
    return normalise_math_answer(answer) or None
