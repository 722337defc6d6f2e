"""experiments/late_training.py: the export curve and the branch points on hand-made records, the arms' names,
and the whole ``--quick`` study end to end (a real base run with exports, real branches through
echo_vs_base, the calibration, the report and its plot; figures never asserted, only their form)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import echo_vs_base, late_training
from tests.helpers.paths import ROOT as REPO


def record(fracs: list[float], every: int) -> dict:
    export = {
        "class_path": "echorl_lightning.callbacks.export_hf.ExportHFModel",
        "init_args": {"every_n_epochs": every},
    }
    return {
        "config": {"trainer": {"max_epochs": len(fracs), "callbacks": [export]}},
        "scalars": {
            "rollout/frac_all_success": [[s, f] for s, f in enumerate(fracs)],
            "actor/grad_norm": [[s, 1.0 + s] for s in range(len(fracs))],
            "val/id_avg": [[0, 0.5], [20, 0.6]],
        },
    }


def test_export_curve_averages_the_batches_around_each_export() -> None:
    fracs = [0.01 * s for s in range(40)]  # batch s has all-success 0.01 s
    curve = late_training.export_curve(record(fracs, every=20))
    assert [r["step"] for r in curve] == [0, 20, 40]
    # step 0: the first 10 batches, 0.01 x (0 + ... + 9) / 10 = 0.045; step 20: batches 15..24, 0.01 x 19.5;
    # step 40: the last 10 batches, 30..39, 0.01 x 34.5
    assert [round(r["all_success"], 6) for r in curve] == [0.045, 0.195, 0.345]
    assert curve[1]["grad_norm"] == pytest.approx(1.0 + 19.5)  # grad norm 1 + s, the same batches
    assert (curve[0]["id"], curve[1]["id"]) == (0.5, 0.6) and math.isnan(curve[2]["id"])


def test_branch_points_take_the_first_export_past_each_target() -> None:
    rows = [
        {"step": k, "all_success": a} for k, a in [(0, 0.2), (10, 0.3), (20, 0.5), (30, 0.45), (40, 0.55)]
    ]
    points = late_training.branch_points(rows)
    # 0.25 -> step 10 (0.3); 0.45 -> step 20 (0.5); 0.6 never reached -> the highest after step 20: 40 (0.55)
    assert [(p["step"], p["target"], p["reached"]) for p in points] == [
        (10, 0.25, True),
        (20, 0.45, True),
        (40, 0.6, False),
    ]
    # a curve with too few exports after the previous point stops early
    assert [p["step"] for p in late_training.branch_points(rows[:2])] == [10]


def test_point_arms_name_arms_the_harness_knows() -> None:
    arms = late_training.point_arms(0.025, top=True)
    assert arms == ["grpo", "grpo+echo", "grpo+echo[coef=0.025]", "grpo+echo[valid,coef=0.025]"]
    valid = echo_vs_base.arm_by_name(arms[-1])
    assert valid.valid_steps_only and valid.coef == 0.025 and valid.slug == "grpo_echo_valid_coef0.025"
    assert not echo_vs_base.arm_by_name(arms[2]).valid_steps_only
    assert late_training.point_arms(0.025, top=False) == arms[:3]


@pytest.mark.slow
def test_quick_study_end_to_end(tmp_path: Path) -> None:
    cmd = [sys.executable, "experiments/late_training.py", "--quick", "--runs-dir", str(tmp_path / "runs")]
    cmd += ["--out", str(tmp_path / "out"), "--prompts", "8", "--num-val", "4"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = (tmp_path / "out/late_training_quick.md").read_text()
    assert (tmp_path / "out/late_training_quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the base run exported after steps 2 and 4 (QUICK: 4 steps, every 2); three branch points from 0, 2, 4
    assert sorted(p.name for p in (tmp_path / "runs/base/export").iterdir() if p.is_dir()) == [
        "epoch2",
        "epoch4",
    ]
    rows = [line for line in text.splitlines() if line.startswith("| ") and "`grpo+echo" in line]
    # two EchoRL arms against GRPO at the first two points, three (the step-checked arm too) at the top one
    assert [r.split("|")[1].strip() for r in rows] == ["0", "0", "2", "2", "4", "4", "4"]
    assert sum("[valid," in r for r in rows) == 1 and "[valid," in rows[-1]
    assert all(len(r.strip("|").split("|")) == 7 for r in rows)
    base = json.loads((tmp_path / "runs/base/scalars.json").read_text())
    assert len(base["scalars"]["rollout/frac_all_success"]) == 4

    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[skip] base run" in again.stdout and "[run ]" not in again.stdout  # every run reused
