"""Every named set of ``echorl_lightning.data.benchmarks`` loaded from a small local JSONL file in its schema.

All rows below are made up for these tests; only the column layout follows the public sets.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json  # noqa: E402
import logging  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from echorl_lightning.data.benchmarks import BENCHMARKS, load_benchmark  # noqa: E402
from echorl_lightning.data.rows import Row  # noqa: E402
from echorl_lightning.rewards.multiple_choice import MultipleChoiceVerifier  # noqa: E402


def _write(tmp_path: Path, rows: list[dict]) -> str:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def _rows(name: str, path: str) -> list[Row]:
    return load_benchmark(name, path=path).rows


def _triples(rows: list[Row]) -> list[tuple[str, str, str | None]]:
    return [(row.problem, row.reference, row.expert) for row in rows]


def test_registry_names_and_fields() -> None:
    expected = {
        "aime24",
        "aime25",
        "amc23",
        "math500",
        "minerva_math",
        "olympiadbench",
        "gsm8k",
        "arc_challenge",
        "gpqa_diamond",
        "mmlu_pro",
        "openr1_math",
        "math_train",
        "gsm8k_train",
        "deepscaler",
    }
    assert set(BENCHMARKS.names()) == expected
    for name in BENCHMARKS:
        spec = BENCHMARKS.get(name)
        assert spec.name == name
        assert spec.kind == (
            "multiple_choice" if name in {"arc_challenge", "gpqa_diamond", "mmlu_pro"} else "math"
        )
        assert (spec.id_or_ood == "train") == (
            name in {"openr1_math", "math_train", "gsm8k_train", "deepscaler"}
        )
    assert BENCHMARKS.get("olympiadbench").config == "OE_TO_maths_en_COMP"
    assert BENCHMARKS.get("gsm8k").split == "test" and BENCHMARKS.get("gsm8k_train").split == "train"
    assert BENCHMARKS.get("arc_challenge").config == "ARC-Challenge"


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(ValueError, match="unknown benchmark dataset 'aime23'") as info:
        load_benchmark("aime23")
    for name in ("aime24", "gpqa_diamond", "mmlu_pro", "openr1_math"):
        assert name in str(info.value)


def test_missing_column_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, [{"question": "What is 1 + 1?", "final": "2"}])
    with pytest.raises(ValueError, match="no column 'answer'"):
        _rows("minerva_math", path)


@pytest.mark.parametrize("name", ["aime24", "math500"])
def test_problem_answer_solution_sets(tmp_path: Path, name: str) -> None:
    rows = [
        {"id": 1, "problem": "Find $x$ if $3x = 12$.", "answer": "4", "solution": "Divide: $x = 4$."},
        {"id": 2, "problem": "  What is $2^5$?  ", "answer": " 32 ", "solution": "$2^5 = 32$."},
        {"id": 3, "problem": "A row with no answer.", "answer": "", "solution": "none"},
    ]
    got = _rows(name, _write(tmp_path, rows))
    assert _triples(got) == [
        ("Find $x$ if $3x = 12$.", "4", "Divide: $x = 4$."),
        ("What is $2^5$?", "32", "$2^5 = 32$."),
    ]
    assert [row.uid for row in got] == [f"{name}/0", f"{name}/1"]


def test_aime25_and_deepscaler(tmp_path: Path) -> None:
    rows = [{"problem": "Compute $7 \\cdot 8$.", "answer": "56", "id": "0"}]
    assert _triples(_rows("aime25", _write(tmp_path, rows))) == [("Compute $7 \\cdot 8$.", "56", None)]
    rows = [
        {"problem": "Sum of 1..4?", "answer": "10", "solution": "1+2+3+4 = \\boxed{10}"},
        {"problem": "Half of 9?", "answer": "\\frac{9}{2}", "solution": ""},  # empty solution: no expert
    ]
    assert _triples(_rows("deepscaler", _write(tmp_path, rows))) == [
        ("Sum of 1..4?", "10", "1+2+3+4 = \\boxed{10}"),
        ("Half of 9?", "\\frac{9}{2}", None),
    ]


@pytest.mark.parametrize("name", ["amc23", "minerva_math"])
def test_question_answer_sets(tmp_path: Path, name: str) -> None:
    # amc23 answers can be floats on the hub: 27.0 must read "27", 0.5 stays "0.5"
    rows = [
        {"question": "How many edges has a cube?", "answer": 12.0},
        {"question": "What is 1/2 as a decimal?", "answer": 0.5},
        {"question": "Name the unit of force.", "answer": "N"},
    ]
    assert _triples(_rows(name, _write(tmp_path, rows))) == [
        ("How many edges has a cube?", "12", None),
        ("What is 1/2 as a decimal?", "0.5", None),
        ("Name the unit of force.", "N", None),
    ]


def test_olympiadbench_lists(tmp_path: Path) -> None:
    rows = [
        {
            "id": 10,
            "question": "Find all $n$ with $n^2 = 4$.",
            "final_answer": ["$2$", "$-2$"],
            "solution": ["Square roots.", "Both signs."],
            "is_multiple_answer": True,
        },
        {
            "id": 11,
            "question": "Find $1+1$.",
            "final_answer": ["$2$"],
            "solution": ["Add."],
            "is_multiple_answer": False,
        },
        {
            "id": 12,
            "question": "No answer here.",
            "final_answer": [],
            "solution": [],
            "is_multiple_answer": False,
        },
    ]
    assert _triples(_rows("olympiadbench", _write(tmp_path, rows))) == [
        ("Find all $n$ with $n^2 = 4$.", "$2$, $-2$", "Square roots.\n\nBoth signs."),
        ("Find $1+1$.", "$2$", "Add."),
    ]


@pytest.mark.parametrize("name", ["gsm8k", "gsm8k_train"])
def test_gsm8k(tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture) -> None:
    rows = [
        {
            "question": "Ann has 1,200 coins and finds 34. How many now?",
            "answer": "She has 1200 + 34 = <<1200+34=1234>>1234 coins.\n#### 1,234",
        },
        {"question": "A question whose answer lost its marker.", "answer": "It is 5."},
    ]
    with caplog.at_level(logging.WARNING, logger="echorl_lightning.data.rows"):
        got = _rows(name, _write(tmp_path, rows))
    assert _triples(got) == [
        (
            "Ann has 1,200 coins and finds 34. How many now?",
            "1234",
            "She has 1200 + 34 = <<1200+34=1234>>1234 coins.",
        )
    ]
    assert f"skipped 1 of 2 rows: 1 with no reference (rows ['{name}/1'])" in caplog.text


def test_math_train_boxed(tmp_path: Path) -> None:
    rows = [
        {
            "problem": "Simplify $\\frac{2}{4}$.",
            "level": "Level 1",
            "type": "Algebra",
            "solution": "Divide by 2: $\\boxed{\\frac{1}{2}}$.",
        },
        {"problem": "Unboxed.", "level": "Level 1", "type": "Algebra", "solution": "The answer is 3."},
    ]
    assert _triples(_rows("math_train", _write(tmp_path, rows))) == [
        ("Simplify $\\frac{2}{4}$.", "\\frac{1}{2}", "Divide by 2: $\\boxed{\\frac{1}{2}}$.")
    ]


def test_openr1_math_verl_schema(tmp_path: Path) -> None:
    def row(problem: str, answer: str, solution: str | None) -> dict:
        return {
            "data_source": "made_up",
            "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": problem}],
            "target": [] if solution is None else [{"role": "assistant", "content": solution}],
            "ability": "math",
            "reward_model": {"ground_truth": answer, "style": "rule"},
            "extra_info": {"index": 0, "split": "train"},
        }

    rows = [row("What is 6 / 3?", "2", "6 / 3 = \\boxed{2}"), row("What is 2 + 5?", "7", None)]
    assert _triples(_rows("openr1_math", _write(tmp_path, rows))) == [
        ("What is 6 / 3?", "2", "6 / 3 = \\boxed{2}"),
        ("What is 2 + 5?", "7", None),
    ]


def test_arc_letter_and_numeric_labels(tmp_path: Path) -> None:
    rows = [
        {
            "id": "q1",
            "question": "Which is a liquid at room temperature?",
            "choices": {"text": ["iron", "water", "salt", "sand"], "label": ["A", "B", "C", "D"]},
            "answerKey": "B",
        },
        {
            "id": "q2",
            "question": "Which is largest?",
            "choices": {"text": ["ant", "cat", "whale", "dog"], "label": ["1", "2", "3", "4"]},
            "answerKey": "3",
        },
        {
            "id": "q3",
            "question": "Key not among labels.",
            "choices": {"text": ["x", "y"], "label": ["A", "B"]},
            "answerKey": "E",
        },
    ]
    assert _triples(_rows("arc_challenge", _write(tmp_path, rows))) == [
        ("Which is a liquid at room temperature?\n\n(A) iron\n(B) water\n(C) salt\n(D) sand", "B", None),
        ("Which is largest?\n\n(A) ant\n(B) cat\n(C) whale\n(D) dog", "C", None),  # label "3" -> C
    ]


def test_gpqa_shuffle_is_fixed_and_points_at_correct_answer(tmp_path: Path) -> None:
    rows = [
        {
            "Question": f" Question {k}? ",
            "Correct Answer": f"right{k}",
            "Incorrect Answer 1": f"wrong{k}a",
            "Incorrect Answer 2": f"wrong{k}b",
            "Incorrect Answer 3": f"wrong{k}c",
            "Record ID": f"r{k}",
        }
        for k in range(8)
    ]
    path = _write(tmp_path, rows)
    got = _rows("gpqa_diamond", path)
    # random.Random(0).shuffle([0, 1, 2, 3]) -> [2, 0, 1, 3]: options (wrong b, right, wrong a, wrong c), letter B;
    # random.Random(2) -> [1, 2, 3, 0]: (wrong a, wrong b, wrong c, right), letter D.
    assert got[0].problem == "Question 0?\n\n(A) wrong0b\n(B) right0\n(C) wrong0a\n(D) wrong0c"
    assert got[0].reference == "B"
    assert got[2].problem == "Question 2?\n\n(A) wrong2a\n(B) wrong2b\n(C) wrong2c\n(D) right2"
    assert got[2].reference == "D"
    for k, row in enumerate(got):
        lines = row.problem.split("\n\n", 1)[1].split("\n")
        assert sorted(line[4:] for line in lines) == sorted(
            [f"right{k}", f"wrong{k}a", f"wrong{k}b", f"wrong{k}c"]
        )
        assert f"({row.reference}) right{k}" in lines  # the recorded letter names the correct text
        assert row.expert is None
    assert len({row.reference for row in got}) > 1  # not always the same position
    assert _rows("gpqa_diamond", path) == got  # reproducible
    # the verifier accepts the recorded letter
    assert MultipleChoiceVerifier("ABCD")([f"\\boxed{{{got[0].reference}}}"], [got[0].reference]) == [1.0]


def test_mmlu_pro_ten_options(tmp_path: Path) -> None:
    options = [f"opt{k}" for k in range(10)]
    rows = [
        {
            "question_id": 1,
            "question": "Pick the tenth.",
            "options": options,
            "answer": "J",
            "answer_index": 9,
            "category": "math",
        },
        {
            "question_id": 2,
            "question": "Pick the second.",
            "options": ["yes", "no", "maybe"],
            "answer": "B",
            "answer_index": 1,
            "category": "other",
        },
        {
            "question_id": 3,
            "question": "Letter beyond the options.",
            "options": ["p", "q"],
            "answer": "D",
            "answer_index": 3,
            "category": "other",
        },
    ]
    got = _rows("mmlu_pro", _write(tmp_path, rows))
    tenth = "Pick the tenth.\n\n" + "\n".join(f"({letter}) opt{k}" for k, letter in enumerate("ABCDEFGHIJ"))
    assert _triples(got) == [
        (tenth, "J", None),
        ("Pick the second.\n\n(A) yes\n(B) no\n(C) maybe", "B", None),
    ]
