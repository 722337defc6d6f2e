"""The failure report (issue 11 item 6) and the numerical guard end to end (issue 11 item 2's test).

Fast: the report's text and the newest-checkpoint rule, and a real Trainer whose module raises, so that
``on_exception`` writes ``FAILED.txt``. Slow: the demo config at ``lr=1e6`` through ``python cli.py`` ends
with the guard's FloatingPointError (non-zero exit, the learning rate named), every checkpoint on disk has
finite weights, and ``FAILED.txt`` names the error, the step and the checkpoint to resume from.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from echorl_lightning.callbacks.failure_report import FailureReport, format_report, newest_checkpoint
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from echorl_lightning.training.checkpoint_safety import load_checkpoint_file
from tests.helpers.paths import ROOT


def test_newest_checkpoint_by_mtime(tmp_path: Path) -> None:
    assert newest_checkpoint([tmp_path, tmp_path / "absent"]) is None
    old, new = tmp_path / "epoch=0-step=1.ckpt", tmp_path / "epoch=1-step=2.ckpt"
    old.write_bytes(b"0")
    new.write_bytes(b"1")
    os.utime(old, (time.time() - 60, time.time() - 60))  # written a minute earlier
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert newest_checkpoint([tmp_path]) == new


def test_report_text() -> None:
    try:
        raise FloatingPointError("3 optimizer steps in a row had a non-finite gradient")
    except FloatingPointError as err:
        text = format_report(err, step=7, epoch=2, checkpoint=Path("ck/last.ckpt"))
    lines = text.splitlines()
    assert lines[:4] == [
        "run failed: FloatingPointError: 3 optimizer steps in a row had a non-finite gradient",
        "last global step: 7",
        "epoch: 2",
        "checkpoint to resume from: ck/last.ckpt",
    ]
    assert "--ckpt_path ck/last.ckpt" in text and "test_report_text" in text  # the traceback's frame
    none = format_report(ValueError("x"), step=0, epoch=0, checkpoint=None)
    assert "checkpoint to resume from: none" in none


class _Boom(L.LightningModule):
    """One linear layer that raises at its third training step."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        if self.global_step == 2:
            raise RuntimeError("boom at step 2")
        return self.layer(batch).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_exception_writes_failed_txt(tmp_path: Path) -> None:
    report = FailureReport()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_epochs=1, save_on_train_epoch_end=True)
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        logger=False,
        callbacks=[report, ckpt],
        max_epochs=3,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    data = DataLoader(torch.ones(2, 2), batch_size=1)  # 2 steps per epoch: the error comes in epoch 1
    with pytest.raises(RuntimeError, match="boom at step 2"):
        trainer.fit(_Boom(), data)
    text = (tmp_path / "FAILED.txt").read_text()  # no logger: the run dir is default_root_dir
    assert report.path == tmp_path / "FAILED.txt"
    assert text.startswith("run failed: RuntimeError: boom at step 2\nlast global step: 2\nepoch: 1\n")
    assert f"checkpoint to resume from: {tmp_path / 'ck' / 'epoch=0-step=2.ckpt'}" in text


@pytest.mark.slow
def test_lr_1e6_stops_with_the_guard_error_and_finite_checkpoints(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "cli.py",
        "fit",
        "--config",
        "configs/demo.yaml",
        "--model.init_args.lr=1e6",
        "--trainer.max_epochs=4",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.check_val_every_n_epoch=10",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--trainer.callbacks.init_args.dirpath={tmp_path / 'checkpoints'}",
        "--trainer.callbacks.init_args.every_n_epochs=1",
        "--data.init_args.num_val=4",
        "--data.init_args.num_train=64",
        "--model.init_args.eval.max_new_tokens=16",
        "--rollout.prompts_per_epoch=8",
        "--rollout.group_size=4",
        "--rollout.max_new_tokens=48",
        "--rollout.num_minibatches=2",  # epoch 0: one step applied (finite, checkpointed), then NaN gradients
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "FloatingPointError" in out and "model.init_args.lr=1e+06" in out, out[-5000:]

    ckpts = sorted((tmp_path / "checkpoints").glob("epoch=*.ckpt"))
    assert ckpts, "no checkpoint was written before the failure: the finiteness check below would be empty"
    for path in ckpts:
        state = load_checkpoint_file(path, map_location="cpu")["state_dict"]
        assert all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point()), path
    failed = next(tmp_path.rglob("FAILED.txt"))
    assert failed.parent == tmp_path / "tb" / "version_0"  # the logger's log_dir
    text = failed.read_text()
    assert text.startswith("run failed: FloatingPointError: 3 optimizer steps in a row"), text[:500]
    assert "model.init_args.lr=1e+06" in text
    resume = text.split("checkpoint to resume from: ")[1].splitlines()[0]
    assert Path(resume).resolve() == ckpts[-1].resolve()  # the newest checkpoint (or last.ckpt linking to it)
    assert "run failed: FloatingPointError" in proc.stderr  # also in the log
