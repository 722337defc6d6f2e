"""How far an engine's copy of the weights is from the policy, and the correction for what remains.

An engine that holds its own weights (vLLM) reports, with ``SamplingConfig.return_logprobs``, the log-prob of
each token it sampled in the distribution it sampled from (temperature applied, then top-p). The policy's
log-prob of the same token at the same temperature differs from it by precision noise after a correct sync
(about 1e-6 in float32, 1e-2 in bfloat16; with top-p < 1 the engine's is also renormalised over the nucleus,
by at most ``-log(top_p)``), and by nats after a sync that did not happen.

* :func:`engine_logprob_diff`: recompute the policy's log-probs of the engine's samples, one forward per row,
  and return the mean and max absolute difference (tests, benchmarks).
* :func:`mismatch_metrics` / :func:`check_mismatch`: the same figures from tensors the trainer already has
  (its old-log-prob pass), logged every epoch as ``rollout/engine_logprob_diff_{mean,max}``, and the error that
  stops a run whose engine is not sampling from the policy.
* :func:`truncated_is_weight`: truncated importance sampling (TIS) for the engine/trainer mismatch, as TRL's
  ``vllm_importance_sampling_correction``: per token ``min(exp(logp_trainer - logp_engine), cap)``, which
  multiplies the policy-gradient loss of that token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from echorl_lightning.rollout.types import Completion


@torch.no_grad()
def policy_token_logprobs(
    model: torch.nn.Module, prompt: Sequence[int], response: Sequence[int], temperature: float = 1.0
) -> torch.Tensor:
    """The policy's log-prob at ``temperature`` of each response token given the prompt and the tokens before it.

    Returns:
        [len(response)] float32 on the CPU.
    """
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt) + list(response)], device=device)  # [1, P + R]
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()  # [R, V]: position t predicts t + 1
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return logp.gather(-1, ids[0, len(prompt) :, None])[:, 0].cpu()


def engine_logprob_diff(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    groups: Sequence[Sequence[Completion]],
    temperature: float = 1.0,
) -> tuple[float, float, int]:
    """``(mean, max, tokens)`` of ``|engine log-prob - policy log-prob|`` over every token that carries one.

    ``groups[i]`` are completions of ``prompts[i]`` sampled at ``temperature`` with top-p 1; completions without
    ``logprobs`` are skipped. Raises ``ValueError`` when no completion carries log-probs.
    """
    if len(prompts) != len(groups):
        raise ValueError(f"{len(prompts)} prompts but {len(groups)} completion groups")
    was_training = model.training
    model.eval()
    diffs: list[torch.Tensor] = []
    try:
        for prompt, group in zip(prompts, groups, strict=True):
            for completion in group:
                if completion.logprobs is None or not completion.token_ids:
                    continue
                reference = policy_token_logprobs(model, prompt, completion.token_ids, temperature)
                engine = torch.tensor(completion.logprobs, dtype=torch.float32)
                diffs.append((engine - reference).abs())
    finally:
        model.train(was_training)
    if not diffs:
        raise ValueError("no completion carries engine log-probs (sample with return_logprobs=True)")
    flat = torch.cat(diffs)
    return float(flat.mean()), float(flat.max()), int(flat.numel())


def mismatch_metrics(trainer_logp: Tensor, engine_logp: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Mean and max ``|trainer - engine|`` log-prob over the masked tokens.

    Args:
        trainer_logp: [N, T] the policy's log-probs of the sampled tokens at the sampling temperature.
        engine_logp: [N, T] the engine's, for the same tokens.
        mask: [N, T] bool, the tokens to compare (response tokens of rows the engine sampled).

    Returns:
        ``rollout/engine_logprob_diff_mean`` and ``..._max`` (0-dim float32; 0 when nothing is masked).
    """
    diff = (trainer_logp.float() - engine_logp.float()).abs()[mask]
    if diff.numel() == 0:
        zero = torch.zeros(())
        return {"rollout/engine_logprob_diff_mean": zero, "rollout/engine_logprob_diff_max": zero}
    return {"rollout/engine_logprob_diff_mean": diff.mean(), "rollout/engine_logprob_diff_max": diff.max()}


def check_mismatch(metrics: dict[str, Tensor], tolerance: float) -> None:
    """Raise ``RuntimeError`` when the mean log-prob difference exceeds ``tolerance`` nats: the engine is not
    sampling from the policy's weights (its weight sync did not happen or did not take)."""
    mean = float(metrics["rollout/engine_logprob_diff_mean"])
    if mean > tolerance:
        worst = float(metrics["rollout/engine_logprob_diff_max"])
        raise RuntimeError(
            f"the rollout engine is not sampling from the policy: its log-probs of its own samples "
            f"differ from the policy's by {mean:.3g} nats on average (max {worst:.3g}), far beyond precision "
            f"noise (rollout.engine_logprob_tolerance={tolerance}). The engine's weight sync did not happen or "
            "did not take; the rollouts would train the policy on another model's samples"
        )


def truncated_is_weight(trainer_logp: Tensor, engine_logp: Tensor, mask: Tensor, cap: float) -> Tensor:
    """Per-token truncated importance weights ``min(exp(trainer - engine), cap)`` on ``mask``, 1 elsewhere.

    Args:
        trainer_logp, engine_logp: [N, T] log-probs of the sampled tokens (trainer at the sampling temperature,
            engine in its sampling distribution).
        mask: [N, T] bool, tokens the engine sampled (others keep weight 1).
        cap: the truncation (TRL's ``vllm_importance_sampling_cap``, 2.0 there).

    Returns:
        [N, T] float32.
    """
    ratio = torch.exp(trainer_logp.float() - engine_logp.float()).clamp(max=cap)
    return torch.where(mask, ratio, torch.ones_like(ratio))


def engine_check(
    trainer_logp: Tensor | None,
    sampler_logp: Tensor | None,
    response_mask: Tensor,
    off_policy: Tensor,
    *,
    tolerance: float | None,
    is_cap: float | None,
) -> tuple[dict[str, Tensor], Tensor | None]:
    """One epoch's check of the rollout engine against the trainer, and the TIS weights when asked for.

    Args:
        trainer_logp: [N, T] the trainer's old log-probs at the sampling temperature, or None (no old-log-prob
            pass: the on-policy shortcut, where the HF engine sampled from the policy itself).
        sampler_logp: [N, T] the engine's log-probs of its samples (0 on expert rows), or None when the engine
            reports none (the HF engine).
        response_mask: [N, T] 1 on response tokens.
        off_policy: [N] bool, expert rows (LUFFY), never sampled by the engine.
        tolerance: stop the run when the mean difference exceeds it (nats); None: log only.
        is_cap: truncation of the importance weights; None: no correction.

    Returns:
        ``(metrics, is_weight)``: the mismatch metrics (plus ``rollout/engine_is_weight_mean`` and
        ``rollout/engine_is_capped_frac`` with a correction) and the [N, T] weights, or None; ``({}, None)``
        when there is nothing to compare.
    """
    if sampler_logp is None or trainer_logp is None:
        if is_cap is not None:
            raise ValueError(
                "rollout.engine_is_cap needs an engine that reports its log-probs (VLLMEngine) and the old-log-prob "
                "pass; this rollout engine samples from the policy itself: set rollout.engine_is_cap to null"
            )
        return {}, None
    engine_logp = sampler_logp  # [N, T]
    mask = response_mask.bool() & ~off_policy[:, None]  # [N, T]
    metrics = mismatch_metrics(trainer_logp, engine_logp, mask)
    if tolerance is not None:
        check_mismatch(metrics, tolerance)
    if is_cap is None:
        return metrics, None
    weight = truncated_is_weight(trainer_logp, engine_logp, mask, is_cap)
    counted = mask.sum().clamp(min=1)
    metrics["rollout/engine_is_weight_mean"] = (weight * mask).sum() / counted
    capped = (torch.exp(trainer_logp.float() - engine_logp.float()) > is_cap) & mask
    metrics["rollout/engine_is_capped_frac"] = capped.sum() / counted
    return metrics, weight
