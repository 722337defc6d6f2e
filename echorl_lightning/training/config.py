"""YAML-facing configuration dataclasses of the RLVR module (each field documented; jsonargparse reads them).

``AlgorithmOverrides`` holds one optional field per independent axis of ``MethodConfig``: a method preset
(``model.init_args.method: dapo``) is applied first, then every field set here replaces the preset's value.

Each setting's bounds are checked once, where it is defined: ``EchoConfig`` and ``EvalConfig`` in their
``__post_init__`` (finite numbers in range; NaN and infinities from YAML's ``.nan``/``.inf`` included), the
algorithm's in ``MethodConfig`` (reached through :meth:`AlgorithmOverrides.apply`, which names the key under
``model.init_args.algorithm``), the optimizer's in :func:`check_optimizer`. Messages name the key as it appears
under ``model.init_args``. ``cli.py``'s early check (``echorl_lightning/config_checks.py``) builds these same
objects from the parsed config before any model loads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from echorl_lightning.algorithms.presets import (
    AdvEstimatorName,
    AggModeName,
    KLName,
    MethodConfig,
    PolicyLossName,
    resolve_method,
)
from echorl_lightning.bounds import (
    SettingError,
    integer_problem,
    name_problem,
    number_problem,
    raise_problems,
)
from echorl_lightning.echo.clips import ECHO_SELECTORS, ApplyTo, EchoSelectorName
from echorl_lightning.rollout.hf_engine import sampling_problems
from echorl_lightning.rollout.types import SamplingConfig

_PREFIX = "model.init_args"


def check_optimizer(lr: Any, weight_decay: Any, warmup_steps: Any) -> None:
    """Raise :class:`SettingError` naming ``model.init_args.lr`` (> 0), ``weight_decay`` (>= 0) or
    ``warmup_steps`` (an integer >= 0): the bounds of the module's optimizer settings."""
    raise_problems(
        number_problem(f"{_PREFIX}.lr", lr, low=0, low_open=True),
        number_problem(f"{_PREFIX}.weight_decay", weight_decay, low=0),
        integer_problem(f"{_PREFIX}.warmup_steps", warmup_steps, 0),
    )


@dataclass
class AlgorithmOverrides:
    """Per-axis overrides of the method preset; ``None`` keeps the preset's value. The values are checked by
    ``MethodConfig`` when :meth:`apply` builds the method (one place for the bounds, whichever sets them).

    Attributes:
        adv_estimator: advantage estimator (grpo, dr_grpo, rloo, reinforce_pp_baseline, or a name registered
            in the user's own code).
        policy_loss: policy-loss rule (ppo_clip, gspo, luffy, or a registered name).
        clip_low: lower clip range eps_low (ratio >= 1 - eps_low), in [0, 1).
        clip_high: upper clip range eps_high (ratio <= 1 + eps_high), >= 0; > clip_low is DAPO's clip-higher.
        loss_agg_mode: token-mean, seq-mean-token-mean, seq-mean-token-sum, seq-mean-token-sum-norm, or a
            registered name.
        kl_estimator: k1, k2, k3, or a registered name.
        kl_coef: KL coefficient beta; > 0 loads a frozen reference model.
        dynamic_sampling: DAPO: keep only groups with mixed rewards, resample to fill the batch.
        overlong_shaping: DAPO: penalise responses that enter the last ``overlong_buffer`` tokens.
        overlong_buffer: DAPO's L_cache in tokens (> 0 with overlong_shaping, <= rollout.max_new_tokens).
        max_resample_rounds: DAPO: extra generation rounds allowed to fill the batch.
        off_policy: LUFFY: add the datamodule's expert solution to each group.
        luffy_gamma: LUFFY: shaping constant in p / (p + gamma) on expert tokens.
    """

    adv_estimator: AdvEstimatorName | None = None
    policy_loss: PolicyLossName | None = None
    clip_low: float | None = None
    clip_high: float | None = None
    loss_agg_mode: AggModeName | None = None
    kl_estimator: KLName | None = None
    kl_coef: float | None = None
    dynamic_sampling: bool | None = None
    overlong_shaping: bool | None = None
    overlong_buffer: int | None = None
    max_resample_rounds: int | None = None
    off_policy: bool | None = None
    luffy_gamma: float | None = None

    def apply(self, method: str) -> MethodConfig:
        """The preset ``method`` with every non-None field of this object substituted.

        Raises:
            SettingError: naming ``model.init_args.method`` (an unknown preset) or
                ``model.init_args.algorithm.<field>`` (a value ``MethodConfig`` refuses).
        """
        try:
            return resolve_method(method, **{k: v for k, v in asdict(self).items() if v is not None})
        except SettingError as error:
            under = _PREFIX if error.problems[0].startswith("method=") else f"{_PREFIX}.algorithm"
            raise error.under(under) from None


@dataclass
class EchoConfig:
    """EchoRL settings: which rollouts get an EchoClip, where it ends, and the echo term's weight.

    Attributes:
        enabled: add the echo term L = L_RLVR + coef * L_echo.
        coef: lambda, the echo-loss coefficient.
        apply_to: ``degenerate``: only groups whose rollouts all succeeded; ``success``: every group with a
            success (V = its successful rollouts).
        selector: ``peak`` (the default: prefix through the highest-entropy step), ``lowest``, ``random``,
            ``full`` (the whole rollout holding the peak step): ablations; or a name registered in
            ``ECHO_SELECTORS`` by the user's own code.
        step_delimiter: text whose presence in a token's decoded text ends a reasoning step.
        min_step_tokens: steps shorter than this are ignored.
        success_reward: the reward value that counts as success.
        valid_steps_only: EchoClips only from rollouts whose every step the task's step checker accepts (a
            rollout it could not judge is left out too); needs a task with a step checker. Off by default (the
            paper's rule reads the final answer only).
    """

    enabled: bool = True
    coef: float = 0.001
    apply_to: ApplyTo = "degenerate"
    selector: EchoSelectorName = "peak"
    step_delimiter: str = "\n"
    min_step_tokens: int = 1
    success_reward: float = 1.0
    valid_steps_only: bool = False

    def __post_init__(self) -> None:
        key = f"{_PREFIX}.echo"
        raise_problems(
            number_problem(f"{key}.coef", self.coef, low=0),
            name_problem(f"{key}.selector", self.selector, ECHO_SELECTORS),
            integer_problem(f"{key}.min_step_tokens", self.min_step_tokens, 1),
            None if self.step_delimiter else f"{key}.step_delimiter: must be a non-empty string",
            number_problem(f"{key}.success_reward", self.success_reward),
        )


@dataclass
class EvalConfig:
    """Sampling used by validation and test.

    Attributes:
        n: samples per prompt (k of avg@k).
        temperature: evaluation temperature (0 = greedy).
        top_p: nucleus mass.
        max_new_tokens: response length limit.
        seed: sampling seed.
    """

    n: int = 1
    temperature: float = 0.6
    top_p: float = 1.0
    max_new_tokens: int = 1024
    seed: int = 1234

    def __post_init__(self) -> None:
        sampling = SamplingConfig(self.n, self.max_new_tokens, self.temperature, self.top_p, self.seed)
        raise_problems(*sampling_problems(sampling, f"{_PREFIX}.eval", n_key="n"))
