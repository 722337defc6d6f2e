"""Per-token estimators of KL(pi_theta || pi_ref), for the optional KL penalty to a reference model.

The estimators are Schulman's k1/k2/k3 ("Approximating KL divergence", 2020), the names verl calls
``kl``/``mse``/``low_var_kl``.

With ``x = ref_logp - logp`` on tokens sampled from pi_theta:

- ``k1``: ``-x = logp - ref_logp`` (unbiased, can be negative).
- ``k2``: ``x^2 / 2`` (biased, low variance).
- ``k3``: ``exp(x) - x - 1`` (unbiased, always >= 0).

The result is per token and unmasked; reduce it with :func:`aggregate_loss` and the response mask, and
scale by the method's ``kl_coef``. Left out: verl's clamping of k3 to [-10, 10] and the straight-through
"k3+" variants; the caller must not feed garbage log-probs on padding that overflow ``exp``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from echorl_lightning.registry import Registry

KLFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A KL estimator: ``(logp [N, T], ref_logp [N, T]) -> [N, T]``."""

KL_ESTIMATORS: Registry[KLFn] = Registry("KL estimator")
register_kl = KL_ESTIMATORS.register

KLName = str
"""A name registered in ``KL_ESTIMATORS`` (checked when a ``MethodConfig`` is built)."""


@register_kl("k1")
def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = ``logp - ref_logp``.

    Args:
        logp: ``[N, T]`` current-policy log-probs.
        ref_logp: ``[N, T]`` reference-model log-probs.

    Returns:
        ``[N, T]`` per-token estimate.
    """
    return logp - ref_logp


@register_kl("k2")
def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = ``(logp - ref_logp)^2 / 2``.

    Args:
        logp: ``[N, T]`` current-policy log-probs.
        ref_logp: ``[N, T]`` reference-model log-probs.

    Returns:
        ``[N, T]`` per-token estimate.
    """
    return 0.5 * (logp - ref_logp).square()


@register_kl("k3")
def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = ``exp(ref_logp - logp) - (ref_logp - logp) - 1``.

    Args:
        logp: ``[N, T]`` current-policy log-probs.
        ref_logp: ``[N, T]`` reference-model log-probs.

    Returns:
        ``[N, T]`` per-token estimate, >= 0.
    """
    log_ratio = ref_logp - logp
    return log_ratio.exp() - log_ratio - 1.0


def compute_kl(name: str, logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimate of the estimator ``name`` (one of ``KL_ESTIMATORS.names()``).

    Args:
        name: a registered KL-estimator name.
        logp: ``[N, T]`` current-policy log-probs of the response tokens (with gradient).
        ref_logp: ``[N, T]`` reference-model log-probs of the same tokens (no gradient).

    Returns:
        ``[N, T]`` per-token estimate, unmasked.
    """
    fn = KL_ESTIMATORS.get(name)
    if ref_logp.shape != logp.shape:
        raise ValueError(
            f"ref_logp must have the shape of logp {tuple(logp.shape)}, got {tuple(ref_logp.shape)}"
        )
    return fn(logp, ref_logp)
