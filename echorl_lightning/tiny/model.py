"""The tiny Qwen2 configuration of the embedded default policy.

Implements one function building a ``Qwen2Config`` small enough to SFT and RL-train on two CPU cores in
minutes (defaults: hidden 96, 4 layers, 4 query / 2 KV heads, MLP 256, tied embeddings: 431k
parameters), with the byte tokenizer's EOS/pad ids written into the config and the generation config.
Leaves out sliding-window attention and anything GPU-specific. Used by the EchoRL CPU demo (EchoRL,
arXiv 2605.31228).
"""

from __future__ import annotations

from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

from echorl_lightning.tiny.tokenizer import NUM_BYTES, VOCAB_SIZE

EOS_TOKEN_ID = NUM_BYTES
PAD_TOKEN_ID = NUM_BYTES + 1


def tiny_qwen2_config(
    hidden_size: int = 96,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 256,
    max_position_embeddings: int = 256,
    vocab_size: int = VOCAB_SIZE,
) -> Qwen2Config:
    """A tiny Qwen2 config for the byte tokenizer (EOS id 256 doubles as BOS, as in Qwen2; pad id 257)."""
    if hidden_size % num_attention_heads != 0:
        raise ValueError(
            f"hidden_size={hidden_size} is not a multiple of num_attention_heads={num_attention_heads}"
        )
    if num_attention_heads % num_key_value_heads != 0:
        raise ValueError(
            f"num_attention_heads={num_attention_heads} is not a multiple of num_key_value_heads={num_key_value_heads}"
        )
    return Qwen2Config(
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
    )


def build_tiny_model(config: Qwen2Config) -> Qwen2ForCausalLM:
    """A randomly initialised ``Qwen2ForCausalLM`` (float32) with a generation config carrying the special
    ids (so ``generate`` stops at EOS and pads with the pad token)."""
    model = Qwen2ForCausalLM(config)
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
