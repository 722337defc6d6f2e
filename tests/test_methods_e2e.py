"""Every method preset trains one epoch on the shipped tiny model through the real rollout callback:
finite losses, changed weights, and the method-specific parts of the buffer (DAPO's filter, LUFFY's
expert rows) in place."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch

from callbacks.rollout import RolloutCallback
from echorl_lightning.algorithms import METHODS
from echorl_lightning.data.arithmetic_dm import ArithmeticDataModule
from echorl_lightning.module import EchoRLModule
from echorl_lightning.tiny import TINY_MODEL_PATH
from echorl_lightning.training.config import AlgorithmOverrides, EchoConfig

pytestmark = pytest.mark.slow


class BatchProbe(L.Callback):
    def __init__(self) -> None:
        self.batches: list[dict[str, torch.Tensor]] = []
        self.losses: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append({k: v.clone() for k, v in batch.items()})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


@pytest.mark.parametrize("method", METHODS.names())
def test_method_trains_one_epoch(method: str) -> None:
    L.seed_everything(0)
    overrides = AlgorithmOverrides(overlong_buffer=16) if method == "dapo" else AlgorithmOverrides()
    if method == "grpo":
        overrides = AlgorithmOverrides(kl_coef=0.05)  # also exercises the reference model and KL
    module = EchoRLModule(
        model=TINY_MODEL_PATH,
        method=method,
        algorithm=overrides,
        lr=1e-4,
        echo=EchoConfig(apply_to="success"),
    )
    before = {k: v.clone() for k, v in module.policy.state_dict().items()}
    data = ArithmeticDataModule(num_train=128, num_val=0)
    data.connect(module.tokenizer)
    probe = BatchProbe()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        callbacks=[RolloutCallback(prompts_per_epoch=8, group_size=4, max_new_tokens=48, seed=1), probe],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, data)
    assert probe.losses and all(torch.isfinite(torch.tensor(probe.losses)))
    changed = sum(not torch.equal(v, module.policy.state_dict()[k]) for k, v in before.items())
    batch = probe.batches[0]
    if method == "luffy":
        # one expert row per prompt (8 prompts) joins its group of 4 rollouts
        assert int(batch["off_policy_mask"].any(-1).sum()) == 8
    if method == "dapo":
        # rows of all-equal groups take no policy gradient; the kept groups are whole groups of 4
        assert int(batch["pg_mask"].sum()) % 4 == 0
    if method == "grpo":
        assert "ref_logp" in batch
    if batch["pg_mask"].sum() > 0 and (batch["advantages"] != 0).any():
        assert changed > 0, f"{method}: no parameter changed"
