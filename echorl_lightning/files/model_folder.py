"""Checks of a model or tokenizer folder before anything loads from it: each problem is one line that names the
config key, the folder, the member file (with its line and column where there is one) and what is wrong.

A model folder (``save_pretrained``'s layout) needs:

- ``config.json``: UTF-8 JSON, one object, with a ``model_type`` that transformers knows and that has a causal-LM
  class; its values are then validated by transformers' own config class (``AutoConfig``), whose message names
  the field and the type it expects;
- the weights as safetensors: ``model.safetensors``, or the shards that ``model.safetensors.index.json`` lists.
  Each file's header is read and its size compared with what the header describes, so a truncated or foreign
  file is named before any tensor is read, and the header's tensor shapes are compared with those of the model
  ``config.json`` describes (built on the meta device, no memory);
- the tokenizer files (``tokenizer.json``, or a vocabulary: ``vocab.json`` + ``merges.txt``,
  ``tokenizer.model``, ...), the JSON ones parsed, and ``tokenizer.json`` read by the tokenizers library.

Left out: hub ids (their cache is transformers' business), adapter-only (peft) folders, whether the
tokenizer's vocabulary fits the embedding, and pickled ``.bin`` weights, which are named here and refused by
:func:`~echorl_lightning.training.checkpoint_safety.load_safetensors_model`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoModelForCausalLM, __version__
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from echorl_lightning.files.text import TextFileError, decode_text, describe_bytes, json_message

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tekken.json",
)
TOKENIZER_JSON = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json")
SHOWN_FILES = 8


class FolderProblem(ValueError):
    """One problem of a folder member; the message is the whole line."""


def listing(folder: Path) -> str:
    """``it holds a, b, c`` (at most :data:`SHOWN_FILES` names) or ``it is empty``, for messages."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not names:
        return "it is empty"
    more = f" and {len(names) - SHOWN_FILES} more" if len(names) > SHOWN_FILES else ""
    return f"it holds {', '.join(names[:SHOWN_FILES])}{more}"


def read_json(file: Path, where: str) -> Any:
    """A member's JSON value, or :class:`FolderProblem` naming ``where`` (``"key='dir': config.json"``), the line
    and the column."""
    if not file.is_file():
        raise FolderProblem(f"{where}: not a file")
    try:
        text = decode_text(file.read_bytes(), where)
    except TextFileError as error:
        raise FolderProblem(str(error)) from None
    if not text.strip():
        raise FolderProblem(f"{where}: empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise FolderProblem(
            f"{where}, line {error.lineno}, column {error.colno}: not JSON ({json_message(error.msg)})"
        ) from None


def _last_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def load_config(folder: Path, name: str) -> Any:
    """The folder's transformers config, checked as the module docstring says (``name``: ``"key='dir'"``)."""
    file, where = folder / "config.json", f"{name}: config.json"
    if not file.exists():
        raise FolderProblem(
            f"{name}: no config.json in the folder ({listing(folder)}); a model folder holds config.json, the "
            "safetensors weights and the tokenizer files, as save_pretrained writes them"
        )
    settings = read_json(file, where)
    if not isinstance(settings, dict):
        raise FolderProblem(f"{where}: a JSON {type(settings).__name__}, expected an object of settings")
    model_type = settings.get("model_type")
    if model_type is None:
        raise FolderProblem(f'{where}: no "model_type" (transformers picks the architecture by it)')
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise FolderProblem(
            f"{where}: model_type {model_type!r} is not a model type transformers {__version__} knows (a model "
            "of a newer transformers, or custom code, which this project does not run)"
        )
    try:
        config = AutoConfig.from_pretrained(str(folder))
    except Exception as error:  # transformers' validation of each field: its message names field and type
        raise FolderProblem(f"{where}: {_last_line(error)}") from None
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise FolderProblem(
            f"{where}: model_type {model_type!r} ({type(config).__name__}) is not a causal language model "
            "(transformers has no AutoModelForCausalLM class for it); the policy must be a decoder-only causal LM"
        )
    return config


def safetensors_shapes(file: Path, where: str) -> dict[str, list[int]]:
    """Tensor name -> shape from a safetensors file's header, after checking the file is whole."""
    size = file.stat().st_size
    if size < 8:
        raise FolderProblem(f"{where}: {size} bytes: empty or cut short")
    with file.open("rb") as handle:
        head = handle.read(16)
        length = int.from_bytes(head[:8], "little")
        if length > size - 8:
            raise FolderProblem(
                f"{where}: not a safetensors file, or cut inside its header: {describe_bytes(head)} (its first 8 "
                f"bytes give a {length:,}-byte header; the file has {size:,} bytes)"
            )
        handle.seek(8)
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
        spans = {k: v["data_offsets"] for k, v in header.items() if k != "__metadata__"}
        shapes = {k: list(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError, AttributeError):
        raise FolderProblem(f"{where}: not a safetensors file (its header is not safetensors JSON)") from None
    described = 8 + length + max((end for _, end in spans.values()), default=0)
    if size < described:
        raise FolderProblem(
            f"{where}: truncated: {size:,} bytes, its header describes {described:,} (the download or copy was "
            "cut short?)"
        )
    try:
        with safe_open(str(file), "pt"):
            pass
    except (SafetensorError, OSError) as error:
        raise FolderProblem(f"{where}: {error}") from None
    return shapes


def weight_files(folder: Path, name: str) -> list[Path]:
    """The safetensors files holding the weights (the shards of an index, all of them present)."""
    index = folder / SAFETENSORS_INDEX
    if index.exists():
        where = f"{name}: {SAFETENSORS_INDEX}"
        weight_map = read_json(index, where)
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise FolderProblem(f'{where}: no "weight_map" object of tensor name -> shard file')
        shards = [folder / shard for shard in sorted(set(weight_map.values()))]
        missing = [shard.name for shard in shards if not shard.is_file()]
        if missing:
            raise FolderProblem(
                f"{name}: {missing[0]}, listed in {SAFETENSORS_INDEX}, is missing ({listing(folder)})"
            )
        return shards
    if (folder / SAFETENSORS).exists():
        return [folder / SAFETENSORS]
    pickled = sorted(p.name for p in folder.glob("*.bin"))
    if pickled:
        raise FolderProblem(
            f"{name}: the weights are pickled .bin files ({', '.join(pickled[:3])}); only safetensors weights are "
            "read: save the model with save_pretrained (it writes model.safetensors)"
        )
    raise FolderProblem(
        f"{name}: no weights in the folder ({SAFETENSORS}, or {SAFETENSORS_INDEX} with its shards; "
        f"{listing(folder)})"
    )


def compare_shapes(config: Any, shapes: dict[str, list[int]], where: str) -> None:
    """Raise when the weights' tensors do not fit the model ``config`` describes (built on the meta device)."""
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # a model that cannot be built on the meta device: leave the check to from_pretrained
        return
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    prefix = f"{model.base_model_prefix}."
    arch = type(model).__name__
    matched = 0
    for key, shape in shapes.items():
        own = next((k for k in (key, prefix + key, key.removeprefix(prefix)) if k in expected), None)
        if own is None:
            continue
        matched += 1
        if expected[own] != shape:
            raise FolderProblem(
                f"{where} does not fit config.json: {key} is {shape} in the weights, {expected[own]} in the "
                f"{arch} config.json describes (config.json of another model size?)"
            )
    if shapes and not matched:
        raise FolderProblem(
            f"{where}: none of its {len(shapes)} tensors (e.g. {next(iter(shapes))!r}) is a parameter of the "
            f"{arch} config.json describes (weights of another architecture?)"
        )


def tokenizer_problem(folder: Path, name: str, hint: str = "") -> None:
    """Raise when the folder has no tokenizer files, or a JSON one is not JSON (``hint`` ends the first message)."""
    present = [f for f in TOKENIZER_FILES if (folder / f).is_file()] + [
        p.name for p in folder.glob("*.tiktoken")
    ]
    if not present:
        raise FolderProblem(
            f"{name}: no tokenizer files in the folder (tokenizer.json, or a vocabulary: vocab.json + merges.txt, "
            f"tokenizer.model, ...; {listing(folder)}){hint}"
        )
    if present == ["vocab.json"] and not (folder / "merges.txt").is_file():
        raise FolderProblem(f"{name}: vocab.json without merges.txt (a BPE tokenizer needs both)")
    for member in TOKENIZER_JSON:
        if (folder / member).exists():
            value = read_json(folder / member, f"{name}: {member}")
            if not isinstance(value, dict):
                raise FolderProblem(f"{name}: {member}: a JSON {type(value).__name__}, expected an object")
    if (folder / "tokenizer.json").is_file():
        try:
            Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as error:  # the Rust library's one exception type; its message has the position
            raise FolderProblem(
                f"{name}: tokenizer.json: not a tokenizer the tokenizers library reads ({_last_line(error)})"
            ) from None


def check_model_folder(key: str, path: str, *, tokenizer: bool = True) -> tuple[list[str], Any]:
    """Problems of the model folder ``path`` (config, weights, and with ``tokenizer`` the tokenizer files).

    Args:
        key: the config key that gave ``path`` (``model.init_args.model``).
        path: an existing folder.
        tokenizer: also check the tokenizer files (False when another key gives the tokenizer's folder).

    Returns:
        (one message per problem, the transformers config or None when it could not be read).
    """
    folder, name = Path(path), f"{key}={path!r}"
    problems, config = [], None
    try:
        config = load_config(folder, name)
        for file in weight_files(folder, name):
            compare_shapes(config, safetensors_shapes(file, f"{name}: {file.name}"), f"{name}: {file.name}")
        if (folder / "generation_config.json").exists():
            read_json(folder / "generation_config.json", f"{name}: generation_config.json")
    except FolderProblem as problem:
        problems.append(str(problem))
    if tokenizer:
        hint = f"; copy them from the model's source, or set {key.rpartition('.')[0]}.tokenizer to a folder with them"
        problems += check_tokenizer_folder(key, path, hint)
    return problems, config


def check_tokenizer_folder(key: str, path: str, hint: str = "") -> list[str]:
    """Problems of the tokenizer files in the folder ``path`` (given by config key ``key``)."""
    try:
        tokenizer_problem(Path(path), f"{key}={path!r}", hint)
    except FolderProblem as problem:
        return [str(problem)]
    return []
