"""Advantage estimators: hand-computed values, a per-element loop reference, degenerate groups, errors."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from echorl_lightning.algorithms import ADVANTAGES, compute_advantages

TOL = 1e-5


def _loop_reference(name: str, rewards: list[list[float]]) -> list[list[float]]:
    """Slow, obviously-correct per-element advantages (the formulas of ECHORL.md, one group at a time)."""
    out: list[list[float]] = []
    for group in rewards:
        g = len(group)
        mean = sum(group) / g
        all_equal = all(r == group[0] for r in group)
        row = []
        for i, r in enumerate(group):
            if all_equal or (name == "grpo" and g == 1):
                row.append(0.0)
            elif name == "grpo":
                row.append((r - mean) / (statistics.stdev(group) + 1e-6))
            elif name in ("dr_grpo", "reinforce_pp_baseline"):
                row.append(r - mean)
            elif name == "rloo":
                others = [group[j] for j in range(g) if j != i]
                row.append(r - sum(others) / len(others))
        out.append(row)
    if name == "reinforce_pp_baseline":
        flat = [a for row in out for a in row]
        std = statistics.stdev(flat) if len(flat) > 1 else 0.0
        out = [[a / (std + 1e-6) if len(flat) > 1 else 0.0 for a in row] for row in out]
    return out


def _random_rewards(seed: int, b: int, g: int) -> torch.Tensor:
    """Binary rewards with forced all-success and all-fail groups, plus a continuous-reward row."""
    gen = torch.Generator().manual_seed(seed)
    rewards = (torch.rand(b, g, generator=gen) > 0.5).float()  # [B, G]
    rewards[0] = 1.0  # all-success group
    rewards[1] = 0.0  # all-fail group
    rewards[2] = torch.rand(g, generator=gen)  # non-binary rewards
    return rewards


def test_grpo_hand_computed() -> None:
    # group [1, 0, 0, 1]: mean 0.5, deviations +-0.5, unbiased var = 4 * 0.25 / 3 = 1/3, std = 0.5773503
    # advantage = +-0.5 / (0.5773503 + 1e-6) = +-0.8660239
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    expected = torch.tensor([[0.8660239, -0.8660239, -0.8660239, 0.8660239]])
    torch.testing.assert_close(compute_advantages("grpo", rewards), expected, atol=TOL, rtol=0)


def test_dr_grpo_hand_computed() -> None:
    # group [1, 0, 0, 0]: mean 0.25 -> [0.75, -0.25, -0.25, -0.25]
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    expected = torch.tensor([[0.75, -0.25, -0.25, -0.25]])
    torch.testing.assert_close(compute_advantages("dr_grpo", rewards), expected, atol=TOL, rtol=0)


def test_rloo_hand_computed() -> None:
    # group [1, 0, 0]: 1 - mean(0, 0) = 1; 0 - mean(1, 0) = -0.5; 0 - mean(1, 0) = -0.5
    rewards = torch.tensor([[1.0, 0.0, 0.0]])
    expected = torch.tensor([[1.0, -0.5, -0.5]])
    torch.testing.assert_close(compute_advantages("rloo", rewards), expected, atol=TOL, rtol=0)


def test_reinforce_pp_baseline_hand_computed() -> None:
    # groups [1, 0] and [1, 1]: centred [0.5, -0.5] and [0, 0]; batch values {0.5, -0.5, 0, 0} have mean 0,
    # unbiased var = (0.25 + 0.25) / 3 = 1/6, std = 0.4082483; 0.5 / (0.4082483 + 1e-6) = 1.2247418
    rewards = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    expected = torch.tensor([[1.2247418, -1.2247418], [0.0, 0.0]])
    torch.testing.assert_close(
        compute_advantages("reinforce_pp_baseline", rewards), expected, atol=TOL, rtol=0
    )


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_loop_reference(name: str, seed: int) -> None:
    rewards = _random_rewards(seed, b=6, g=5)
    expected = torch.tensor(_loop_reference(name, rewards.tolist()))
    torch.testing.assert_close(compute_advantages(name, rewards), expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"])
def test_all_equal_groups_are_exactly_zero(name: str) -> None:
    # in float32, mean([0.9, 0.9, 0.9]) = 0.9 - 6e-8: without an explicit zero, GRPO would give
    # 6e-8 / (std 4e-8 + 1e-6) = 0.06 to every rollout of that degenerate group
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.9, 0.9, 0.9], [0.0, 1.0, 0.0]])
    advantages = compute_advantages(name, rewards)
    assert torch.equal(advantages[:3], torch.zeros(3, 3))
    assert not torch.equal(advantages[3], torch.zeros(3))


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "reinforce_pp_baseline"])
def test_single_rollout_groups_give_zero(name: str) -> None:
    # G = 1: no group to compare against (unbiased std undefined) -> advantage 0, never NaN
    rewards = torch.tensor([[1.0], [0.0]])
    assert torch.equal(compute_advantages(name, rewards), torch.zeros(2, 1))


def test_rloo_needs_two_rollouts() -> None:
    with pytest.raises(ValueError, match="G >= 2"):
        compute_advantages("rloo", torch.tensor([[1.0], [0.0]]))


def test_grpo_scale_invariance() -> None:
    # GRPO normalises by the group std: scaling rewards by 3 leaves advantages unchanged (up to the 1e-6 eps)
    rewards = _random_rewards(3, b=4, g=4)
    torch.testing.assert_close(
        compute_advantages("grpo", 3.0 * rewards), compute_advantages("grpo", rewards), atol=1e-5, rtol=0
    )


def test_dr_grpo_groups_sum_to_zero() -> None:
    rewards = _random_rewards(4, b=5, g=6)
    sums = compute_advantages("dr_grpo", rewards).sum(dim=1)
    assert sums.abs().max() < 1e-6
    assert math.isfinite(float(sums.sum()))


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'.*dr_grpo, grpo"):
        compute_advantages("ppo", torch.zeros(2, 2))
    assert ADVANTAGES.names() == ["dr_grpo", "grpo", "reinforce_pp_baseline", "rloo"]


def test_bad_rewards_raise() -> None:
    with pytest.raises(ValueError, match=r"\[B, G\]"):
        compute_advantages("grpo", torch.zeros(4))
    with pytest.raises(ValueError, match="floating point"):
        compute_advantages("grpo", torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="B >= 1"):
        compute_advantages("grpo", torch.zeros(0, 4))
