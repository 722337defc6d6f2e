"""Broken input files fail clearly: the fuzz table of data files, model and tokenizer folders and YAML configs.

Each case breaks a valid file (written here, rows made up) the way files break: truncated, empty, another
encoding, stray bytes, a missing folder member, JSON values of the wrong type, a field of another schema, binary
garbage, a file of another kind under the right name. Most cases call, in-process, what ``cli.py`` calls before any
model loads (``HubPromptDataModule.check_data``, ``config_checks.check_model``, ``cli.main`` up to its parse) and
assert the last line of the error: it names the file (and the line or the folder member), what is wrong and the
config key. Inputs a text editor produces that can be read (a UTF-8 or UTF-16 byte-order mark, CRLF, ``;``
separators) are read; a row that can be skipped is counted and logged with its row id. Nothing in the case's
folder is written, changed or removed. One case per input kind runs ``python cli.py fit``: non-zero exit, that
final line, and an earlier run's checkpoint and TensorBoard folders untouched, with nothing added (no step ran).
Checkpoints have their own table: ``tests/e2e/test_checkpoint_fuzz.py``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, T5Config

from echorl_lightning.cli import main
from echorl_lightning.config_checks import ConfigError, check_model
from echorl_lightning.data.hub import HubPromptDataModule
from echorl_lightning.data.tables import DataSourceError
from echorl_lightning.tiny import TINY_MODEL_PATH
from tests.helpers.paths import ROOT

ROWS = [{"question": f"What is {i} plus {i + 2}? (café)", "answer": str(2 * i + 2)} for i in range(12)]
KEY = "data.init_args.path"
# sys.argv without pytest's own arguments for every test here (the fixture is tests/conftest.py's)
pytestmark = pytest.mark.usefixtures("plain_argv")


def snapshot(folder: Path, skip: str = "cache") -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` (but the datasets cache): its bytes and modification time."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and skip not in p.relative_to(folder).parts
    }


def line_of(text: str, needle: str) -> int:
    """The line (from 1) of the first line of ``text`` that contains ``needle``."""
    return next(i for i, line in enumerate(text.splitlines(), start=1) if needle in line)


# ---- valid files, one per format ------------------------------------------------------------------------------
def jsonl_text(rows: list[dict] = ROWS) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def json_text(rows: list[dict] = ROWS) -> str:
    return json.dumps(rows, ensure_ascii=False, indent=1)


def csv_text(rows: list[dict] = ROWS) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def parquet_bytes(rows: list[dict] = ROWS) -> bytes:
    out = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), out)
    return out.getvalue()


VALID: dict[str, Callable[[], bytes]] = {
    "jsonl": lambda: jsonl_text().encode(),
    "json": lambda: json_text().encode(),
    "csv": lambda: csv_text().encode(),
    "parquet": parquet_bytes,
}
GARBAGE = bytes((i * 167 + 13) % 256 for i in range(3000))  # fixed "random" bytes


def cut_inside_last_row(data: bytes) -> bytes:
    return data[: data.rstrip().rfind(b'"') - 3]


def with_stray_byte(data: bytes) -> bytes:
    at = data.index(b"What is 2")
    return data[:at] + b"\xff" + data[at:]


def utf16_without_bom(data: bytes) -> bytes:
    return data.decode().encode("utf-16-le")


# ---- data files -----------------------------------------------------------------------------------------------
# (format, breakage) -> (bytes of the broken file from the valid ones, the text its error's last line holds)
DATA_FAILS: dict[tuple[str, str], tuple[Callable[[bytes], bytes], str]] = {
    ("jsonl", "truncated"): (cut_inside_last_row, "line 12: not JSON (Expecting value at column 54)"),
    ("jsonl", "empty"): (lambda d: b"", "is empty"),
    ("jsonl", "Latin-1"): (
        lambda d: d.decode().encode("latin-1"),
        "line 1, column 37: byte 0xe9 is not UTF-8",
    ),
    ("jsonl", "stray byte"): (with_stray_byte, "line 3, column 15: byte 0xff is not UTF-8"),
    ("jsonl", "UTF-16 without BOM"): (utf16_without_bom, "UTF-16 text without a byte-order mark"),
    ("jsonl", "binary garbage"): (lambda d: GARBAGE, "binary data, not text"),
    ("jsonl", "Parquet under .jsonl"): (lambda d: parquet_bytes(), "binary data, not text: a Parquet file"),
    ("jsonl", "a line of the wrong JSON type"): (
        lambda d: d + b"[1, 2]\n",
        "line 13: a JSON list, expected an object",
    ),
    ("jsonl", "another schema"): (
        lambda d: jsonl_text([{"problem": r["question"], "solution": r["answer"]} for r in ROWS]).encode(),
        "data.init_args.prompt_column='question': no column 'question' in file",
    ),
    ("json", "truncated"): (
        lambda d: d[: len(d) // 2],
        "line 27, column 2: not JSON (Expecting property name",
    ),
    ("json", "empty"): (lambda d: b"   \n", "is empty"),
    ("json", "rows under a key"): (
        lambda d: json.dumps({"rows": ROWS}, indent=1).encode(),
        "one JSON object (keys ['rows']), not rows; expected an array of row objects or JSON Lines, one object "
        "per line; its rows may be the list under 'rows'",
    ),
    ("json", "an item of the wrong JSON type"): (
        lambda d: json.dumps([*ROWS, "What is 1 plus 1?"]).encode(),
        "item 13 of the array: a JSON str, expected an object",
    ),
    ("json", "Latin-1"): (lambda d: d.decode().encode("cp1252"), "line 3, column 38: byte 0xe9 is not UTF-8"),
    ("json", "CSV under .json"): (
        lambda d: csv_text().encode(),
        "line 1: not JSON (Expecting value at column 1)",
    ),
    ("csv", "truncated inside a quoted field"): (
        lambda d: d + b'"What is 13 plus 15?,30\n',
        "line 14: the file ends inside a quoted field (cut short, or a stray '\"' above)",
    ),
    ("csv", "truncated inside a row"): (lambda d: d[: d.rindex(b",")], "line 13: 1 fields, the header has 2"),
    ("csv", "a row with extra fields"): (
        lambda d: d.replace(b"4? (caf\xc3\xa9),6", b"4? (caf\xc3\xa9),6,7,8"),
        "line 4: 4 fields, the header has 2 (','-separated)",
    ),
    ("csv", "empty"): (lambda d: b"", "is empty"),
    ("csv", "header only"): (lambda d: b"question,answer\n", "a header line and no rows"),
    ("csv", "a repeated column"): (
        lambda d: b"question,question\na,b\n",
        "line 1: columns ['question'] repeat",
    ),
    ("csv", "Latin-1"): (lambda d: d.decode().encode("latin-1"), "line 2, column 23: byte 0xe9 is not UTF-8"),
    ("csv", "binary garbage"): (lambda d: GARBAGE, "binary data, not text"),
    ("csv", "Parquet under .csv"): (lambda d: parquet_bytes(), "binary data, not text: a Parquet file"),
    ("parquet", "truncated"): (
        lambda d: d[: len(d) // 2],
        "truncated: a Parquet file ends with its footer and PAR1",
    ),
    ("parquet", "empty"): (lambda d: b"", "is empty"),
    ("parquet", "binary garbage"): (lambda d: GARBAGE, "not a Parquet file: binary data of an unknown kind"),
    ("parquet", "JSON Lines under .parquet"): (
        lambda d: jsonl_text().encode(),
        "not a Parquet file: JSON text",
    ),
    ("parquet", "CSV under .parquet"): (lambda d: csv_text().encode(), "not a Parquet file: text"),
    ("parquet", "stray bytes in the footer"): (
        lambda d: d[:-12] + b"\x00" * 8 + d[-4:],
        "cannot read data file",
    ),
    ("parquet", "another schema"): (
        lambda d: parquet_bytes([{"problem": r["question"], "solution": r["answer"]} for r in ROWS]),
        "data.init_args.prompt_column='question': no column 'question' in file",
    ),
}

# (format, what a text editor or a library wrote) -> bytes that read as the valid rows
DATA_READS: dict[tuple[str, str], Callable[[bytes], bytes]] = {
    ("jsonl", "UTF-8 BOM"): lambda d: b"\xef\xbb\xbf" + d,
    ("jsonl", "UTF-16 with BOM"): lambda d: d.decode().encode("utf-16"),
    ("jsonl", "CRLF line ends"): lambda d: d.replace(b"\n", b"\r\n"),
    ("json", "UTF-8 BOM"): lambda d: b"\xef\xbb\xbf" + d,
    ("json", "UTF-16 with BOM"): lambda d: d.decode().encode("utf-16"),
    ("json", "JSON Lines under .json"): lambda d: jsonl_text().encode(),
    ("jsonl", "a JSON array under .jsonl"): lambda d: json_text().encode(),
    ("csv", "UTF-8 BOM"): lambda d: b"\xef\xbb\xbf" + d,
    ("csv", "UTF-16 with BOM"): lambda d: d.decode().encode("utf-16"),
    ("csv", "';'-separated"): lambda d: d.replace(b",", b";"),
    ("csv", "CRLF line ends"): lambda d: d.replace(b"\n", b"\r\n"),
}

# (format, breakage) -> (broken file, rows skipped) where a broken row is skipped, counted and logged
SKIPPED_ROW = {"question": ["not", "text"], "answer": 7}  # a list where text belongs
OTHER_SCHEMA_ROW = {"problem": "What is 9 plus 9?", "solution": "18"}
DATA_SKIPS: dict[tuple[str, str], tuple[Callable[[], bytes], int]] = {
    ("jsonl", "a row of the wrong JSON types"): (lambda: jsonl_text([*ROWS, SKIPPED_ROW]).encode(), 1),
    ("jsonl", "a row of another schema"): (lambda: jsonl_text([*ROWS, OTHER_SCHEMA_ROW]).encode(), 1),
    ("json", "nulls where text belongs"): (
        lambda: json.dumps(
            [*ROWS, {"question": None, "answer": "1"}, {"question": "What is 0?", "answer": None}]
        ).encode(),
        2,
    ),
    ("csv", "an empty cell"): (lambda: (csv_text() + "What is 5 plus 5?,\n").encode(), 1),
    ("parquet", "nulls in a column"): (
        lambda: parquet_bytes(
            [*ROWS, {"question": None, "answer": "3"}, {"question": "What?", "answer": None}]
        ),
        2,
    ),
}


def datamodule(path: Path, cache: Path) -> HubPromptDataModule:
    """The local-file datamodule the way the CLI configures it for these files."""
    return HubPromptDataModule(
        path=str(path),
        prompt_column="question",
        answer_column="answer",
        instruction="Q: {prompt}",
        use_chat_template=False,
        cache_dir=str(cache),
    )


@pytest.mark.parametrize(("fmt", "breakage"), list(DATA_FAILS), ids=[f"{f}-{b}" for f, b in DATA_FAILS])
def test_data_file_breakage_is_named(tmp_path: Path, fmt: str, breakage: str) -> None:
    make, expected = DATA_FAILS[(fmt, breakage)]
    path = tmp_path / "inputs" / f"train.{fmt}"
    path.parent.mkdir()
    path.write_bytes(make(VALID[fmt]()))
    before = snapshot(tmp_path)
    with pytest.raises(DataSourceError) as info:
        datamodule(path, tmp_path / "cache").check_data(stage="fit")
    last = str(info.value).splitlines()[-1]
    assert str(path) in last and expected in last, last
    if "no column" not in expected:  # a missing column is named by its own key
        assert f"({KEY})" in last, last
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(("fmt", "variant"), list(DATA_READS), ids=[f"{f}-{v}" for f, v in DATA_READS])
def test_data_file_a_text_editor_wrote_is_read(tmp_path: Path, fmt: str, variant: str) -> None:
    path = tmp_path / f"train.{fmt}"
    path.write_bytes(DATA_READS[(fmt, variant)](VALID[fmt]()))
    dm = datamodule(path, tmp_path / "cache")
    counts = dm.check_data(stage="fit")
    assert [(p.prompt, p.reference) for p in dm.train_prompts] == [
        (f"Q: {r['question']}", r["answer"]) for r in ROWS
    ]
    assert counts["data/skipped_rows"] == 0


@pytest.mark.parametrize(("fmt", "breakage"), list(DATA_SKIPS), ids=[f"{f}-{b}" for f, b in DATA_SKIPS])
def test_data_row_breakage_is_a_counted_logged_skip(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fmt: str, breakage: str
) -> None:
    make, skipped = DATA_SKIPS[(fmt, breakage)]
    path = tmp_path / f"train.{fmt}"
    path.write_bytes(make())
    with caplog.at_level(logging.WARNING, logger="echorl_lightning.data.rows"):
        counts = datamodule(path, tmp_path / "cache").check_data(stage="fit")
    assert counts["data/skipped_rows/train"] == skipped and counts["data/train_prompts"] == len(ROWS)
    logged = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(logged) == 1 and str(path) in logged[0], logged
    assert f"skipped {skipped} of {len(ROWS) + skipped} rows" in logged[0] and "'train/12'" in logged[0], (
        logged
    )


# ---- model and tokenizer folders ------------------------------------------------------------------------------
def tiny_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(TINY_MODEL_PATH, folder)
    return folder


def edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is KeyError:
            del config[key]
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def cut(file: Path, keep: float) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)])


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


# ---- YAML configs ---------------------------------------------------------------------------------------------
def base_yaml(tmp_path: Path, data: Path, model: str = TINY_MODEL_PATH) -> str:
    """A valid run config of the tiny model on a local JSONL file, logging and checkpointing under ``run/``."""
    run = tmp_path / "run"
    return f"""# a run of the tiny model on local rows
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  max_epochs: 1
  num_sanity_val_steps: 0
  enable_progress_bar: false
  default_root_dir: {run}
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args: {{save_dir: {run}, name: tb}}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {run / "checkpoints"}, every_n_epochs: 1, save_on_train_epoch_end: true}}
rollout: {{prompts_per_epoch: 4, group_size: 2, max_new_tokens: 16}}
model:
  class_path: echorl_lightning.module.EchoRLModule
  init_args:
    model: {model}
    lr: 1.0e-5
    eval: {{n: 1, max_new_tokens: 16}}
data:
  class_path: echorl_lightning.data.hub.HubPromptDataModule
  init_args:
    path: {data}
    prompt_column: question
    answer_column: answer
    instruction: "Q: {{prompt}}"
    use_chat_template: false
    cache_dir: {tmp_path / "cache"}
    verifier: echorl_lightning.rewards.exact_match.ExactMatchVerifier
"""


def replaced(old: str, new: str) -> Callable[[str], str]:
    return lambda text: text.replace(old, new, 1)


# breakage -> (the broken config's text from the valid one, as bytes; the line named (None: no line); the text)
YAML_FAILS: dict[str, tuple[Callable[[str], bytes], str | None, str]] = {
    "truncated inside a flow mapping": (
        lambda t: t[: t.index("rollout:") + 30].encode(),
        "rollout:",
        "not YAML: expected ',' or '}', but got '<stream end>'",
    ),
    "truncated after the trainer": (
        lambda t: t[: t.index("rollout:")].encode(),
        None,
        "no data, model given; required for fit",
    ),
    "a tab in the indentation": (
        lambda t: replaced("  accelerator: cpu", "\taccelerator: cpu")(t).encode(),
        "accelerator: cpu",
        "column 1: a tab character; YAML indents with spaces, never tabs",
    ),
    "a string where a float belongs": (
        lambda t: replaced("lr: 1.0e-5", "lr: fast")(t).encode(),
        "lr: fast",
        "model.init_args.lr='fast': expected float",
    ),
    "a string where an int belongs": (
        lambda t: replaced("group_size: 2", "group_size: two")(t).encode(),
        "rollout:",
        "rollout.group_size='two': expected int",
    ),
    "a method that does not exist": (
        lambda t: replaced("    lr: 1.0e-5", "    lr: 1.0e-5\n    method: grpoo")(t).encode(),
        "method: grpoo",
        "model.init_args.method='grpoo': unknown method preset; known: dapo, dr_grpo, grpo, gspo, luffy, "
        "reinforce_pp, rloo (did you mean 'grpo'?)",
    ),
    "a value out of range": (
        lambda t: replaced("group_size: 2", "group_size: 1")(t).encode(),
        "rollout:",
        "rollout.group_size=1: must be an integer >= 2",
    ),
    "a misspelt key": (
        lambda t: replaced("prompts_per_epoch: 4", "prompt_per_epoch: 4")(t).encode(),
        "rollout:",
        "rollout.prompt_per_epoch is not a config key (did you mean 'rollout.prompts_per_epoch'?)",
    ),
    "a key the class does not take": (
        lambda t: replaced("    lr: 1.0e-5", "    learning_rate: 1.0e-5")(t).encode(),
        "learning_rate:",
        "model.init_args.learning_rate is not a config key (accepted: model, tokenizer, dtype",
    ),
    "a misspelt group": (
        lambda t: replaced("\nmodel:\n", "\nmodle:\n")(t).encode(),
        "eval: {n: 1",  # jsonargparse names the first key under it
        "modle.init_args.eval.n is not a config key (did you mean 'model'?)",
    ),
    "a class_path that does not import": (
        lambda t: replaced("module.EchoRLModule", "module.EchoRLModul")(t).encode(),
        "class_path: echorl_lightning.module.EchoRLModul",
        "model.class_path='echorl_lightning.module.EchoRLModul': module 'echorl_lightning.module' has no attribute",
    ),
    "an instruction without its placeholder": (
        lambda t: replaced('"Q: {prompt}"', '"Q: {question}"')(t).encode(),
        "data:",
        "data: HubPromptDataModule could not be built: ValueError: instruction must contain the '{prompt}' "
        "placeholder, got 'Q: {question}'",
    ),
    "binary garbage": (lambda t: GARBAGE, None, "binary data, not text"),
    "Latin-1": (
        lambda t: replaced('"Q: {prompt}"', '"Qué: {prompt}"')(t).encode("latin-1"),
        "Qu",
        "column 21: byte 0xe9 is not UTF-8",
    ),
    "UTF-16": (
        lambda t: t.encode("utf-16"),
        None,
        "UTF-16 or UTF-32 text (it starts with a byte-order mark)",
    ),
    "empty": (lambda t: b"# nothing yet\n", None, "is empty: a config is a YAML mapping of keys"),
    "a list at the top": (lambda t: b"- trainer\n- model\n", None, "a YAML list at the top level"),
    "a model's config.json under .yaml": (
        lambda t: (Path(TINY_MODEL_PATH) / "config.json").read_bytes(),
        None,
        "is not a config key (the keys at the top are ckpt_path, data,",
    ),
}


@pytest.mark.usefixtures("no_weights")
@pytest.mark.parametrize("breakage", list(YAML_FAILS))
def test_yaml_config_breakage_is_named(tmp_path: Path, breakage: str) -> None:
    make, needle, expected = YAML_FAILS[breakage]
    data = tmp_path / "train.jsonl"
    data.write_text(jsonl_text())
    text = base_yaml(tmp_path, data)
    config = tmp_path / "run.yaml"
    config.write_bytes(make(text))
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError) as info:
        main(["fit", "--config", str(config)])
    last = str(info.value).splitlines()[-1]
    broken = config.read_bytes().decode("utf-8", errors="replace")
    where = f"config file {str(config)!r}" + (f", line {line_of(broken, needle)}" if needle else "")
    assert where in last and expected in last, last
    assert snapshot(tmp_path) == before


def test_a_config_in_json_under_yaml_and_a_utf8_bom_are_read(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import yaml

    data = tmp_path / "train.jsonl"
    data.write_text(jsonl_text())
    text = base_yaml(tmp_path, data)
    for name, content in (
        ("as_json.yaml", json.dumps(yaml.safe_load(text), indent=2).encode()),
        ("bom.yaml", b"\xef\xbb\xbf" + text.encode()),
    ):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(SystemExit) as done:
            main(["fit", "--config", str(tmp_path / name), "--print_config"])
        assert done.value.code in (0, None)
        assert "EchoRLModule" in capsys.readouterr().out


def test_command_line_mistakes_are_one_line_naming_the_command_line(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text(jsonl_text())
    (tmp_path / "run.yaml").write_text(base_yaml(tmp_path, data))
    cases = [
        (["fit"], "the command line: no data, model given; required for fit: give --config <file>.yaml"),
        (["fit", "--config", str(tmp_path / "run.yaml"), "--nonsense=1"],
         "the command line: unrecognized arguments: --nonsense=1 (--help lists the options)"),
        (["fit", "--config", str(tmp_path / "run.yaml"), "--rollout.group_size=x"],
         "the command line: rollout.group_size='x': expected int"),
    ]  # fmt: skip
    for args, expected in cases:
        with pytest.raises(ConfigError) as info:
            main(args)
        assert str(info.value) == expected


# ---- through cli.py -------------------------------------------------------------------------------------------
def earlier_run(tmp_path: Path) -> dict[str, tuple[bytes, int]]:
    """Files an earlier run left where this config logs and checkpoints (its checkpoint, run record, events)."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "epoch=0-step=1.ckpt").write_bytes(b"an earlier run's checkpoint")
    (run / "checkpoints" / "run.json").write_text('{"version": 0}\n')
    (run / "tb" / "version_0").mkdir(parents=True)
    (run / "tb" / "version_0" / "events.out.tfevents.0.earlier").write_bytes(b"earlier events")
    (run / "tb" / "version_0" / "config.yaml").write_text("trainer: {}\n")
    return snapshot(run)


def run_cli(tmp_path: Path, *args: str) -> tuple[int, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "cli.py", "fit", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, lines[-1] if lines else ""


def break_data(tmp_path: Path, data: Path) -> tuple[list[str], str]:
    data.write_bytes(cut_inside_last_row(VALID["jsonl"]()))
    return (
        [],
        f"cli.py: train: data file {str(data)!r} ({KEY}), line 12: not JSON (Expecting value at column 54)",
    )


def break_parquet(tmp_path: Path, data: Path) -> tuple[list[str], str]:
    parquet = tmp_path / "train.parquet"
    parquet.write_bytes(parquet_bytes()[:-100])  # a copy that stopped short
    return [
        f"--{KEY}={parquet}"
    ], f"cli.py: train: data file {str(parquet)!r} ({KEY}): truncated: a Parquet file"


def break_model(tmp_path: Path, data: Path) -> tuple[list[str], str]:
    folder = tiny_folder(tmp_path)
    cut(folder / "model.safetensors", 0.5)
    return [f"--model.init_args.model={folder}"], (
        f"  - the command line: model.init_args.model={str(folder)!r}: model.safetensors: truncated: 941,600 bytes, "
        "its header describes 1,883,200"
    )


def break_yaml(tmp_path: Path, data: Path) -> tuple[list[str], str]:
    config = tmp_path / "run.yaml"
    config.write_text(config.read_text().replace("  accelerator: cpu", "\taccelerator: cpu", 1))
    return [], f"cli.py: config file {str(config)!r}, line 4, column 1: a tab character"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["jsonl file", "parquet file", "model folder", "yaml config"])
def test_cli_fails_before_any_step_with_the_final_line(tmp_path: Path, kind: str) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text(jsonl_text())
    (tmp_path / "run.yaml").write_text(base_yaml(tmp_path, data))
    earlier = earlier_run(tmp_path)
    breaks = {"jsonl file": break_data, "parquet file": break_parquet, "model folder": break_model,
              "yaml config": break_yaml}  # fmt: skip
    extra, expected = breaks[kind](tmp_path, data)
    inputs = snapshot(tmp_path, skip="run")
    code, last = run_cli(tmp_path, "--config", str(tmp_path / "run.yaml"), *extra)
    assert code != 0
    assert last.startswith(expected), last
    assert (
        snapshot(tmp_path / "run") == earlier
    )  # nothing of the earlier run changed, nothing added: no step ran
    assert snapshot(tmp_path, skip="run") == inputs
