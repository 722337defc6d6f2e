"""The merged weights ``W + (alpha / r) * B @ A`` of a LoRA policy, one tensor at a time, for engine sync and
export, without a second full copy and without touching the base weights.

Inference engines that hold their own weights (vLLM) and the exported Hugging Face folder need the plain
model: every adapted layer's weight merged, under the base checkpoint's names. peft's ``merge_adapter()`` /
``unmerge_adapter()`` round trip adds the update to ``W`` and subtracts it again, which does not give ``W``
back in floating point (``(W + D) - D != W``): every sync would perturb the frozen base by rounding, so "only
adapters change" and exact resume would fail. Here each adapted layer is merged into a fresh tensor, handed
out, and freed before the next one is built; ``W`` is only read:

* :func:`merged_named_weights`: ``(HF name, tensor)`` for each state-dict entry of the base model, adapter
  tensors left out and ``.base_layer`` removed from names. An adapted weight is ``W.clone() += delta``,
  exactly the values peft's merge writes (same dtype promotion, bit for bit). When the consumer asks for the
  next item the yielded tensor is emptied (``set_()``: shape [0], its memory freed unless the consumer holds
  another reference to it, e.g. ``streamed_weights``' detached alias), and the emptied object is kept until
  the stream ends so that no later tensor reuses its ``id`` (``weight_stream.streamed_weights`` skips tied
  weights by ``id``). Peak extra memory for a one-pass consumer (``streamed_weights`` into vLLM's
  ``load_weights``): one layer's merged weight and its update. A consumer that keeps the yielded tensors
  themselves sees them emptied (shape errors) rather than stale values;
* :class:`MergedWeights` / :func:`merged_weights`: a module whose ``state_dict`` is that stream, so
  ``echorl_lightning.rollout.weight_stream.streamed_weights`` (and ``VLLMEngine.load_weights``) syncs merged
  weights unchanged. Not for ``training.sharding.save_hf_streamed``, which lists every tensor first;
* :func:`save_merged_pretrained`: the merged model as a Hugging Face folder (config, generation config,
  safetensors files written one at a time) that ``AutoModelForCausalLM.from_pretrained`` loads.

Left out: DoRA and other LoRA variants (refused), FSDP2-sharded (DTensor) adapters, quantized bases, adapters
on embeddings.
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

from echorl_lightning.training.sharding import plan_file_shards

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
        Base-model names (``model.layers.0.self_attn.q_proj.weight``: no ``base_model.model.`` prefix, no
        ``.base_layer``, no adapter entries). An adapted weight is a fresh merged tensor, emptied (``set_()``)
        when the next item is requested; every other tensor is the model's own, yielded as is. Tied
        weights appear under each name, as in ``state_dict()``. The base weights are never written.
    """
    if not isinstance(policy, peft.PeftModel):
        raise TypeError(f"merged_named_weights needs a peft-wrapped policy, got {type(policy).__name__}")
    base = policy.get_base_model()
    adapted = {id(m.get_base_layer().weight): m for m in base.modules() if isinstance(m, LoraLayer)}
    released: list[Tensor] = []  # emptied merged tensors, alive until the end so their ids stay unique
    for name, tensor in base.state_dict(keep_vars=True).items():
        if is_adapter_name(name):
            continue
        layer = adapted.get(id(tensor))
        delta = None if layer is None else adapter_delta(layer)
        if delta is None:
            yield checkpoint_name(name), tensor
            continue
        with torch.no_grad():
            merged = tensor.detach().clone()
            merged += delta  # what peft's merge does to W (same in-place dtype promotion), on a copy
        del delta
        yield checkpoint_name(name), merged
        merged.set_()  # the consumer took the next item: drop our hold on the memory (shape becomes [0])
        released.append(merged)


class MergedWeights(nn.Module):
    """A module view of a LoRA policy whose ``state_dict`` is :func:`merged_named_weights`.

    It holds the policy as its only child (so ``modules()`` walks the real network, as the engines' wrapper
    checks expect) and makes no copy. ``state_dict`` returns a one-pass stream with ``items()``, for one-pass
    consumers (``weight_stream.streamed_weights``, ``VLLMEngine.load_weights``), inside :func:`merged_weights`.
    """

    def __init__(self, policy: peft.PeftModel) -> None:
        super().__init__()
        self.policy = policy
        self._streams: list[Iterator[tuple[str, Tensor]]] = []

    def state_dict(self, *args: Any, **kwargs: Any) -> _MergedStream:  # type: ignore[override]
        """The merged weights as a one-pass stream (the usual arguments are accepted and ignored)."""
        stream = merged_named_weights(self.policy)
        self._streams.append(stream)
        return _MergedStream(stream)

    def close(self) -> None:
        """Finish every stream handed out (an unfinished one drops its current merged tensor)."""
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

    On exit the streams handed out are closed, also when the consumer stopped early or raised.
    """
    view = MergedWeights(policy)
    try:
        yield view
    finally:
        view.close()


def save_merged_pretrained(
    policy: peft.PeftModel, path: str | Path, max_shard_bytes: int = 2 * 1024**3
) -> Path:
    """Write the merged model as a Hugging Face folder loadable by ``AutoModelForCausalLM.from_pretrained``.

    Tensors keep the base model's dtype; a tied output embedding is written once, under its first name
    (``from_pretrained`` ties it again). Files are filled in order up to ``max_shard_bytes``
    (``training.sharding.plan_file_shards``) and written one at a time: the extra memory is one file's
    tensors, copied to the CPU. Writes ``config.json``, ``generation_config.json`` (if the model has one) and
    ``model.safetensors``, or ``model-0000i-of-0000n.safetensors`` with ``model.safetensors.index.json``. The
    tokenizer is the caller's to save; the adapter alone is ``policy.save_pretrained(folder)`` (peft).

    Returns:
        The folder.
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    base = policy.get_base_model()
    names, sizes, seen = [], [], set()
    for name, tensor in base.state_dict(keep_vars=True).items():
        if not is_adapter_name(name) and id(tensor) not in seen:  # the names and sizes the stream will have
            seen.add(id(tensor))
            names.append(checkpoint_name(name))
            sizes.append(tensor.numel() * tensor.element_size())
    file_of = dict(zip(names, plan_file_shards(sizes, max_shard_bytes), strict=True))
    n_files = max(file_of.values()) + 1

    def file_name(i: int) -> str:
        return "model.safetensors" if n_files == 1 else f"model-{i + 1:05d}-of-{n_files:05d}.safetensors"

    pending: dict[str, Tensor] = {}
    current = 0
    for name, tensor in merged_named_weights(policy):
        if name not in file_of or name in pending:  # a tied duplicate
            continue
        if file_of[name] != current:
            save_file(pending, str(out / file_name(current)), metadata={"format": "pt"})
            pending, current = {}, file_of[name]
        pending[name] = tensor.detach().to("cpu", copy=True).contiguous()
    save_file(pending, str(out / file_name(current)), metadata={"format": "pt"})
    if n_files > 1:
        weight_map = {name: file_name(i) for name, i in file_of.items()}
        index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
    config = copy.deepcopy(base.config)
    config.architectures = [type(base).__name__]
    config.save_pretrained(out)
    if getattr(base, "generation_config", None) is not None:
        base.generation_config.save_pretrained(out)
    return out
