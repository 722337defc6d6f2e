"""Multiple-choice (letter) verifier for the out-of-distribution benchmarks: ARC-Challenge, GPQA-Diamond,
MMLU-Pro.

Implements a :class:`~echorl_lightning.data.types.Verifier` that scores 1.0 when the letter a completion
commits to equals the reference letter, else 0.0; a reference that is not one of the allowed letters cannot
be judged (``None``). The committed letter is read by :func:`extract_choice`:

1. If the completion has any complete ``\\boxed{...}``, the LAST one decides: its content, after unwrapping
   ``\\text{}`` / ``\\textbf{}`` / ``\\mathrm{}`` / ``\\mathbf{}`` and one pair of parentheses, must be a single
   allowed upper-case letter (``\\boxed{C}``, ``\\boxed{\\text{C}}``, ``\\boxed{(C)}``); anything else in
   that box (``\\boxed{42}``, ``\\boxed{c}``) is no answer. Earlier boxes and "answer is" phrases are ignored.
2. Otherwise the LAST "answer is (X)" / "answer is X" / "answer: X" phrase decides ("answer"/"is" in any
   case, optional ``**`` bold and parentheses around the letter, the letter followed by no letter or digit),
   and X must be one of the allowed upper-case letters: a last phrase with a lower-case or unknown letter
   ("the answer is (b)") is no answer, even after an earlier valid one.

:meth:`MultipleChoiceVerifier.answer` gives the letter it compares, for maj@k votes.

Left out: answers given as the option's text instead of its letter, lower-case letters, "option C" /
"(C) is correct" phrasings, and LaTeX inline math around the letter outside a box.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

DEFAULT_LETTERS = "ABCDEFGHIJ"  # MMLU-Pro has up to 10 options

_BOX_OPEN = re.compile(r"\\boxed\s*\{")
_BRACE = re.compile(r"[{}]")
_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{(.*)\}", re.DOTALL)
_ANSWER_PHRASE = re.compile(
    r"\b(?i:answer)(?:\s+(?i:is)\s*:?|\s*:)\s*(?:\*\*)?\s*\(?([A-Za-z])\)?(?![A-Za-z0-9])"
)


def _check_letters(letters: str, owner: str) -> None:
    if not letters or not re.fullmatch(r"[A-Z]+", letters) or len(set(letters)) != len(letters):
        raise ValueError(f"{owner}: letters must be distinct upper-case A-Z letters, got {letters!r}")


def _last_box_content(text: str) -> str | None:
    """The content of the last-opened ``\\boxed{...}`` whose braces close, or None if there is none.

    One pass over the braces with a stack (linear even for thousands of unclosed boxes)."""
    box_braces = {opening.end() - 1 for opening in _BOX_OPEN.finditer(text)}
    if not box_braces:
        return None
    stack: list[int] = []
    last: tuple[int, int] | None = None
    for brace in _BRACE.finditer(text):
        position = brace.start()
        if text[position] == "{":
            stack.append(position)
        elif stack:
            start = stack.pop()
            if start in box_braces and (last is None or start > last[0]):
                last = (start, position)
    return None if last is None else text[last[0] + 1 : last[1]]


def _letter_in_box(content: str, letters: str) -> str | None:
    """The single allowed letter that a box's content stands for, unwrapping text macros and parentheses."""
    stripped = content.strip()
    for _ in range(3):  # at most \text{(C)} or (\text{C}) style nesting
        wrapped = _WRAPPER.fullmatch(stripped)
        if wrapped is not None:
            stripped = wrapped.group(1).strip()
        elif len(stripped) >= 2 and stripped[0] == "(" and stripped[-1] == ")":
            stripped = stripped[1:-1].strip()
    return stripped if len(stripped) == 1 and stripped in letters else None


def extract_choice(text: str, letters: str = DEFAULT_LETTERS) -> str | None:
    """The option letter ``text`` commits to (last box first, else the last "answer is X" phrase), or None.

    Args:
        text: a completion.
        letters: the allowed option letters, upper case (e.g. ``"ABCD"``).
    """
    _check_letters(letters, "extract_choice")
    box = _last_box_content(text)
    if box is not None:
        return _letter_in_box(box, letters)
    phrases = _ANSWER_PHRASE.findall(text)
    if not phrases:
        return None
    return phrases[-1] if phrases[-1] in letters else None


def format_choices(question: str, options: Sequence[str], letters: str = DEFAULT_LETTERS) -> str:
    """Render a question and its options as ``"<question>\\n\\n(A) <opt1>\\n(B) <opt2>..."``.

    Args:
        question: the question text.
        options: the option texts, in letter order (1 to ``len(letters)`` of them).
        letters: the option letters to use, upper case.
    """
    _check_letters(letters, "format_choices")
    if not 1 <= len(options) <= len(letters):
        raise ValueError(
            f"format_choices: need 1 to {len(letters)} options for letters {letters!r}, got {len(options)}"
        )
    lines = [f"({letter}) {option}" for letter, option in zip(letters, options, strict=False)]
    return question + "\n\n" + "\n".join(lines)


class MultipleChoiceVerifier:
    """Letter verifier: 1.0 when the committed letter equals the reference, 0.0 when it differs or none is
    found, None when the reference is not one of ``letters``.

    Args:
        letters: the allowed option letters, upper case; a completion's letter outside them scores 0.0.
    """

    def __init__(self, letters: str = DEFAULT_LETTERS) -> None:
        _check_letters(letters, "MultipleChoiceVerifier")
        self.letters = letters

    def __call__(self, completions: Sequence[str], references: Sequence[str]) -> list[float | None]:
        if len(completions) != len(references):
            raise ValueError(
                f"MultipleChoiceVerifier: {len(completions)} completions but {len(references)} references"
            )
        scores: list[float | None] = []
        for completion, reference in zip(completions, references, strict=True):
            expected = reference.strip()
            if len(expected) != 1 or expected not in self.letters:
                scores.append(None)
                continue
            scores.append(1.0 if extract_choice(completion, self.letters) == expected else 0.0)
        return scores

    def answer(self, completion: str) -> str | None:
        """The option letter this verifier compares with the reference (maj@k votes on it), or None when the
        completion commits to no allowed letter (:func:`extract_choice` with this verifier's letters)."""
        return extract_choice(completion, self.letters)
