"""Runs of ``cli.py`` for the tests: subprocess runs from the repository root, the demo config at tiny sizes,
and the TensorBoard scalars a run logged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.paths import ROOT


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python cli.py *args`` from the repository root, offline; fails the test with the output's tail."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "cli.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise AssertionError(f"cli.py {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar under ``log_dir``, tag -> [(step, value)] over all event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted(log_dir.rglob("events.out.tfevents.*"))
    assert events, f"no TensorBoard event file under {log_dir}"
    out: dict[str, list[tuple[int, float]]] = {}
    for ev in events:
        acc = EventAccumulator(str(ev), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def tiny_demo(out: Path, *extra: str) -> list[str]:
    """The demo config at tiny sizes: 2 epochs of 4 prompts x 4 rollouts of <= 48 tokens (long enough to earn rewards), a checkpoint after
    every epoch, validation (4 prompts x 4 samples) before training and after epoch 1."""
    return [
        sys.executable,
        "cli.py",
        "fit",
        "--config",
        "configs/demo.yaml",
        "--trainer.max_epochs=2",
        "--trainer.check_val_every_n_epoch=2",
        f"--trainer.default_root_dir={out}",
        f"--trainer.logger.init_args.save_dir={out}",
        f"--trainer.callbacks.init_args.dirpath={out / 'checkpoints'}",
        "--trainer.callbacks.init_args.every_n_epochs=1",
        "--data.init_args.num_val=4",
        "--data.init_args.num_train=64",
        "--model.init_args.eval.max_new_tokens=48",
        "--rollout.prompts_per_epoch=4",
        "--rollout.group_size=4",
        "--rollout.max_new_tokens=48",
        *extra,
    ]


def env() -> dict[str, str]:
    """The environment of a ``cli.py`` subprocess: offline, unbuffered output."""
    return dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")


def run(cmd: list[str], log: Path) -> None:
    """``cmd`` from the repository root, its output in ``log``; fails the test with the log's tail."""
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env(), stdout=f, stderr=subprocess.STDOUT, timeout=600)
    assert proc.returncode == 0, log.read_text()[-5000:]


def per_file_scalars(run_dir: Path) -> list[dict[str, list[tuple[int, float]]]]:
    """Every event file's scalars, tag -> [(step, value)], in file order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = []
    for ev in sorted(run_dir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(ev), size_guidance={"scalars": 0})
        acc.Reload()
        out.append({tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]})
    return out


def merged(files: list[dict[str, list[tuple[int, float]]]]) -> dict[str, dict[int, float]]:
    """tag -> step -> value over the files, later files win; asserts that a re-logged value is unchanged."""
    out: dict[str, dict[int, float]] = {}
    for scalars in files:
        for tag, points in scalars.items():
            if tag.startswith("perf/"):
                continue
            for step, value in points:
                before = out.setdefault(tag, {}).get(step)
                assert before is None or before == value, f"{tag} step {step}: {before} then {value}"
                out[tag][step] = value
    return out


def demo_args(tmp_path: Path, *extra: str) -> list[str]:
    """``cli.main`` arguments of a ``fit`` of the demo config writing under ``tmp_path`` (no logger)."""
    return [
        "fit",
        "--config",
        str(ROOT / "configs/demo.yaml"),
        "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.callbacks.init_args.dirpath={tmp_path / 'ckpt'}",
        *extra,
    ]
