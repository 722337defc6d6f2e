"""YAML-facing configuration dataclasses of the RLVR module (each field documented; jsonargparse reads them).

``AlgorithmOverrides`` holds one optional field per independent axis of ``MethodConfig``: a method preset
(``model.init_args.method: dapo``) is applied first, then every field set here replaces the preset's value.

Each dataclass checks its fields in ``__post_init__`` (finite numbers in range; NaN and infinities from YAML's
``.nan``/``.inf`` included), naming the key as it appears under ``model.init_args``. ``cli.py`` checks the
same values earlier, from the parsed config (``echorl_lightning/config_checks.py``); these checks cover
objects built in Python.
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
from echorl_lightning.config_checks import number_problem
from echorl_lightning.echo.clips import ApplyTo, EchoSelectorName

_PREFIX = "model.init_args"


def _raise_on(*problems: str | None) -> None:
    """Raise ValueError listing every non-None problem."""
    found = [p for p in problems if p]
    if found:
        raise ValueError("; ".join(found))


def _int_at_least(key: str, value: Any, low: int) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    return None if ok else f"{key}={value!r}: must be an integer >= {low}"


@dataclass
class AlgorithmOverrides:
    """Per-axis overrides of the method preset; ``None`` keeps the preset's value.

    Attributes:
        adv_estimator: advantage estimator (grpo, dr_grpo, rloo, reinforce_pp_baseline).
        policy_loss: policy-loss rule (ppo_clip, gspo, luffy).
        clip_low: lower clip range eps_low (ratio >= 1 - eps_low).
        clip_high: upper clip range eps_high (ratio <= 1 + eps_high); > clip_low is DAPO's clip-higher.
        loss_agg_mode: token-mean, seq-mean-token-mean, seq-mean-token-sum, seq-mean-token-sum-norm.
        kl_estimator: k1, k2 or k3.
        kl_coef: KL coefficient beta; > 0 loads a frozen reference model.
        dynamic_sampling: DAPO: keep only groups with mixed rewards, resample to fill the batch.
        overlong_shaping: DAPO: penalise responses that enter the last ``overlong_buffer`` tokens.
        overlong_buffer: DAPO's L_cache in tokens.
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

    def __post_init__(self) -> None:
        key = f"{_PREFIX}.algorithm"
        _raise_on(
            number_problem(f"{key}.clip_low", self.clip_low, low=0, low_open=True, optional=True),
            number_problem(f"{key}.clip_high", self.clip_high, low=0, low_open=True, optional=True),
            number_problem(f"{key}.kl_coef", self.kl_coef, low=0, optional=True),
            number_problem(f"{key}.luffy_gamma", self.luffy_gamma, low=0, low_open=True, optional=True),
            None
            if self.overlong_buffer is None
            else _int_at_least(f"{key}.overlong_buffer", self.overlong_buffer, 1),
            None
            if self.max_resample_rounds is None
            else _int_at_least(f"{key}.max_resample_rounds", self.max_resample_rounds, 0),
        )

    def apply(self, method: str) -> MethodConfig:
        """The preset ``method`` with every non-None field of this object substituted."""
        return resolve_method(method, **{k: v for k, v in asdict(self).items() if v is not None})


@dataclass
class EchoConfig:
    """EchoRL settings (ECHORL.md, "EchoClip selection" and "Echo loss").

    Attributes:
        enabled: add the echo term L = L_RLVR + coef * L_echo.
        coef: lambda, the echo-loss coefficient (the paper's 0.001).
        apply_to: ``degenerate``: only groups whose rollouts all succeeded; ``success``: every group with a
            success (V = its successful rollouts).
        selector: ``peak`` (the paper: prefix through the highest-entropy step), ``lowest``, ``random``,
            ``full`` (the whole rollout holding the peak step): ablations.
        step_delimiter: text whose presence in a token's decoded text ends a reasoning step.
        min_step_tokens: steps shorter than this are ignored.
        success_reward: the reward value that counts as success.
    """

    enabled: bool = True
    coef: float = 0.001
    apply_to: ApplyTo = "degenerate"
    selector: EchoSelectorName = "peak"
    step_delimiter: str = "\n"
    min_step_tokens: int = 1
    success_reward: float = 1.0

    def __post_init__(self) -> None:
        key = f"{_PREFIX}.echo"
        _raise_on(
            number_problem(f"{key}.coef", self.coef, low=0),
            _int_at_least(f"{key}.min_step_tokens", self.min_step_tokens, 1),
            None if self.step_delimiter else f"{key}.step_delimiter: must be a non-empty string",
            number_problem(f"{key}.success_reward", self.success_reward),
        )


@dataclass
class EvalConfig:
    """Sampling used by validation and test.

    Attributes:
        n: samples per prompt (k of avg@k).
        temperature: evaluation temperature (the paper's 0.6; 0 = greedy).
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
        key = f"{_PREFIX}.eval"
        _raise_on(
            _int_at_least(f"{key}.n", self.n, 1),
            number_problem(f"{key}.temperature", self.temperature, low=0),
            number_problem(f"{key}.top_p", self.top_p, low=0, low_open=True, high=1),
            _int_at_least(f"{key}.max_new_tokens", self.max_new_tokens, 1),
        )
