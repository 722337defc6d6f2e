"""A checkpoint of another model or method refuses to resume, saying what differs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config

from echorl_lightning.algorithms.presets import resolve_method
from echorl_lightning.training.run_identity import identity_differences, run_identity, state_differences
from tests.helpers.cli_runs import env, run, tiny_demo
from tests.helpers.paths import ROOT


def test_identity_differences_name_each_field() -> None:
    config = Qwen2Config(hidden_size=64, num_attention_heads=2, num_hidden_layers=2, vocab_size=258)
    saved = run_identity(config, "grpo", resolve_method("grpo"), None)
    assert saved["model_type"] == "qwen2" and saved["hidden_size"] == 64 and saved["method"] == "grpo"
    assert identity_differences(saved, dict(saved)) == []
    wider = run_identity(
        Qwen2Config(hidden_size=96, num_attention_heads=2, num_hidden_layers=2, vocab_size=258),
        "rloo",
        resolve_method("rloo"),
        8,
    )
    diffs = identity_differences(saved, wider)
    assert (
        "hidden_size: 64 in the checkpoint, 96 here" in diffs
        and "method: 'grpo' in the checkpoint, 'rloo' here" in diffs
    )
    assert "lora_r: None in the checkpoint, 8 here" in diffs
    assert not any(d.startswith("vocab_size") for d in diffs)


def test_state_differences_for_checkpoints_without_an_identity() -> None:
    here = {"policy.a": torch.zeros(2, 3), "policy.b": torch.zeros(4), "ref_policy.x": torch.zeros(1)}
    saved = {"policy.a": torch.zeros(2, 5), "policy.c": torch.zeros(1)}
    assert state_differences(saved, here) == [
        "missing from the checkpoint: policy.b",
        "not in this model: policy.c",
        "policy.a: (2, 5) in the checkpoint, (2, 3) here",
    ]
    assert state_differences(here, here) == []


@pytest.mark.slow
def test_resuming_another_models_or_methods_checkpoint_is_refused(tmp_path: Path) -> None:
    run(tiny_demo(tmp_path, "--trainer.max_epochs=1"), tmp_path / "first.log")
    last = tmp_path / "checkpoints" / "last.ckpt"
    before = last.resolve().read_bytes()
    cases = {
        "method": ("--model.init_args.method=rloo", "method: 'grpo' in the checkpoint, 'rloo' here"),
        "model": (
            "--model.init_args.model=echorl_lightning/assets/tiny-countdown",
            "vocab_size: 258 in the checkpoint, 512 here",
        ),
    }
    for name, (override, expected) in cases.items():
        with (tmp_path / f"{name}.log").open("w") as log:
            proc = subprocess.run(
                tiny_demo(tmp_path, override, "--ckpt_path=last"),
                cwd=ROOT,
                env=env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=600,
            )
        out = (tmp_path / f"{name}.log").read_text().strip().splitlines()
        assert proc.returncode != 0, out[-20:]
        assert str(last) in out[-1] and "different run" in out[-1] and expected in out[-1], out[-1]
    assert last.resolve().read_bytes() == before  # nothing overwritten
