"""The RLVR algorithm math EchoRL plugs into: pure tensor functions, one registry per axis.

The echo term itself lives in ``echorl_lightning.echo``; this package is the policy-gradient side ``L_RLVR``.

Axes (each a :class:`~echorl_lightning.registry.Registry`, every entry of one axis with one signature):

- advantage estimator, :func:`compute_advantages` (``ADVANTAGES``): rewards ``[B, G]`` -> ``[B, G]``;
- policy loss, :func:`compute_policy_loss` (``POLICY_LOSSES``): ``[N, T]`` loss matrix + metrics;
- aggregation, :func:`aggregate_loss` (``AGGREGATIONS``): ``[N, T]`` -> scalar, global-batch counts;
- KL estimator, :func:`compute_kl` (``KL_ESTIMATORS``): ``[N, T]`` per-token KL to a reference model;
- method presets, ``METHODS`` / :func:`resolve_method`: a :class:`MethodConfig` per named method;
- DAPO helpers: :func:`overlong_penalty`, :func:`dynamic_sampling_keep`, :func:`dynamic_sampling_rows`.

A training step, in these terms (``adv`` per sequence broadcast by the policy loss)::

    adv = compute_advantages(cfg.adv_estimator, rewards).reshape(-1)           # [N]
    loss_mat, metrics = compute_policy_loss(cfg.policy_loss, logp, old_logp, adv, response_mask,
                                            cfg.clip_low, cfg.clip_high,
                                            off_policy_mask=expert_mask,      # None unless LUFFY
                                            luffy_gamma=cfg.luffy_gamma)      # [N, T]
    if cfg.use_kl:
        loss_mat = loss_mat + cfg.kl_coef * compute_kl(cfg.kl_estimator, logp, ref_logp)
    loss = aggregate_loss(cfg.loss_agg_mode, loss_mat, response_mask, max_len,
                          num_tokens=global_tokens, num_seqs=global_seqs)
"""

from echorl_lightning.algorithms.advantages import (
    ADVANTAGES,
    AdvEstimatorName,
    compute_advantages,
    register_advantage,
)
from echorl_lightning.algorithms.aggregation import (
    AGGREGATIONS,
    AggModeName,
    aggregate_loss,
    register_aggregation,
)
from echorl_lightning.algorithms.dapo import dynamic_sampling_keep, dynamic_sampling_rows, overlong_penalty
from echorl_lightning.algorithms.kl import KL_ESTIMATORS, KLName, compute_kl, register_kl
from echorl_lightning.algorithms.policy_loss import (
    POLICY_LOSSES,
    PolicyLossName,
    compute_policy_loss,
    masked_mean,
    register_policy_loss,
)
from echorl_lightning.algorithms.presets import METHODS, MethodConfig, MethodName, resolve_method

__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "METHODS",
    "POLICY_LOSSES",
    "AdvEstimatorName",
    "AggModeName",
    "KLName",
    "MethodConfig",
    "MethodName",
    "PolicyLossName",
    "aggregate_loss",
    "compute_advantages",
    "compute_kl",
    "compute_policy_loss",
    "dynamic_sampling_keep",
    "dynamic_sampling_rows",
    "masked_mean",
    "overlong_penalty",
    "register_advantage",
    "register_aggregation",
    "register_kl",
    "register_policy_loss",
    "resolve_method",
]
