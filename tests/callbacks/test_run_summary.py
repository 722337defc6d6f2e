"""The run summary table (issue 13 item 3): printed once at the start of a real ``fit`` of the embedded tiny
model, with the resolved method axes, the parameter counts of the loaded policy, the data sizes, the rollout
schedule and the output folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from echorl_lightning.callbacks.rollout import RolloutCallback
from echorl_lightning.callbacks.run_summary import RunSummary, count_parameters, plain_text, settings_text
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from tests.helpers.tiny_fit import cpu_trainer, tiny_policy_and_data


def test_count_parameters_hand_computed() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))  # (3*2 + 2) + (2*1 + 1) = 8 + 3
    net[1].requires_grad_(False)
    assert count_parameters(net) == (11, 8)
    tied = torch.nn.Module()
    tied.a = torch.nn.Linear(2, 2, bias=False)
    tied.b = tied.a  # one tensor of 4, reachable twice: counted once
    assert count_parameters(tied) == (4, 4)


def test_settings_text() -> None:
    from echorl_lightning.training.config import EchoConfig

    text = settings_text(EchoConfig(coef=0.01))
    assert text.startswith(
        "enabled=True, coef=0.01, apply_to='degenerate', selector='peak', step_delimiter='\\n'"
    )

    class Engine:
        def __init__(self) -> None:
            self.batch_size, self.model, self._private, self.name = 8, torch.nn.Linear(1, 1), 3, "x"

    assert settings_text(Engine()) == "batch_size=8, name='x'"  # no module, nothing private


def test_plain_text_keeps_every_row() -> None:
    text = plain_text(
        [("model", [("parameters", "1,234 total")]), ("output", [("logs", "runs/x")])], width=60
    )
    assert "1,234 total" in text and "runs/x" in text and "\x1b[" not in text  # no colour codes


@pytest.mark.usefixtures("one_thread")
def test_fit_starts_with_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from echorl_lightning.tiny import TINY_MODEL_PATH
    from echorl_lightning.training.config import AlgorithmOverrides, EchoConfig

    module, data = tiny_policy_and_data(
        num_train=48,
        num_val=3,
        method="rloo",
        algorithm=AlgorithmOverrides(clip_high=0.28),
        echo=EchoConfig(selector="lowest"),
    )
    rollout = RolloutCallback(prompts_per_epoch=2, group_size=3, max_new_tokens=16, seed=0)
    trainer = cpu_trainer(
        max_epochs=1,
        logger=TensorBoardLogger(str(tmp_path), name="tb", version=0),
        callbacks=[rollout, RunSummary(width=200), ModelCheckpoint(dirpath=str(tmp_path / "ckpts"))],
    )
    trainer.fit(module, data)
    out = capsys.readouterr().out
    assert out.count("echorl-lightning run") == 1  # once, at the start
    rows = {
        line.split("│")[2].strip(): line.split("│")[3].strip()
        for line in out.splitlines()
        if line.count("│") == 4
    }

    total, trainable = count_parameters(module.policy)
    # the embedded model (README), all trainable without LoRA: the head-24 Qwen2's 431,904 plus the zero padding
    # of its heads widened to 32, 4 layers x (q 32*96 + 32 + k, v 2 x (16*96 + 16) + o 96*32 + o bias 96 = 9,376)
    assert total == trainable == 431_904 + 4 * 9_376 == 469_408
    assert rows["parameters"] == "469,408 total, 469,408 trainable"
    assert rows["model"] == TINY_MODEL_PATH
    assert rows["preset"] == "rloo"
    # the resolved axes: RLOO's preset (rloo advantage, token-mean) with the clip_high override applied
    assert rows["axes"].startswith(
        "adv_estimator='rloo', policy_loss='ppo_clip', clip_low=0.2, clip_high=0.28, "
    )
    assert "loss_agg_mode='token-mean'" in rows["axes"]
    assert rows["EchoRL"] == "on" and "selector='lowest'" in rows["echo settings"]
    assert rows["policy class"] == "LlamaForCausalLM in EchoRLModule"
    assert (
        rows["engine"] == "HFGenerateEngine"
        and rows["engine settings"] == "batch_size=256, use_cache=True, compact_every=16"
    )
    assert rows["strategy"] == "SingleDeviceStrategy" and rows["precision"] == "32-true"
    assert rows["devices"] == "1 x 1 node(s), world size 1"
    assert rows["train prompts"] == "48" and rows["eval sets"] == "val: 3"
    assert rows["per epoch"] == "2 prompts x G=3 = 6 rollouts"
    assert rows["updates"].startswith("1 optimizer step(s) per epoch")
    assert rows["logs"] == f"TensorBoardLogger: {tmp_path / 'tb' / 'version_0'}"
    assert rows["checkpoints"] == str(tmp_path / "ckpts")
