"""The forwards over rollouts: the training forward and the no-grad passes (old log-probs, reference).

:func:`response_logprobs` is :func:`~echorl_lightning.training.forward.policy_response_logprobs` on a
:class:`~echorl_lightning.rollout.batch.TokenBatch`, run as an FSDP2 root's forward where the policy is sharded;
:func:`score_rollouts` runs it without gradients over a whole rollout batch, a few rows at a time, in eval mode
and in the trainer's precision context. :class:`ForwardConfig` says how the log-probs are computed.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from echorl_lightning.rollout.batch import TokenBatch
from echorl_lightning.training.forward import policy_response_logprobs
from echorl_lightning.training.sharding import call_through_root, reshard


@dataclass(frozen=True)
class ForwardConfig:
    """How a forward over rollouts computes its log-probs.

    Attributes:
        chunk_size: rows of [n*T] per log-prob/entropy chunk; None: ``ops.auto_chunk_size``.
        full_logits: the model's own logits (the reference path) instead of the decoder's hidden states.
    """

    chunk_size: int | None = None
    full_logits: bool = False


def response_logprobs(
    model: nn.Module, batch: TokenBatch, temperature: float, forward: ForwardConfig
) -> tuple[Tensor, Tensor]:
    """:func:`policy_response_logprobs` of a batch's rows; under FSDP2 the hidden path skips the root's
    forward, so it runs as the root's forward (``training.sharding.call_through_root``).

    Returns:
        ``(logp, entropy)``, each [n, T] float32; entropy is detached.
    """

    def run() -> tuple[Tensor, Tensor]:
        return policy_response_logprobs(
            model,
            batch.input_ids,
            batch.attention_mask,
            batch.position_ids,
            batch.prompt_len,
            batch.responses,
            temperature,
            chunk_size=forward.chunk_size,
            full_logits=forward.full_logits,
        )

    return run() if forward.full_logits else call_through_root(model, run)


@torch.no_grad()
def score_rollouts(
    model: nn.Module,
    batch: TokenBatch,
    *,
    temperature: float,
    batch_size: int,
    forward: ForwardConfig,
    device: torch.device,
    context: Callable[[], AbstractContextManager[object]],
) -> tuple[Tensor, Tensor]:
    """The no-grad pass over rollouts: log-probs and token entropy of every row, in eval mode.

    Args:
        model: the network (the policy, or the frozen reference model).
        batch: the N rollout rows (on any device).
        temperature: the rollout temperature tau.
        batch_size: rows per forward.
        forward: how the log-probs are computed.
        device: where the forward runs.
        context: the trainer's precision context (the update's own), so an exactly on-policy update sees
            ratio 1.

    Returns:
        ``(logp, entropy)``, each [N, T] float32 on the CPU.
    """
    was_training = model.training
    model.eval()
    logps, ents = [], []
    try:
        with context():
            for start in range(0, len(batch), batch_size):
                part = batch.rows(torch.arange(start, min(start + batch_size, len(batch))))
                lp, ent = response_logprobs(model, part.to(device), temperature, forward)
                logps.append(lp.float().cpu())
                ents.append(ent.float().cpu())
    finally:
        model.train(was_training)
        reshard(model)  # FSDP2: the gathered weights are not needed until the next pass
    return torch.cat(logps), torch.cat(ents)
