"""The tiny configurations of the embedded policies.

Implements a ``Qwen2Config`` (:func:`tiny_qwen2_config`) or ``LlamaConfig`` (:func:`tiny_config` with
``architecture="llama"``) small enough to SFT and RL-train on two CPU cores in minutes (defaults: hidden 96,
4 layers, 4 query / 2 KV heads, MLP 256, tied embeddings: 431k parameters with the byte tokenizer), with the
byte tokenizer's EOS/pad ids written into the config and the generation config. The Llama variant exists for
task-trained BPE tokenizers with GPT-2's pre-tokenizer: transformers reloads every ``qwen2`` folder with
Qwen2's digit-splitting pre-tokenizer (see :mod:`recipes.tiny.bpe`), a ``llama`` folder keeps the
one in ``tokenizer.json``; and for vLLM's CPU attention, which serves head sizes 32, 64, 80, 96, ... but not
96 / 4 = 24: the warm-start configs build a Llama with ``head_dim=32`` (468k parameters with the byte tokenizer),
the shape of the shipped models, which were trained at head size 24 and widened exactly by
:mod:`recipes.tiny.widen_heads`. Leaves out sliding-window attention and anything GPU-specific. Used by the EchoRL
CPU demo and the Countdown miniature.
"""

from __future__ import annotations

from typing import Literal, get_args

from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
)

from recipes.tiny.tokenizer import NUM_BYTES, VOCAB_SIZE

EOS_TOKEN_ID = NUM_BYTES
PAD_TOKEN_ID = NUM_BYTES + 1
Architecture = Literal["qwen2", "llama"]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)


def tiny_config(
    architecture: Architecture = "qwen2",
    hidden_size: int = 96,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 256,
    max_position_embeddings: int = 256,
    vocab_size: int = VOCAB_SIZE,
    head_dim: int | None = None,
) -> PretrainedConfig:
    """A tiny causal-LM config of ``architecture`` for the byte tokenizer's special ids (EOS id 256 doubles
    as BOS, as in Qwen2; pad id 257); ``vocab_size`` may be larger (a BPE with merges from id 258).

    ``head_dim``: the attention head size, Llama only (None = ``hidden_size // num_attention_heads``). The
    shipped models use 32 with hidden 96 and 4 heads (q_proj 96 -> 128, o_proj 128 -> 96): vLLM's CPU
    attention serves head sizes 32, 64, 80, 96, ... but not 24. Refused for Qwen2, whose vLLM implementation
    ignores a config's ``head_dim`` (it takes ``hidden_size // num_attention_heads``)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}; got {architecture!r}")
    if head_dim is not None:
        if architecture != "llama":
            raise ValueError(
                f"head_dim={head_dim} needs architecture='llama': vLLM's Qwen2 ignores a config's head_dim "
                f"(it builds hidden_size // num_attention_heads), so its weights would not load there"
            )
        if head_dim <= 0 or head_dim % 2 != 0:
            raise ValueError(
                f"head_dim must be a positive even number (RoPE rotates pairs of dims); got {head_dim}"
            )
    elif hidden_size % num_attention_heads != 0:
        raise ValueError(
            f"hidden_size={hidden_size} is not a multiple of num_attention_heads={num_attention_heads}"
        )
    if num_attention_heads % num_key_value_heads != 0:
        raise ValueError(
            f"num_attention_heads={num_attention_heads} is not a multiple of num_key_value_heads={num_key_value_heads}"
        )
    config_class = Qwen2Config if architecture == "qwen2" else LlamaConfig
    extra = {} if head_dim is None else {"head_dim": head_dim}
    return config_class(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        bos_token_id=EOS_TOKEN_ID,
        eos_token_id=EOS_TOKEN_ID,
        pad_token_id=PAD_TOKEN_ID,
        use_cache=True,
        **extra,
    )


def tiny_qwen2_config(**kwargs: int) -> Qwen2Config:
    """:func:`tiny_config` with ``architecture="qwen2"`` (the embedded arithmetic model's before its heads were
    widened to 32); ``kwargs`` are
    :func:`tiny_config`'s size arguments."""
    return tiny_config("qwen2", **kwargs)


def build_tiny_model(config: PretrainedConfig) -> PreTrainedModel:
    """A randomly initialised causal LM of ``config`` (float32; ``Qwen2ForCausalLM`` for a Qwen2 config)
    with a generation config carrying the special ids (so ``generate`` stops at EOS and pads with the pad
    token)."""
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_new_tokens=96,
    )
    return model
