"""The Countdown verifier (safe parser, exact arithmetic, number multiset) and its step checker."""

from __future__ import annotations

import pytest

from echorl_lightning.data.types import PromptExample
from echorl_lightning.tasks.countdown.steps import (
    STEP_FAULTS,
    CountdownStepChecker,
    check_trace,
    first_invalid_step,
)
from echorl_lightning.tasks.countdown.verifier import CountdownVerifier, ExpressionError, parse_expression
from experiments.countdown_traces import first_repeated_move, step_kind

REF = "25 5 3 7 -> 27"


def test_parser_values_are_exact() -> None:
    # precedence and left associativity: 25-5+7 = 27, (25-5)*3 = 60, 25-5*3 = 10, 7*3/... exact
    assert parse_expression("25-5+7") == (27, [25, 5, 7])
    assert parse_expression("(25-5)*3") == (60, [25, 5, 3])
    assert parse_expression("25-5*3") == (10, [25, 5, 3])
    assert parse_expression("25/5*3") == (15, [25, 5, 3])  # (25/5)*3, not 25/(5*3)
    assert parse_expression(" 7 + ( 5 ) ") == (12, [7, 5])
    assert parse_expression("9") == (9, [9])


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("7/0", "division by zero"),
        ("5-5", "not a positive integer"),  # zero is not positive
        ("3-5+9", "not a positive integer"),  # 3-5 = -2 on the way, even though the total is 7
        ("7/2*2", "not a positive integer"),  # 7/2 = 3.5 on the way
        ("2**99", "expected a number"),  # exponents are not in the grammar
        ("-5+9", "expected a number"),  # no unary minus
        ("(25-5", "unexpected end"),
        ("25-5)", "after the expression"),
        ("()", "expected a number"),
        ("007+1", "after the expression"),  # leading zeros are not numbers of the grammar
        ("1234567+1", "more than 6 digits"),
        ("__import__('os')", "unexpected character"),
        ("1+" * 70 + "1", "longer than"),
        ("", "empty"),
    ],
)
def test_parser_rejects_hostile_and_broken_input(text: str, why: str) -> None:
    with pytest.raises(ExpressionError, match=why):
        parse_expression(text)


def test_verifier_scores() -> None:
    verify = CountdownVerifier()
    completions = [
        "25-5=20\n20+7=27\nAnswer: 25-5+7",  # right
        "Answer: 25+7-5",  # right without any step (the verifier judges only the answer)
        "Answer: (25-5)*3",  # 60, not 27
        "Answer: 25+25-23",  # 25 used twice and 23 not given
        "Answer: 5*5+7-5",  # 5 used twice: only one 5 is given
        "Answer: 25-5+7\nmore text",  # the Answer line must be the last one
        "Answer:25-5+7",  # the space after the colon is part of the format
        "Answer: 7/0+27",  # division by zero scores 0, it does not raise
        "Answer: 25-5+7" + "\n" * 5000,  # over the length cap
    ]
    assert verify(completions, [REF] * len(completions)) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert verify(["Answer: 5+5"], ["5 5 -> 10"]) == [1.0]  # a repeated given number may be used twice
    assert verify(["Answer: 1"], ["not a reference"]) == [None]
    with pytest.raises(ValueError, match="2 completions but 1 references"):
        verify(["a", "b"], [REF])


def test_verifier_requiring_a_valid_trace() -> None:
    # The process-checked reward: a right Answer scores 1 only after a trace whose every line is a valid step.
    verify = CountdownVerifier(require_valid_trace=True)
    completions = [
        "25-5=20 [20 3 7 -> 27]\n20+7=27 [27 3 -> 27]\nAnswer: 25-5+7",  # right answer, valid trace: 1
        "25-5=21 [21 3 7 -> 27]\n20+7=27 [27 3 -> 27]\nAnswer: 25-5+7",  # right answer, 25-5=21 on line 0: 0
        "Answer: 25+7-5",  # right answer, no step before it (Answer after no hit): 0
        "25-5=20 [20 3 7 -> 27]\n20*3=60 [60 7 -> 27]\nAnswer: (25-5)*3",  # valid steps, wrong answer (60): 0
    ]
    assert verify(completions, [REF] * 4) == [1.0, 0.0, 0.0, 0.0]
    assert CountdownVerifier()(completions, [REF] * 4) == [1.0, 1.0, 1.0, 0.0]  # the answer-only default
    assert verify(["Answer: 1"], ["not a reference"]) == [None]


def test_trace_checked_verifier_selected_from_yaml(tmp_path) -> None:
    from echorl_lightning.cli import main

    verifier = '{"class_path": "echorl_lightning.tasks.countdown.CountdownVerifier", "init_args": {"require_valid_trace": true}}'
    cli = main(
        args=[
            "--config",
            "configs/countdown_demo.yaml",
            f"--data.init_args.verifier={verifier}",
            f"--trainer.default_root_dir={tmp_path}",
        ],
        run=False,
    )
    assert (
        isinstance(cli.datamodule.verifier, CountdownVerifier) and cli.datamodule.verifier.require_valid_trace
    )


def test_step_checker_valid_trace() -> None:
    # pool {25, 5, 3, 7}: 25-5=20 -> {20, 3, 7}; 20*3=60 -> {60, 7}; 60+7=67 (no) tried, not applied, pool
    # still {60, 7}; back -> {20, 3, 7}; back -> {25, 5, 3, 7}; 25+5=30 -> {30, 3, 7}; 30-3=27 -> {27, 7}
    # reaches the target; Answer follows it. Each line's [pool] is the multiset after it (order free).
    trace = (
        "25-5=20 [20 3 7]\n20*3=60 [60 7]\n60+7=67 (no) [60 7]\nback [20 3 7]\nback [25 5 3 7]\n"
        "25+5=30 [30 3 7]\n30-3=27 [27 7]\nAnswer: 25+5-3"
    )
    assert check_trace(trace, [25, 5, 3, 7], 27) is True
    assert check_trace("25-5=20 [3 20 7]\n20+7=27 [3 27]", [25, 5, 3, 7], 27) is True  # no Answer yet
    # the generator's format writes the target after each pool; with or without it a line is checked the same
    with_target = trace.replace("]", " -> 27]")
    assert "[20 3 7 -> 27]" in with_target and check_trace(with_target, [25, 5, 3, 7], 27) is True


@pytest.mark.parametrize(
    ("trace", "fault"),
    [
        ("25-5=21 [21 3 7]\n21+6=27 [27 3 7]\nAnswer: 25-5+6", "wrong arithmetic: 25-5 is 20"),
        (
            "25-5=20 [20 3 7]\n20+5=25 (no) [20 3 7]\n20+7=27 [27 3]\nAnswer: 25-5+7",
            "5 was used by the first move",
        ),
        ("25-5=20 [20 3 7]\nback [25 5 3 7]\n20+7=27 [27 25 5 3]\nAnswer: 25-5+7", "20 was undone by back"),
        ("back [25 5 3 7]\n25-5=20 [20 3 7]\n20+7=27 [27 3]\nAnswer: 25-5+7", "back with nothing to undo"),
        ("3-7=4 [4 25 5]\n25-4=21 (no) [4 25 5]\nAnswer: 25", "7-3 written backwards: 3-7 is not 4"),
        ("7/3=2 (no) [25 5 3 7]\n25-5=20 [20 3 7]\n20+7=27 [27 3]\nAnswer: 25-5+7", "inexact division"),
        ("25-5=20 [20 3 7]\n20+7=27 (no) [20 3 7]\nAnswer: 25-5+7", "(no) on a move that reaches the target"),
        ("25-5=20 [20 3 7]\n20*3=60 [60 7]\nAnswer: 25-5+7", "Answer not right after reaching the target"),
        ("25-5=20 [20 3 7]\nI think 20+7=27 [27 3]\nAnswer: 25-5+7", "a line that is no step"),
        ("25 - 5 = 20 [20 3 7]\n20+7=27 [27 3]\nAnswer: 25-5+7", "spaces are not in the step grammar"),
        ("25-5=20\n20+7=27\nAnswer: 25-5+7", "the pool is part of every move line"),
        ("25-5=20 [20 3 8]\n20+7=27 [27 3]\nAnswer: 25-5+7", "written pool: 8 is not in it, 7 is"),
        ("25-5=20 [20 3 7]\n20+7=27 [27 3 3]\nAnswer: 25-5+7", "written pool: one 3 too many"),
        (
            "25-5=20 [20 3 7 -> 28]\n20+7=27 [27 3 -> 27]\nAnswer: 25-5+7",
            "written target: 28 is not the target",
        ),
        ("25-5=20 [20 3 7]\nback [25 5 3 7 -> 26]", "written target on a back line: 26 is not 27"),
        ("25-5=20 [20 3 7 ->27]\n20+7=27 [27 3]\nAnswer: 25-5+7", "the target mark is ' -> ' with spaces"),
        ("25-5=20 [20 3 7]\n20*3=60 [60 7]\n60+7=67 (no) [60 7 3]\nAnswer: 25", "(no) keeps the pool: no 3"),
        (
            "25-5=20 [20 3 7]\n20*3=60 [60 7]\nback [25 5 3 7]\nAnswer: 25",
            "back restores [20 3 7], not the start",
        ),
    ],
)
def test_step_checker_faulty_traces(trace: str, fault: str) -> None:
    assert check_trace(trace, [25, 5, 3, 7], 27) is False, fault


@pytest.mark.parametrize(
    ("trace", "expected"),
    [
        ("25-5=20 [20 3 7]\nI think 20+7=27 [27 3]", (1, "format")),
        ("25-5=20 [20 3 7]\n20+8=28 [28 3]", (1, "operand")),  # 8 is not in [20 3 7]
        ("7/3=2 (no) [25 5 3 7]", (0, "arithmetic")),  # 7/3 is not an integer
        ("25-5=21 [21 3 7]", (0, "arithmetic")),
        ("25-5=20 [20 3 7 -> 28]", (0, "target")),
        ("25-5=20 [20 3 8]", (0, "pool")),
        ("25-5=20 [20 3 7]\n20+7=27 (no) [20 3 7]", (1, "no_on_hit")),
        ("back [25 5 3 7]", (0, "back_at_root")),
        ("25-5=20 [20 3 7]\n20*3=60 [60 7]\nAnswer: 25-5+7", (2, "answer_after_miss")),
        ("\n25-5=20 [20 3 7]\n\n20+7=27 [27 3]\nAnswer: 25-5+7", None),  # blank lines are not counted
        ("", None),
    ],
)
def test_first_invalid_step_names_the_fault(trace: str, expected: tuple[int, str] | None) -> None:
    assert first_invalid_step(trace, [25, 5, 3, 7], 27) == expected
    assert expected is None or expected[1] in STEP_FAULTS


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("25-5=20 [20 3 7 -> 27]", "move"),
        ("25-5=21 [9 9]", "move"),  # the kind is grammar only: wrong arithmetic and pool are still a move
        ("60+7=67 (no) [60 7 -> 27]", "no"),
        ("back [20 3 7 -> 27]", "back"),
        ("Answer: 25-5+7", "answer"),
        ("25 - 5 = 20 [20 3 7]", "other"),
        ("25-5=20", "other"),  # no pool
    ],
)
def test_step_kind(line: str, kind: str) -> None:
    assert step_kind(line) == kind


@pytest.mark.parametrize(
    ("trace", "expected"),
    [
        # 25-5=20 from the root, back to the root, 25-5=20 again: line 2 repeats line 0
        ("25-5=20 [20 3 7]\nback [25 5 3 7]\n25-5=20 [20 3 7]", 2),
        # 20+3 and 3+20 are one move from [20 3 7] (operands of + unordered); (no) or applied is the same move
        ("25-5=20 [20 3 7]\n20+3=23 (no) [20 3 7]\n3+20=23 [23 7]", 2),
        # 7*3=21 tried from [20 3 7] (line 1) and later from the root [25 5 3 7] (line 3): different pools
        ("25-5=20 [20 3 7]\n7*3=21 [21 20]\nback [20 3 7]\nback [25 5 3 7]\n7*3=21 [21 25 5]", None),
        # 25-5 and 5-25 are not the same move (- is ordered); 5-25 is invalid anyway, so nothing is replayed
        # from line 2 on and the repeat at line 3 is not seen
        ("25-5=20 [20 3 7]\nback [25 5 3 7]\n5-25=20 [20 3 7]\n25-5=20 [20 3 7]", None),
        ("25-5=20 [20 3 7]\n20+7=27 [27 3]\nAnswer: 25-5+7", None),
    ],
)
def test_first_repeated_move(trace: str, expected: int | None) -> None:
    assert first_repeated_move(trace, [25, 5, 3, 7], 27) == expected


def test_step_checker_batch_and_unjudgeable() -> None:
    checker = CountdownStepChecker()
    examples = [PromptExample("Q: 25 5 3 7 -> 27\n", REF)] * 2 + [PromptExample("Q: ?", "garbage")]
    assert checker(["25-5=20 [20 3 7]\n20+7=27 [27 3]\nAnswer: 25-5+7", "\n\n", "Answer: 1"], examples) == [
        True,
        None,
        None,
    ]
    with pytest.raises(ValueError, match="1 completions but 3 examples"):
        checker(["x"], examples)


def test_regime_fault_stats_by_hand() -> None:
    from experiments.countdown_regime import fault_stats

    example = PromptExample(prompt="Q", reference=REF)
    texts = [
        "25-5=20 [20 3 7]\n20+7=27 [27 3]\nAnswer: 25-5+7",  # correct, every line valid: reaches 0, 1, 2
        "25-5=20 [20 3 7]\n20+8=28 [28 3]",  # failed, first fault on line 1 (8 not in the pool)
        "25-5=21 [21 3 7]\nAnswer: 25-5+7",  # correct answer through a wrong step on line 0
    ]
    stats = fault_stats(texts, [example] * 3, [1.0, 0.0, 1.0])
    assert stats["faults_failed"] == {"operand": 1}
    assert stats["faults_correct"] == {"valid": 1, "arithmetic": 1}
    # line 0: 3 reach it, 1 goes wrong -> 1/3; line 1: 2 reach it (1st, 2nd), 1 wrong -> 1/2; line 2: 1, 0 -> 0
    assert stats["hazard"] == {0: 1 / 3, 1: 1 / 2, 2: 0.0}
