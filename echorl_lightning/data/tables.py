"""Tables of prompts: reading one split (local file, local folder or hub dataset) and reaching into its
cells (dotted column paths, cell text).

The named benchmark sets (:mod:`echorl_lightning.data.benchmarks`) and the user's own files
(:mod:`echorl_lightning.data.hub`) are read here and mapped by :mod:`echorl_lightning.data.rows`; this module
imports nothing else from the data package (text decoding comes from :mod:`echorl_lightning.files.text`), so
there is no import cycle.

Reading never fails with a bare library exception: each failure raises :class:`DataSourceError` naming the
file (with the config key that gave it, when the caller passes one) and, where there is one, the line and
column: an empty file; text that is not UTF-8 (a UTF-8 or UTF-16/32 byte-order mark is accepted) or is binary
(another kind of file under a data file's name is named by its magic bytes); a line that is not a JSON object;
a JSON array cut short; a CSV row with more or fewer fields than its header, or a quoted field that never
closes; a Parquet file without its magic bytes or footer; a missing local path and an unreachable hub
dataset (plus a caller's hint, e.g. the config key of a local replacement). A row that parses but lacks a
field, or holds one of another type, is not an error here: :mod:`~echorl_lightning.data.rows` skips and
counts it. JSON Lines, JSON and CSV files are parsed here rather than by ``datasets``, so that a row whose
field has another type than its neighbours' is one counted skip, not a schema error for the file; CSV cells
are text (``7`` stays ``"7"``), and a header without a comma but with ``;`` or a tab sets the separator.

Left out: streaming (a split is read whole), ``save_to_disk`` folders, a JSON file with its rows under a
top-level key (the message names the key that holds a list), 8-bit encodings other than UTF-8, and any
per-rank sharding.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from echorl_lightning.files.text import TextFileError, describe_bytes, json_message, read_text

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


def _root_message(error: BaseException) -> str:
    """``Type: first line`` of the innermost cause of a library error (``datasets`` wraps its parsers' errors)."""
    while error.__cause__ is not None or (error.__context__ is not None and not error.__suppress_context__):
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _read_text(path: str, name: str) -> str:
    try:
        text = read_text(path, name)
    except TextFileError as error:
        raise DataSourceError(str(error)) from None
    if not text.strip():
        raise DataSourceError(f"{name} is empty")
    return text


def _json_object(value: Any, name: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DataSourceError(f"{name}, {where}: a JSON {type(value).__name__}, expected an object (one row)")
    return value


def _holds_rows(value: Any) -> bool:
    """A non-empty list of JSON objects (rows)."""
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _read_json(path: str, name: str) -> list[dict[str, Any]]:
    """Rows of a JSON Lines file, or of a file holding one JSON array of objects (either suffix)."""
    text = _read_text(path, name)
    whole = text.lstrip().startswith("[") or path.lower().endswith(".json")
    if whole:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            if text.lstrip().startswith("["):
                raise DataSourceError(
                    f"{name}, line {error.lineno}, column {error.colno}: not JSON ({json_message(error.msg)})"
                ) from None
            values = None  # JSON Lines under a .json name: read line by line below
        if isinstance(values, list):
            return [_json_object(v, name, f"item {i} of the array") for i, v in enumerate(values, start=1)]
        if isinstance(values, dict) and len(text.strip().splitlines()) == 1:
            values = None  # one row: JSON Lines of one line
        if isinstance(values, dict):
            lists = [key for key, value in values.items() if _holds_rows(value)]
            hint = f"; its rows may be the list under {lists[0]!r}" if lists else ""
            raise DataSourceError(
                f"{name}: one JSON object (keys {sorted(values)[:5]}), not rows; expected an array of row "
                f"objects or JSON Lines, one object per line{hint}"
            )
        if values is not None:
            raise DataSourceError(f"{name}: a JSON {type(values).__name__}, expected an array of row objects")
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataSourceError(
                f"{name}, line {lineno}: not JSON ({json_message(error.msg)} at column {error.colno})"
            ) from None
        rows.append(_json_object(value, name, f"line {lineno}"))
    return rows


def _read_csv(path: str, name: str) -> list[dict[str, str]]:
    """Rows of a CSV file with a header line; separated by ``,`` or, when the header has no comma, by ``;`` or
    a tab (what spreadsheets write in some locales). A row with another number of fields than the header, or a
    quoted field that never closes, fails naming its line; cells are text."""
    text = _read_text(path, name)
    first = text.lstrip("\r\n").split("\n", 1)[0]
    delimiter = next((d for d in (",", ";", "\t") if d in first), ",")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[dict[str, str]] = []
    try:
        header = next(fields for fields in reader if fields)
        repeated = sorted({column for column in header if header.count(column) > 1})
        if repeated:
            raise DataSourceError(f"{name}, line {reader.line_num}: columns {repeated} repeat in the header")
        for fields in reader:
            if not fields:
                continue
            if len(fields) != len(header):
                raise DataSourceError(
                    f"{name}, line {reader.line_num}: {len(fields)} fields, the header has {len(header)} "
                    f"({delimiter!r}-separated)"
                )
            rows.append(dict(zip(header, fields, strict=True)))
    except csv.Error as error:
        what = (
            "the file ends inside a quoted field (cut short, or a stray '\"' above)"
            if "unexpected end of data" in str(error)
            else f"not CSV ({error})"
        )
        raise DataSourceError(f"{name}, line {reader.line_num}: {what}") from None
    if not rows:
        raise DataSourceError(f"{name}: a header line and no rows")
    return rows


def _check_parquet(local: Path, name: str) -> None:
    """A Parquet file starts and ends with ``PAR1``; say what the file is instead, or that it is cut short."""
    size = local.stat().st_size
    with local.open("rb") as file:
        head = file.read(16)
        file.seek(max(size - 4, 0))
        tail = file.read(4)
    if head[:4] != b"PAR1":
        raise DataSourceError(f"{name}: not a Parquet file: {describe_bytes(head)} (by its first bytes)")
    if tail != b"PAR1" or size < 12:
        raise DataSourceError(
            f"{name}: truncated: a Parquet file ends with its footer and PAR1, this one stops after {size:,} "
            "bytes without them (cut short?)"
        )


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


def load_table(
    source: TableSource, cache_dir: str | None = None, hint: str = "", key: str | None = None
) -> Table:
    """Load one split; a local path is read as a file or folder, anything else as a hub dataset id.

    Args:
        source: the path / hub id, configuration, split and revision.
        cache_dir: the ``datasets`` cache folder (Parquet, folders and hub sets).
        hint: appended to the message when a hub dataset cannot be loaded (e.g. the config key of a local
            file to use instead).
        key: the config key whose value is ``source.path``, named beside a local file in messages.

    Raises:
        DataSourceError: the source is missing, empty, unreadable or unreachable; the message names it.
    """
    path, local = source.path, Path(source.path).expanduser()
    where = f"; {hint}" if hint else ""
    name = f"data file {path!r}" + (f" ({key})" if key else "")
    if local.is_file():
        suffix = local.suffix.lower()
        if suffix not in FILE_SUFFIXES:
            raise DataSourceError(
                f"unsupported data file {path!r}: expected one of {', '.join(FILE_SUFFIXES)}"
            )
        if suffix in (".jsonl", ".json", ".csv"):
            records = _read_csv(path, name) if suffix == ".csv" else _read_json(path, name)
            return Table(records, _union_schema(records))
        if local.stat().st_size == 0:
            raise DataSourceError(f"{name} is empty")
        _check_parquet(local, name)
        try:
            table = datasets.load_dataset(
                "parquet", data_files={source.split: str(local)}, split=source.split, cache_dir=cache_dir
            )
        except Exception as error:  # the library's many parser errors, each reworded with the file named
            raise DataSourceError(f"cannot read {name}: {_root_message(error)}") from error
        return Table(table, table.features)
    if local.is_dir():
        try:
            table = datasets.load_dataset(
                str(local), name=source.name, split=source.split, cache_dir=cache_dir
            )
        except Exception as error:
            raise DataSourceError(f"cannot read data folder {path!r}: {_root_message(error)}") from error
        return Table(table, table.features)
    if local.suffix.lower() in FILE_SUFFIXES or path.startswith(("/", "./", "../", "~")):
        raise DataSourceError(f"{name} does not exist{where}")
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
