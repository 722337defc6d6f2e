"""Shared test fixtures: a real tiny byte-level tokenizer and a random-init tiny Qwen2, built without hub access.

Both are session-scoped and shared by every test file: a test that changes the model (weights, train mode,
generation_config) must work on ``copy.deepcopy(tiny_random_model)``.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One torch thread per process (subprocesses inherit it): the tests run tiny models, often several processes at
# once (DDP/FSDP ranks, verifier workers, cli.py subprocesses), and on 2 cores competing thread pools slowed a
# tiny generate from 1 s to 29 s.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from recipes.tiny.tokenizer import build_tokenizer  # noqa: E402


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


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_random_model(tiny_tokenizer: PreTrainedTokenizerFast) -> Qwen2ForCausalLM:
    return build_tiny_model(tiny_tokenizer)
