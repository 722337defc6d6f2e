"""EchoClips of one rollout batch from the EchoRL settings.

:func:`echo_clip_rows` applies an :class:`~echorl_lightning.training.config.EchoConfig` to a padded rollout
batch: steps end at tokens holding the step delimiter, EOS is excluded from steps, truncated and expert rows are
never eligible, and the selector picks at most one clip per eligible group. The math is
``echorl_lightning.echo``'s; this function only binds the config and the batch to it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from echorl_lightning.echo import select_echo_clips, step_end_mask_from_tokens
from echorl_lightning.rollout.batch import TokenBatch
from echorl_lightning.training.config import EchoConfig


def echo_clip_rows(
    echo: EchoConfig,
    tokens: TokenBatch,
    entropy: Tensor,
    scores: Tensor,
    ineligible: Tensor,
    group_size: int,
    eos_id: int,
    delimiters: list[int],
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor]:
    """EchoClips from verifier successes.

    Args:
        echo: the EchoRL settings (an all-False clip mask when ``echo.enabled`` is False).
        tokens: the N padded rows.
        entropy: [N, T] token entropy at the rollout temperature.
        scores: [N] verifier scores, groups of ``group_size`` contiguous rows.
        ineligible: [N] bool, rows that may never hold a clip (truncated, expert rows).
        group_size: G', rows per group.
        eos_id: the EOS token (excluded from steps).
        delimiters: token ids whose text holds the step delimiter.
        generator: seeds the ``random`` selector.

    Returns:
        ``(clip_mask [N, T] bool, step_mask [N, T] float, step_end [N, T] bool)``.
    """
    step_mask = tokens.response_mask * (tokens.responses != eos_id).float()  # [N, T] EOS excluded
    step_end = step_end_mask_from_tokens(tokens.responses, delimiters)  # [N, T]
    if not echo.enabled:
        return torch.zeros(tokens.responses.shape, dtype=torch.bool), step_mask, step_end
    clip_mask = select_echo_clips(
        entropy,
        step_mask,
        step_end,
        scores,
        group_size,
        apply_to=echo.apply_to,
        selector=echo.selector,
        success_reward=echo.success_reward,
        min_step_tokens=echo.min_step_tokens,
        truncated=ineligible,
        generator=generator,
    )
    return clip_mask, step_mask, step_end
