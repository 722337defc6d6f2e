"""The EchoRL echo loss: a likelihood term on the EchoClips.

``L_echo = (1 / num_clips) * sum over clips c of [ -(1/|c|) * sum_{t in c} log pi_theta(o_t | q, o_<t) ]``:
a token-mean negative log-likelihood per clip, averaged over the clips of the optimizer step. The total
loss is ``L_RLVR + echo.coef * L_echo``; the coefficient is applied by the caller.

This file implements that term only. Left out on purpose: importance ratios, clipping and any KL on the echo
term. ``num_clips`` is the clip count of the whole optimizer step (all ranks, all gradient-accumulation
micro-batches); the trainer passes it so that summing per-micro-batch losses and averaging gradients across
ranks gives the global mean. By default it is the local count.
"""

from __future__ import annotations

import torch
from torch import Tensor


def echo_loss(logp: Tensor, clip_mask: Tensor, *, num_clips: int | Tensor | None = None) -> Tensor:
    """Mean over clips of each clip's token-mean negative log-likelihood.

    Args:
        logp: ``[N, T]`` float, log-probabilities of the sampled tokens under the current policy (with grad).
            Values off ``clip_mask`` are ignored (even NaN/-inf: they are selected away, not multiplied).
        clip_mask: ``[N, T]`` bool, the EchoClip tokens (at most one clip per row).
        num_clips: the divisor, the global number of clips in the optimizer step; None counts the rows of
            ``clip_mask`` with at least one token. Values below 1 are treated as 1.

    Returns:
        A float32 scalar; exactly 0.0 (still attached to ``logp``'s graph, with zero gradient) when there is
        no clip.
    """
    if clip_mask.shape != logp.shape:
        raise ValueError(f"clip_mask has shape {tuple(clip_mask.shape)}, expected {tuple(logp.shape)} (logp)")
    clip = clip_mask.bool()
    clip_len = clip.sum(dim=-1)  # [N]
    token_nll = torch.where(clip, -logp.float(), 0.0)  # [N, T]
    row_loss = token_nll.sum(dim=-1) / clip_len.clamp(min=1)  # [N], 0 on rows without a clip
    if num_clips is None:
        divisor: int | Tensor = (clip_len > 0).sum().clamp(min=1)
    elif isinstance(num_clips, Tensor):
        divisor = num_clips.to(row_loss.device).clamp(min=1)
    else:
        divisor = max(int(num_clips), 1)
    return row_loss.sum() / divisor
