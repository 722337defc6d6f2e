"""Each setting's bounds live in one place: the early config check (``config_checks``) builds the objects that
own them and never disagrees with them.

For every checked key, boundary values (below, at and above each bound, NaN, infinities, wrong types) go
through the early check and through the runtime object the setting belongs to; the two verdicts must agree.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from typing import Any

import pytest
from echorl_lightning.callbacks.rollout import RolloutCallback

from echorl_lightning.algorithms.advantages import MIN_GROUP_SIZE
from echorl_lightning.config_checks import check_model, check_rollout
from echorl_lightning.rollout.hf_engine import validate_request
from echorl_lightning.rollout.types import SamplingConfig
from echorl_lightning.training.config import AlgorithmOverrides, EchoConfig, EvalConfig
from echorl_lightning.training.guard import NumericalGuard
from echorl_lightning.training.lora import LoraConfig
from tests.helpers.paths import ROOT

PROBES: list[Any] = [-1, -0.5, 0, 1e-9, 0.5, 1, 1.5, 2, 3, math.nan, math.inf, -math.inf, True]


def _owner(
    cls: Callable[..., Any], key: str, then: Callable[[Any], Any] = lambda built: built
) -> Callable[[Any], Any]:
    return lambda value: then(cls(**{key: value}))


def _refused(build: Callable[[], Any]) -> bool:
    try:
        build()
    except (ValueError, TypeError):
        return True
    return False


# key under model.init_args -> how the runtime builds the object that owns it
MODEL_KEYS: dict[str, Callable[[Any], Any]] = {
    **{f"echo.{k}": _owner(EchoConfig, k) for k in ("coef", "min_step_tokens", "success_reward")},
    **{f"eval.{k}": _owner(EvalConfig, k) for k in ("n", "temperature", "top_p", "max_new_tokens")},
    **{
        f"algorithm.{k}": _owner(AlgorithmOverrides, k, lambda overrides: overrides.apply("grpo"))
        for k in ("clip_low", "clip_high", "kl_coef", "luffy_gamma", "overlong_buffer", "max_resample_rounds")
    },
    **{f"lora.{k}": _owner(LoraConfig, k) for k in ("r", "alpha", "dropout")},
    "max_consecutive_skips": NumericalGuard,
}


def _nested(key: str, value: Any) -> dict[str, Any]:
    group, _, name = key.rpartition(".")
    return {group: {name: value}} if group else {key: value}


@pytest.mark.parametrize("key", sorted(MODEL_KEYS))
def test_model_settings_agree_with_their_owner(key: str) -> None:
    for value in PROBES:
        named = (f"model.init_args.{key}=", f"model.init_args.{key}:")
        early = [p for p in check_model(_nested(key, value)) if p.startswith(named)]
        runtime = _refused(lambda v=value: MODEL_KEYS[key](v))
        assert bool(early) == runtime, (key, value, early)


def _rollout_runtime(key: str, value: Any) -> bool:
    """Whether a run refuses ``rollout.<key>=value``: the callback, then the engine's check of the sampling
    request it makes (``group_size`` is also held to the advantage estimators' ``MIN_GROUP_SIZE``)."""
    if _refused(lambda: RolloutCallback(**{key: value})):
        return True
    if key == "group_size" and not (isinstance(value, int) and value >= MIN_GROUP_SIZE):
        return True
    sampling_key = {"group_size": "n"}.get(key, key)
    if sampling_key in ("n", "max_new_tokens", "temperature", "top_p"):
        return _refused(lambda: validate_request([[1]], SamplingConfig(**{sampling_key: value})))
    return False


ROLLOUT_KEYS = (
    "prompts_per_epoch",
    "group_size",
    "max_new_tokens",
    "temperature",
    "top_p",
    "ppo_epochs",
    "num_minibatches",
    "logprob_batch_size",
    "engine_logprob_tolerance",
    "engine_is_cap",
)


@pytest.mark.parametrize("key", ROLLOUT_KEYS)
def test_rollout_settings_agree_with_the_callback_and_engine(key: str) -> None:
    for value in PROBES:
        problems = check_rollout({key: value}, {}, {"devices": "auto"})
        early = [p for p in problems if p.startswith(f"rollout.{key}=")]
        assert bool(early) == _rollout_runtime(key, value), (key, value, problems)


def test_the_early_check_states_no_bound_of_its_own() -> None:
    source = (ROOT / "echorl_lightning/config_checks.py").read_text()
    for stated in ("number_problem(", "integer_problem(", "must be a finite number", "must be an integer >="):
        assert stated not in source, stated
    # no value compared with a number literal in the code, but the trainer's device count and max_epochs
    compared = {
        ast.unparse(node.left)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Compare)
        and isinstance(node.ops[0], ast.Lt | ast.LtE | ast.Gt | ast.GtE)
        and isinstance(node.comparators[0], ast.Constant | ast.UnaryOp)
    }
    assert compared <= {"n", "epochs"}, compared


def test_a_zero_clip_range_is_accepted_everywhere() -> None:
    # eps = 0 pins that side of the ratio at 1: a legal, if odd, PPO setting (verl accepts it)
    args = {"algorithm": {"clip_low": 0.0, "clip_high": 0.0}}
    assert [p for p in check_model(args) if "clip" in p] == []
    assert AlgorithmOverrides(clip_low=0.0, clip_high=0.0).apply("grpo").clip_low == 0.0
