"""Widen the attention heads of a Llama or Qwen2 Hugging Face folder, exactly (the function is unchanged).

Why: vLLM's CPU attention serves only some head sizes (32, 64, 80, 96, 112, 128, ...), and the shipped tiny
models (hidden 96, 4 query / 2 KV heads) were trained with head size 24. Rather than retrain them (and redo
every measured result), this file rewrites their weights for a larger head size ``D`` so that the new model
computes the same logits, up to float rounding. The output is always a ``LlamaForCausalLM`` folder with
``head_dim: D`` (vLLM's Qwen2 ignores a config's ``head_dim``; its Llama honours it); a Qwen2 source (q/k/v
biases, no o_proj bias) becomes a Llama with ``attention_bias: true`` and a zero o_proj bias.

The map, per layer and per head, old head size ``d`` -> new ``D`` (both even, ``D > d``):

* RoPE (rotate_half, as HF and vLLM compute it) pairs dim ``i`` with ``i + d/2`` at frequency
  ``theta ** (-2i / d)``. Old dim ``i < d/2`` goes to new dim ``i``, old dim ``d/2 + i`` to new ``D/2 + i``;
  new dims ``d/2 .. D/2-1`` and ``D/2 + d/2 .. D-1`` are zero rows of q_proj/k_proj (zero bias entries).
  With ``theta' = theta ** (D / d)`` new pair ``i`` turns at ``theta' ** (-2i / D) == theta ** (-2i / d)``,
  the old frequency; the ``D/2 - d/2`` extra frequencies rotate only zero dims.
* The softmax scale goes from ``d ** -0.5`` to ``D ** -0.5``: q_proj rows (and bias) are multiplied by
  ``sqrt(D / d)`` so that ``q . k * D ** -0.5`` is unchanged.
* v_proj: each head's ``d`` value rows go to new dims ``0 .. d-1``, dims ``d .. D-1`` are zero rows;
  o_proj: the matching input columns, zero columns at the padded positions.

The padded dims stay zero under full fine-tuning too (zero q and k pads give zero scores, zero v pads give
zero outputs, zero o_proj columns receive no gradient through them), so the wide model trains like the narrow
one. LoRA is the exception: an adapter's randomly initialised A over o_proj's padded columns, together with one
on v_proj, can bring the padded value dims into use.

    python -m recipes.tiny.widen_heads SRC DST --head-dim 32

writes DST (SRC itself is allowed: conversion in place) with the new ``config.json`` and ``model.safetensors``
and every other file of SRC (tokenizer, generation config) copied byte for byte. Left out: sharded checkpoints,
RoPE scalings other than ``default``, partial rotary, sliding-window attention and every other architecture.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, LlamaConfig, PretrainedConfig

SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("llama", "qwen2")
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def _check_source(config: PretrainedConfig, head_dim: int) -> int:
    """The source's head size ``d``; ValueError when the source cannot be widened exactly to ``head_dim``."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"widen_heads: model type {model_type!r} is not supported (only {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    old = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if old % 2 != 0:
        raise ValueError(f"widen_heads: the source head size {old} is odd; RoPE needs an even head size")
    if head_dim % 2 != 0:
        raise ValueError(f"widen_heads: the new head size {head_dim} is odd; RoPE needs an even head size")
    if head_dim <= old:
        raise ValueError(f"widen_heads: the new head size {head_dim} must be larger than the source's {old}")
    rope = dict(getattr(config, "rope_parameters", None) or {})
    rope_type = rope.get("rope_type", "default")
    if rope_type != "default":
        raise ValueError(f"widen_heads: RoPE type {rope_type!r} is not supported (only 'default')")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("widen_heads: partial rotary embeddings are not supported")
    if model_type == "qwen2":
        layer_types = getattr(config, "layer_types", None) or []
        if getattr(config, "use_sliding_window", False) or any(t != "full_attention" for t in layer_types):
            raise ValueError("widen_heads: a Qwen2 with sliding-window attention has no Llama equivalent")
    return old


def _scatter_index(old: int, new: int, rotary: bool) -> torch.Tensor:
    """Where each of a head's ``old`` dims goes among its ``new`` dims: ``[old]`` int64.

    ``rotary``: the RoPE layout (first half to ``0 .. old/2-1``, second half to ``new/2 .. new/2+old/2-1``);
    otherwise the first ``old`` dims, in order."""
    j = torch.arange(old)
    if not rotary:
        return j
    return torch.where(j < old // 2, j, j - old // 2 + new // 2)


def _widen_rows(
    t: torch.Tensor, heads: int, old: int, new: int, rotary: bool, scale: float = 1.0
) -> torch.Tensor:
    """A projection's output rows per head: ``t`` [heads*old, ...] -> [heads*new, ...], zero rows at the padded
    dims, ``scale`` applied in float64 and rounded once to ``t``'s dtype."""
    rest = t.shape[1:]
    src = t.to(torch.float64).reshape(heads, old, *rest)
    out = torch.zeros(heads, new, *rest, dtype=torch.float64)
    out[:, _scatter_index(old, new, rotary)] = src * scale
    return out.reshape(heads * new, *rest).to(t.dtype)


def _widen_o_columns(w: torch.Tensor, heads: int, old: int, new: int) -> torch.Tensor:
    """o_proj's input columns per head: ``w`` [hidden, heads*old] -> [hidden, heads*new], zero columns at the
    padded value dims (the layout of :func:`_widen_rows` with ``rotary=False``)."""
    return _widen_rows(w.t().contiguous(), heads, old, new, rotary=False).t().contiguous()


def widen_state_dict(
    state: dict[str, torch.Tensor], config: PretrainedConfig, head_dim: int
) -> dict[str, torch.Tensor]:
    """The weights of ``config``'s model (Llama or Qwen2, head size ``d``) rewritten for head size ``head_dim``.

    Per layer ``model.layers.N.self_attn``, with ``H`` query heads, ``K`` KV heads and ``D = head_dim``:
    ``q_proj.weight`` [H*d, hidden] -> [H*D, hidden] (scaled by ``sqrt(D/d)``), ``q_proj.bias`` [H*d] -> [H*D]
    (scaled), ``k_proj`` [K*d, hidden] -> [K*D, hidden] and ``v_proj`` likewise (biases [K*d] -> [K*D]),
    ``o_proj.weight`` [hidden, H*d] -> [hidden, H*D]; a source with q/k/v biases and no o_proj bias (Qwen2)
    gets a zero ``o_proj.bias`` [hidden] (the Llama target's ``attention_bias`` covers all four). Every other
    tensor is returned as is. Pure tensor math: no model is built.
    """
    old = _check_source(config, head_dim)
    q_heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    scale = math.sqrt(head_dim / old)
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if ".self_attn." not in name:
            out[name] = t
            continue
        # a buffer some old checkpoints hold; the model rebuilds it from the config
        if name.endswith("rotary_emb.inv_freq"):
            continue
        proj, kind = name.split(".")[-2:]
        if proj == "q_proj":
            out[name] = _widen_rows(t, q_heads, old, head_dim, rotary=True, scale=scale)
        elif proj == "k_proj":
            out[name] = _widen_rows(t, kv_heads, old, head_dim, rotary=True)
        elif proj == "v_proj":
            out[name] = _widen_rows(t, kv_heads, old, head_dim, rotary=False)
        elif proj == "o_proj" and kind == "weight":
            out[name] = _widen_o_columns(t, q_heads, old, head_dim)
        elif proj == "o_proj" and kind == "bias":
            out[name] = t
        else:
            raise ValueError(f"widen_heads: unexpected attention tensor {name!r}")
    for name in state:
        if name.endswith("self_attn.q_proj.bias"):
            o_bias = name.replace("q_proj.bias", "o_proj.bias")
            if o_bias not in out:
                o_weight = state[name.replace("q_proj.bias", "o_proj.weight")]
                out[o_bias] = torch.zeros(o_weight.shape[0], dtype=o_weight.dtype)
    return out


def widened_config(config: PretrainedConfig, head_dim: int) -> LlamaConfig:
    """The ``LlamaConfig`` of the widened model: ``config``'s sizes, norms, special ids and embeddings tying,
    ``head_dim`` and ``rope_theta ** (head_dim / d)``; ``attention_bias`` when the source has q/k/v biases."""
    old = _check_source(config, head_dim)
    theta = float(dict(config.rope_parameters)["rope_theta"])
    if config.model_type == "qwen2":
        attention_bias = True  # Qwen2's q/k/v projections always carry biases
        mlp_bias = False
    else:
        attention_bias = bool(config.attention_bias)
        mlp_bias = bool(getattr(config, "mlp_bias", False))
    kwargs: dict[str, Any] = {
        name: getattr(config, name)
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "hidden_act",
            "max_position_embeddings",
            "initializer_range",
            "rms_norm_eps",
            "use_cache",
            "pad_token_id",
            "bos_token_id",
            "eos_token_id",
            "tie_word_embeddings",
            "attention_dropout",
        )
    }
    return LlamaConfig(
        **kwargs,
        head_dim=head_dim,
        attention_bias=attention_bias,
        mlp_bias=mlp_bias,
        rope_parameters={"rope_type": "default", "rope_theta": theta ** (head_dim / old)},
        architectures=["LlamaForCausalLM"],
        dtype=getattr(config, "dtype", None),
    )


def widen_heads(src: str | os.PathLike[str], dst: str | os.PathLike[str], head_dim: int) -> LlamaConfig:
    """Write the widened model of folder ``src`` to folder ``dst`` (``dst == src`` converts in place).

    ``dst`` gets the new ``config.json`` and ``model.safetensors``; every other file of ``src`` (tokenizer,
    generation config, ...) is copied byte for byte. Returns the new config."""
    src, dst = Path(src), Path(dst)
    config = AutoConfig.from_pretrained(src)
    new_config = widened_config(config, head_dim)  # checks the source before anything is read or written
    if not (src / WEIGHTS_NAME).is_file():
        raise ValueError(
            f"widen_heads: {src} has no single {WEIGHTS_NAME} (sharded checkpoints are not supported)"
        )
    state = {k: v.clone() for k, v in load_file(src / WEIGHTS_NAME).items()}
    new_state = widen_state_dict(state, config, head_dim)
    dst.mkdir(parents=True, exist_ok=True)
    if dst.resolve() != src.resolve():
        for path in src.iterdir():
            if path.is_file() and path.name not in (WEIGHTS_NAME, CONFIG_NAME):
                shutil.copy2(path, dst / path.name)
    tmp = dst / (WEIGHTS_NAME + ".tmp")
    save_file({k: v.contiguous() for k, v in new_state.items()}, tmp, metadata={"format": "pt"})
    shutil.copymode(src / WEIGHTS_NAME, tmp)  # save_file may create the file private
    os.replace(tmp, dst / WEIGHTS_NAME)
    new_config.to_json_file(dst / CONFIG_NAME)
    return new_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("src", help="a Llama or Qwen2 Hugging Face folder")
    parser.add_argument("dst", help="the folder to write (may be SRC)")
    parser.add_argument("--head-dim", type=int, required=True, help="the new head size (even, larger)")
    args = parser.parse_args(argv)
    config = widen_heads(args.src, args.dst, args.head_dim)
    print(
        f"wrote {args.dst}: LlamaForCausalLM, head_dim {config.head_dim}, "
        f"rope_theta {config.rope_parameters['rope_theta']}"
    )


if __name__ == "__main__":
    main()
