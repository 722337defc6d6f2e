"""The on-policy shortcut: with one optimizer step per rollout batch the no-grad old-log-prob pass is skipped
(pi_old = the update's own forward, detached; token entropies from the HF engine's logits), and the update is the
same as with the pass, within 1e-6 in fp32."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch
from echorl_lightning.callbacks.rollout import RolloutCallback

from echorl_lightning.module import EchoRLModule
from echorl_lightning.pipeline import steps
from echorl_lightning.rollout.batch import pad_rollouts
from echorl_lightning.rollout.hf_engine import HFGenerateEngine
from echorl_lightning.rollout.types import SamplingConfig
from echorl_lightning.tasks import ProceduralDataModule
from echorl_lightning.tasks.arithmetic import ArithmeticTask
from echorl_lightning.tiny import TINY_MODEL_PATH
from echorl_lightning.training.forward import policy_response_logprobs


def test_engine_entropy_is_the_forward_entropy_and_changes_no_token(
    tiny_tokenizer, tiny_random_model
) -> None:
    engine = HFGenerateEngine(batch_size=8)
    engine.setup(tiny_random_model, tiny_tokenizer)
    prompts = [[72, 105, 10], [65, 66, 67, 68, 10]]
    plain = SamplingConfig(n=3, max_new_tokens=12, temperature=0.7, seed=5)
    with_entropy = SamplingConfig(n=3, max_new_tokens=12, temperature=0.7, seed=5, return_entropy=True)
    a = engine.generate(prompts, plain)
    b = engine.generate(prompts, with_entropy)
    assert [[c.token_ids for c in g] for g in a] == [[c.token_ids for c in g] for g in b]
    flat = [c for g in b for c in g]
    assert all(c.entropy is not None and len(c.entropy) == len(c.token_ids) for c in flat)
    tokens = pad_rollouts([p for p in prompts for _ in range(3)], [c.token_ids for c in flat], pad_id=0)
    with torch.no_grad():
        _, entropy = policy_response_logprobs(
            tiny_random_model,
            tokens.input_ids,
            tokens.attention_mask,
            tokens.position_ids,
            tokens.prompt_len,
            tokens.responses,
            0.7,
        )
    for i, c in enumerate(flat):
        torch.testing.assert_close(torch.tensor(c.entropy), entropy[i, : len(c.token_ids)], atol=1e-4, rtol=0)


SCORE_ROLLOUTS = steps.score_rollouts


def train(shortcut: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[EchoRLModule, int]:
    """A 2-epoch fit, and how many no-grad passes over rollouts the pipeline ran."""
    passes = []

    def counting(*args, **kwargs):
        passes.append(1)
        return SCORE_ROLLOUTS(*args, **kwargs)

    monkeypatch.setattr(steps, "score_rollouts", counting)
    L.seed_everything(0)
    module = EchoRLModule(model=TINY_MODEL_PATH, lr=1e-4)
    data = ProceduralDataModule(ArithmeticTask(), num_train=64, num_val=0)
    data.connect(module.tokenizer)
    rollout = RolloutCallback(
        prompts_per_epoch=8, group_size=4, max_new_tokens=48, seed=0, on_policy_shortcut=shortcut
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        callbacks=[rollout],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, data)
    assert rollout.last_rollout is not None and rollout.last_rollout.clip_mask.any()  # echo took part
    return module, len(passes)


@pytest.mark.slow
def test_shortcut_skips_the_pass_and_gives_the_same_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    (with_pass, passes), (shortcut, no_passes) = train(False, monkeypatch), train(True, monkeypatch)
    assert passes == 2 and no_passes == 0  # 2 epochs
    for name, value in with_pass.policy.state_dict().items():
        torch.testing.assert_close(shortcut.policy.state_dict()[name], value, atol=1e-6, rtol=0)
