"""Loss aggregation modes: how a ``[N, T]`` per-token loss becomes the scalar that is backpropagated.

The mode names are verl's ``loss_agg_mode`` values.

Implemented (registry name: formula), ``m`` the response mask, ``L`` the loss matrix:

- ``token-mean``: ``sum_{i,t} L * m / num_tokens`` (DAPO: every token of the global batch weighs the same).
- ``seq-mean-token-mean``: ``sum_i (sum_t L * m / sum_t m) / num_seqs`` (GRPO, GSPO).
- ``seq-mean-token-sum``: ``sum_i (sum_t L * m) / num_seqs``.
- ``seq-mean-token-sum-norm``: ``sum_i (sum_t L * m / max_len) / num_seqs`` (Dr. GRPO; ``max_len`` should
  be the configured response-length limit, a constant across steps; it defaults to this batch's T).

Global-batch correctness: ``num_tokens`` / ``num_seqs`` default to this batch's counts (``m.sum()``,
``N``). Under gradient accumulation or DDP the trainer passes the counts of the whole optimizer step
(all micro-batches, all ranks), so the sum of the micro-batch losses (times the world size, which DDP's
gradient averaging divides back out) equals the loss of the whole step computed at once.

Rows whose mask is all zero (e.g. a group kept only for its EchoClip after DAPO's filter) contribute 0
to every mode. By default they still count in ``num_seqs = N`` (as in verl, and consistent with a
zero-advantage row, which also counts); a trainer that wants them excluded passes ``num_seqs`` = the
number of rows with at least one token. A count below 1 (an empty batch) is treated as 1, so a batch with
no tokens gives a loss of exactly 0 that still backpropagates (zero gradients, no NaN).

Left out: per-group normalisers and verl's ``loss_scale_factor`` (use ``max_len`` for a constant
normaliser).
"""

from __future__ import annotations

from typing import Protocol

import torch

from echorl_lightning.registry import Registry


class AggregationFn(Protocol):
    """The one signature of the aggregation axis (see :func:`aggregate_loss` for the arguments)."""

    def __call__(
        self,
        loss_mat: torch.Tensor,
        response_mask: torch.Tensor,
        max_len: int | None,
        num_tokens: float | torch.Tensor | None,
        num_seqs: float | torch.Tensor | None,
    ) -> torch.Tensor: ...


AGGREGATIONS: Registry[AggregationFn] = Registry("loss aggregation mode")
register_aggregation = AGGREGATIONS.register

AggModeName = str
"""A name registered in ``AGGREGATIONS`` (checked when a ``MethodConfig`` is built)."""


def _count(
    value: float | torch.Tensor | None, default: torch.Tensor | float, like: torch.Tensor
) -> torch.Tensor:
    """A divisor as a 0-dim tensor on ``like``'s device and dtype, at least 1.

    Args:
        value: the caller's count (float or 0-dim tensor), or None for ``default``.
        default: the count of this batch.
        like: a tensor giving dtype and device.

    Returns:
        0-dim tensor ``max(value, 1)``.
    """
    count = default if value is None else value
    return torch.as_tensor(count, dtype=like.dtype, device=like.device).clamp(min=1.0)


def _masked(loss_mat: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """``loss_mat * response_mask``, exactly 0 (not NaN) where the mask is 0.

    Args:
        loss_mat: ``[N, T]`` per-token loss.
        response_mask: ``[N, T]`` mask.

    Returns:
        ``[N, T]`` masked loss.
    """
    mask = response_mask.to(loss_mat.dtype)
    return torch.where(response_mask != 0, loss_mat * mask, torch.zeros_like(loss_mat))


@register_aggregation("token-mean")
def token_mean(
    loss_mat: torch.Tensor,
    response_mask: torch.Tensor,
    max_len: int | None,
    num_tokens: float | torch.Tensor | None,
    num_seqs: float | torch.Tensor | None,
) -> torch.Tensor:
    """``sum(L * m) / num_tokens``.

    Args:
        loss_mat: ``[N, T]`` per-token loss.
        response_mask: ``[N, T]`` 1 on response tokens.
        max_len: ignored.
        num_tokens: divisor (default ``response_mask.sum()``).
        num_seqs: ignored.

    Returns:
        0-dim loss.
    """
    masked = _masked(loss_mat, response_mask)
    return masked.sum() / _count(num_tokens, response_mask.sum(), loss_mat)


@register_aggregation("seq-mean-token-mean")
def seq_mean_token_mean(
    loss_mat: torch.Tensor,
    response_mask: torch.Tensor,
    max_len: int | None,
    num_tokens: float | torch.Tensor | None,
    num_seqs: float | torch.Tensor | None,
) -> torch.Tensor:
    """``sum_i (sum_t L * m / sum_t m) / num_seqs``; a row with no tokens contributes 0.

    Args:
        loss_mat: ``[N, T]`` per-token loss.
        response_mask: ``[N, T]`` 1 on response tokens.
        max_len: ignored.
        num_tokens: ignored.
        num_seqs: divisor (default N).

    Returns:
        0-dim loss.
    """
    lengths = response_mask.to(loss_mat.dtype).sum(dim=1).clamp(min=1.0)  # [N]
    seq_losses = _masked(loss_mat, response_mask).sum(dim=1) / lengths  # [N]
    return seq_losses.sum() / _count(num_seqs, loss_mat.shape[0], loss_mat)


@register_aggregation("seq-mean-token-sum")
def seq_mean_token_sum(
    loss_mat: torch.Tensor,
    response_mask: torch.Tensor,
    max_len: int | None,
    num_tokens: float | torch.Tensor | None,
    num_seqs: float | torch.Tensor | None,
) -> torch.Tensor:
    """``sum_i (sum_t L * m) / num_seqs``.

    Args:
        loss_mat: ``[N, T]`` per-token loss.
        response_mask: ``[N, T]`` 1 on response tokens.
        max_len: ignored.
        num_tokens: ignored.
        num_seqs: divisor (default N).

    Returns:
        0-dim loss.
    """
    seq_losses = _masked(loss_mat, response_mask).sum(dim=1)  # [N]
    return seq_losses.sum() / _count(num_seqs, loss_mat.shape[0], loss_mat)


@register_aggregation("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(
    loss_mat: torch.Tensor,
    response_mask: torch.Tensor,
    max_len: int | None,
    num_tokens: float | torch.Tensor | None,
    num_seqs: float | torch.Tensor | None,
) -> torch.Tensor:
    """``sum_i (sum_t L * m / max_len) / num_seqs`` (Dr. GRPO's constant normaliser).

    Args:
        loss_mat: ``[N, T]`` per-token loss.
        response_mask: ``[N, T]`` 1 on response tokens.
        max_len: the constant token normaliser (default T, this batch's width).
        num_tokens: ignored.
        num_seqs: divisor (default N).

    Returns:
        0-dim loss.
    """
    norm = loss_mat.shape[1] if max_len is None else max_len
    seq_losses = _masked(loss_mat, response_mask).sum(dim=1) / norm  # [N]
    return seq_losses.sum() / _count(num_seqs, loss_mat.shape[0], loss_mat)


def aggregate_loss(
    name: str,
    loss_mat: torch.Tensor,
    response_mask: torch.Tensor,
    max_len: int | None = None,
    *,
    num_tokens: float | torch.Tensor | None = None,
    num_seqs: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss to a scalar with the aggregation mode ``name``.

    Args:
        name: a registered aggregation-mode name (``AGGREGATIONS.names()``).
        loss_mat: ``[N, T]`` per-token loss.
        response_mask: ``[N, T]`` 1 where a token counts, 0 on padding.
        max_len: constant normaliser of ``seq-mean-token-sum-norm`` (the configured max response length;
            default T). Ignored by the other modes.
        num_tokens: global token count of the optimizer step for ``token-mean`` (default: this batch's).
        num_seqs: global sequence count of the optimizer step for the ``seq-mean-*`` modes (default: N).

    Returns:
        0-dim loss tensor, differentiable w.r.t. ``loss_mat``.
    """
    fn = AGGREGATIONS.get(name)
    if loss_mat.dim() != 2:
        raise ValueError(f"loss_mat must be [N, T], got shape {tuple(loss_mat.shape)}")
    if response_mask.shape != loss_mat.shape:
        raise ValueError(
            f"response_mask must have the shape of loss_mat {tuple(loss_mat.shape)}, "
            f"got {tuple(response_mask.shape)}"
        )
    if max_len is not None and max_len <= 0:
        raise ValueError(f"max_len must be > 0, got {max_len}")
    for key, count in (("num_tokens", num_tokens), ("num_seqs", num_seqs)):
        if isinstance(count, torch.Tensor) and count.dim() != 0:
            raise ValueError(f"{key} must be a float or a 0-dim tensor, got shape {tuple(count.shape)}")
    return fn(loss_mat, response_mask, max_len, num_tokens, num_seqs)
