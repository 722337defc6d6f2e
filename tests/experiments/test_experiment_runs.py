"""The real experiment harness end to end: experiments/echo_vs_base.py in ``--quick`` mode on a tiny budget (real
CLI runs of the tiny model, real TensorBoard logs), on the arithmetic and the Countdown configs, and
experiments/echo_gradient_share.py. The figures of a run are never asserted: only that the table and plot are
well formed and that finished runs are reused."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.report import step_tags
from tests.helpers.paths import ROOT as REPO


def _harness(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "experiments/echo_vs_base.py",
        "--quick",
        "--epochs",
        "2",
        "--val-every",
        "1",
        "--prompts-per-epoch",
        "4",
        "--num-val",
        "4",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--out",
        str(tmp_path / "out"),
        *extra,
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.slow
def test_quick_harness_end_to_end(tmp_path):
    proc = _harness(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    md = tmp_path / "out/echo_vs_base_quick.md"
    png = tmp_path / "out/echo_vs_base_quick.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = md.read_text()
    assert "(echo_vs_base_quick.png)" in text
    tables = [block for block in text.split("\n\n") if block.startswith("| arm")]
    assert tables, text
    rows = [line for line in tables[0].splitlines() if line.startswith("| `")]
    header = tables[0].splitlines()[0].strip("|").split("|")
    assert [r.split("|")[1].strip() for r in rows] == ["`grpo`", "`grpo+echo`"]
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == len(header)
        assert cells[1] == "1"  # one seed
        for cell in cells[2:]:  # every figure is "mean ± std" (or a → between two of them, or – for none)
            assert re.fullmatch(r"(–|-?\d+\.\d+ ± \d+\.\d+)( → -?\d+\.\d+ ± \d+\.\d+)?", cell), cell
    grpo = json.loads((tmp_path / "runs/grpo/seed0/scalars.json").read_text())
    assert {"rollout/frac_all_success", "val/id/avg@4", "val/ood_avg"} <= set(grpo["scalars"])
    assert all(v == 0 for _, v in grpo["scalars"]["echo/num_clips"])  # the base arm mines no clip
    frac = grpo["scalars"]["rollout/frac_all_success"][0][1]  # one step: start and end are that step
    assert f"**{frac:.2f}** over its first 5 steps, **{frac:.2f}** over its last 5 (target >= 0.40:" in text

    again = _harness(tmp_path)  # finished runs with the same settings are reused, not retrained
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("[skip]") == 2 and "[run ]" not in again.stdout

    # a report on a selection with an unfinished run: an error naming it, or with --partial the finished
    # runs, the unfinished one listed
    wider = ("--report-only", "--arms", "grpo", "grpo+echo", "grpo+echo[lowest]")
    strict = _harness(tmp_path, *wider)
    assert strict.returncode != 0 and "no finished run for grpo+echo[lowest] seed 0" in strict.stderr
    partial = _harness(tmp_path, *wider, "--partial")
    assert partial.returncode == 0, partial.stderr[-3000:]
    text = md.read_text()
    assert "- **partial**: 1 run of the selection not finished, left out: `grpo+echo[lowest]` seed 0;" in text
    assert "| `grpo+echo` | 1 |" in text and "| `grpo+echo[lowest]` |" not in text


@pytest.mark.slow
def test_echo_gradient_share_runs():
    cmd = [sys.executable, "experiments/echo_gradient_share.py", "--seeds", "0", "--prompts-per-epoch", "16"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = [line for line in proc.stdout.splitlines() if line.startswith("| 0 |")]
    assert len(row) == 1, proc.stdout
    cells = [c.strip() for c in row[0].strip("|").split("|")]
    clips, pg_norm, echo_norm = int(cells[1]), float(cells[3]), float(cells[4])
    ratio = echo_norm / pg_norm
    # the three lambda columns are lambda x |grad L_echo| / |grad L_RLVR| for 0.001, 0.01 and 0.1
    assert float(cells[6]) == pytest.approx(0.001 * ratio, rel=0.02, abs=1e-5)
    assert float(cells[8]) == pytest.approx(0.1 * ratio, rel=0.02, abs=1e-3)
    if clips:  # lambda for a 5% share: 0.05 / ratio (3 significant digits printed)
        assert float(cells[9]) == pytest.approx(0.05 / ratio, rel=0.01)
    assert (echo_norm > 0) == (clips > 0)  # no clip, no echo gradient


@pytest.mark.slow
def test_forking_quick_harness_tiny_budget(tmp_path):
    """The Countdown config through the real harness: 1 step x 2 prompts x 8 rollouts, 2 prompts per eval set."""
    proc = _harness(
        tmp_path,
        "--config",
        "experiments/configs/echo_forking.yaml",
        "--epochs",
        "1",
        "--prompts-per-epoch",
        "2",
        "--num-val",
        "2",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = (tmp_path / "out/echo_forking_quick.md").read_text()
    assert text.startswith("# EchoRL vs its base methods on the Countdown forking task")
    assert "Countdown, 3-3 numbers in 1..20, targets 10..99, intermediates <= " in text
    assert "## Power: how many evaluation samples make a 2-point difference visible" in text
    grpo = json.loads((tmp_path / "runs/grpo/seed0/scalars.json").read_text())
    assert {"val/id/avg@4", "val/ood_numbers/avg@4", "val/ood_large/avg@4"} <= set(grpo["scalars"])
    # the step-0 evaluation ran once (cli.py validate) and is every run's first point
    start = json.loads((tmp_path / "runs/start_eval/scalars.json").read_text())["scalars"]
    echo = json.loads((tmp_path / "runs/grpo_echo/seed0/scalars.json").read_text())
    assert grpo["start_eval"] == echo["start_eval"] == "shared"
    for tag in ("val/id/avg@4", "val/ood_large/avg@4"):
        assert grpo["scalars"][tag][0] == echo["scalars"][tag][0] == [0, start[tag][0][1]]
        steps = [step for step, _ in grpo["scalars"][tag]]  # before training, then after its one step
        assert len(steps) == 2 and steps[0] == 0 < steps[1]
    assert proc.stdout.count("[eval]") == 1 and "evaluated once, by `cli.py validate`" in text
    assert "(target >= 0.20: " in text  # the harness's all_success_target, not the arithmetic task's 0.40
    header = next(line for line in text.splitlines() if line.startswith("| arm"))
    for tag in step_tags(grpo):  # a step column for every set that had a correct sample to judge
        assert f"{tag.split('/')[1]} steps ok final" in header
    # the plot gains a fourth panel, the training batches' step correctness, when a run logged it:
    # width = panels x 5 in x 110 dpi = 3 x 550 = 1,650 px without it, 4 x 550 = 2,200 px with it
    png = (tmp_path / "out/echo_forking_quick.png").read_bytes()
    logged = any("rollout/step_valid_frac" in r["scalars"] for r in (grpo, echo))
    assert int.from_bytes(png[16:20], "big") == (2200 if logged else 1650)
