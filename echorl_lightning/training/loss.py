"""The total loss of one micro-batch: L = L_RLVR (+ beta * KL) + lambda * L_echo.

Every term reads the SAME ``logp`` (one policy forward per micro-batch: the echo term costs no extra pass).
The normalisers are the global counts of the optimizer step (all micro-batches of the step, all ranks), so
``scale`` = (data-parallel world size) x (accumulation steps) undoes the averaging that DDP and Lightning's
gradient accumulation apply: the summed gradient then equals the gradient of the global-batch loss.
"""

from __future__ import annotations

from torch import Tensor

from echorl_lightning.algorithms import aggregate_loss, compute_kl, compute_policy_loss
from echorl_lightning.algorithms.presets import MethodConfig
from echorl_lightning.echo import echo_loss


def rlvr_echo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    pg_mask: Tensor,
    clip_mask: Tensor,
    *,
    method: MethodConfig,
    echo_coef: float,
    max_len: int,
    num_tokens: Tensor,
    num_seqs: Tensor,
    num_clips: Tensor,
    scale: float = 1.0,
    ref_logp: Tensor | None = None,
    off_policy_mask: Tensor | None = None,
    is_weight: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Loss of one micro-batch and its detached metrics.

    Args:
        logp: [n, T] log-probs of the response tokens under the current policy (with grad).
        old_logp: [n, T] log-probs under the rollout policy (no grad).
        advantages: [n] per-sequence advantages.
        response_mask: [n, T] 1 on response tokens.
        pg_mask: [n] 1 where the row takes part in the policy-gradient term (0: a DAPO-filtered row kept
            only for its EchoClip).
        clip_mask: [n, T] bool EchoClip tokens.
        method: the resolved RLVR method.
        echo_coef: lambda; 0 disables the term (it is still computed for logging).
        max_len: the response length limit (the constant of ``seq-mean-token-sum-norm``).
        num_tokens, num_seqs, num_clips: 0-dim global counts of the optimizer step.
        scale: world size x accumulation steps.
        ref_logp: [n, T] reference-model log-probs, needed when ``method.kl_coef > 0``.
        off_policy_mask: [n, T] 1 on expert tokens (LUFFY).
        is_weight: [n, T] truncated importance weights of the engine/trainer mismatch, multiplying each
            token's policy-gradient loss (TRL's ``vllm_importance_sampling_correction``), or None.

    Returns:
        ``(loss, metrics)``; metrics are detached, names ``actor/*`` and ``echo/loss``.
    """
    pg_token_mask = response_mask * pg_mask[:, None]  # [n, T]
    kwargs = {"luffy_gamma": method.luffy_gamma}
    if off_policy_mask is not None:
        kwargs["off_policy_mask"] = off_policy_mask
    loss_mat, pg_metrics = compute_policy_loss(
        method.policy_loss,
        logp,
        old_logp,
        advantages,
        pg_token_mask,
        clip_low=method.clip_low,
        clip_high=method.clip_high,
        **kwargs,
    )
    if is_weight is not None:
        loss_mat = loss_mat * is_weight
    pg_loss = aggregate_loss(
        method.loss_agg_mode, loss_mat, pg_token_mask, max_len, num_tokens=num_tokens, num_seqs=num_seqs
    )
    total = pg_loss
    metrics = {f"actor/{k}": v.detach() for k, v in pg_metrics.items()}
    metrics["actor/pg_loss"] = pg_loss.detach()
    if method.kl_coef > 0:
        if ref_logp is None:
            raise ValueError("kl_coef > 0 but the batch has no ref_logp")
        kl_mat = compute_kl(method.kl_estimator, logp, ref_logp)
        kl = aggregate_loss(
            method.loss_agg_mode, kl_mat, pg_token_mask, max_len, num_tokens=num_tokens, num_seqs=num_seqs
        )
        total = total + method.kl_coef * kl
        metrics["actor/kl"] = kl.detach()
    echo = echo_loss(logp, clip_mask, num_clips=num_clips)
    if echo_coef > 0:
        total = total + echo_coef * echo
    metrics["echo/loss"] = echo.detach()
    return total * scale, metrics
