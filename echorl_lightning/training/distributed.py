"""Batch statistics over all data-parallel ranks for the rollout step.

:func:`global_advantages`: each rank holds its own groups; estimators with a batch statistic (REINFORCE++'s
std over the whole batch) must see every rank's rewards, so the rewards are gathered (ranks may hold different
numbers of groups after DAPO's extra rounds), the estimator runs on the global batch and each rank keeps its
own rows. Group-local estimators give the same values either way.

:func:`all_ranks_min`: a value agreed by every rank (DAPO's "enough groups" decision, so that every rank runs
the same number of generation rounds: under FSDP2 each forward is a collective).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from echorl_lightning.algorithms import compute_advantages


def global_advantages(estimator: str, rewards: Tensor, rank: int, world: int) -> Tensor:
    """Advantages of this rank's groups computed over the global batch.

    Args:
        estimator: a name in the advantage registry.
        rewards: [B', G'] this rank's rewards.
        rank: this rank's global rank.
        world: the number of data-parallel ranks.

    Returns:
        [B', G'] advantages.
    """
    if world == 1 or not dist.is_available() or not dist.is_initialized():
        return compute_advantages(estimator, rewards)
    parts: list[Tensor | None] = [None] * world
    dist.all_gather_object(parts, rewards.cpu())
    offset = sum(int(p.shape[0]) for p in parts[:rank])
    full = compute_advantages(estimator, torch.cat(parts))  # [sum B', G']
    return full[offset : offset + rewards.shape[0]]


def all_ranks_min(value: Tensor, device: torch.device) -> float:
    """The minimum of a 0-dim ``value`` over all ranks (the value itself on one process)."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return float(value)
    out = value.detach().float().reshape(1).to(device)
    dist.all_reduce(out, op=dist.ReduceOp.MIN)
    return float(out.item())
