"""A resumed run does what an uninterrupted run does from the step it resumes at: no sanity validation pass,
no extra console line. A 1-epoch run, resumed to 2 epochs, prints for epoch 1 exactly the lines (rollout
summary, validation after epoch 1) that a 2-epoch run prints, and no ``[val] step 1`` line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.cli_runs import run, tiny_demo

pytestmark = pytest.mark.slow


def console(log: Path) -> list[str]:
    """The run's own progress lines: ``[val] ...`` and ``epoch N · ...`` (throughputs and times dropped)."""
    lines = [line for line in log.read_text().splitlines() if re.match(r"^(\[val\]|epoch \d+ ·)", line)]
    return [
        re.sub(r" · (rollout [\d,]+ tok/s · )?in [\d.]+ s$", "", line)
        for line in lines
        if " rollout · " not in line
    ]


def test_a_resumed_run_prints_what_an_uninterrupted_run_prints(tmp_path: Path) -> None:
    full, part = tmp_path / "full", tmp_path / "part"
    run(tiny_demo(full), tmp_path / "full.log")
    run(tiny_demo(part, "--trainer.max_epochs=1"), tmp_path / "first.log")
    run(tiny_demo(part, "--ckpt_path=last"), tmp_path / "resumed.log")
    uninterrupted, first, resumed = (console(tmp_path / f"{n}.log") for n in ("full", "first", "resumed"))
    assert first[0] == "[val] step 0: accuracy " + first[0].split()[-1]  # the sanity pass before training
    assert not any(line.startswith("[val] step 1") for line in resumed), (
        resumed
    )  # no pass at the resumed step
    assert first + resumed == uninterrupted
