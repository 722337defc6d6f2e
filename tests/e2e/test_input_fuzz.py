"""Broken input files fail clearly through ``python cli.py fit``: one case per input kind (a JSONL file, a Parquet
file, a model folder, a YAML config) exits non-zero with the final line that names the file and what is wrong,
and leaves an earlier run's checkpoint and TensorBoard folders untouched, with nothing added (no step ran).

The full table of each kind, called in-process: ``tests/data/test_data_file_fuzz.py``,
``tests/files/test_model_folder_fuzz.py``, ``tests/files/test_config_file_fuzz.py``. Checkpoints have their own
table: ``tests/e2e/test_checkpoint_fuzz.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.input_files import (
    KEY,
    VALID,
    base_yaml,
    cut,
    cut_inside_last_row,
    jsonl_text,
    parquet_bytes,
    snapshot,
    tiny_folder,
)
from tests.helpers.paths import ROOT


# ---- through cli.py -------------------------------------------------------------------------------------------
def earlier_run(tmp_path: Path) -> dict[str, tuple[bytes, int]]:
    """Files an earlier run left where this config logs and checkpoints (its checkpoint, run record, events)."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "epoch=0-step=1.ckpt").write_bytes(b"an earlier run's checkpoint")
    (run / "checkpoints" / "run.json").write_text('{"version": 0}\n')
    (run / "tb" / "version_0").mkdir(parents=True)
    (run / "tb" / "version_0" / "events.out.tfevents.0.earlier").write_bytes(b"earlier events")
    (run / "tb" / "version_0" / "config.yaml").write_text("trainer: {}\n")
    return snapshot(run)


def run_cli(tmp_path: Path, *args: str) -> tuple[int, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "cli.py", "fit", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, lines[-1] if lines else ""


def break_data(tmp_path: Path, data: Path) -> tuple[list[str], str]:
    data.write_bytes(cut_inside_last_row(VALID["jsonl"]()))
    return (
        [],
        f"cli.py: train: data file {str(data)!r} ({KEY}), line 12: not JSON (Expecting value at column 54)",
    )


def break_parquet(tmp_path: Path, data: Path) -> tuple[list[str], str]:
    parquet = tmp_path / "train.parquet"
    parquet.write_bytes(parquet_bytes()[:-100])  # a copy that stopped short
    return [
        f"--{KEY}={parquet}"
    ], f"cli.py: train: data file {str(parquet)!r} ({KEY}): truncated: a Parquet file"


def break_model(tmp_path: Path, data: Path) -> tuple[list[str], str]:
    folder = tiny_folder(tmp_path)
    cut(folder / "model.safetensors", 0.5)
    return [f"--model.init_args.model={folder}"], (
        f"  - the command line: model.init_args.model={str(folder)!r}: model.safetensors: truncated: 941,600 bytes, "
        "its header describes 1,883,200"
    )


def break_yaml(tmp_path: Path, data: Path) -> tuple[list[str], str]:
    config = tmp_path / "run.yaml"
    config.write_text(config.read_text().replace("  accelerator: cpu", "\taccelerator: cpu", 1))
    return [], f"cli.py: config file {str(config)!r}, line 4, column 1: a tab character"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["jsonl file", "parquet file", "model folder", "yaml config"])
def test_cli_fails_before_any_step_with_the_final_line(tmp_path: Path, kind: str) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text(jsonl_text())
    (tmp_path / "run.yaml").write_text(base_yaml(tmp_path, data))
    earlier = earlier_run(tmp_path)
    breaks = {
        "jsonl file": break_data,
        "parquet file": break_parquet,
        "model folder": break_model,
        "yaml config": break_yaml,
    }
    extra, expected = breaks[kind](tmp_path, data)
    inputs = snapshot(tmp_path, skip="run")
    code, last = run_cli(tmp_path, "--config", str(tmp_path / "run.yaml"), *extra)
    assert code != 0
    assert last.startswith(expected), last
    assert (
        snapshot(tmp_path / "run") == earlier
    )  # nothing of the earlier run changed, nothing added: no step ran
    assert snapshot(tmp_path, skip="run") == inputs
