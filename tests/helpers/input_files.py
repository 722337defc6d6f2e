"""Valid input files of the input fuzz tables (``tests/data/test_data_file_fuzz.py``,
``tests/files/test_model_folder_fuzz.py``, ``tests/files/test_config_file_fuzz.py``,
``tests/e2e/test_input_fuzz.py``) and the ways the tables break them: rows in each data format, a copy of the
tiny model's folder, a run config of the tiny model on local rows, and a snapshot of a folder to prove nothing in
it changed.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from echorl_lightning.tiny import TINY_MODEL_PATH

ROWS = [{"question": f"What is {i} plus {i + 2}? (café)", "answer": str(2 * i + 2)} for i in range(12)]
KEY = "data.init_args.path"


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


# ---- model folders -------------------------------------------------------------------------------------------
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
