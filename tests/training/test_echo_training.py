"""EchoRL inside a real Trainer on the shipped tiny model: the echo term adds gradient where the
policy-gradient term has none, and costs no extra policy forward."""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as L
import pytest
import torch
from echorl_lightning.callbacks.rollout import RolloutCallback

from echorl_lightning.module import EchoRLModule
from echorl_lightning.tasks import ProceduralDataModule
from echorl_lightning.tasks.arithmetic import ArithmeticTask
from echorl_lightning.tiny import TINY_MODEL_PATH
from echorl_lightning.training.config import EchoConfig

pytestmark = pytest.mark.slow


class AcceptAll:
    """A verifier under which every completion succeeds: builds an all-success (degenerate) buffer."""

    def __call__(self, completions: Sequence[str], references: Sequence[str]) -> list[float | None]:
        return [1.0] * len(completions)


class Probe(L.Callback):
    """Counts policy forwards during training steps and keeps the gradient of the first step."""

    def __init__(self) -> None:
        self.forwards = 0
        self.grads: dict[str, torch.Tensor] = {}
        self.clips = 0.0
        self._handle = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.clips += float(batch.clip_mask.any(-1).sum())
        # the decoder runs once per pass, whichever path computes the log-probs (hidden states or full logits)
        self._handle = pl_module.policy.get_decoder().register_forward_hook(
            lambda *_: setattr(self, "forwards", self.forwards + 1)
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._handle.remove()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not self.grads:
            self.grads = {n: p.grad.detach().clone() for n, p in pl_module.policy.named_parameters()}


def train_one_step(echo_enabled: bool) -> Probe:
    L.seed_everything(0)
    module = EchoRLModule(model=TINY_MODEL_PATH, lr=1e-4, echo=EchoConfig(enabled=echo_enabled, coef=1.0))
    data = ProceduralDataModule(ArithmeticTask(), num_train=64, num_val=0, verifier=AcceptAll())
    data.connect(module.tokenizer)
    probe = Probe()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        callbacks=[RolloutCallback(prompts_per_epoch=4, group_size=4, max_new_tokens=64, seed=0), probe],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        accumulate_grad_batches=2,
    )
    trainer.fit(module, data)
    return probe


def test_echo_gives_gradient_on_an_all_success_batch_at_no_extra_forward() -> None:
    off = train_one_step(echo_enabled=False)
    on = train_one_step(echo_enabled=True)
    # all-success groups: GRPO advantages are exactly 0, so the policy-gradient term has exactly zero gradient
    assert all(torch.count_nonzero(g) == 0 for g in off.grads.values())
    # echo on: 4 degenerate groups -> 4 clips, and a non-zero gradient
    assert on.clips == 4.0 and off.clips == 0.0
    assert sum(float(g.abs().sum()) for g in on.grads.values()) > 0
    # one policy forward per micro-batch (2 accumulation micro-batches), with or without the echo term
    assert on.forwards == off.forwards == 2
