"""Rollout statistics of one batch against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from echorl_lightning.rollout.stats import rollout_metrics


def test_rollout_metrics_hand_computed() -> None:
    # 3 groups of 2: [1, 1] all-success, [0, 0] all-fail, [1, 0] mixed
    scores = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    rewards = scores - torch.tensor([0.0, 0.5, 0.0, 0.0, 0.0, 0.0])  # one shaped reward
    truncated = torch.tensor([False, False, True, False, False, False])
    lengths = torch.tensor([4, 6, 10, 2, 3, 5])
    off = torch.zeros(6, dtype=torch.bool)
    m = rollout_metrics(scores, rewards, truncated, lengths, off, group_size=2)
    assert float(m["reward/mean"]) == pytest.approx(3 / 6)
    assert float(m["reward/shaped_mean"]) == pytest.approx(2.5 / 6)
    assert float(m["rollout/frac_all_success"]) == pytest.approx(1 / 3)
    assert float(m["rollout/frac_all_fail"]) == pytest.approx(1 / 3)
    assert float(m["rollout/response_length"]) == pytest.approx(30 / 6)  # 4+6+10+2+3+5 = 30
    assert float(m["rollout/truncated_frac"]) == pytest.approx(1 / 6)


def test_expert_rows_are_left_out_of_every_statistic() -> None:
    # 2 groups of 2 rollouts + 1 expert row (always correct, long): [0, 1 | expert], [1, 1 | expert]
    scores = torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    off = torch.tensor([False, False, True, False, False, True])
    lengths = torch.tensor([2, 4, 100, 6, 8, 100])
    m = rollout_metrics(scores, scores, torch.zeros(6, dtype=torch.bool), lengths, off, group_size=3)
    assert float(m["reward/mean"]) == pytest.approx(3 / 4)
    assert float(m["rollout/frac_all_success"]) == pytest.approx(1 / 2)  # group 2 only: the expert is ignored
    assert float(m["rollout/frac_all_fail"]) == pytest.approx(0.0)
    assert float(m["rollout/response_length"]) == pytest.approx(20 / 4)  # 2+4+6+8


def test_success_reward_decides_what_counts_as_success() -> None:
    scores = torch.tensor([0.5, 0.5, 1.0, 0.5])
    m = rollout_metrics(
        scores,
        scores,
        torch.zeros(4, dtype=torch.bool),
        torch.ones(4),
        torch.zeros(4, dtype=torch.bool),
        2,
        0.5,
    )
    assert float(m["rollout/frac_all_success"]) == pytest.approx(1 / 2)


def test_step_valid_frac_counts_successful_judged_rollouts_only() -> None:
    # rows: success+valid, success+faulty step, success+unjudged, failure+valid -> 1 valid of 2 judged successes
    scores = torch.tensor([1.0, 1.0, 1.0, 0.0])
    verdicts = torch.tensor([1.0, 0.0, float("nan"), 1.0])  # NaN: not judged
    zeros = torch.zeros(4, dtype=torch.bool)
    m = rollout_metrics(scores, scores, zeros, torch.ones(4), zeros, 2, step_valid=verdicts)
    assert float(m["rollout/step_valid_frac"]) == pytest.approx(1 / 2)
    assert "rollout/step_valid_frac" not in rollout_metrics(scores, scores, zeros, torch.ones(4), zeros, 2)
    # nothing judged: still logged (every rank logs the same keys), as NaN
    none_judged = rollout_metrics(
        scores, scores, zeros, torch.ones(4), zeros, 2, step_valid=torch.full((4,), float("nan"))
    )
    assert torch.isnan(none_judged["rollout/step_valid_frac"])
