"""Outcome-reward advantage estimators of the group-relative RLVR family.

Each estimator maps one scalar reward per rollout, laid out as ``[B, G]`` (the G rollouts of a prompt in one
row), to one scalar advantage per rollout; the caller broadcasts it over the response tokens.

Implemented (registry name: formula, per group of G rewards r_1..r_G):

- ``grpo``: ``(r_i - mean) / (std + 1e-6)``, ``std`` unbiased (``torch.std``, divisor G - 1). G = 1 has
  no group to compare against (the unbiased std is undefined): every advantage is 0.
- ``dr_grpo``: ``r_i - mean`` (Dr. GRPO, no std division).
- ``rloo``: ``r_i - mean of the other G - 1 rewards`` (leave-one-out baseline); needs G >= 2.
- ``reinforce_pp_baseline``: ``r_i - mean``, then divided by the unbiased std of all B * G centred values
  plus 1e-6 (REINFORCE++ with a group baseline). With a single rollout in the batch the advantage is 0.

In every estimator a group whose rewards are all equal (all-success or all-fail) gets advantages of
exactly 0, not a rounding residue: such "advantage-degenerated" groups must contribute exactly no policy
gradient, which is the situation EchoRL's echo loss exists for.

Left out: token-level rewards and discounting (GAE, ReMax), process rewards, the batch re-centring of
verl's REINFORCE++ variant (the centred values already have batch mean 0), and the ``grpo`` variant
without std that verl selects with a flag (here it is the separate ``dr_grpo`` entry).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from echorl_lightning.registry import Registry

AdvantageFn = Callable[[torch.Tensor], torch.Tensor]
"""An advantage estimator: ``rewards [B, G] float -> advantages [B, G]``."""

ADVANTAGES: Registry[AdvantageFn] = Registry("advantage estimator")
register_advantage = ADVANTAGES.register

AdvEstimatorName = str
"""A name registered in ``ADVANTAGES`` (checked when a ``MethodConfig`` is built)."""

MIN_GROUP_SIZE = 2
"""The fewest rollouts per prompt a run may take: every estimator here compares a rollout with the others of
its group, so with G = 1 every advantage is 0 and the policy gradient is exactly zero."""


def group_size_problem(key: str, group_size: int) -> str | None:
    """A message when ``group_size`` (the setting ``key``) is below :data:`MIN_GROUP_SIZE`, else None."""
    if isinstance(group_size, int) and group_size >= MIN_GROUP_SIZE:
        return None
    return (
        f"{key}={group_size!r}: must be an integer >= {MIN_GROUP_SIZE}; the advantages are group-relative "
        f"({', '.join(ADVANTAGES.names())}), so a group of 1 gives zero advantages"
    )


STD_EPS = 1e-6
"""Added to a standard deviation before dividing by it (GRPO, REINFORCE++ baseline)."""


def _degenerate(rewards: torch.Tensor) -> torch.Tensor:
    """Groups whose rewards are all equal.

    Args:
        rewards: ``[B, G]`` float rewards.

    Returns:
        ``[B, 1]`` bool, True where every reward of the row equals its first one.
    """
    return (rewards == rewards[:, :1]).all(dim=1, keepdim=True)  # [B, 1]


def _centred(rewards: torch.Tensor) -> torch.Tensor:
    """``r_i - mean`` per group, exactly 0 in all-equal groups.

    Args:
        rewards: ``[B, G]`` float rewards.

    Returns:
        ``[B, G]`` centred rewards.
    """
    centred = rewards - rewards.mean(dim=1, keepdim=True)  # [B, G]
    return centred.masked_fill(_degenerate(rewards), 0.0)


@register_advantage("grpo")
def grpo_advantage(rewards: torch.Tensor) -> torch.Tensor:
    """GRPO: ``(r_i - mean) / (std + 1e-6)`` within each group, unbiased std; 0 when G = 1.

    Args:
        rewards: ``[B, G]`` float rewards.

    Returns:
        ``[B, G]`` advantages.
    """
    if rewards.shape[1] == 1:
        return torch.zeros_like(rewards)
    std = rewards.std(dim=1, keepdim=True)  # [B, 1]
    return _centred(rewards) / (std + STD_EPS)


@register_advantage("dr_grpo")
def dr_grpo_advantage(rewards: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO: ``r_i - mean`` within each group.

    Args:
        rewards: ``[B, G]`` float rewards.

    Returns:
        ``[B, G]`` advantages.
    """
    return _centred(rewards)


@register_advantage("rloo")
def rloo_advantage(rewards: torch.Tensor) -> torch.Tensor:
    """RLOO: ``r_i`` minus the mean of the other ``G - 1`` rewards of its group.

    Equivalently ``G / (G - 1) * (r_i - mean)``.

    Args:
        rewards: ``[B, G]`` float rewards, G >= 2.

    Returns:
        ``[B, G]`` advantages.
    """
    group_size = rewards.shape[1]
    if group_size < 2:
        raise ValueError(f"advantage estimator 'rloo' needs G >= 2 rollouts per prompt, got G={group_size}")
    others_sum = rewards.sum(dim=1, keepdim=True) - rewards  # [B, G]
    advantages = rewards - others_sum / (group_size - 1)  # [B, G]
    return advantages.masked_fill(_degenerate(rewards), 0.0)


@register_advantage("reinforce_pp_baseline")
def reinforce_pp_baseline_advantage(rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE++ with a group baseline: ``(r_i - mean) / (std_batch + 1e-6)``.

    ``std_batch`` is the unbiased std of all ``B * G`` centred values of the batch (0 when B * G = 1).

    Args:
        rewards: ``[B, G]`` float rewards.

    Returns:
        ``[B, G]`` advantages.
    """
    centred = _centred(rewards)  # [B, G]
    if centred.numel() < 2:
        return centred
    return centred / (centred.std() + STD_EPS)


def compute_advantages(name: str, rewards: torch.Tensor) -> torch.Tensor:
    """Advantages of the estimator ``name`` (one of ``ADVANTAGES.names()``).

    Args:
        name: a registered advantage-estimator name.
        rewards: ``[B, G]`` floating-point rewards, the G rollouts of prompt b in row b.

    Returns:
        ``[B, G]`` advantages, same dtype and device as ``rewards``, no gradient path assumed.
    """
    fn = ADVANTAGES.get(name)
    if not isinstance(rewards, torch.Tensor) or rewards.dim() != 2:
        shape = tuple(rewards.shape) if isinstance(rewards, torch.Tensor) else type(rewards).__name__
        raise ValueError(f"rewards must be a [B, G] tensor, got {shape}")
    if not rewards.is_floating_point():
        raise ValueError(f"rewards must be floating point, got dtype {rewards.dtype}")
    if rewards.shape[0] == 0 or rewards.shape[1] == 0:
        raise ValueError(f"rewards must have B >= 1 and G >= 1, got shape {tuple(rewards.shape)}")
    return fn(rewards)
