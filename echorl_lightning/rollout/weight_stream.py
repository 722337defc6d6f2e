"""Stream a policy's weights to an inference engine one tensor at a time, in the engine's dtype.

:func:`streamed_weights` walks the policy's state dict (Hugging Face names, the names vLLM's
``model.load_weights`` expects) lazily and yields each tensor:

* cast to the engine's dtype (fp32 master weights -> bf16), so the engine's loader never sees a dtype
  mismatch (vLLM's ``AutoWeightsLoader`` warns once per mismatched parameter, on every sync);
* as a full tensor: an FSDP2 parameter (a ``DTensor`` shard) is cast on its shard first and then gathered
  with ``full_tensor()``, so the all-gather moves engine-dtype bytes; every rank must consume the stream in
  the same order, as the collective requires;
* once per storage by default: a tied output embedding (``lm_head.weight`` is ``model.embed_tokens.weight``)
  is yielded under its first name only; with ``every_name`` under both (the vLLM engine is built untied,
  because vLLM's in-place reload leaves a tied output head stale).

At most one gathered/cast tensor is alive at a time (the one being loaded): the stream never builds a
second full copy of the model. A tensor already in the engine's dtype and not sharded is yielded as is,
without a copy. Wrapper fragments that never appear in checkpoint names (``torch.compile``'s
``_orig_mod.``, activation checkpointing's ``_checkpoint_wrapped_module.``) are removed from the names.

Left out: FSDP1 (``FullyShardedDataParallel`` flat parameters; rejected with an error), DeepSpeed ZeRO-3,
tensor-parallel (non-``Shard``/``Replicate``-on-one-mesh) layouts beyond what ``full_tensor()`` handles,
LoRA merging, quantized engines.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

#: Module-wrapper fragments that never appear in checkpoint parameter names.
WRAPPER_FRAGMENTS = ("_orig_mod.", "_checkpoint_wrapped_module.")


def vllm_weight_name(name: str) -> str:
    """A policy state-dict key as a checkpoint name (HF naming, wrapper fragments removed)."""
    for fragment in WRAPPER_FRAGMENTS:
        name = name.replace(fragment, "")
    return name


def _dtensor_type() -> type | None:
    """``DTensor`` where torch.distributed is built in (torch >= 2.5 public path, 2.4 private), else None."""
    if not torch.distributed.is_available():
        return None
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch 2.4
        from torch.distributed._tensor import DTensor  # type: ignore[no-redef]
    return DTensor


def require_streamable(model: torch.nn.Module) -> None:
    """Raise ``ValueError`` for wrappers whose state dict is not per-parameter: DDP and FSDP1."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        raise ValueError(
            "weight streaming takes the unwrapped policy (ddp_model.module), not the DDP wrapper"
        )
    if torch.distributed.is_available():
        from torch.distributed.fsdp import FullyShardedDataParallel

        if any(isinstance(module, FullyShardedDataParallel) for module in model.modules()):
            raise ValueError(
                "weight streaming does not support FSDP1 (FullyShardedDataParallel flat parameters); "
                "shard the policy with FSDP2 (fully_shard, Lightning's ModelParallelStrategy) instead"
            )


def full_weight(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor`` detached, floating point cast to ``dtype`` and, if it is a ``DTensor``, gathered.

    Same shape as the unsharded parameter; no copy when nothing needs changing. Integer tensors (e.g.
    step counters kept as buffers) keep their dtype.
    """
    tensor = tensor.detach()
    if tensor.is_floating_point():
        tensor = tensor.to(dtype)  # a DTensor casts its local shard: the gather below moves dtype bytes
    dtensor = _dtensor_type()
    if dtensor is not None and isinstance(tensor, dtensor):
        tensor = tensor.full_tensor()
    return tensor


def streamed_weights(
    model: torch.nn.Module, dtype: torch.dtype, *, every_name: bool = False
) -> Iterator[tuple[str, torch.Tensor]]:
    """``(checkpoint name, full tensor in dtype)`` for each state-dict entry of ``model``, lazily.

    A tensor that appears under several names (tied embeddings) is yielded under its first name only, or
    under each of its names with ``every_name`` (for an engine built untied, which keeps the output head as a
    tensor of its own). Collective under FSDP2: all ranks must iterate the stream to the end, in step.
    """
    require_streamable(model)
    seen: set[int] = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen and not every_name:  # tied weights: the same Parameter under a second name
            continue
        seen.add(id(tensor))
        yield vllm_weight_name(name), full_weight(tensor, dtype)
