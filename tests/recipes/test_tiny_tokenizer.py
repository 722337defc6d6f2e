"""The byte-level tokenizer of the tiny model: exact round trips through ``AutoTokenizer``."""

from __future__ import annotations

import random
import string
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from recipes.tiny.model import build_tiny_model, tiny_qwen2_config
from recipes.tiny.tokenizer import EOS_TOKEN, PAD_TOKEN, VOCAB_SIZE, build_tokenizer


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tokenizer saved next to a qwen2 model config: transformers then loads it as Qwen2Tokenizer, the
    class that drops the spaces of a character-level vocabulary."""
    folder = tmp_path_factory.mktemp("tok")
    build_tokenizer().save_pretrained(folder)
    tiny_qwen2_config(hidden_size=8, num_hidden_layers=1, intermediate_size=8).save_pretrained(folder)
    return folder


def test_special_ids(saved_folder: Path) -> None:
    tok = AutoTokenizer.from_pretrained(saved_folder)
    assert len(tok) == VOCAB_SIZE == 258
    assert (tok.eos_token, tok.eos_token_id) == (EOS_TOKEN, 256)
    assert (tok.pad_token, tok.pad_token_id) == (PAD_TOKEN, 257)
    assert tok("Q: 1+2\n", add_special_tokens=False)["input_ids"] == [81, 58, 32, 49, 43, 50, 10]  # the bytes


def test_newline_is_its_own_token(saved_folder: Path) -> None:
    tok = AutoTokenizer.from_pretrained(saved_folder)
    assert tok("\n", add_special_tokens=False)["input_ids"] == [10]
    assert tok("a=1\nb\n\n", add_special_tokens=False)["input_ids"] == [97, 61, 49, 10, 98, 10, 10]


def test_round_trip_printable_ascii(saved_folder: Path) -> None:
    tok = AutoTokenizer.from_pretrained(saved_folder)
    texts = [string.printable, "  leading and trailing  ", "a  b\n\n c\t", "Answer: -59", " ", "\n"]
    rng = random.Random(0)
    texts += ["".join(rng.choice(string.printable) for _ in range(rng.randint(1, 40))) for _ in range(200)]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text.encode())  # one token per byte, no merges
        assert tok.decode(ids) == text
        assert tok.decode([*ids, tok.eos_token_id, tok.pad_token_id], skip_special_tokens=True) == text


def test_round_trip_non_ascii(saved_folder: Path) -> None:
    tok = AutoTokenizer.from_pretrained(saved_folder)
    text = "héllo wörld — 数学"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_model_config_carries_special_ids() -> None:
    model = build_tiny_model(tiny_qwen2_config(hidden_size=16, num_hidden_layers=1, intermediate_size=16))
    for cfg in (model.config, model.generation_config):
        assert (cfg.eos_token_id, cfg.pad_token_id, cfg.bos_token_id) == (256, 257, 256)
    assert model.config.vocab_size == VOCAB_SIZE
