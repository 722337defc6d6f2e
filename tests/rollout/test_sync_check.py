"""The engine-vs-trainer check and the truncated importance-sampling correction, on hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from echorl_lightning.algorithms.presets import resolve_method
from echorl_lightning.rollout.settings import RolloutSettings
from echorl_lightning.rollout.sync_check import (
    engine_check,
    mismatch_metrics,
    truncated_is_weight,
)
from echorl_lightning.training.loss import rlvr_echo_loss

TRAINER = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.3, 0.0]])  # [2, 3]
ENGINE = torch.tensor([[-1.5, -2.0, -0.1], [-3.0, -0.3, 0.0]])


def test_mismatch_metrics_over_the_masked_tokens() -> None:
    mask = torch.tensor([[True, True, False], [False, False, False]])
    metrics = mismatch_metrics(TRAINER, ENGINE, mask)
    # |-1.0 - -1.5| = 0.5 and |-2.0 - -2.0| = 0: mean 0.25, max 0.5 (the unmasked 0.4 and 2.7 are ignored)
    assert metrics["rollout/engine_logprob_diff_mean"].item() == pytest.approx(0.25)
    assert metrics["rollout/engine_logprob_diff_max"].item() == pytest.approx(0.5)
    empty = mismatch_metrics(TRAINER, ENGINE, torch.zeros(2, 3, dtype=torch.bool))
    assert empty["rollout/engine_logprob_diff_mean"].item() == 0.0


def test_truncated_is_weight_by_hand() -> None:
    mask = torch.tensor([[True, True, True], [True, False, False]])
    weight = truncated_is_weight(TRAINER, ENGINE, mask, cap=2.0)
    # exp(-1.0 + 1.5) = e^0.5 = 1.6487; exp(0) = 1; exp(-0.5 + 0.1) = e^-0.4 = 0.6703;
    # row 1: exp(-0.3 + 3.0) = e^2.7 = 14.88 -> capped at 2; unmasked tokens keep 1
    expected = torch.tensor([[math.exp(0.5), 1.0, math.exp(-0.4)], [2.0, 1.0, 1.0]])
    assert torch.allclose(weight, expected)


def test_engine_check_excludes_expert_rows_stops_a_desynced_engine_and_returns_weights() -> None:
    response_mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    sampled = torch.tensor([[-1.5, -2.0, 0.0], [0.0, 0.0, 0.0]])  # row 1 is an expert row: nothing sampled
    off_policy = torch.tensor([False, True])
    metrics, weight = engine_check(TRAINER, sampled, response_mask, off_policy, tolerance=0.3, is_cap=1.5)
    # compared: row 0's two tokens, |0.5| and 0 -> mean 0.25 <= 0.3; weights e^0.5 = 1.65 -> capped 1.5, and 1
    assert metrics["rollout/engine_logprob_diff_mean"].item() == pytest.approx(0.25)
    assert torch.allclose(weight, torch.tensor([[1.5, 1.0, 1.0], [1.0, 1.0, 1.0]]))
    assert metrics["rollout/engine_is_weight_mean"].item() == pytest.approx((1.5 + 1.0) / 2)
    assert metrics["rollout/engine_is_capped_frac"].item() == pytest.approx(0.5)
    with pytest.raises(
        RuntimeError, match=r"differ from the policy's by 0.25 nats on average \(max 0.5\).*sync"
    ):
        engine_check(TRAINER, sampled, response_mask, off_policy, tolerance=0.2, is_cap=None)
    assert engine_check(TRAINER, sampled, response_mask, off_policy, tolerance=None, is_cap=None)[1] is None


def test_engine_check_without_engine_logprobs() -> None:
    mask, off = torch.ones(2, 3), torch.zeros(2, dtype=torch.bool)
    assert engine_check(TRAINER, None, mask, off, tolerance=0.5, is_cap=None) == ({}, None)  # HF engine
    assert engine_check(None, torch.zeros(2, 3), mask, off, tolerance=0.5, is_cap=None) == (
        {},
        None,
    )  # shortcut
    with pytest.raises(ValueError, match="engine_is_cap needs an engine that reports its log-probs"):
        engine_check(TRAINER, None, mask, off, tolerance=0.5, is_cap=2.0)
    for bad in (dict(engine_logprob_tolerance=0.0), dict(engine_is_cap=-1.0)):
        with pytest.raises(ValueError, match=r"engine_\w+=-?[\d.]+: must be a finite number > 0"):
            RolloutSettings(**bad)


def test_is_weight_scales_each_tokens_policy_gradient_loss() -> None:
    # GRPO's token loss on ratio 1 (logp == old_logp) is -A per token; seq-mean-token-mean of one row of 2 tokens,
    # weights (2, 0.5), L = -(2 * A + 0.5 * A) / 2 = -1.25 * A; A = 1 -> -1.25 (without weights: -1.0)
    method = resolve_method("grpo")
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    common = dict(
        method=method,
        echo_coef=0.0,
        max_len=2,
        num_tokens=torch.tensor(2.0),
        num_seqs=torch.tensor(1.0),
        num_clips=torch.tensor(0.0),
    )
    args = (
        logp,
        logp.detach(),
        torch.tensor([1.0]),
        torch.ones(1, 2),
        torch.ones(1),
        torch.zeros(1, 2, dtype=torch.bool),
    )
    plain, _ = rlvr_echo_loss(*args, **common)
    weighted, _ = rlvr_echo_loss(*args, **common, is_weight=torch.tensor([[2.0, 0.5]]))
    assert plain.item() == pytest.approx(-1.0) and weighted.item() == pytest.approx(-1.25)
