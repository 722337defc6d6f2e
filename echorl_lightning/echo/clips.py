"""EchoClip selection for EchoRL, one clip at most per prompt group.

For every eligible prompt group, pool the steps of its eligible rollouts V, pick one step s* with a
selector, and return the prefix of s*'s rollout from its first response token through the last token of
s* (the *EchoClip*). Exactly one row of an eligible group holds the clip; every other row is all False.

Eligibility (``apply_to``):

* ``"degenerate"`` (the default): groups whose G rewards all equal ``success_reward``; V = those
  rollouts.
* ``"success"``: groups with at least one success; V = its successful rollouts.

A truncated rollout (cut at the length limit, no EOS) is never in V. The group test still reads the
rewards only, so a ``"degenerate"`` group with a truncated member is all-success by reward and V = its
non-truncated members; when V is empty (or none of its steps is long enough) the group has no clip.
Rewards are compared with ``==`` to ``success_reward``.

Selectors (the :data:`ECHO_SELECTORS` registry, one signature per entry):

* ``"peak"`` (the default): the step with the highest step entropy;
* ``"lowest"``: the step with the lowest step entropy (an ablation);
* ``"random"``: a uniformly drawn eligible step (``generator`` seeds it);
* ``"full"``: the whole response of the rollout that holds the peak step.

Ties go to the earliest rollout, then the earliest step. Steps shorter than ``min_step_tokens`` are never
chosen (though "full" still runs to the end of the rollout). Selection is vectorised: no Python loop over
rows, tokens or steps. Left out: clips from rollouts outside the training batch and more than one clip per
group.
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch
from torch import Tensor

from echorl_lightning.echo.steps import Steps, split_steps
from echorl_lightning.registry import Registry

ApplyTo = Literal["degenerate", "success"]
EchoSelectorName = str
"""A name registered in ``ECHO_SELECTORS`` (checked when an ``EchoConfig`` is built)."""


class EchoSelector(Protocol):
    """Picks, per eligible group, the step through which the EchoClip runs.

    Args:
        steps: the :class:`Steps` of the N rows (``S = T``).
        candidate: ``[N, S]`` bool, True at an eligible step of an eligible rollout (a row of V, step long
            enough).
        group_size: G; rows ``g * G .. g * G + G - 1`` form group g.
        generator: the random generator, for selectors that draw.

    Returns:
        ``[N]`` long: on the chosen row of each group that has a candidate, the index of the clip's last
        step; -1 on every other row.
    """

    def __call__(
        self, steps: Steps, candidate: Tensor, group_size: int, generator: torch.Generator | None
    ) -> Tensor: ...


ECHO_SELECTORS: Registry[EchoSelector] = Registry("echo selector")


def first_argmax_per_group(score: Tensor, candidate: Tensor, group_size: int) -> Tensor:
    """The highest-scoring candidate step of each group, ties to the earliest row, then earliest step.

    Args:
        score: ``[N, S]`` float, the score of each step (values at non-candidates are ignored).
        candidate: ``[N, S]`` bool, the steps that may be chosen.
        group_size: G.

    Returns:
        ``[N]`` long: the chosen step index on the chosen row of each group with a candidate, -1 elsewhere.
    """
    n, s = score.shape
    b = n // group_size
    cand = candidate.reshape(b, group_size * s)  # [B, G * S], row-major: rollout, then step
    masked = score.float().masked_fill(~candidate, float("-inf")).reshape(b, group_size * s)  # [B, G * S]
    best = masked.amax(dim=1, keepdim=True)  # [B, 1]
    order = torch.arange(group_size * s, device=score.device)  # [G * S]
    first = torch.where(cand & (masked == best), order, group_size * s).amin(dim=1)  # [B]
    has_clip = cand.any(dim=1)  # [B]
    rows = torch.arange(group_size, device=score.device)  # [G]
    chosen = has_clip[:, None] & (rows[None, :] == (first // s)[:, None])  # [B, G]
    return torch.where(chosen, (first % s)[:, None], -1).reshape(n)  # [N]


@ECHO_SELECTORS.register("peak")
def peak_selector(
    steps: Steps, candidate: Tensor, group_size: int, generator: torch.Generator | None
) -> Tensor:
    """The default selector: the clip runs through the highest-entropy step of V."""
    return first_argmax_per_group(steps.entropy, candidate, group_size)


@ECHO_SELECTORS.register("lowest")
def lowest_selector(
    steps: Steps, candidate: Tensor, group_size: int, generator: torch.Generator | None
) -> Tensor:
    """Ablation: the clip runs through the lowest-entropy step of V."""
    return first_argmax_per_group(-steps.entropy, candidate, group_size)


@ECHO_SELECTORS.register("random")
def random_selector(
    steps: Steps, candidate: Tensor, group_size: int, generator: torch.Generator | None
) -> Tensor:
    """Ablation: the clip runs through a step drawn uniformly from the eligible steps of V.

    Uniform scores in [0, 1) are drawn on the generator's device (the default CPU generator when None)
    and the best candidate wins, so every candidate is equally likely and a fixed seed gives a fixed pick.
    """
    device = generator.device if generator is not None else candidate.device
    u = torch.rand(candidate.shape, generator=generator, device=device).to(candidate.device)  # [N, S]
    return first_argmax_per_group(u, candidate, group_size)


@ECHO_SELECTORS.register("full")
def full_selector(
    steps: Steps, candidate: Tensor, group_size: int, generator: torch.Generator | None
) -> Tensor:
    """Ablation: the whole response of the rollout holding the peak step (clip through its last step)."""
    peak = first_argmax_per_group(steps.entropy, candidate, group_size)  # [N]
    return torch.where(peak >= 0, steps.num_steps - 1, -1)


def eligible_rollouts(
    rewards: Tensor,
    group_size: int,
    *,
    apply_to: ApplyTo = "degenerate",
    success_reward: float = 1.0,
    truncated: Tensor | None = None,
) -> Tensor:
    """The rollouts V that may hold the EchoClip.

    Args:
        rewards: ``[N]`` float, one reward per rollout, groups contiguous.
        group_size: G.
        apply_to: ``"degenerate"`` (groups whose rewards all equal ``success_reward``) or ``"success"``
            (groups with at least one success).
        success_reward: the reward of a verified-correct rollout.
        truncated: ``[N]`` bool, True for rollouts cut at the length limit (never eligible), or None.

    Returns:
        ``[N]`` bool, True on the rows of V.
    """
    n = rewards.shape[0]
    success = (rewards == success_reward).reshape(n // group_size, group_size)  # [B, G]
    if apply_to == "degenerate":
        group_ok = success.all(dim=1, keepdim=True)  # [B, 1]
    elif apply_to == "success":
        group_ok = success.any(dim=1, keepdim=True)  # [B, 1]
    else:
        raise ValueError(f"unknown echo.apply_to {apply_to!r}; known: degenerate, success")
    eligible = (success & group_ok).reshape(n)  # [N]
    if truncated is not None:
        eligible = eligible & ~truncated.bool()
    return eligible


def select_echo_clips(
    entropy: Tensor,
    response_mask: Tensor,
    step_end_mask: Tensor,
    rewards: Tensor,
    group_size: int,
    *,
    apply_to: ApplyTo = "degenerate",
    selector: str = "peak",
    success_reward: float = 1.0,
    min_step_tokens: int = 1,
    truncated: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The EchoClip mask of a rollout batch (at most one clip per prompt group).

    Args:
        entropy: ``[N, T]`` float, token entropy of the policy at the rollout temperature (no grad needed).
            Values off ``response_mask`` are ignored; a NaN on a response token makes its step unpickable
            by "peak"/"lowest"/"full" (its group then gets no clip), which is not checked here.
        response_mask: ``[N, T]`` bool/int, 1 on response tokens; the steps cover exactly these tokens.
        step_end_mask: ``[N, T]`` bool, True at a token that ends a step (e.g. from
            :func:`~echorl_lightning.echo.steps.step_end_mask_from_tokens`).
        rewards: ``[N]`` float, one reward per rollout.
        group_size: G; N must be a multiple of it and each group's rows contiguous.
        apply_to: which groups get a clip (see the module docstring).
        selector: a name in :data:`ECHO_SELECTORS` ("peak", "lowest", "random", "full").
        success_reward: the reward of a verified-correct rollout.
        min_step_tokens: steps with fewer tokens are never chosen; >= 1.
        truncated: ``[N]`` bool, rollouts cut at the length limit (never eligible), or None.
        generator: random generator for the "random" selector.

    Returns:
        ``[N, T]`` bool clip mask, inside ``response_mask``: on each group with a clip exactly one row holds
        a non-empty prefix, every other row is all False.
    """
    select = ECHO_SELECTORS.get(selector)
    _check_inputs(entropy, rewards, group_size, min_step_tokens, truncated)
    steps = split_steps(entropy, response_mask, step_end_mask)
    if entropy.shape[1] == 0:
        return response_mask.new_zeros(entropy.shape, dtype=torch.bool)
    in_v = eligible_rollouts(
        rewards, group_size, apply_to=apply_to, success_reward=success_reward, truncated=truncated
    )  # [N]
    candidate = in_v[:, None] & (steps.length >= min_step_tokens)  # [N, S]
    end_step = select(steps, candidate, group_size, generator)  # [N]
    return (steps.step_id >= 0) & (steps.step_id <= end_step[:, None])  # [N, T]


def _check_inputs(
    entropy: Tensor, rewards: Tensor, group_size: int, min_step_tokens: int, truncated: Tensor | None
) -> None:
    if entropy.dim() != 2:
        raise ValueError(f"entropy must be [N, T], got shape {tuple(entropy.shape)}")
    n = entropy.shape[0]
    if rewards.shape != (n,):
        raise ValueError(
            f"rewards has shape {tuple(rewards.shape)}, expected ({n},) (one per row of entropy)"
        )
    if truncated is not None and truncated.shape != (n,):
        raise ValueError(f"truncated has shape {tuple(truncated.shape)}, expected ({n},)")
    if group_size < 1 or n % group_size != 0:
        raise ValueError(f"group_size={group_size} must be >= 1 and divide the number of rows N={n}")
    if min_step_tokens < 1:
        raise ValueError(f"echo.min_step_tokens must be >= 1, got {min_step_tokens}")
