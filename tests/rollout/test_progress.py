"""Rollout progress (issue 13 item 3): the rate/ETA arithmetic, the observer wrappers, the console lines of a
real short run (the embedded tiny model, ProceduralDataModule(ArithmeticTask()), RolloutCallback, a real
Trainer), and ``perf/train_s`` measured without the validation pass."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from echorl_lightning.callbacks.progress import RolloutProgress, clock, metrics_line
from echorl_lightning.callbacks.rollout import RolloutCallback
from lightning.pytorch.loggers import CSVLogger

from echorl_lightning.rollout.hf_engine import HFGenerateEngine
from echorl_lightning.rollout.progress import (
    NullObserver,
    ObservedEngine,
    RolloutObserver,
    find_observer,
    observed_verifier,
    rate_and_eta,
)
from echorl_lightning.rollout.types import SamplingConfig
from tests.helpers.paths import ROOT
from tests.helpers.tiny_fit import cpu_trainer, tiny_policy_and_data


class Recorder(NullObserver):
    """Records every observer call."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def phase_start(self, name: str, total: int) -> None:
        self.calls.append(("start", name, total))

    def phase_advance(self, rows: int, tokens: int) -> None:
        self.calls.append(("advance", rows, tokens))

    def phase_end(self) -> None:
        self.calls.append(("end",))


def test_rate_and_eta_hand_computed() -> None:
    # 3 of 12 rows, 90 tokens, after 1.5 s: 90 / 1.5 = 60 tok/s, 3 / 1.5 = 2 rows/s;
    # ETA = (12 - 3) * 1.5 / 3 + 0.25 = 4.5 + 0.25 = 4.75 s
    r = rate_and_eta(done=3, total=12, tokens=90, elapsed_s=1.5, rest_s=0.25)
    assert (r.tokens_per_s, r.rows_per_s, r.eta_s) == (60.0, 2.0, 4.75)
    assert rate_and_eta(0, 12, 0, 1.0).eta_s is None  # nothing done yet: no estimate
    assert rate_and_eta(0, 12, 0, 0.0).tokens_per_s == 0.0


def test_clock_and_metrics_line() -> None:
    assert [clock(None), clock(4.6), clock(75), clock(3725)] == ["?", "0:05", "1:15", "1:02:05"]
    line = metrics_line(
        "epoch 2",
        {"reward/mean": torch.tensor(0.5), "echo/num_clips": 3.0},
        (("reward/mean", "reward {:.3f}"), ("rollout/x", "x {:.1f}"), ("echo/num_clips", "clips {:.0f}")),
    )
    assert line == "epoch 2 · reward 0.500 · clips 3"  # the absent key is left out


def test_find_observer() -> None:
    rec = Recorder()
    assert find_observer([object(), rec]) is rec
    assert isinstance(find_observer([object()]), NullObserver)
    assert isinstance(RolloutProgress(), RolloutObserver)


@pytest.mark.usefixtures("one_thread")
def test_observed_engine_reports_each_hf_chunk(tiny_random_model, tiny_tokenizer) -> None:
    engine = HFGenerateEngine(batch_size=3)
    engine.setup(tiny_random_model, tiny_tokenizer)
    rec = Recorder()
    out = ObservedEngine(engine, rec).generate(
        [[1, 2], [3, 4, 5]], SamplingConfig(n=2, max_new_tokens=5, seed=0)
    )
    # 2 prompts x 2 samples = 4 rows in chunks of 3 and 1; the chunk token counts sum to the completions'
    assert [c[:2] for c in rec.calls] == [("start", "generate"), ("advance", 3), ("advance", 1), ("end",)]
    assert rec.calls[0][2] == 4
    assert rec.calls[1][2] + rec.calls[2][2] == sum(len(c.token_ids) for g in out for c in g)


def test_observed_engine_without_progress_and_verifier() -> None:
    class OneShot:  # an engine whose generate takes no progress callable (as vLLM's)
        def generate(self, prompt_token_ids: Sequence[Sequence[int]], sampling: SamplingConfig) -> list:
            from echorl_lightning.rollout.types import Completion

            return [[Completion([7, 8], False)] * sampling.n for _ in prompt_token_ids]

    rec = Recorder()
    ObservedEngine(OneShot(), rec).generate([[1], [2]], SamplingConfig(n=3))  # 2 x 3 rows of 2 tokens
    assert rec.calls == [("start", "generate", 6), ("advance", 6, 12), ("end",)]
    rec.calls.clear()
    scores = observed_verifier(lambda c, r: [1.0] * len(c), rec)(["a", "b"], ["1", "2"])
    assert scores == [1.0, 1.0]
    assert rec.calls == [("start", "verify", 2), ("advance", 2, 0), ("end",)]


def test_plain_lines_during_a_slow_phase(capsys: pytest.CaptureFixture[str]) -> None:
    bar = RolloutProgress(plain=True, plain_interval_s=0.01)
    bar.rollout_start(epoch=1, rows=4)
    bar.phase_start("generate", 4)
    time.sleep(0.02)
    bar.phase_advance(2, 40)  # after the interval: a line with the ETA
    bar.phase_advance(2, 40)  # done: no intermediate line
    bar.phase_end()
    bar.rollout_end({"reward/mean": torch.tensor(0.25)})
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"epoch 1 rollout · generate 2/4 rows · 40 tokens · .* tok/s · ETA 0:0\d", lines[0])
    assert re.fullmatch(
        r"epoch 1 rollout · generate 4/4 rows · 80 tokens · [\d.]+ s · [\d,]+ tok/s", lines[1]
    )
    assert lines[2:] == ["epoch 1 · reward 0.250"]


def test_rich_display_runs(capsys: pytest.CaptureFixture[str]) -> None:
    bar = RolloutProgress(plain=False)
    bar.rollout_start(epoch=0, rows=2)
    bar.phase_start("generate", 2)
    assert bar._live is not None  # a rich Progress, even with stdout captured
    bar.phase_advance(2, 10)
    bar.phase_end()
    bar.rollout_end({"reward/mean": torch.tensor(1.0)})
    assert bar._live is None
    assert "epoch 0 · reward 1.000" in capsys.readouterr().out


class Clock(L.Callback):
    """Placed before the rollout callback: notes when each epoch's first training batch starts (before the rollout
    callback starts its clock) and when validation starts (after its clock stopped), and sleeps 0.5 s in
    validation, so a train clock that ran through validation reads more than their difference."""

    def __init__(self) -> None:
        self.first_batch: list[float] = []
        self.val_start: list[float] = []

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int
    ) -> None:
        if batch_idx == 0:
            self.first_batch.append(time.perf_counter())

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.val_start.append(time.perf_counter())
        time.sleep(0.5)


@pytest.mark.usefixtures("one_thread")
def test_real_run_console_lines_and_train_clock(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module, data = tiny_policy_and_data(num_train=64, num_val=2)
    rollout = RolloutCallback(
        prompts_per_epoch=2, group_size=4, max_new_tokens=24, seed=0, on_policy_shortcut=False
    )
    clock_cb = Clock()
    trainer = cpu_trainer(
        max_epochs=2,
        callbacks=[clock_cb, rollout, RolloutProgress(plain=True)],
        logger=CSVLogger(str(tmp_path), name="csv", version=0),
        log_every_n_steps=1,
        enable_checkpointing=False,
    )
    trainer.fit(module, data)
    lines = capsys.readouterr().out.splitlines()
    epoch_lines = [line for line in lines if re.match(r"epoch \d+ · ", line)]
    assert [line.split(" · ")[0] for line in epoch_lines] == ["epoch 0", "epoch 1"]  # once per epoch
    # the last line against the last rollout batch: every reward 1 (Always), so every group is all-success;
    # clips = rows holding one, response = mean response length
    last = rollout.last_rollout
    assert last is not None
    clips = int(last.clip_mask.any(-1).sum())
    length = float(last.response_mask.sum(-1).float().mean())
    assert (
        f"epoch 1 · reward 1.000 · all-success 1.000 · clips {clips} · response {length:.1f} tok · "
        in epoch_lines[1]
    )
    assert re.search(r" · rollout [\d,]+ tok/s · in [\d.]+ s$", epoch_lines[1])
    for phase in ("generate 8/8 rows", "verify 8/8 rows", "old log-probs 8/8 rows"):  # 2 prompts x 4
        assert sum(f"rollout · {phase}" in line for line in lines) == 2, phase
    import csv

    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        train_s = [float(r["perf/train_s"]) for r in csv.DictReader(f) if r.get("perf/train_s")]
    assert len(train_s) == 2
    # the clock runs from the first batch's start to the last batch's end, both inside [first_batch, val_start];
    # before the fix it stopped at the epoch's end, after validation's 0.5 s sleep
    for s, t0, t1 in zip(train_s, clock_cb.first_batch, clock_cb.val_start, strict=True):
        assert 0 < s <= t1 - t0, (s, t1 - t0)


@pytest.mark.slow
def test_demo_through_cli_shows_table_progress_and_one_line_per_epoch(tmp_path: Path) -> None:
    """``python cli.py fit --config configs/demo.yaml`` (shortened), output not a terminal: the run summary once,
    plain progress lines per phase and one line per epoch, all on stdout."""
    import os
    import subprocess
    import sys

    args = [
        "fit",
        "--config",
        "configs/demo.yaml",
        "--trainer.max_epochs=2",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.callbacks=[]",
        "--data.init_args.num_val=4",
        "--trainer.check_val_every_n_epoch=1",
        "--model.init_args.eval.max_new_tokens=24",
        "--rollout.prompts_per_epoch=4",
        "--rollout.group_size=4",
        "--rollout.max_new_tokens=24",
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "cli.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    assert sum("echorl-lightning run" in line for line in lines) == 1
    assert any("469,408 total, 469,408 trainable" in line for line in lines)  # the embedded model (README)
    assert any("4 prompts x G=4 = 16 rollouts" in line for line in lines)
    for epoch in (0, 1):  # the on-policy demo skips the old-log-prob pass: generate and verify only
        assert sum(line.startswith(f"epoch {epoch} rollout · generate 16/16 rows · ") for line in lines) == 1
        assert sum(line.startswith(f"epoch {epoch} rollout · verify 16/16 rows · ") for line in lines) == 1
        assert sum(line.startswith(f"epoch {epoch} · reward ") for line in lines) == 1
    assert not any(" rollout · old log-probs " in line for line in lines)
