"""The strict ``Answer: <int>`` verifier of the arithmetic task."""

from __future__ import annotations

import pytest

from echorl_lightning.data.types import Verifier
from echorl_lightning.rewards.exact_match import ExactMatchVerifier, extract_answer

SOLUTION = "8*3=24\n47+24=71\n71-12=59\nAnswer: 59"


@pytest.mark.parametrize(
    ("completion", "reference", "expected"),
    [
        (SOLUTION, "59", 1.0),  # right answer after the steps
        ("Answer: 59", "59", 1.0),  # steps are not checked, only the final line
        ("8*3=24\nAnswer: 59\n\n", "59", 1.0),  # trailing blank lines are not the last non-empty line
        (SOLUTION, "60", 0.0),  # wrong answer
        ("Answer: 059", "59", 0.0),  # leading zero
        ("Answer: 00", "0", 0.0),  # leading zero on zero
        ("Answer: +59", "59", 0.0),  # explicit plus sign
        ("Answer: 59 ", "59", 0.0),  # trailing space inside the line
        ("Answer:  59", "59", 0.0),  # two spaces
        ("answer: 59", "59", 0.0),  # wrong case
        ("Answer: 59.0", "59", 0.0),  # not an integer
        (SOLUTION + "\n71-12=59", "59", 0.0),  # garbage line after the answer line
        (SOLUTION + "x", "59", 0.0),  # garbage on the answer line
        ("8*3=24\n47+24=71\n71-12=59", "59", 0.0),  # no answer line
        ("", "59", 0.0),  # empty completion
        ("12-47=-35\nAnswer: -35", "-35", 1.0),  # negative answer
        ("Answer: -35", "35", 0.0),  # sign matters
        ("Answer: 35", "-35", 0.0),
        ("Answer: -0", "0", 0.0),  # -0 is not canonical
        ("Answer: 0", "0", 1.0),
        ("Answer: 59", " 059 ", 1.0),  # the reference is canonicalised, the completion is not
    ],
)
def test_scores(completion: str, reference: str, expected: float) -> None:
    assert ExactMatchVerifier()([completion], [reference]) == [expected]


def test_batch_order_and_unjudgeable_reference() -> None:
    verifier = ExactMatchVerifier()
    scores = verifier(["Answer: 1", "Answer: 2", "Answer: 3"], ["1", "3", "three"])
    assert scores == [1.0, 0.0, None]  # a non-integer reference cannot be judged


def test_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="2 completions but 1 references"):
        ExactMatchVerifier()(["Answer: 1", "Answer: 2"], ["1"])


def test_extract_answer_and_protocol() -> None:
    assert extract_answer(SOLUTION) == "59"
    assert extract_answer("Answer: -7\n") == "-7"
    assert extract_answer("Answer: 07") is None
    assert isinstance(ExactMatchVerifier(), Verifier)
