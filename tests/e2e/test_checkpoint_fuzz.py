"""Broken ``--ckpt_path`` files fail clearly: the fuzz table of the checkpoint input kind.

Each case breaks a genuine checkpoint of the tiny demo the way files break and asserts the one-line message that
names the file and what is wrong (:func:`check_checkpoint_path`, which ``cli.py`` runs on ``--ckpt_path`` before
torch opens it). One case goes through ``cli.py``: non-zero exit, that final line, no training step, and the
genuine checkpoint untouched. A checkpoint of another model or method: ``tests/training/test_run_identity.py``; one whose
pickle would run code: ``tests/training/test_checkpoint_safety.py``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from echorl_lightning.tiny import TINY_MODEL_PATH
from echorl_lightning.training.checkpoint_files import CheckpointFileError, check_checkpoint_path
from tests.helpers.cli_runs import env, run, tiny_demo
from tests.helpers.paths import ROOT


@pytest.fixture(scope="module")
def genuine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint of the tiny demo after one epoch."""
    out = tmp_path_factory.mktemp("genuine")
    run(tiny_demo(out, "--trainer.max_epochs=1"), out / "run.log")
    return (out / "checkpoints" / "last.ckpt").resolve()


BREAKAGES = {  # name -> (how to make the file from the genuine bytes, what the message says)
    "truncated": (lambda data: data[: len(data) // 2], "truncated or corrupted"),
    "cut at the start": (lambda data: data[100:], "the end of a checkpoint archive without its beginning"),
    "empty": (lambda data: b"", "the file is empty"),
    "binary garbage": (
        lambda data: bytes(range(256)) * 16,
        "binary data of an unknown kind, not a checkpoint",
    ),
    "stray bytes in the archive's end": (lambda data: data[:-22] + b"\0" * 22, "truncated or corrupted"),
    "safetensors weights under .ckpt": (
        lambda data: (Path(TINY_MODEL_PATH) / "model.safetensors").read_bytes(),
        "a safetensors file (model weights, no training state)",
    ),
    "JSON under .ckpt": (lambda data: b'{"state_dict": {}}', "JSON text, not a checkpoint"),
    "YAML under .ckpt": (lambda data: b"trainer:\n  max_epochs: 2\n", ": text, not a checkpoint"),
    "UTF-16 text under .ckpt": (
        lambda data: "trainer: 1\n".encode("utf-16"),
        "binary data of an unknown kind, not a checkpoint",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_a_broken_checkpoint_file_is_named_with_what_is_wrong(
    genuine: Path, tmp_path: Path, breakage: str
) -> None:
    make, expected = BREAKAGES[breakage]
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(make(genuine.read_bytes()))
    with pytest.raises(CheckpointFileError) as info:
        check_checkpoint_path(broken)
    message = str(info.value)
    assert message.startswith(f"--ckpt_path: {broken}: ") and expected in message, message


def test_missing_paths_and_folders(tmp_path: Path) -> None:
    with pytest.raises(CheckpointFileError, match=r"--ckpt_path: .*nowhere.ckpt: no such file or folder"):
        check_checkpoint_path(tmp_path / "nowhere.ckpt")
    with pytest.raises(CheckpointFileError, match="a folder without .metadata, so not a distributed"):
        check_checkpoint_path(tmp_path)
    (tmp_path / ".metadata").write_bytes(b"\x80")
    check_checkpoint_path(tmp_path)  # a distributed checkpoint folder: its own reader checks the rest
    check_checkpoint_path("last")  # Lightning's keyword: resolved by Lightning


@pytest.mark.slow
def test_cli_refuses_a_truncated_checkpoint_before_any_step(genuine: Path, tmp_path: Path) -> None:
    before = genuine.read_bytes()
    broken = tmp_path / "copy.ckpt"
    broken.write_bytes(before[: len(before) // 3])  # a copy that stopped a third of the way
    out = tmp_path / "run"
    with (tmp_path / "run.log").open("w") as log:
        proc = subprocess.run(
            tiny_demo(out, f"--ckpt_path={broken}"),
            cwd=ROOT,
            env=env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=600,
        )
    last = (tmp_path / "run.log").read_text().strip().splitlines()[-1]
    assert proc.returncode != 0
    assert last.startswith(f"cli.py: --ckpt_path: {broken}: truncated or corrupted"), last
    assert not list(out.rglob("*.ckpt")) and not list(out.rglob("events.out.tfevents.*"))  # no step, no run
    assert genuine.read_bytes() == before and os.path.getsize(broken) == len(before) // 3
