"""Tables of prompts: reading one split (local file, local folder or hub dataset) and reaching into its
cells (dotted column paths, cell text).

The named benchmark sets (:mod:`echorl_lightning.data.benchmarks`) and the user's own files
(:mod:`echorl_lightning.data.hub`) are read here and mapped by :mod:`echorl_lightning.data.rows`; this module
imports nothing from the package, so there is no import cycle.

Reading never fails with a bare library exception: an empty file, a line that is not a JSON object (file and
line number), an unreadable Parquet / CSV file, a missing local path and an unreachable hub dataset raise
:class:`DataSourceError` naming the source (plus a caller's hint, e.g. the config key of a local
replacement). JSON Lines files are parsed here, line by line, rather than by ``datasets``, so that a row
whose field has another type than its neighbours' is one counted skip, not a schema error for the file.

Left out: streaming (a split is read whole), ``save_to_disk`` folders, a JSON file with its rows under a
top-level key, and any per-rank sharding.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


class DataSourceError(ValueError):
    """A data source that cannot be read; the message names the file or hub dataset (and what to do)."""


@dataclass(frozen=True)
class TableSource:
    """Where one split comes from.

    Attributes:
        path: a local ``.jsonl`` / ``.json`` / ``.parquet`` / ``.csv`` file, a local folder, or a hub id.
        name: the hub configuration (ignored for a local file).
        split: the split to load (a local file is that split).
        revision: the hub revision (branch, tag or commit); ignored for local paths.
    """

    path: str
    name: str | None = None
    split: str = "train"
    revision: str | None = None

    def describe(self) -> str:
        """How error messages and logs name the source."""
        if Path(self.path).expanduser().exists():
            return f"file {self.path!r} (split {self.split!r})"
        return f"hub dataset {self.path!r} (name={self.name!r}, split={self.split!r})"


@dataclass(frozen=True)
class Table:
    """One loaded split: its rows and a nested mapping of its column names (for missing-column messages).

    Attributes:
        records: row dicts; a list (JSON files) or a ``datasets.Dataset``.
        schema: column name -> nested mapping for struct columns (anything else for a leaf).
    """

    records: Sequence[Mapping[str, Any]] | datasets.Dataset
    schema: Mapping[str, Any]


# ---- reading ----------------------------------------------------------------------------------------------
def _offline() -> bool:
    return bool(datasets.config.HF_HUB_OFFLINE) or os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("", "0")


def _json_object(value: Any, path: str, lineno: int) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DataSourceError(
            f"data file {path!r}, line {lineno}: a JSON {type(value).__name__}, expected an object (one row)"
        )
    return value


def _read_json(path: str) -> list[dict[str, Any]]:
    """Rows of a JSON Lines file, or of a ``.json`` file holding one array of objects."""
    text = Path(path).expanduser().read_text(encoding="utf-8")
    if not text.strip():
        raise DataSourceError(f"data file {path!r} is empty")
    if path.lower().endswith(".json") and text.lstrip().startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataSourceError(
                f"data file {path!r}, line {error.lineno}: not JSON ({error.msg})"
            ) from None
        return [_json_object(value, path, 1) for value in values]
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataSourceError(
                f"data file {path!r}, line {lineno}: not JSON ({error.msg} at column {error.colno})"
            ) from None
        rows.append(_json_object(value, path, lineno))
    return rows


def _union_schema(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Every key path present in at least one row (struct fields nest)."""
    schema: dict[str, Any] = {}

    def merge(into: dict[str, Any], value: Mapping[str, Any]) -> None:
        for key, cell in value.items():
            if isinstance(cell, Mapping):
                child = into.get(key)
                if not isinstance(child, dict):
                    child = into[key] = {}
                merge(child, cell)
            else:
                into.setdefault(key, None)

    for record in records:
        merge(schema, record)
    return schema


def load_table(source: TableSource, cache_dir: str | None = None, hint: str = "") -> Table:
    """Load one split; a local path is read as a file or folder, anything else as a hub dataset id.

    Args:
        source: the path / hub id, configuration, split and revision.
        cache_dir: the ``datasets`` cache folder (Parquet, CSV, folders and hub sets).
        hint: appended to the message when a hub dataset cannot be loaded (e.g. the config key of a local
            file to use instead).

    Raises:
        DataSourceError: the source is missing, empty, unreadable or unreachable; the message names it.
    """
    path, local = source.path, Path(source.path).expanduser()
    where = f"; {hint}" if hint else ""
    if local.is_file():
        suffix = local.suffix.lower()
        if suffix not in FILE_SUFFIXES:
            raise DataSourceError(
                f"unsupported data file {path!r}: expected one of {', '.join(FILE_SUFFIXES)}"
            )
        if suffix in (".jsonl", ".json"):
            records = _read_json(path)
            return Table(records, _union_schema(records))
        if local.stat().st_size == 0:
            raise DataSourceError(f"data file {path!r} is empty")
        try:
            table = datasets.load_dataset(
                suffix[1:], data_files={source.split: str(local)}, split=source.split, cache_dir=cache_dir
            )
        except Exception as error:  # the library's many parser errors, each reworded with the file named
            raise DataSourceError(
                f"cannot read data file {path!r}: {type(error).__name__}: {error}"
            ) from error
        return Table(table, table.features)
    if local.is_dir():
        try:
            table = datasets.load_dataset(
                str(local), name=source.name, split=source.split, cache_dir=cache_dir
            )
        except Exception as error:
            raise DataSourceError(
                f"cannot read data folder {path!r}: {type(error).__name__}: {error}"
            ) from error
        return Table(table, table.features)
    if local.suffix.lower() in FILE_SUFFIXES or path.startswith(("/", "./", "../", "~")):
        raise DataSourceError(f"data file {path!r} does not exist{where}")
    try:
        table = datasets.load_dataset(
            path, name=source.name, split=source.split, revision=source.revision, cache_dir=cache_dir
        )
    except Exception as error:  # offline, no network, gated, unknown id, unknown config or split
        mode = "offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set)" if _offline() else "online"
        raise DataSourceError(
            f"cannot load {source.describe()}, {mode} ({type(error).__name__}: {error}){where}"
        ) from error
    return Table(table, table.features)


# ---- cells ------------------------------------------------------------------------------------------------
def check_column(schema: Mapping[str, Any], column: str, key: str, source: str) -> None:
    """Raise ``DataSourceError`` naming ``column`` (the value of config key ``key``) and the columns there are,
    if ``schema`` lacks it. ``column`` may be a dotted path into struct columns (``reward_model.ground_truth``)."""
    parts = column.split(".")
    available: Any = schema
    for depth, part in enumerate(parts):
        if not isinstance(available, Mapping) or part not in available:
            where = "columns" if depth == 0 else f"fields of {'.'.join(parts[:depth])!r}"
            names = sorted(available) if isinstance(available, Mapping) else []
            raise DataSourceError(
                f"{key}={column!r}: no column {column!r} in {source}; available {where}: {names}"
            )
        available = available[part]


def get_column(row: Mapping[str, Any], column: str) -> Any:
    """The value at ``column`` (a dotted path into nested dicts) of one row; None where a level is missing."""
    value: Any = row
    for part in column.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def cell_text(value: Any, role: str | None = None) -> str | None:
    """A cell as text, or None: strings as they are, integral floats without ``.0`` (``12.0`` -> ``"12"``),
    other numbers via ``str``; with ``role``, a chat list ``[{role, content}, ...]`` gives the content of
    its last message with that role. Booleans, None and anything else give None."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    if role is not None and isinstance(value, list):
        contents = [m.get("content") for m in value if isinstance(m, Mapping) and m.get("role") == role]
        if contents and isinstance(contents[-1], str):
            return contents[-1]
    return None
