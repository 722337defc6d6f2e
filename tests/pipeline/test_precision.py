"""Matched precision: the no-grad old-log-prob pass runs in the trainer's precision context, so under
``bf16-mixed`` an exactly on-policy update (one PPO epoch, one mini-batch) sees ratio 1 and clipfrac 0."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
from echorl_lightning.callbacks.rollout import RolloutCallback

from echorl_lightning.module import EchoRLModule
from echorl_lightning.tasks import ProceduralDataModule
from echorl_lightning.tasks.arithmetic import ArithmeticTask
from echorl_lightning.tiny import TINY_MODEL_PATH

pytestmark = pytest.mark.slow


class StepMetrics(L.Callback):
    def __init__(self) -> None:
        self.logged: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.logged.append({k: float(v) for k, v in trainer.callback_metrics.items()})


@pytest.mark.parametrize("method", ["grpo", "gspo"])
def test_on_policy_update_under_bf16_mixed_sees_ratio_one(method: str) -> None:
    L.seed_everything(0)
    module = EchoRLModule(model=TINY_MODEL_PATH, method=method, lr=1e-4)
    data = ProceduralDataModule(ArithmeticTask(), num_train=64, num_val=0)
    data.connect(module.tokenizer)
    probe = StepMetrics()
    trainer = L.Trainer(
        accelerator="cpu",
        precision="bf16-mixed",
        max_epochs=2,
        callbacks=[RolloutCallback(prompts_per_epoch=8, group_size=4, max_new_tokens=48, seed=0), probe],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, data)
    assert len(probe.logged) == 2
    for step in probe.logged:
        assert step["actor/ratio_max"] == 1.0
        assert step["actor/ratio_mean"] == 1.0
        assert step["actor/clipfrac"] == 0.0
