"""The answers verifiers hand to maj@k: math answers by string rules, and that maj@k votes on what the
verifier reads (unboxed answers the math verifier accepts get a vote). The math verifier runs for real."""

from __future__ import annotations

import time

import pytest

from echorl_lightning.data.answers import extract_boxed
from echorl_lightning.eval.metrics import majority_correct
from echorl_lightning.rewards.exact_match import ExactMatchVerifier
from echorl_lightning.rewards.math_answer import boxed_contents, extract_math_answer, normalise_math_answer
from echorl_lightning.rewards.math_verify import MathVerifier
from echorl_lightning.rewards.multiple_choice import MultipleChoiceVerifier


@pytest.fixture(scope="module")
def verifier() -> MathVerifier:
    with MathVerifier(timeout_s=3.0, num_workers=2) as v:
        yield v


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            " \\left( \\dfrac{1}{2}, 3 \\right). ",
            "(\\frac{1}{2},3)",
        ),  # spaces, \left/\right, \dfrac, full stop
        ("\\tfrac{3}{4}", "\\frac{3}{4}"),
        ("x^2 + 1", "x^2+1"),
        ("1,234", "1234"),  # thousands separators
        ("1,234.50", "1234.5"),  # ... and a trailing zero
        ("12.000", "12"),  # 12.000 -> 12. -> 12
        ("-0.50", "-0.5"),
        ("(1,2)", "(1,2)"),  # a pair, not thousands: kept
        ("3\\,\\!\\;\\ 4", "34"),  # LaTeX spacing commands dropped
        ("$\\displaystyle 5$", "5"),
        ("\\rightarrow", "\\rightarrow"),  # \right only as a whole command
    ],
)
def test_normalise(text: str, expected: str) -> None:
    assert normalise_math_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\boxed{1} and \\boxed{\\frac{2}{3}}", ["1", "\\frac{2}{3}"]),  # nested braces, in order
        ("\\boxed {5}", ["5"]),  # space before the brace
        ("\\boxed{\\{1, 2\\}}", ["\\{1, 2\\}"]),  # escaped braces are literal
        ("\\boxed{\\boxed{3}}", ["3"]),  # a box holding a box: the inner one
        ("\\boxed{7", []),  # never closes
        ("}{ \\boxed{ \\boxed{1}", ["1"]),  # the outer box never closes, the inner one does
        ("no box at all", []),
    ],
)
def test_boxed_contents(text: str, expected: list[str]) -> None:
    assert boxed_contents(text) == expected


@pytest.mark.parametrize(
    ("completion", "free", "boxed"),
    [
        # completion, answer with require_boxed=False, answer with require_boxed=True
        ("so $x = \\boxed{\\dfrac{1}{2}}$.", "\\frac{1}{2}", "\\frac{1}{2}"),  # the box, normalised
        ("\\boxed{3} then \\boxed{ 3 }", "3", "3"),  # equal boxes are one answer
        ("\\boxed{2} or maybe \\boxed{3}", "2,3", "2,3"),  # a hedge is its own answer (scored 0)
        ("The final answer is 7. Check: 7 + 1 = 8", "7", None),  # "final answer is" beats a later number
        ("Answer: $-12$ (since 3 - 15 = -12)", "-12", None),  # the answer after "answer"
        ("the answer is \\(\\frac{3}{4}\\).", "\\frac{3}{4}", None),
        ("Adding them gives 1,234.", "1234", None),  # otherwise the last number
        ("so it is $$x^2 + 1$$", "x^2+1", None),  # or the last LaTeX environment
        ("I am not sure.", None, None),
        ("", None, None),
    ],
)
def test_extract_math_answer(completion: str, free: str | None, boxed: str | None) -> None:
    assert extract_math_answer(completion) == free
    assert extract_math_answer(completion, require_boxed=True) == boxed


def test_answers_of_accepted_completions_agree(verifier: MathVerifier) -> None:
    # Every spelling below is judged correct against "12" by math-verify, boxed or not; the string rules
    # must reduce each to the same vote "12".
    accepted = [
        "\\boxed{12}",
        "$\\boxed{12.0}$",
        "The final answer is 12",
        "Answer: $12$.",
        "So 5 + 7 = 12.",
        "so the total is \\( 12 \\)",
        "\\left. 12 \\right. is \\boxed{ 12 }",
    ]
    assert verifier(accepted, ["12"] * len(accepted)) == [1.0] * len(accepted)
    assert [verifier.answer(text) for text in accepted] == ["12"] * len(accepted)


def test_unboxed_answers_the_verifier_accepts_get_a_vote(verifier: MathVerifier) -> None:
    # One prompt, k = 5 samples, reference 12: three right but unboxed, two wrong and boxed.
    samples = ["The final answer is 12", "Answer: $12$", "so we get 12.", "\\boxed{13}", "\\boxed{14}"]
    scores = verifier(samples, ["12"] * 5)
    assert scores == [1.0, 1.0, 1.0, 0.0, 0.0]
    # Voting on boxes: [None, None, None, "13", "14"]; "13" wins the 1-1 tie as the first seen, scored 0.
    assert majority_correct([extract_boxed(s) for s in samples], scores) == 0.0
    # Voting on what the verifier reads: "12" x3, "13", "14"; "12" wins, and its first sample scored 1.
    votes = [verifier.answer(s) for s in samples]
    assert votes == ["12", "12", "12", "13", "14"]
    assert majority_correct(votes, scores) == 1.0


def test_require_boxed_answers_only_boxes(verifier: MathVerifier) -> None:
    boxed = MathVerifier(require_boxed=True)  # answer() needs no workers: none are started
    samples = ["The final answer is 12", "\\boxed{12}", "answer: 12"]
    assert [boxed.answer(s) for s in samples] == [None, "12", None]
    assert [verifier.answer(s) for s in samples] == ["12", "12", "12"]
    assert boxed._pool._workers == []


def test_answer_is_linear_on_hostile_text() -> None:
    # Openers without closers are the quadratic case of a lazy regex; 60k characters each must stay fast
    # (a quadratic scan of these takes minutes).
    hostile = [
        "\\[" * 30_000,
        "\\(" * 30_000,
        "$" * 60_000,
        "answer " * 9_000,
        "\\boxed{" * 9_000,
        "1+" * 30_000,
    ]
    start = time.monotonic()
    for text in hostile:
        extract_math_answer(text)
    assert time.monotonic() - start < 10.0


def test_exact_match_and_multiple_choice_answers() -> None:
    exact = ExactMatchVerifier()
    assert [exact.answer(t) for t in ["8*3=24\nAnswer: 24", "Answer: 024", "Answer: -7\n\n"]] == [
        "24",
        None,
        "-7",
    ]
    choice = MultipleChoiceVerifier(letters="ABCD")
    samples = ["The answer is (B).", "\\boxed{\\text{B}}", "Answer: E", "\\boxed{C}"]
    assert [choice.answer(t) for t in samples] == ["B", "B", None, "C"]  # E is not one of ABCD
    # the votes are what the verifier compares: B twice wins, and B is what scores 1 against "B"
    assert choice(samples, ["B"] * 4) == [1.0, 1.0, 0.0, 0.0]
    assert majority_correct([choice.answer(t) for t in samples], [1.0, 1.0, 0.0, 0.0]) == 1.0
