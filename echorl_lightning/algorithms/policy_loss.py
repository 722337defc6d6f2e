"""Per-token policy-gradient losses (the clip rule axis) of the RLVR methods EchoRL plugs into.

Every entry maps current and old per-token log-probs and one advantage per sequence to a ``[N, T]`` loss
matrix to MINIMISE (0 on padding) plus detached scalar metrics; reducing the matrix to a scalar is the
separate aggregation axis (``aggregation.py``).

Implemented (registry name: per-token loss), ``rho = exp(logp - old_logp)``, ``A`` the sequence's
advantage, ``clip(x) = clamp(x, 1 - clip_low, 1 + clip_high)``:

- ``ppo_clip``: ``-min(rho * A, clip(rho) * A)``; ``clip_high > clip_low`` is DAPO's clip-higher.
- ``gspo``: GSPO (arXiv 2507.18071), the "GSPO-token" form that verl's ``compute_policy_loss_gspo`` uses:
  ``s_i = exp(masked mean over t of (logp - old_logp))`` and, per token,
  ``s_it = sg[s_i] * pi / sg[pi] = exp(logp - sg[logp] + sg[log s_i])`` (``sg`` = stop-gradient), then
  ``-min(s_it * A, clip(s_it) * A)``. The forward value of every token of sequence i is ``s_i``; the
  gradient reaches each token's own log-prob with weight ``s_i * A`` (unclipped). Since every aggregation
  mode weighs the tokens of one sequence equally, the aggregated gradient equals that of the
  sequence-level objective ``-min(s_i * A, clip(s_i) * A)`` differentiated through ``s_i`` (a test checks
  this). As in verl the log-ratio ``log s_it`` is clamped at 10 before ``exp``.
- ``luffy``: LUFFY (arXiv 2504.14945). On-policy tokens: ``ppo_clip``. Expert tokens
  (``off_policy_mask == 1``): ``-(p / (p + gamma)) * A`` with ``p = exp(logp)`` and
  ``gamma = luffy_gamma`` (default 0.1), no ratio to the old policy and no clip.

The token log-ratio is clamped to [-20, 20] before ``exp`` in ``ppo_clip`` / ``luffy`` (as verl does) so an
outlier cannot overflow; padding positions are zeroed before ``exp``, so garbage log-probs on padding
produce neither NaN losses nor NaN gradients.

Metrics (masked means over response tokens of this batch): ``clipfrac`` (fraction of tokens where the
clipped branch is the active one, i.e. the clip changed the objective), ``ratio_mean``, ``ratio_max`` (the
importance ratio, ``s_i`` per token for GSPO), ``approx_kl`` (mean of ``old_logp - logp``); LUFFY computes
the first four over on-policy tokens only and adds ``off_policy_frac``.

Left out: dual-clip PPO (``clip_ratio_c``), truncated importance sampling against the rollout engine's
log-probs, the entropy bonus, LUFFY's policy-shaping variants other than ``p / (p + gamma)``.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from echorl_lightning.registry import Registry


class PolicyLossFn(Protocol):
    """The one signature of the policy-loss axis (see :func:`compute_policy_loss` for the arguments)."""

    def __call__(
        self,
        logp: torch.Tensor,
        old_logp: torch.Tensor,
        advantages: torch.Tensor,
        response_mask: torch.Tensor,
        clip_low: float,
        clip_high: float,
        **kw: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss")
register_policy_loss = POLICY_LOSSES.register

PolicyLossName = str
"""A name registered in ``POLICY_LOSSES`` (checked when a ``MethodConfig`` is built)."""

LOG_RATIO_CLAMP = 20.0
"""|logp - old_logp| is clamped to this before ``exp`` in ``ppo_clip`` and ``luffy``."""

GSPO_LOG_RATIO_MAX = 10.0
"""Upper clamp of GSPO's per-token log-ratio before ``exp`` (verl's value)."""


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the positions where ``mask`` is 1; 0 when the mask is empty.

    Args:
        values: ``[N, T]`` values.
        mask: ``[N, T]`` 0/1 mask, same shape.

    Returns:
        0-dim tensor.
    """
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def _masked_max(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max of non-negative ``values`` over the positions where ``mask`` is 1; 0 when the mask is empty.

    Args:
        values: ``[N, T]`` values >= 0.
        mask: ``[N, T]`` bool mask.

    Returns:
        0-dim tensor.
    """
    return torch.where(mask, values, torch.zeros_like(values)).max()


def _clip_metrics(
    clip_active: torch.Tensor, ratio: torch.Tensor, log_ratio: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The clip statistics every policy loss reports, over the tokens of ``mask`` (all ``[N, T]``):
    ``clipfrac``, ``ratio_mean``, ``ratio_max`` and ``approx_kl`` (the mean of ``-log_ratio``). No grad."""
    with torch.no_grad():
        return {
            "clipfrac": masked_mean(clip_active.to(ratio.dtype), mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_max": _masked_max(ratio, mask),
            "approx_kl": masked_mean(-log_ratio, mask),
        }


def _clipped_surrogate(
    ratio: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's pessimistic clipped surrogate, as a loss.

    Args:
        ratio: ``[N, T]`` importance ratios.
        advantages: ``[N, 1]`` advantages.
        clip_low: the ratio is clipped below at ``1 - clip_low``.
        clip_high: the ratio is clipped above at ``1 + clip_high``.

    Returns:
        ``[N, T]`` loss ``max(-A * ratio, -A * clip(ratio))`` and ``[N, T]`` bool, True where the clipped
        term is strictly larger (the clip is active).
    """
    unclipped = -advantages * ratio  # [N, T]
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)  # [N, T]
    return torch.maximum(unclipped, clipped), clipped > unclipped


def _token_log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``logp - old_logp``, 0 on padding, clamped to ``[-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP]``.

    Args:
        logp: ``[N, T]`` current log-probs.
        old_logp: ``[N, T]`` old-policy log-probs.
        mask: ``[N, T]`` bool response mask.

    Returns:
        ``[N, T]`` log-ratios.
    """
    log_ratio = torch.where(mask, logp - old_logp, torch.zeros_like(logp))
    return log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


@register_policy_loss("ppo_clip")
def ppo_clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
    **kw: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clip (clip-higher when ``clip_high > clip_low``): ``-min(rho * A, clip(rho) * A)`` per token.

    Args:
        logp: ``[N, T]`` current-policy log-probs of the sampled tokens (with gradient).
        old_logp: ``[N, T]`` log-probs under the policy that sampled them (no gradient).
        advantages: ``[N]`` one advantage per sequence.
        response_mask: ``[N, T]`` 1 on response tokens.
        clip_low: lower clip range (ratio floor ``1 - clip_low``).
        clip_high: upper clip range (ratio ceiling ``1 + clip_high``).
        **kw: ignored.

    Returns:
        ``[N, T]`` loss matrix (0 on padding) and metrics ``clipfrac``, ``ratio_mean``, ``ratio_max``,
        ``approx_kl``.
    """
    mask = response_mask.bool()
    log_ratio = _token_log_ratio(logp, old_logp, mask)  # [N, T]
    ratio = log_ratio.exp()  # [N, T]
    loss, clip_active = _clipped_surrogate(ratio, advantages.unsqueeze(1), clip_low, clip_high)
    loss_mat = torch.where(mask, loss, torch.zeros_like(loss))
    return loss_mat, _clip_metrics(clip_active, ratio, log_ratio, mask)


@register_policy_loss("gspo")
def gspo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
    **kw: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO-token: the sequence ratio ``s_i`` on every token, gradient through each token's ``logp``.

    Args:
        logp: ``[N, T]`` current-policy log-probs of the sampled tokens (with gradient).
        old_logp: ``[N, T]`` log-probs under the policy that sampled them (no gradient).
        advantages: ``[N]`` one advantage per sequence.
        response_mask: ``[N, T]`` 1 on response tokens.
        clip_low: lower clip range of ``s_i`` (GSPO paper: 3e-4).
        clip_high: upper clip range of ``s_i`` (GSPO paper: 4e-4).
        **kw: ignored.

    Returns:
        ``[N, T]`` loss matrix (0 on padding) and metrics ``clipfrac``, ``ratio_mean``, ``ratio_max``
        (of ``s_i`` over response tokens), ``approx_kl``.
    """
    mask = response_mask.bool()
    token_log_ratio = torch.where(mask, logp - old_logp, torch.zeros_like(logp))  # [N, T]
    lengths = mask.sum(dim=1).clamp(min=1).to(logp.dtype)  # [N]
    seq_log_ratio = token_log_ratio.sum(dim=1) / lengths  # [N]
    safe_logp = torch.where(mask, logp, torch.zeros_like(logp))
    log_ratio = safe_logp - safe_logp.detach() + seq_log_ratio.detach().unsqueeze(1)  # [N, T]
    ratio = log_ratio.clamp(max=GSPO_LOG_RATIO_MAX).exp()  # [N, T]
    loss, clip_active = _clipped_surrogate(ratio, advantages.unsqueeze(1), clip_low, clip_high)
    loss_mat = torch.where(mask, loss, torch.zeros_like(loss))
    return loss_mat, _clip_metrics(clip_active, ratio, token_log_ratio, mask)


@register_policy_loss("luffy")
def luffy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
    **kw: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """LUFFY: PPO clip on on-policy tokens, ``-(p / (p + gamma)) * A`` unclipped on expert tokens.

    Args:
        logp: ``[N, T]`` current-policy log-probs of the sampled / expert tokens (with gradient).
        old_logp: ``[N, T]`` old-policy log-probs (used on on-policy tokens only).
        advantages: ``[N]`` one advantage per sequence.
        response_mask: ``[N, T]`` 1 on response tokens.
        clip_low: lower clip range for on-policy tokens.
        clip_high: upper clip range for on-policy tokens.
        **kw: ``off_policy_mask`` (required) ``[N, T]``, 1 on expert-solution tokens;
            ``luffy_gamma`` (float > 0, default 0.1) the policy-shaping constant. Other keys are ignored.

    Returns:
        ``[N, T]`` loss matrix (0 on padding) and metrics ``clipfrac``, ``ratio_mean``, ``ratio_max``,
        ``approx_kl`` over on-policy response tokens, and ``off_policy_frac`` (expert share of response
        tokens).
    """
    if kw.get("off_policy_mask") is None:
        raise ValueError("policy loss 'luffy' needs the keyword 'off_policy_mask' ([N, T], 1 = expert token)")
    off_policy_mask = kw["off_policy_mask"]
    if off_policy_mask.shape != logp.shape:
        raise ValueError(
            f"off_policy_mask must have the shape of logp {tuple(logp.shape)}, got {tuple(off_policy_mask.shape)}"
        )
    gamma = float(kw.get("luffy_gamma", 0.1))
    if gamma <= 0.0:
        raise ValueError(f"luffy_gamma must be > 0, got {gamma}")
    mask = response_mask.bool()
    expert = off_policy_mask.bool() & mask  # [N, T]
    on_policy = mask & ~expert  # [N, T]
    adv = advantages.unsqueeze(1)  # [N, 1]

    log_ratio = _token_log_ratio(logp, old_logp, on_policy)  # [N, T]
    ratio = log_ratio.exp()  # [N, T]
    on_loss, clip_active = _clipped_surrogate(ratio, adv, clip_low, clip_high)

    prob = torch.where(expert, logp, torch.zeros_like(logp)).exp()  # [N, T]
    off_loss = -(prob / (prob + gamma)) * adv  # [N, T]

    loss = torch.where(expert, off_loss, on_loss)
    loss_mat = torch.where(mask, loss, torch.zeros_like(loss))
    metrics = _clip_metrics(clip_active, ratio, log_ratio, on_policy)
    metrics["off_policy_frac"] = masked_mean(expert.to(logp.dtype), mask).detach()
    return loss_mat, metrics


def compute_policy_loss(
    name: str,
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    **kw: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token loss matrix and metrics of the policy loss ``name`` (one of ``POLICY_LOSSES.names()``).

    Args:
        name: a registered policy-loss name.
        logp: ``[N, T]`` current-policy log-probs of the response tokens (with gradient).
        old_logp: ``[N, T]`` log-probs under the sampling policy (no gradient).
        advantages: ``[N]`` one advantage per sequence.
        response_mask: ``[N, T]`` 1 on response tokens, 0 on padding.
        clip_low: lower clip range (ratio floor ``1 - clip_low``), in [0, 1).
        clip_high: upper clip range (ratio ceiling ``1 + clip_high``), >= 0.
        **kw: entry-specific keywords (``off_policy_mask``, ``luffy_gamma`` for ``luffy``); every entry
            ignores the keys it does not use.

    Returns:
        ``[N, T]`` loss to minimise (0 where ``response_mask`` is 0) and a dict of detached 0-dim metrics.
    """
    fn = POLICY_LOSSES.get(name)
    if logp.dim() != 2:
        raise ValueError(f"logp must be [N, T], got shape {tuple(logp.shape)}")
    for key, tensor in (("old_logp", old_logp), ("response_mask", response_mask)):
        if tensor.shape != logp.shape:
            raise ValueError(
                f"{key} must have the shape of logp {tuple(logp.shape)}, got {tuple(tensor.shape)}"
            )
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be [N] = [{logp.shape[0]}], got shape {tuple(advantages.shape)}")
    if not 0.0 <= clip_low < 1.0:
        raise ValueError(f"clip_low must be in [0, 1), got {clip_low}")
    if clip_high < 0.0:
        raise ValueError(f"clip_high must be >= 0, got {clip_high}")
    return fn(logp, old_logp, advantages, response_mask, clip_low, clip_high, **kw)
