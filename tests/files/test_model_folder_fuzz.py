"""Broken model and tokenizer folders fail clearly: the fuzz table of the model-folder input kind.

Each case breaks a copy of the tiny model's folder the way folders break (a missing or truncated member, a
torch pickle under a safetensors name, a config of another architecture, ...); ``config_checks.check_model`` (what
``cli.py`` calls before any model loads) must name the folder member and what is wrong, and change nothing in
the folder. The other input kinds: ``tests/data/test_data_file_fuzz.py``, ``tests/files/test_config_file_fuzz.py``;
through ``cli.py``: ``tests/e2e/test_input_fuzz.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, T5Config

from echorl_lightning.config_checks import check_model
from echorl_lightning.tiny import TINY_MODEL_PATH
from tests.helpers.input_files import GARBAGE, cut, edit_config, snapshot, tiny_folder


# ---- model and tokenizer folders ------------------------------------------------------------------------------
def sharded(folder: Path) -> None:
    """The weights as shards with an index (save_pretrained's layout for big models), one shard removed."""
    (folder / "model.safetensors").unlink()
    AutoModelForCausalLM.from_pretrained(TINY_MODEL_PATH).save_pretrained(folder, max_shard_size="600KB")
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) >= 2
    shards[-1].unlink()


def another_architecture(folder: Path) -> None:
    """A whole GPT-2 folder (a causal LM the hidden-state log-prob path does not know)."""
    for file in ("config.json", "model.safetensors", "generation_config.json"):
        (folder / file).unlink()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=258, n_positions=256))
    model.save_pretrained(folder)


def torch_pickle_as_safetensors(folder: Path) -> None:
    torch.save({"w": torch.zeros(2)}, folder / "model.safetensors")


# breakage -> (how to break a copy of the tiny model's folder, the member named, the text of the problem)
MODEL_FAILS: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "missing config.json": (
        lambda f: (f / "config.json").unlink(),
        "no config.json in the folder",
        "it holds",
    ),
    "truncated config.json": (
        lambda f: cut(f / "config.json", 0.5),
        "config.json, line 17, column 17",
        "not JSON",
    ),
    "config.json of binary garbage": (
        lambda f: (f / "config.json").write_bytes(GARBAGE),
        "config.json",
        "binary data, not text",
    ),
    "config.json a JSON list": (
        lambda f: (f / "config.json").write_text("[1, 2]"),
        "config.json",
        "a JSON list, expected an object",
    ),
    "config.json: a string where an int belongs": (
        lambda f: edit_config(f, hidden_size="96"),
        "config.json",
        "Field 'hidden_size' expected int, got str",
    ),
    "config.json: null where an int belongs": (
        lambda f: edit_config(f, num_hidden_layers=None),
        "config.json",
        "'num_hidden_layers' expected int",
    ),
    "config.json without model_type": (
        lambda f: edit_config(f, model_type=KeyError),
        "config.json",
        'no "model_type"',
    ),
    "config.json of an unknown model type": (
        lambda f: edit_config(f, model_type="llama9"),
        "config.json",
        "model_type 'llama9' is not a model type",
    ),
    "config.json of an encoder-decoder": (
        lambda f: (f / "config.json").write_text(T5Config(d_model=32, num_layers=1).to_json_string()),
        "config.json",
        "model_type 't5' (T5Config) is not a causal language model",
    ),
    "a GPT-2 folder": (
        another_architecture,
        "model_type 'gpt2' is not one the hidden-state log-prob path knows",
        "set model.init_args.logprob_impl=full_logits",
    ),
    "config.json of another model size": (
        lambda f: edit_config(f, hidden_size=128),
        "model.safetensors does not fit config.json",
        "model.embed_tokens.weight is [258, 96] in the weights, [258, 128]",
    ),
    "missing weights": (lambda f: (f / "model.safetensors").unlink(), "no weights in the folder", "it holds"),
    "truncated weights": (
        lambda f: cut(f / "model.safetensors", 0.5),
        "model.safetensors",
        "truncated: 941,600 bytes",
    ),
    "weights of binary garbage": (
        lambda f: (f / "model.safetensors").write_bytes(GARBAGE),
        "model.safetensors",
        "not a safetensors file",
    ),
    "a torch pickle under model.safetensors": (
        torch_pickle_as_safetensors,
        "model.safetensors",
        "not a safetensors file, or cut inside its header: a ZIP",
    ),
    "a missing shard": (
        sharded,
        "-of-00004.safetensors, listed in model.safetensors.index.json, is missing",
        "it holds",
    ),
    "pickled .bin weights only": (
        lambda f: (f / "model.safetensors").rename(f / "pytorch_model.bin"),
        "the weights are pickled .bin files (pytorch_model.bin)",
        "only safetensors weights are read",
    ),
    "missing tokenizer.json": (
        lambda f: (f / "tokenizer.json").unlink(),
        "no tokenizer files in the folder",
        "set model.init_args.tokenizer to a folder with them",
    ),
    "truncated tokenizer.json": (
        lambda f: cut(f / "tokenizer.json", 0.5),
        "tokenizer.json, line",
        "not JSON",
    ),
    "tokenizer.json of another schema": (
        lambda f: (f / "tokenizer.json").write_text('{"vocab": {"a": 0}}'),
        "tokenizer.json",
        "not a tokenizer the tokenizers library reads",
    ),
    "tokenizer_config.json in Latin-1": (
        lambda f: (f / "tokenizer_config.json").write_bytes(b'{"model_max_length": 256, "x": "caf\xe9"}'),
        "tokenizer_config.json, line 1, column 36",
        "byte 0xe9 is not UTF-8",
    ),
}


@pytest.mark.parametrize("breakage", list(MODEL_FAILS))
def test_model_folder_breakage_is_named(tmp_path: Path, breakage: str) -> None:
    make, member, expected = MODEL_FAILS[breakage]
    folder = tiny_folder(tmp_path)
    make(folder)
    before = snapshot(tmp_path)
    problems = check_model({"model": str(folder), "logprob_impl": "hidden"})
    assert problems, "no problem found"
    last = problems[-1]
    assert last.startswith(f"model.init_args.model={str(folder)!r}: "), last
    assert member in last and expected in last, last
    assert snapshot(tmp_path) == before


def test_model_folder_checks_pass_whole_folders_and_name_the_tokenizer_key(tmp_path: Path) -> None:
    folder = tiny_folder(tmp_path)
    assert check_model({"model": str(folder), "logprob_impl": "hidden"}) == []
    another_architecture(folder)  # a GPT-2 folder trains with the model's own logits
    assert check_model({"model": str(folder), "logprob_impl": "full_logits"}) == []
    tokenizer = tmp_path / "tokenizer"
    tokenizer.mkdir()
    (tokenizer / "tokenizer_config.json").write_text("{}")
    problems = check_model({"model": str(folder), "tokenizer": str(tokenizer), "logprob_impl": "full_logits"})
    assert problems == [
        f"model.init_args.tokenizer={str(tokenizer)!r}: no tokenizer files in the folder (tokenizer.json, or a "
        "vocabulary: vocab.json + merges.txt, tokenizer.model, ...; it holds tokenizer_config.json)"
    ]
    file = folder / "config.json"
    assert check_model({"model": str(file)}) == [
        f"model.init_args.model={str(file)!r}: a file, not a model folder; give the folder that holds config.json, "
        "the weights and the tokenizer files"
    ]
