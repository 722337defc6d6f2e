"""Named RLVR method presets: one value per independent algorithm axis.

A method (GRPO, DAPO, ...) is not code of its own: it is a :class:`MethodConfig` naming an advantage
estimator, a policy loss, an aggregation mode, a KL estimator and a few switches, and any of them can be
overridden (``resolve_method("dapo", clip_high=0.3)``, or in YAML).

Presets (``METHODS``): ``grpo``, ``dr_grpo``, ``dapo``, ``rloo``, ``reinforce_pp``, ``gspo``, ``luffy``.
Choices the methods' own definitions leave open: GSPO aggregates with ``seq-mean-token-mean`` (verl's GSPO
setting, a mean over sequences); REINFORCE++'s optional KL uses k2 with ``kl_coef`` 0 (off by default);
DAPO's overlong buffer defaults to 1024 tokens and must not exceed the configured response limit.

Left out: the echo term's settings (``echo.*``, owned by the echo package), rollout settings (G, lengths,
temperature) and optimiser settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from echorl_lightning.algorithms.advantages import ADVANTAGES, AdvEstimatorName
from echorl_lightning.algorithms.aggregation import AGGREGATIONS, AggModeName
from echorl_lightning.algorithms.kl import KL_ESTIMATORS, KLName
from echorl_lightning.algorithms.policy_loss import POLICY_LOSSES, PolicyLossName
from echorl_lightning.bounds import integer_problem, name_problem, number_problem, raise_problems
from echorl_lightning.registry import Registry

MethodName = str
"""A name registered in ``METHODS`` (a plain string, so presets registered in the user's own code are
accepted; checked by :func:`resolve_method`)."""


@dataclass(frozen=True)
class MethodConfig:
    """One RLVR method as a choice per axis. The defaults are GRPO's.

    Every bound below is checked here, once; the names are checked against the axes' registries (which the
    user's own code may extend, see the README's "Adding a method"). Messages name the field
    (``clip_low=1.5: ...``); :meth:`~echorl_lightning.training.config.AlgorithmOverrides.apply` puts them under
    ``model.init_args.algorithm``.

    Attributes:
        adv_estimator: advantage estimator (``ADVANTAGES``): ``grpo``, ``dr_grpo``, ``rloo``,
            ``reinforce_pp_baseline``.
        policy_loss: per-token policy loss (``POLICY_LOSSES``): ``ppo_clip``, ``gspo``, ``luffy``.
        clip_low: lower clip range; the ratio is floored at ``1 - clip_low``. In [0, 1).
        clip_high: upper clip range; the ratio is capped at ``1 + clip_high`` (> ``clip_low``: clip-higher).
            >= 0.
        loss_agg_mode: how the ``[N, T]`` loss becomes a scalar (``AGGREGATIONS``): ``token-mean``,
            ``seq-mean-token-mean``, ``seq-mean-token-sum``, ``seq-mean-token-sum-norm``.
        kl_estimator: per-token KL estimator to the reference model (``KL_ESTIMATORS``): ``k1``, ``k2``, ``k3``.
        kl_coef: weight of the KL penalty; 0 means no KL term and no reference model. >= 0.
        dynamic_sampling: DAPO dynamic sampling: drop groups whose rewards are all equal and resample
            prompts to refill the batch.
        overlong_shaping: add DAPO's soft overlong penalty to the reward.
        overlong_buffer: ``L_cache``, the penalty ramp length in tokens before the response limit
            (> 0 when ``overlong_shaping``; must not exceed the response limit).
        max_resample_rounds: with ``dynamic_sampling``, the most extra generation rounds spent refilling
            the batch; when they run out the step trains on the groups kept so far. >= 0.
        off_policy: the data carries one expert solution per prompt, added to its group (LUFFY).
        luffy_gamma: LUFFY's policy-shaping constant gamma in ``p / (p + gamma)`` on expert tokens. > 0.
    """

    adv_estimator: AdvEstimatorName = "grpo"
    policy_loss: PolicyLossName = "ppo_clip"
    clip_low: float = 0.2
    clip_high: float = 0.2
    loss_agg_mode: AggModeName = "seq-mean-token-mean"
    kl_estimator: KLName = "k3"
    kl_coef: float = 0.0
    dynamic_sampling: bool = False
    overlong_shaping: bool = False
    overlong_buffer: int = 0
    max_resample_rounds: int = 0
    off_policy: bool = False
    luffy_gamma: float = 0.1

    def __post_init__(self) -> None:
        names = [
            name_problem(key, getattr(self, key), registry)
            for key, registry in (
                ("adv_estimator", ADVANTAGES),
                ("policy_loss", POLICY_LOSSES),
                ("loss_agg_mode", AGGREGATIONS),
                ("kl_estimator", KL_ESTIMATORS),
            )
        ]
        raise_problems(
            *names,
            number_problem("clip_low", self.clip_low, low=0, high=1, high_open=True),
            number_problem("clip_high", self.clip_high, low=0),
            number_problem("kl_coef", self.kl_coef, low=0),
            integer_problem("overlong_buffer", self.overlong_buffer, 0),
            integer_problem("max_resample_rounds", self.max_resample_rounds, 0),
            number_problem("luffy_gamma", self.luffy_gamma, low=0, low_open=True),
            "overlong_buffer=0: must be > 0 with overlong_shaping=True (the L_cache ramp length)"
            if self.overlong_shaping and self.overlong_buffer == 0
            else None,
            "off_policy=False: must be True with policy_loss='luffy' (expert solutions in the data)"
            if self.policy_loss == "luffy" and not self.off_policy
            else None,
        )

    @property
    def use_kl(self) -> bool:
        """Whether the KL term is on (and a reference model is needed)."""
        return self.kl_coef > 0.0


METHODS: Registry[MethodConfig] = Registry("method preset")

METHODS.register("grpo")(MethodConfig())
METHODS.register("dr_grpo")(MethodConfig(adv_estimator="dr_grpo", loss_agg_mode="seq-mean-token-sum-norm"))
METHODS.register("dapo")(
    MethodConfig(
        adv_estimator="grpo",
        clip_low=0.2,
        clip_high=0.28,
        loss_agg_mode="token-mean",
        dynamic_sampling=True,
        overlong_shaping=True,
        overlong_buffer=1024,
        max_resample_rounds=10,
    )
)
METHODS.register("rloo")(MethodConfig(adv_estimator="rloo", loss_agg_mode="token-mean"))
METHODS.register("reinforce_pp")(
    MethodConfig(adv_estimator="reinforce_pp_baseline", loss_agg_mode="token-mean", kl_estimator="k2")
)
METHODS.register("gspo")(
    MethodConfig(policy_loss="gspo", clip_low=3e-4, clip_high=4e-4, loss_agg_mode="seq-mean-token-mean")
)
METHODS.register("luffy")(MethodConfig(policy_loss="luffy", loss_agg_mode="token-mean", off_policy=True))


def resolve_method(name: str, **overrides: object) -> MethodConfig:
    """The preset ``name`` with ``overrides`` applied (validated by :class:`MethodConfig`).

    Args:
        name: a preset name (``METHODS.names()``).
        **overrides: :class:`MethodConfig` fields to replace.

    Returns:
        The resolved, validated config.

    Raises:
        SettingError: an unknown preset (``method=...``) or a value :class:`MethodConfig` refuses (keyed by
            field name, e.g. ``clip_low=-0.1: ...``).
    """
    raise_problems(name_problem("method", name, METHODS))
    preset = METHODS.get(name)
    fields = [field.name for field in dataclasses.fields(MethodConfig)]
    for key in overrides:
        if key not in fields:
            raise ValueError(f"unknown method override {key!r}; valid fields: {', '.join(fields)}")
    return dataclasses.replace(preset, **overrides)  # type: ignore[arg-type]
