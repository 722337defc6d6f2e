"""Logging statistics of EchoRL's clips and of the step entropies.

:func:`echo_metrics` reads only tensors (the clip mask, not the selector that made it), so it describes any
clip mask. Definitions, all over the rows of the batch handed in (the trainer reduces across ranks):

* ``echo/num_clips``: rows with at least one clip token.
* ``echo/clip_tokens``: mean clip length in tokens over clip rows.
* ``echo/clip_frac``: mean over clip rows of clip length / response length (``response_mask`` tokens).
* ``echo/peak_step_entropy``: mean over clip rows of the step entropy of the clip's last step (the step
  holding the clip's last token). For the "peak" selector that is s*; for "full" it is the rollout's last
  step.
* ``echo/peak_step_pos``: mean over clip rows of ``k / (K - 1)``, where k is the 0-based index of the
  clip's last step and K the number of steps of its rollout; 0 for a single-step rollout. So 0 = the first
  step, 1 = the last.
* ``entropy/token_mean``: mean token entropy over all ``response_mask`` tokens.
* ``entropy/step_mean``: mean step entropy over all (non-empty) steps of all rows, whatever their length.

A NaN entropy marks a token whose entropy was not computed (an engine that reports none, on a row no clip
could come from): both ``entropy/*`` means leave such tokens and steps out.

With no clip, every ``echo/*`` value is 0 (``echo/num_clips`` = 0). With no response token, the two
``entropy/*`` values are 0. Left out: ``echo/loss`` (the trainer logs the loss it computed) and the
``rollout/*`` fractions (reward statistics, not clip statistics).
"""

from __future__ import annotations

import torch
from torch import Tensor

from echorl_lightning.echo.steps import split_steps

METRIC_NAMES = (
    "echo/num_clips",
    "echo/clip_tokens",
    "echo/clip_frac",
    "echo/peak_step_entropy",
    "echo/peak_step_pos",
    "entropy/token_mean",
    "entropy/step_mean",
)


def echo_metrics(
    entropy: Tensor, response_mask: Tensor, step_end_mask: Tensor, clip_mask: Tensor
) -> dict[str, Tensor]:
    """Detached float32 scalars describing the clips and the step entropies (see the module docstring).

    Args:
        entropy: ``[N, T]`` float, token entropy.
        response_mask: ``[N, T]`` bool/int, 1 on response tokens.
        step_end_mask: ``[N, T]`` bool, True at a token that ends a step.
        clip_mask: ``[N, T]`` bool, the EchoClip tokens (at most one clip per row).

    Returns:
        :data:`METRIC_NAMES` -> 0-dim tensors.
    """
    if clip_mask.shape != entropy.shape:
        raise ValueError(
            f"clip_mask has shape {tuple(clip_mask.shape)}, expected {tuple(entropy.shape)} (entropy)"
        )
    entropy = entropy.detach()
    if entropy.shape[1] == 0:  # no response token anywhere: every value is 0 by definition
        return {name: entropy.new_zeros((), dtype=torch.float32) for name in METRIC_NAMES}
    steps = split_steps(entropy, response_mask, step_end_mask)
    mask = response_mask.bool()
    known = mask & ~entropy.isnan()  # [N, T] response tokens with a computed entropy
    clip = clip_mask.bool() & mask  # [N, T]

    clip_len = clip.sum(dim=-1).float()  # [N]
    resp_len = mask.sum(dim=-1).float()  # [N]
    has_clip = clip_len > 0  # [N]
    num_clips = has_clip.sum().float()
    last_step = torch.where(clip, steps.step_id, 0).amax(
        dim=-1
    )  # [N], 0 on rows without a clip (masked below)
    last_entropy = steps.entropy.gather(1, last_step[:, None]).squeeze(1)  # [N]
    last_pos = last_step.float() / (steps.num_steps - 1).clamp(min=1).float()  # [N]

    def clip_mean(values: Tensor) -> Tensor:
        return torch.where(has_clip, values, 0.0).sum() / num_clips.clamp(min=1)

    step_exists = (steps.length > 0) & ~steps.entropy.isnan()  # [N, S]
    entropy_f = torch.where(known, entropy.float(), 0.0)  # [N, T]
    return {
        "echo/num_clips": num_clips,
        "echo/clip_tokens": clip_mean(clip_len),
        "echo/clip_frac": clip_mean(clip_len / resp_len.clamp(min=1)),
        "echo/peak_step_entropy": clip_mean(last_entropy),
        "echo/peak_step_pos": clip_mean(last_pos),
        "entropy/token_mean": entropy_f.sum() / known.sum().clamp(min=1),
        "entropy/step_mean": torch.where(step_exists, steps.entropy, 0.0).sum()
        / step_exists.sum().clamp(min=1),
    }
