"""Shared test fixtures: a real tiny byte-level tokenizer and a random-init tiny Qwen2, built without hub access.

Both are session-scoped and shared by every test file: a test that changes the model (weights, train mode,
generation_config) must work on ``copy.deepcopy(tiny_random_model)``.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters (the ByteLevel alphabet)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    shift = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + shift)
            shift += 1
    return {byte: chr(char) for byte, char in zip(printable, chars, strict=True)}


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE with no merges: token id == byte value for ids 0..255, then ``<|endoftext|>`` (256, EOS)
    and ``<|pad|>`` (257, pad). 258 tokens; every string round-trips through encode/decode."""
    byte_chars = _bytes_to_unicode()
    vocab = {byte_chars[byte]: byte for byte in range(256)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([EOS_TOKEN, PAD_TOKEN])
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)


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


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_random_model(tiny_tokenizer: PreTrainedTokenizerFast) -> Qwen2ForCausalLM:
    return build_tiny_model(tiny_tokenizer)
