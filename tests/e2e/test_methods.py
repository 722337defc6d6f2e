"""Every method preset trains on the shipped tiny model through the real rollout callback, and each shows its
own signature in what reaches the update: RLOO's leave-one-out baseline, REINFORCE++'s batch std, Dr. GRPO's
constant normaliser, DAPO keeping exactly the mixed groups, GSPO's sequence ratio, LUFFY's expert rows, GRPO's
reference model. The verifier's scores are recorded, so every expectation is computed here from the rewards."""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as L
import pytest
import torch
from echorl_lightning.callbacks.rollout import RolloutCallback

from echorl_lightning.algorithms import METHODS
from echorl_lightning.module import EchoRLModule
from echorl_lightning.rewards.exact_match import ExactMatchVerifier
from echorl_lightning.rollout.batch import RolloutBatch
from echorl_lightning.tasks import ProceduralDataModule
from echorl_lightning.tasks.arithmetic import ArithmeticTask
from echorl_lightning.tiny import TINY_MODEL_PATH
from echorl_lightning.training.config import AlgorithmOverrides, EchoConfig

pytestmark = pytest.mark.slow

PROMPTS, G, MAX_NEW = 8, 4, 48


class RecordingVerifier:
    """The task's exact-match verifier, keeping every score it returns (rollout rows, in order)."""

    def __init__(self) -> None:
        self.inner = ExactMatchVerifier()
        self.scores: list[float] = []

    def __call__(self, completions: Sequence[str], references: Sequence[str]) -> list[float | None]:
        out = self.inner(completions, references)
        self.scores.extend(float(s or 0.0) for s in out)
        return out


class Probe(L.Callback):
    """Keeps each micro-batch, the logged step metrics, and (before each step) the sequence-level ratio
    ``exp(mean_t log(pi / pi_old))`` and the token-level ratio max of the current policy on the batch."""

    def __init__(self) -> None:
        self.batches: list[RolloutBatch] = []
        self.logged: list[dict[str, float]] = []
        self.seq_ratio_max: list[float] = []
        self.token_ratio_max: list[float] = []
        self.ratios: list[torch.Tensor] = []  # [n, T] pi / pi_old before each step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append(batch)
        with torch.no_grad():
            logp, _ = pl_module.response_logprobs(batch, batch.temperature)
        mask = batch.response_mask * batch.pg_mask[:, None]  # [n, T]
        old = logp if batch.old_logp is None else batch.old_logp  # None: the on-policy shortcut (ratio 1)
        log_ratio = (logp - old) * mask  # [n, T]
        seq = (log_ratio.sum(-1) / mask.sum(-1).clamp(min=1)).exp()  # [n]
        rows = batch.pg_mask.bool()
        self.seq_ratio_max.append(float(seq[rows].max()))
        self.token_ratio_max.append(float(log_ratio.exp()[mask.bool()].max()))
        self.ratios.append((logp - old).exp())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.logged.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def run(
    method: str, overrides: AlgorithmOverrides, ppo_epochs: int = 1
) -> tuple[EchoRLModule, Probe, RecordingVerifier, int]:
    L.seed_everything(0)
    module = EchoRLModule(
        model=TINY_MODEL_PATH,
        method=method,
        algorithm=overrides,
        lr=1e-4,
        echo=EchoConfig(apply_to="success"),
    )
    module.configure_model()  # the policy, loaded now so its starting weights can be kept
    before = {k: v.clone() for k, v in module.policy.state_dict().items()}
    verifier = RecordingVerifier()
    data = ProceduralDataModule(ArithmeticTask(), num_train=128, num_val=0, verifier=verifier)
    data.connect(module.tokenizer)
    probe = Probe()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        callbacks=[
            RolloutCallback(
                prompts_per_epoch=PROMPTS, group_size=G, max_new_tokens=MAX_NEW, ppo_epochs=ppo_epochs, seed=1
            ),
            probe,
        ],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, data)
    changed = sum(not torch.equal(v, module.policy.state_dict()[k]) for k, v in before.items())
    return module, probe, verifier, changed


def sorted_list(t: torch.Tensor) -> list[float]:
    return sorted(t.flatten().tolist())


@pytest.mark.parametrize("method", METHODS.names())
def test_method_trains_and_shows_its_signature(method: str) -> None:
    overrides = {
        "dapo": AlgorithmOverrides(overlong_buffer=16),
        "grpo": AlgorithmOverrides(kl_coef=0.05),  # also exercises the reference model and KL
    }.get(method, AlgorithmOverrides())
    module, probe, verifier, changed = run(
        method, overrides, ppo_epochs=2 if method in ("gspo", "dr_grpo") else 1
    )
    assert probe.logged and all(torch.isfinite(torch.tensor(s["actor/pg_loss"])) for s in probe.logged)
    batch = probe.batches[0]
    gsize = G + (1 if method == "luffy" else 0)
    scores = torch.tensor(verifier.scores).view(-1, gsize)  # [B', G'] every generated group, in order
    assert (batch.advantages != 0).any(), f"{method}: seed 1 should give at least one mixed group"
    assert changed > 0, f"{method}: no parameter changed"

    if method == "rloo":
        # r_i - mean of the other G-1: e.g. rewards [1, 0, 0, 0] -> [1, -1/3, -1/3, -1/3]
        loo = scores - (scores.sum(-1, keepdim=True) - scores) / (G - 1)
        assert sorted_list(batch.advantages) == pytest.approx(sorted_list(loo), abs=1e-6)
    if method == "reinforce_pp":
        # (r - group mean) / std of those differences over the whole batch (all 32 rows)
        centred = scores - scores.mean(-1, keepdim=True)
        expected = centred / (centred.std() + 1e-6)
        assert sorted_list(batch.advantages) == pytest.approx(sorted_list(expected), abs=1e-5)
    if method == "dr_grpo":
        # A = r - mean (no std)
        centred = scores - scores.mean(-1, keepdim=True)
        assert sorted_list(batch.advantages) == pytest.approx(sorted_list(centred), abs=1e-6)
        # second PPO pass (ratio != 1): clipped surrogate max(-A r, -A clip(r, 0.8, 1.2)) per token, summed
        # over the batch and divided by the CONSTANT max_new_tokens * #rows (48 * 32), not by row lengths
        second = probe.batches[1]
        adv = second.advantages[:, None]  # [n, 1]
        ratio = probe.ratios[1]  # [n, T]
        token_loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.2)) * second.response_mask
        expected = float(token_loss.sum() / (MAX_NEW * len(second)))
        assert probe.logged[1]["actor/pg_loss"] == pytest.approx(expected, abs=1e-6)
        per_row_mean = float((token_loss.sum(-1) / second.response_mask.sum(-1)).mean())  # GRPO's normaliser
        assert abs(expected - per_row_mean) > 1e-5
    if method == "dapo":
        # exactly the mixed groups (0 < #correct < G) take the policy gradient, whole groups of 4
        mixed = int(((scores > 0).any(-1) & (scores < 1).any(-1)).sum())
        assert int(batch.pg_mask.sum()) == G * min(mixed, PROMPTS)
        pg_adv = batch.advantages[batch.pg_mask.bool()]
        assert (pg_adv.view(-1) != 0).any()
        # every other row is in the batch only for its EchoClip (or to fill the micro-batch count: none here)
        others = ~batch.pg_mask.bool()
        assert bool(batch.clip_mask[others].any(-1).all())
    if method == "gspo":
        # second PPO pass (off-policy): the logged ratio max is the max SEQUENCE ratio exp(mean_t log ratio),
        # below the token-level max it would be for PPO-clip
        assert probe.logged[1]["actor/ratio_max"] == pytest.approx(probe.seq_ratio_max[1], abs=1e-5)
        assert probe.token_ratio_max[1] > probe.seq_ratio_max[1] + 1e-5
    if method == "luffy":
        # one expert row per prompt (8 prompts) joins its group of 4 rollouts
        assert int(batch.off_policy_mask.any(-1).sum()) == PROMPTS
    if method == "grpo":
        assert batch.ref_logp is not None
        # the only step starts from the reference weights: k3 KL is 0 up to float noise
        assert probe.logged[0]["actor/kl"] == pytest.approx(0.0, abs=1e-6)
