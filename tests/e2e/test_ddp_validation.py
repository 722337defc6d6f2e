"""Validation on 2 CPU processes (DDP, gloo) gives exactly the figures of 1 process on the same weights: every
prompt is evaluated once, in the same batch, with the same seed, whatever the number of ranks."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.helpers.paths import ROOT

pytestmark = pytest.mark.slow

ROW = re.compile(r"│\s*(val/\S+)\s*│\s*(\S+)\s*│")


def validate(devices: int, prompts: int) -> dict[str, str]:
    """``cli.py validate`` of the demo config's start model: ``prompts`` prompts in batches of 4, 2 samples each;
    the printed result table."""
    args = [
        sys.executable,
        "cli.py",
        "validate",
        "--config",
        "configs/demo.yaml",
        f"--data.init_args.num_val={prompts}",
        "--data.init_args.val_batch_size=4",
        "--model.init_args.eval.n=2",
        "--model.init_args.eval.max_new_tokens=32",
        "--trainer.logger=false",
        f"--trainer.devices={devices}",
    ] + (["--trainer.strategy=ddp"] if devices > 1 else [])
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return dict(ROW.findall(proc.stdout))


@pytest.mark.parametrize(
    "prompts",
    [10, 4],  # 3 batches: one rank gets 2, the other 1 and an empty padding batch; 1 batch: rank 1 only pads
)
def test_two_processes_report_what_one_process_reports(prompts: int) -> None:
    one = validate(1, prompts)
    two = validate(2, prompts)
    assert "val/accuracy" in one and "val/val/maj@2" in one
    assert two == one
