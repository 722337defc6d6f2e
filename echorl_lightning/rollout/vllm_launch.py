"""Where and how a vLLM engine starts inside a training process: the launcher's environment, an in-process
engine core, and the trainer's RNG states kept across the build.

Used by :class:`~echorl_lightning.rollout.vllm_engine.VLLMEngine`. No vLLM import at module level.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import torch

#: vLLM's switch between an in-process engine core (0) and a separate engine process (1, its default).
MULTIPROCESSING_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"


def launcher_env(rank: int, world_size: int, cuda_device: int, environ: Mapping[str, str]) -> dict[str, str]:
    """Environment variables to set before building this rank's ``LLM`` (a dict of the ones to change).

    ``LOCAL_RANK`` (the GPU vLLM's worker takes) defaults to ``cuda_device``, the trainer's current device.
    On more than one rank ``RANK`` and ``WORLD_SIZE`` default to the live torch.distributed world and
    ``MASTER_ADDR`` / ``MASTER_PORT`` must be set (vLLM's ``external_launcher`` joins through ``env://``).
    Raises ``ValueError`` when a variable already set contradicts the live world or device (vLLM would
    put the engine on another GPU), and on one rank when ``cuda_device`` is not 0 (vLLM's single-process
    executor always uses ``cuda:0``).
    """
    updates: dict[str, str] = {}
    if world_size == 1:
        if cuda_device != 0:
            raise ValueError(
                f"a single-process vLLM engine runs on cuda:0, but the trainer's device is cuda:{cuda_device}; "
                f"expose only that GPU (CUDA_VISIBLE_DEVICES={cuda_device}) so it becomes cuda:0"
            )
        if "LOCAL_RANK" not in environ:
            updates["LOCAL_RANK"] = "0"
        return updates
    expected = {"RANK": rank, "WORLD_SIZE": world_size, "LOCAL_RANK": cuda_device}
    for key, value in expected.items():
        if key not in environ:
            updates[key] = str(value)
        elif int(environ[key]) != value:
            raise ValueError(
                f"{key}={environ[key]} in the environment, but this rank's {key.lower()} is {value}: "
                "vLLM's external_launcher would place or rank its engine wrongly"
            )
    missing = [key for key in ("MASTER_ADDR", "MASTER_PORT") if key not in environ]
    if missing:
        raise RuntimeError(f"VLLMEngine on {world_size} ranks needs {', '.join(missing)} in the environment")
    return updates


def force_inprocess_engine_core() -> None:
    """Set ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (not a default: an inherited 1 is overridden).

    vLLM caches its environment after an engine has started (``enable_envs_cache`` in
    vllm/v1/engine/core.py); if an earlier engine froze another value, the cache is dropped.
    """
    os.environ[MULTIPROCESSING_ENV] = "0"
    envs = sys.modules.get("vllm.envs")
    if envs is not None and getattr(envs, MULTIPROCESSING_ENV):
        envs.disable_envs_cache()


def require_inprocess(llm: Any) -> None:
    """Raise ``RuntimeError`` unless ``llm`` runs its engine core (and model) in this process."""
    if getattr(getattr(llm, "llm_engine", None), "model_executor", None) is None:
        raise RuntimeError(
            "vLLM started its engine core in a separate process (llm.llm_engine.model_executor is missing), "
            f"so the weight sync cannot hand the policy's tensors to its worker by reference; {MULTIPROCESSING_ENV} must be 0 "
            "when the LLM is built"
        )


def engine_limits(llm: Any) -> tuple[torch.dtype, int]:
    """The engine's weight dtype and resolved ``max_model_len`` (``llm.llm_engine.model_config``)."""
    config = llm.llm_engine.model_config
    dtype = config.dtype
    if not isinstance(dtype, torch.dtype):
        dtype = getattr(torch, str(dtype).removeprefix("torch."))
    return dtype, int(config.max_model_len)


@contextlib.contextmanager
def preserved_rng_state() -> Iterator[None]:
    """Restore Python's, NumPy's (if installed) and torch's CPU and current-CUDA-device RNG states on exit.

    Only the current device's CUDA state is saved: reading another device's state would create a CUDA
    context there from every rank.
    """
    python_state = random.getstate()
    try:
        import numpy
    except ImportError:  # pragma: no cover - numpy comes with torch in practice
        numpy = None
    numpy_state = numpy.random.get_state() if numpy is not None else None
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python_state)
            if numpy is not None:
                numpy.random.set_state(numpy_state)
