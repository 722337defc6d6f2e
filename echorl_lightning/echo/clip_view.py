"""Where each EchoClip sits in its rollout, for pictures of the clips.

Pure tensor math over one rollout batch (N rows, T response tokens, S = T step slots), built on
:func:`~echorl_lightning.echo.steps.split_steps` so steps and step entropies are exactly those the clip
selector saw. Definitions follow :mod:`echorl_lightning.echo.stats`:

* the **peak step** of a clip row is the step that holds the clip's last token (the step s* the selector
  chose; for the default ``peak`` selector the highest-entropy step of the group);
* its **relative position** is ``k / (K - 1)`` (k its 0-based index, K the row's steps; 0 for a one-step
  rollout), so the mean of :attr:`ClipView.peak_pos` over the clip rows is ``echo/peak_step_pos``;
* the **clip end** is the index of the clip's last response token;
* a group is **advantage-degenerated** when its G' verifier scores are all equal (every group-relative
  advantage is 0).

This file implements :func:`clip_view` (per-row step spans, peak step, clip end) and
:func:`degenerate_clip_rows` (the clip rows of the first few degenerate groups). Left out: anything that
draws or decodes (:mod:`echorl_lightning.echo.render`), and degeneracy after reward shaping (DAPO's
overlong penalty changes rewards, not the verifier scores read here).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from echorl_lightning.echo.steps import Steps, split_steps


@dataclass(frozen=True)
class ClipView:
    """The steps and the clip of every row of a rollout batch.

    Attributes:
        steps: the :class:`Steps` of the rows (step index per token, length, mean entropy, count).
        start: ``[N, S]`` long, index of the first token of step s (T where the step does not exist).
        stop: ``[N, S]`` long, one past the last token of step s (0 where the step does not exist).
        response_len: ``[N]`` long, the tokens covered by steps (the mask handed in).
        clip_end: ``[N]`` long, index of the clip's last token; -1 on rows without a clip.
        peak_step: ``[N]`` long, index of the step holding ``clip_end``; -1 on rows without a clip.
        peak_pos: ``[N]`` float32, ``peak_step / (num_steps - 1)`` (0 for one step); 0 on rows without a clip.
    """

    steps: Steps
    start: Tensor
    stop: Tensor
    response_len: Tensor
    clip_end: Tensor
    peak_step: Tensor
    peak_pos: Tensor

    @property
    def has_clip(self) -> Tensor:
        """``[N]`` bool, rows holding a clip."""
        return self.clip_end >= 0


def clip_view(entropy: Tensor, step_mask: Tensor, step_end: Tensor, clip_mask: Tensor) -> ClipView:
    """Steps, step spans, peak step and clip end of every row.

    Args:
        entropy: ``[N, T]`` float, token entropy (values off ``step_mask`` are ignored).
        step_mask: ``[N, T]`` bool/int/float, 1 on the response tokens that form steps (the rollout callback
            excludes EOS).
        step_end: ``[N, T]`` bool, True at a token that ends a step.
        clip_mask: ``[N, T]`` bool, the EchoClip tokens (a prefix of at most one step-aligned span per row);
            tokens off ``step_mask`` are ignored.

    Returns:
        The :class:`ClipView` of the batch.
    """
    if clip_mask.shape != entropy.shape:
        raise ValueError(
            f"clip_mask has shape {tuple(clip_mask.shape)}, expected {tuple(entropy.shape)} (entropy)"
        )
    steps = split_steps(entropy, step_mask, step_end)
    n, t = entropy.shape
    mask = step_mask.bool()
    pos = torch.arange(t, device=entropy.device).expand(n, t)  # [N, T]
    flat = (
        torch.arange(n, device=entropy.device)[:, None] * t + steps.step_id.clamp(min=0)
    ).flatten()  # [N*T]
    first = torch.where(mask, pos, t).flatten()  # [N*T], T off the mask so amin ignores it
    last = torch.where(mask, pos + 1, 0).flatten()  # [N*T], 0 off the mask so amax ignores it
    start = pos.new_full((n * t,), t).scatter_reduce_(0, flat, first, reduce="amin").view(n, t)  # [N, S]
    stop = pos.new_zeros(n * t).scatter_reduce_(0, flat, last, reduce="amax").view(n, t)  # [N, S]

    clip = clip_mask.bool() & mask  # [N, T]
    clip_end = torch.where(clip, pos, -1).amax(dim=-1) if t > 0 else pos.new_full((n,), -1)  # [N]
    has_clip = clip_end >= 0  # [N]
    at_end = steps.step_id.gather(1, clip_end.clamp(min=0)[:, None]).squeeze(1) if t > 0 else clip_end  # [N]
    peak_step = torch.where(has_clip, at_end, -1)  # [N]
    rel = peak_step.float() / (steps.num_steps - 1).clamp(min=1).float()  # [N]
    peak_pos = torch.where(has_clip, rel, 0.0)  # [N]
    return ClipView(
        steps=steps,
        start=start,
        stop=stop,
        response_len=mask.sum(dim=-1),
        clip_end=clip_end,
        peak_step=peak_step,
        peak_pos=peak_pos,
    )


def degenerate_clip_rows(scores: Tensor, clip_mask: Tensor, group_size: int, max_groups: int) -> Tensor:
    """The clip row of each of the first ``max_groups`` advantage-degenerated groups that hold a clip.

    Args:
        scores: ``[N]`` float, verifier scores, groups of ``group_size`` contiguous rows.
        clip_mask: ``[N, T]`` bool, the EchoClip tokens.
        group_size: G', rows per group; must divide N.
        max_groups: how many groups at most (>= 0).

    Returns:
        ``[M]`` long row indices, M <= ``max_groups``, in group order; per group its first clip row.
    """
    n = scores.shape[0]
    if group_size < 1 or n % group_size:
        raise ValueError(f"group_size={group_size} must be >= 1 and divide the number of rows N={n}")
    if max_groups < 0:
        raise ValueError(f"max_groups must be >= 0, got {max_groups}")
    groups = scores.view(n // group_size, group_size)  # [B, G']
    degenerate = (groups == groups[:, :1]).all(dim=1)  # [B]
    row_clip = clip_mask.bool().any(dim=-1).view(n // group_size, group_size)  # [B, G']
    members = torch.arange(group_size, device=scores.device)  # [G']
    first = torch.where(row_clip, members, group_size).amin(dim=1)  # [B], G' where the group has no clip
    keep = degenerate & (first < group_size)  # [B]
    group_idx = keep.nonzero().flatten()[:max_groups]  # [M]
    return group_idx * group_size + first[group_idx]  # [M]
