"""A real tiny byte-level tokenizer and a random-init tiny Qwen2, built without hub access (the session
fixtures ``tiny_tokenizer`` and ``tiny_random_model`` of ``tests/conftest.py`` are these)."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from recipes.tiny.tokenizer import build_tokenizer


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """The project's byte-level tokenizer (token id == byte value for 0..255, then ``<|endoftext|>`` = 256
    as EOS and ``<|pad|>`` = 257 as pad): every string round-trips through encode/decode."""
    return build_tokenizer()


def build_tiny_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Qwen2ForCausalLM:
    """Random-init Qwen2 (hidden 32, 2 layers, 4 heads / 2 KV heads, untied head), in eval mode, float32.

    Initialised under a forked RNG so building it leaves the global generator untouched.
    """
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    return model.eval()
