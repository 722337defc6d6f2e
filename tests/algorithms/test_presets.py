"""Method presets, their validation, the name types, and the registry contract on fresh registries."""

from __future__ import annotations

import dataclasses

import pytest

from echorl_lightning.algorithms import (
    ADVANTAGES,
    AGGREGATIONS,
    KL_ESTIMATORS,
    METHODS,
    POLICY_LOSSES,
    AdvEstimatorName,
    AggModeName,
    KLName,
    MethodConfig,
    MethodName,
    PolicyLossName,
    resolve_method,
)
from echorl_lightning.echo.clips import ECHO_SELECTORS, EchoSelectorName
from echorl_lightning.registry import Registry


@pytest.mark.parametrize(
    ("alias", "registry"),
    [
        (AdvEstimatorName, ADVANTAGES),
        (PolicyLossName, POLICY_LOSSES),
        (AggModeName, AGGREGATIONS),
        (KLName, KL_ESTIMATORS),
        (MethodName, METHODS),
        (EchoSelectorName, ECHO_SELECTORS),
    ],
)
def test_names_are_plain_strings_checked_against_the_registry(alias: object, registry: Registry) -> None:
    # str, not a Literal: a name registered in the user's own code must get through the config parser
    assert alias is str and len(registry) > 0


def test_method_table() -> None:
    # the table of ECHORL.md, one row per preset:
    # (adv, policy loss, clip_low, clip_high, aggregation, kl estimator, kl_coef, dyn. sampling, overlong, off_policy)
    table = {
        "grpo": ("grpo", "ppo_clip", 0.2, 0.2, "seq-mean-token-mean", "k3", 0.0, False, False, False),
        "dr_grpo": (
            "dr_grpo",
            "ppo_clip",
            0.2,
            0.2,
            "seq-mean-token-sum-norm",
            "k3",
            0.0,
            False,
            False,
            False,
        ),
        "dapo": ("grpo", "ppo_clip", 0.2, 0.28, "token-mean", "k3", 0.0, True, True, False),
        "rloo": ("rloo", "ppo_clip", 0.2, 0.2, "token-mean", "k3", 0.0, False, False, False),
        "reinforce_pp": (
            "reinforce_pp_baseline",
            "ppo_clip",
            0.2,
            0.2,
            "token-mean",
            "k2",
            0.0,
            False,
            False,
            False,
        ),
        "gspo": ("grpo", "gspo", 3e-4, 4e-4, "seq-mean-token-mean", "k3", 0.0, False, False, False),
        "luffy": ("grpo", "luffy", 0.2, 0.2, "token-mean", "k3", 0.0, False, False, True),
    }
    assert sorted(table) == METHODS.names()
    for name, row in table.items():
        cfg = METHODS.get(name)
        got = (
            cfg.adv_estimator,
            cfg.policy_loss,
            cfg.clip_low,
            cfg.clip_high,
            cfg.loss_agg_mode,
            cfg.kl_estimator,
            cfg.kl_coef,
            cfg.dynamic_sampling,
            cfg.overlong_shaping,
            cfg.off_policy,
        )
        assert got == row, name
        assert not cfg.use_kl
        assert cfg.luffy_gamma == 0.1
    dapo = METHODS.get("dapo")
    assert dapo.overlong_buffer > 0 and dapo.max_resample_rounds > 0


def test_defaults_are_grpo() -> None:
    assert MethodConfig() == METHODS.get("grpo")


def test_resolve_applies_overrides() -> None:
    cfg = resolve_method("dapo", clip_high=0.3, kl_coef=0.01, kl_estimator="k2")
    assert (cfg.clip_low, cfg.clip_high, cfg.kl_coef, cfg.kl_estimator) == (0.2, 0.3, 0.01, "k2")
    assert cfg.use_kl
    assert cfg.loss_agg_mode == "token-mean"  # untouched axes keep the preset's value
    assert METHODS.get("dapo").clip_high == 0.28  # the preset itself is unchanged
    assert resolve_method("grpo") == METHODS.get("grpo")


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        METHODS.get("grpo").clip_low = 0.3  # type: ignore[misc]


def test_unknown_preset_lists_known_names() -> None:
    with pytest.raises(
        ValueError, match="method='ppo': unknown method preset; known: dapo, dr_grpo, grpo, gspo, luffy"
    ):
        resolve_method("ppo")


def test_unknown_override_key_names_the_key_and_fields() -> None:
    with pytest.raises(ValueError, match="unknown method override 'clip_ratio'; valid fields: adv_estimator"):
        resolve_method("grpo", clip_ratio=0.2)


@pytest.mark.parametrize(
    ("key", "value", "listed"),
    [
        ("adv_estimator", "gae", "dr_grpo, grpo, reinforce_pp_baseline, rloo"),
        ("policy_loss", "dual_clip", "gspo, luffy, ppo_clip"),
        ("loss_agg_mode", "seq-mean", "seq-mean-token-mean, seq-mean-token-sum"),
        ("kl_estimator", "low_var_kl", "k1, k2, k3"),
    ],
)
def test_unknown_axis_name_lists_known_names(key: str, value: str, listed: str) -> None:
    with pytest.raises(ValueError, match=f"{key}='{value}': unknown .*; known: {listed}"):
        resolve_method("grpo", **{key: value})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"clip_low": 1.0}, "clip_low"),
        ({"clip_high": -0.1}, "clip_high"),
        ({"kl_coef": -1.0}, "kl_coef"),
        ({"overlong_buffer": -1}, "overlong_buffer"),
        ({"overlong_shaping": True}, "overlong_buffer=0: must be > 0 with overlong_shaping=True"),
        ({"max_resample_rounds": -1}, "max_resample_rounds"),
        ({"luffy_gamma": 0.0}, "luffy_gamma"),
        ({"policy_loss": "luffy"}, "off_policy=False: must be True with policy_loss='luffy'"),
        ({"clip_high": float("nan")}, "clip_high=nan: must be a finite number >= 0"),
    ],
)
def test_bad_values_raise(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_method("grpo", **overrides)


def test_off_policy_luffy_override_is_valid() -> None:
    cfg = resolve_method("grpo", policy_loss="luffy", off_policy=True, luffy_gamma=0.2)
    assert (cfg.policy_loss, cfg.off_policy, cfg.luffy_gamma) == ("luffy", True, 0.2)


# ---- the registry contract, on fresh registries (the global ones are never mutated) ---------------------------


def test_fresh_registry_duplicates_raise() -> None:
    registry: Registry[int] = Registry("toy axis")
    registry.register("a")(1)
    with pytest.raises(ValueError, match="toy axis 'a' is already registered"):
        registry.register("a")(2)
    assert registry.get("a") == 1


def test_fresh_registry_unknown_lists_known() -> None:
    registry: Registry[int] = Registry("toy axis")
    registry.register("beta")(2)
    registry.register("alpha")(1)
    with pytest.raises(ValueError, match="unknown toy axis 'gamma'; known: alpha, beta"):
        registry.get("gamma")
    assert list(registry) == ["alpha", "beta"] and len(registry) == 2 and "alpha" in registry


def test_global_registries_reject_duplicates_without_changing() -> None:
    before = ADVANTAGES.get("grpo")
    with pytest.raises(ValueError, match="already registered"):
        ADVANTAGES.register("grpo")(lambda rewards: rewards)
    assert ADVANTAGES.get("grpo") is before
