"""DAPO's two batch-shaping helpers: overlong reward shaping and the dynamic-sampling group filter.

DAPO is arXiv 2503.14476.

- :func:`overlong_penalty`: the soft length penalty added to the verifier reward, with ``L_max`` the
  length limit and ``L_cache`` the buffer before it: 0 if ``|y| <= L_max - L_cache``,
  ``((L_max - L_cache) - |y|) / L_cache`` inside the buffer, -1 beyond ``L_max``.
- :func:`dynamic_sampling_keep`: which groups carry a learning signal. DAPO keeps groups with
  ``0 < #correct < G``; this is written as "the group's rewards are not all equal", which is the same for
  0/1 rewards and also works for non-binary rewards (shaped, or with the overlong penalty added).
- :func:`dynamic_sampling_rows`: the rows of the training batch under that filter, with EchoRL: the first
  ``num_groups`` kept groups take part in the policy gradient; a dropped group stays only through its EchoClip
  row (the clip is mined before the filter); dropped rows pad the batch up to a minimum row count (no
  gradient: their policy-gradient mask is 0).

Left out here (the trainer's job): the resampling loop that refills the batch with kept groups
(``MethodConfig.max_resample_rounds``).
"""

from __future__ import annotations

import torch


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer_len: int) -> torch.Tensor:
    """DAPO's soft overlong penalty, one value per response, to be added to its reward.

    Args:
        lengths: ``[N]`` response lengths in tokens (integer dtype).
        max_len: ``L_max``, the length from which the penalty is -1 (> 0).
        buffer_len: ``L_cache``, the length of the linear ramp before ``max_len`` (0 <= buffer_len <= max_len;
            0 means a hard cut: 0 up to ``max_len``, -1 beyond).

    Returns:
        ``[N]`` penalties in [-1, 0], default float dtype, on ``lengths``' device.
    """
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be [N], got shape {tuple(lengths.shape)}")
    if lengths.is_floating_point() or lengths.is_complex():
        raise ValueError(f"lengths must be an integer tensor, got dtype {lengths.dtype}")
    if max_len <= 0:
        raise ValueError(f"max_len must be > 0, got {max_len}")
    if not 0 <= buffer_len <= max_len:
        raise ValueError(f"buffer_len must be in [0, max_len={max_len}], got {buffer_len}")
    length = lengths.to(torch.get_default_dtype())  # [N]
    threshold = max_len - buffer_len
    ramp = (threshold - length) / max(buffer_len, 1)  # [N]
    penalty = torch.where(length <= threshold, torch.zeros_like(length), ramp)
    return torch.where(length > max_len, torch.full_like(length, -1.0), penalty)


def dynamic_sampling_keep(rewards: torch.Tensor) -> torch.Tensor:
    """Groups to keep under DAPO dynamic sampling: those whose rewards are not all equal.

    For 0/1 rewards this is ``0 < #correct < G``; a group of one rollout (G = 1) is never kept.

    Args:
        rewards: ``[B, G]`` rewards, the G rollouts of prompt b in row b.

    Returns:
        ``[B]`` bool, True where the group has a reward spread.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [B, G], got shape {tuple(rewards.shape)}")
    return (rewards != rewards[:, :1]).any(dim=1)


def dynamic_sampling_rows(
    scores: torch.Tensor, has_clip: torch.Tensor, num_groups: int, min_rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of a rollout batch under DAPO dynamic sampling, with EchoClip rows kept.

    Args:
        scores: ``[B', G']`` verifier scores, contiguous groups (B' groups drawn, possibly over several
            generation rounds).
        has_clip: ``[B' * G']`` bool, rows holding an EchoClip.
        num_groups: how many kept groups the batch takes (the first ones, in row order).
        min_rows: the batch must have at least this many rows (micro-batches x steps): dropped rows without a
            clip are added in row order, with no policy gradient, until it has.

    Returns:
        ``(pg_mask, keep_rows)``: ``[B' * G']`` float, 1 on rows of the chosen groups; ``[B' * G']`` bool, the
        rows that go into the batch (chosen rows, clip rows, then padding rows).
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [B', G'], got shape {tuple(scores.shape)}")
    if has_clip.shape != (scores.numel(),):
        raise ValueError(f"has_clip must be [{scores.numel()}], got shape {tuple(has_clip.shape)}")
    keep_group = dynamic_sampling_keep(scores)  # [B']
    chosen = keep_group & (keep_group.cumsum(0) <= num_groups)  # [B'] the first num_groups kept groups
    pg_mask = chosen.repeat_interleave(scores.shape[1]).float()  # [N]
    keep_rows = pg_mask.bool() | has_clip  # [N]
    need = (min_rows - keep_rows.sum()).clamp(min=0)
    spare = ~keep_rows  # [N]
    keep_rows = keep_rows | (spare & (spare.cumsum(0) <= need))
    return pg_mask, keep_rows
