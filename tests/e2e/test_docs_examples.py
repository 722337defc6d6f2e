"""The worked examples of the docs (``docs/examples/*.py``, embedded verbatim in README.md) run and print
what they promise.

Each example runs as a script from the repository root in its own process, as a user would run it: the
examples register into the global registries (a method preset, an advantage estimator), which must not leak
into other tests. A second group checks that README.md holds each file verbatim, so the docs cannot drift
from code that runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import ROOT

EXAMPLES = ROOT / "docs" / "examples"
README_SECTIONS = {  # example file -> the README section that should embed it
    "add_method.py": "Extending / A method axis",
    "add_verifier.py": "Extending / A verifier",
    "add_dataset.py": "Extending / A dataset",
}


def run_example(name: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``python docs/examples/<name>`` from the repository root, offline, temp files under ``tmp_path``."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TMPDIR": str(tmp_path),
    }
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def stdout_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr[-3000:]}"
    return result.stdout.strip().splitlines()


def test_add_method_registers_a_preset_and_computes_median_advantages(tmp_path: Path) -> None:
    lines = stdout_lines(run_example("add_method.py", tmp_path))
    # the preset's axes, with clip_high overridden from 0.2 to 0.28 at resolve time
    assert lines[0] == "median ppo_clip 0.2 0.28 token-mean"
    # row 0: rewards [1, 0, 0, 1, 1], sorted [0, 0, 1, 1, 1], median 1 -> r - 1 = [0, -1, -1, 0, 0]
    # row 1: all success [1, 1, 1, 1, 1], median 1 -> all 0 (a degenerate group, no policy gradient)
    assert lines[1] == "[[0.0, -1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]]"
    assert len(lines) == 2


def test_add_verifier_plain_function_and_class_through_the_cli(tmp_path: Path) -> None:
    result = run_example("add_verifier.py", tmp_path)
    # (fails while a datamodule types its verifier with the strict Verifier Protocol: jsonargparse then
    # rejects a function without exact type hints, "does not implement protocol Verifier")
    lines = stdout_lines(result)
    # completions ["2+3=5\nAnswer: 5", "about 4.6", "no idea"], references all "5":
    # last_number: last integer "5" == "5" -> 1.0; "4.6" gives integers "4", "6": "6" != "5" -> 0.0;
    # no number at all -> None (could not judge)
    assert lines[0] == "ProceduralDataModule [1.0, 0.0, None]"
    # LastNumber(tolerance=0.5): |5.0 - 5| = 0 -> 1.0; |4.6 - 5| = 0.4 <= 0.5 -> 1.0; no number -> None
    assert lines[1] == "ProceduralDataModule [1.0, 1.0, None]"
    # answer() of "7-2=5\nAnswer: 5": last number "5" -> str(float("5")) = "5.0"
    assert lines[2] == "5.0"
    assert len(lines) == 3


def test_add_dataset_loads_local_jsonl_with_a_column_mapping(tmp_path: Path) -> None:
    lines = stdout_lines(run_example("add_dataset.py", tmp_path))
    # 2 training rows and 1 validation row, none skipped, all well under 256 tokens
    assert lines[0] == (
        "{'data/skipped_rows': 0, 'data/skipped_too_long': 0, 'data/eval_prompts': 1, "
        "'data/train_prompts': 2, 'data/skipped_rows/train': 0, 'data/skipped_rows/val': 0}"
    )
    # the instruction "Q: {prompt}\nPut the answer in \boxed{}." around each question (repr: doubled
    # backslash); the reference is the last \boxed{} of the solution column
    assert lines[1:] == [
        "'Q: Ana has 3 kites and buys 4 more. How many kites?\\nPut the answer in \\\\boxed{}.' -> 7",
        "'Q: What is 6 times 7?\\nPut the answer in \\\\boxed{}.' -> 42",
        "'Q: A box holds 9 pens; 2 are red. How many are not red?\\nPut the answer in \\\\boxed{}.' -> 7",
    ]


@pytest.mark.parametrize("name", sorted(README_SECTIONS))
def test_readme_embeds_the_example_verbatim(name: str) -> None:
    code = (EXAMPLES / name).read_text().strip()
    readme = (ROOT / "README.md").read_text()
    assert code in readme, (
        f"README.md does not hold docs/examples/{name} verbatim: paste the file into a ```python block of "
        f"section '{README_SECTIONS[name]}' after editing either"
    )
