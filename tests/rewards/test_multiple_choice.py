"""The multiple-choice (letter) verifier, its extractor and the option formatter."""

from __future__ import annotations

import pytest

from echorl_lightning.data.types import Verifier
from echorl_lightning.rewards.multiple_choice import MultipleChoiceVerifier, extract_choice, format_choices


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so the result is \boxed{C}", "C"),  # plain box
        (r"\boxed{\text{B}}", "B"),  # text-boxed
        (r"\boxed{\textbf{B}}", "B"),
        (r"\boxed{(D)}", "D"),  # parenthesised letter in the box
        (r"\boxed{ \text{(D)} }", "D"),
        (r"$\boxed {A}$", "A"),  # space before the brace
        ("The answer is (C).", "C"),
        ("The answer is C", "C"),
        ("Answer: B", "B"),
        ("**Answer:** B", "B"),  # markdown bold
        ("THE ANSWER IS: (E)", "E"),  # "answer"/"is" are case-insensitive, the letter is not
        ("the correct answer is (A), since ...", "A"),
        (r"\boxed{c}", None),  # lower-case letter in the box
        ("The answer is (c).", None),  # lower-case letter in a phrase
        ("The answer is Carbon.", None),  # a word, not a letter
        ("The answer is (K).", None),  # upper case but not an option letter
        (r"\boxed{K}", None),
        (r"\boxed{42}", None),  # a box that is not a letter: no answer, no fallback to phrases
        (r"The answer is (B). \boxed{\frac{1}{2}}", None),
        (r"\boxed{CD}", None),  # two letters
        ("", None),  # empty
        ("asdf }{ (( \\boxed{ garbage", None),  # garbage, an unclosed box
        ("I am not sure.", None),
    ],
)
def test_extract_choice(text: str, expected: str | None) -> None:
    assert extract_choice(text, "ABCDEFGHIJ") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"\boxed{A} then on reflection \boxed{C}", "C"),  # the last box wins
        (r"The answer is (A). Wait: \boxed{B}", "B"),  # a box beats any phrase
        (r"\boxed{B} but the answer is (A)", "B"),  # ... wherever the phrase is
        ("The answer is (A). Hmm, no. The answer is (D).", "D"),  # the last phrase wins
        ("Answer: A\nActually the answer is (b).", None),  # the last phrase is lower case: no answer
        (r"\boxed{A} and an unclosed \boxed{C", "A"),  # the last COMPLETE box
        (r"\boxed{\boxed{C}}", "C"),
    ],
)
def test_last_answer_wins(text: str, expected: str | None) -> None:
    assert extract_choice(text) == expected


def test_letters_restrict_the_options() -> None:
    assert extract_choice(r"\boxed{E}", "ABCDE") == "E"
    assert extract_choice(r"\boxed{E}", "ABCD") is None  # E is not an option of a 4-choice question
    assert extract_choice("The answer is E", "ABCD") is None
    with pytest.raises(ValueError, match="distinct upper-case"):
        extract_choice("Answer: A", "abcd")
    with pytest.raises(ValueError, match="distinct upper-case"):
        MultipleChoiceVerifier(letters="AAB")


def test_many_unclosed_boxes_is_linear() -> None:
    # 20k unclosed boxes after a valid one: a quadratic scan would take minutes; the answer is the closed box.
    assert extract_choice(r"\boxed{B}" + r"\boxed{" * 20_000) == "B"


def test_verifier_scores() -> None:
    verifier = MultipleChoiceVerifier(letters="ABCD")
    completions = [
        r"\boxed{C}",
        "The answer is (B)",
        "no idea",
        r"\boxed{E}",
        r"\boxed{A}",
        r"\boxed{A}",
        "x",
    ]
    references = ["C", "C", "A", "E", " A ", "a", "AB"]
    # right, wrong, no prediction, reference E is not among ABCD (None), surrounding spaces stripped,
    # lower-case reference (None), two-letter reference (None)
    assert verifier(completions, references) == [1.0, 0.0, 0.0, None, 1.0, None, None]
    assert isinstance(verifier, Verifier)


def test_verifier_length_mismatch() -> None:
    with pytest.raises(ValueError, match="2 completions but 1 references"):
        MultipleChoiceVerifier()(["a", "b"], ["A"])


def test_format_choices() -> None:
    text = format_choices("Which is a noble gas?", ["Neon", "Iron", "Carbon"], letters="ABCD")
    assert text == "Which is a noble gas?\n\n(A) Neon\n(B) Iron\n(C) Carbon"
    with pytest.raises(ValueError, match="need 1 to 2 options"):
        format_choices("Q", ["x", "y", "z"], letters="AB")
    with pytest.raises(ValueError, match="got 0"):
        format_choices("Q", [])


def test_format_then_verify_round_trip() -> None:
    prompt = format_choices("2 + 2 = ?", ["3", "4"], letters="AB")
    assert "(B) 4" in prompt
    assert MultipleChoiceVerifier("AB")(["Since 2 + 2 = 4, the answer is (B)."], ["B"]) == [1.0]
