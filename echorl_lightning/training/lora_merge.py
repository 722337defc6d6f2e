"""The merged weights ``W + (alpha / r) * B @ A`` of a LoRA policy, one tensor at a time, for engine sync and
export, without a second full copy and without changing the base weights.

Inference engines that hold their own weights (vLLM) and the exported Hugging Face folder need the plain
model: every adapted layer's weight merged, under the base checkpoint's names. peft's ``merge_adapter()`` /
``unmerge_adapter()`` round trip adds the update to ``W`` and subtracts it again, which does not give ``W``
back in floating point (``(W + D) - D != W``): every sync would perturb the frozen base by rounding, so
"only adapters change" and exact resume would fail (10 round trips changed 41% of the float32 base elements
of the shipped tiny model). This file merges one layer in place, hands it out, and restores it from a copy
of that one tensor before the next:

* :func:`merged_named_weights`: ``(HF name, tensor)`` for each state-dict entry of the base model, adapter
  tensors left out and ``.base_layer`` removed from names; an adapted weight is merged in place while it is
  the current item and restored bit for bit when the consumer asks for the next one (or stops). Peak extra
  memory: one layer's weight and its update. A consumer must use (or copy) each tensor before taking the
  next, as ``weight_stream.streamed_weights`` and vLLM's ``load_weights`` do;
* :class:`MergedWeights` / :func:`merged_weights`: a module whose ``state_dict`` is that stream, so
  ``echorl_lightning.rollout.weight_stream.streamed_weights`` (and ``VLLMEngine.load_weights``) syncs merged
  weights unchanged;
* :func:`save_merged_pretrained`: the merged model as a Hugging Face folder (config, generation config,
  safetensors shards written one shard at a time) that ``AutoModelForCausalLM.from_pretrained`` loads.

Part of echorl-lightning, the implementation of EchoRL (arXiv 2605.31228). Left out: DoRA and other LoRA
variants (refused), FSDP2-sharded adapters (not tested), quantized bases, adapters on embeddings.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import peft
import torch
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file
from torch import Tensor, nn

#: Substrings of peft's adapter parameter names (never part of the base checkpoint).
ADAPTER_FRAGMENTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")


def checkpoint_name(name: str) -> str:
    """A base-model state-dict key of a peft-injected model as the original checkpoint name."""
    return name.replace(".base_layer.", ".")


def is_adapter_name(name: str) -> bool:
    """Whether a state-dict key belongs to an adapter (not to the base model)."""
    return any(f".{fragment}." in f".{name}" for fragment in ADAPTER_FRAGMENTS)


def adapter_delta(layer: LoraLayer) -> Tensor | None:
    """The summed update of ``layer``'s active adapters, shaped like its base weight; None when none applies
    (adapters disabled, already merged, or no active adapter on this layer)."""
    if layer.disable_adapters or layer.merged:
        return None
    delta: Tensor | None = None
    for name in layer.active_adapters:
        if name not in layer.lora_A:
            continue
        if layer.use_dora.get(name, False) or name in getattr(layer, "lora_variant", {}):
            raise ValueError(f"merged weights: adapter {name!r} is a LoRA variant (DoRA, ...), not supported")
        update = layer.get_delta_weight(name)
        delta = update if delta is None else delta + update
    return delta


def merged_named_weights(policy: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """``(checkpoint name, tensor)`` for every state-dict entry of the merged model, lazily and in order.

    Args:
        policy: a peft-wrapped causal LM.

    Yields:
        Base-model names (``model.layers.0.self_attn.q_proj.weight``, no ``base_model.model.`` prefix, no
        ``.base_layer``, no adapter entries). An adapted weight is the layer's own Parameter with the update
        added in place; it is restored exactly (from a saved copy) when the next item is requested or the
        generator is closed. Every other tensor is yielded as is. Tied weights appear under each name, as in
        ``state_dict()``.
    """
    if not isinstance(policy, peft.PeftModel):
        raise TypeError(f"merged_named_weights needs a peft-wrapped policy, got {type(policy).__name__}")
    base = policy.get_base_model()
    adapted = {id(m.get_base_layer().weight): m for m in base.modules() if isinstance(m, LoraLayer)}
    for name, tensor in base.state_dict(keep_vars=True).items():
        if is_adapter_name(name):
            continue
        layer = adapted.get(id(tensor))
        delta = None if layer is None else adapter_delta(layer)
        if delta is None:
            yield checkpoint_name(name), tensor
            continue
        with torch.no_grad():
            saved = tensor.detach().clone()
            tensor.add_(delta.to(tensor.dtype))  # what peft's merge does to W, here for one layer only
        del delta
        try:
            yield checkpoint_name(name), tensor
        finally:
            with torch.no_grad():
                tensor.copy_(saved)  # W bit for bit (peft's unmerge would subtract and round)
            del saved


class MergedWeights(nn.Module):
    """A module view of a LoRA policy whose ``state_dict`` is :func:`merged_named_weights`.

    It holds the policy as its only child (so ``modules()`` walks the real network, as the engines' wrapper
    checks expect) and makes no copy. ``state_dict`` returns a one-pass stream with ``items()``; it is meant
    for ``weight_stream.streamed_weights`` / ``VLLMEngine.load_weights``, inside :func:`merged_weights`.
    """

    def __init__(self, policy: peft.PeftModel) -> None:
        super().__init__()
        self.policy = policy
        self._streams: list[Iterator[tuple[str, Tensor]]] = []

    def state_dict(self, *args: Any, **kwargs: Any) -> _MergedStream:  # type: ignore[override]
        """The merged weights as a one-pass stream (arguments are accepted and ignored: tensors are live)."""
        stream = merged_named_weights(self.policy)
        self._streams.append(stream)
        return _MergedStream(stream)

    def close(self) -> None:
        """Restore any layer still merged by an unfinished stream."""
        for stream in self._streams:
            stream.close()  # type: ignore[attr-defined]
        self._streams.clear()


class _MergedStream:
    """``items()`` over a merged-weights generator (the part of a state dict ``streamed_weights`` uses)."""

    def __init__(self, stream: Iterator[tuple[str, Tensor]]) -> None:
        self._stream = stream

    def items(self) -> Iterator[tuple[str, Tensor]]:
        return self._stream


@contextmanager
def merged_weights(policy: peft.PeftModel) -> Iterator[MergedWeights]:
    """The merged view for one engine sync: ``with merged_weights(policy) as m: engine.load_weights(m)``.

    On exit every base weight is exactly what it was before, even if the consumer stopped early or raised.
    """
    view = MergedWeights(policy)
    try:
        yield view
    finally:
        view.close()


def _shard_plan(policy: peft.PeftModel, max_shard_bytes: int) -> list[list[str]]:
    """Checkpoint names grouped into shards of at most ``max_shard_bytes`` (a larger tensor gets its own).

    Tied tensors are listed once, under their first name, as ``save_pretrained`` writes them.
    """
    shards: list[list[str]] = [[]]
    size, seen = 0, set()
    base = policy.get_base_model()
    for name, tensor in base.state_dict(keep_vars=True).items():
        if is_adapter_name(name) or id(tensor) in seen:
            continue
        seen.add(id(tensor))
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(checkpoint_name(name))
        size += nbytes
    return shards


def save_merged_pretrained(policy: peft.PeftModel, path: str | Path, max_shard_bytes: int = 2**30) -> Path:
    """Write the merged model as a Hugging Face folder loadable by ``AutoModelForCausalLM.from_pretrained``.

    Safetensors shards are written one at a time (peak extra memory: one shard, copied to the CPU); the base
    weights are left exactly as they were. Writes ``config.json``, ``generation_config.json`` (if the model
    has one), ``model.safetensors`` or ``model-0000i-of-0000n.safetensors`` with ``model.safetensors.index.json``.
    The tokenizer is the caller's to save. Returns the folder.
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    base = policy.get_base_model()
    plan = _shard_plan(policy, max_shard_bytes)
    files = (
        ["model.safetensors"]
        if len(plan) == 1
        else [f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))]
    )
    shard_of = {name: i for i, names in enumerate(plan) for name in names}
    shard: dict[str, Tensor] = {}
    current, total = 0, 0
    for name, tensor in merged_named_weights(policy):
        index = shard_of.get(name)
        if index is None:  # a tied duplicate
            continue
        if index != current:
            save_file(shard, str(out / files[current]), metadata={"format": "pt"})
            shard, current = {}, index
        shard[name] = tensor.detach().to("cpu", copy=True).contiguous()
        total += tensor.numel() * tensor.element_size()
    save_file(shard, str(out / files[current]), metadata={"format": "pt"})
    if len(plan) > 1:
        index_json = {
            "metadata": {"total_size": total},
            "weight_map": {n: files[i] for n, i in shard_of.items()},
        }
        (out / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=2))
    config = copy.deepcopy(base.config)
    config.architectures = [type(base).__name__]
    config.save_pretrained(out)
    if getattr(base, "generation_config", None) is not None:
        base.generation_config.save_pretrained(out)
    return out
