"""Tables of prompts: reading one split (local file, local folder or hub dataset), reaching into its cells,
and mapping its rows to :class:`Row` items with counted, logged skips.

This is the one loading and mapping path of the data layer: the named benchmark sets
(:mod:`echorl_lightning.data.benchmarks`) and the user's own files with a column mapping
(:mod:`echorl_lightning.data.hub`) both call :func:`load_rows` with a ``to_example`` function. It imports
nothing else from the package except :mod:`~echorl_lightning.data.types`, so there is no import cycle.

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
import logging
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

logger = logging.getLogger(__name__)

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
SHOWN_ROWS = 5  # row ids quoted in a skipped-rows log line
REASONS = {
    "no_prompt": "no prompt text",
    "no_reference": "no reference",
    "too_long": "a prompt over the limit",
}

ToExample = Callable[[Mapping[str, Any], int], tuple[str | None, str | None, str | None]]
"""A pure ``(row, row index) -> (problem | None, reference | None, expert | None)``."""


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


@dataclass(frozen=True)
class Row:
    """One mapped row, before the instruction and chat template: the problem text, the verifier reference,
    the optional expert solution (for LUFFY) and a stable id ``"<prefix>/<row index>"``."""

    problem: str
    reference: str
    expert: str | None
    uid: str


@dataclass(frozen=True)
class MappedRows:
    """The rows kept from one table and what was not.

    Attributes:
        rows: the usable rows, in reading order.
        skipped: skip reason (``no_prompt``, ``no_reference``) -> number of rows skipped for it.
        no_expert: rows kept without an expert solution where one was expected.
    """

    rows: list[Row]
    skipped: dict[str, int] = field(default_factory=dict)
    no_expert: int = 0


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


# ---- mapping ----------------------------------------------------------------------------------------------
def map_rows(
    to_example: ToExample,
    records: Sequence[Mapping[str, Any]] | datasets.Dataset,
    indices: Sequence[int],
    uid_prefix: str,
    limit: int | None = None,
    expect_expert: bool = False,
) -> tuple[MappedRows, dict[str, list[str]]]:
    """Map ``records`` (row ``indices[i]`` of the table is ``records[i]``) until ``limit`` rows are kept.

    A row is skipped when its problem is missing or blank (``no_prompt``) or its reference is (``no_reference``).
    A blank expert becomes None; with ``expect_expert`` such a kept row is counted (``no_expert``).

    Returns:
        the kept rows with their counts, and reason -> uids of the rows it concerns (for the log line).
    """
    kept: list[Row] = []
    uids: dict[str, list[str]] = {"no_prompt": [], "no_reference": [], "no_expert": []}
    for index, record in zip(indices, records, strict=True):
        if limit is not None and len(kept) >= limit:
            break
        uid = f"{uid_prefix}/{index}"
        problem, reference, expert = to_example(record, index)
        if problem is None or not problem.strip():
            uids["no_prompt"].append(uid)
            continue
        if reference is None or not reference.strip():
            uids["no_reference"].append(uid)
            continue
        if expert is not None and not expert.strip():
            expert = None
        if expert is None and expect_expert:
            uids["no_expert"].append(uid)
        kept.append(Row(problem, reference.strip(), expert, uid))
    counts = {"no_prompt": len(uids["no_prompt"]), "no_reference": len(uids["no_reference"])}
    return MappedRows(kept, counts, len(uids["no_expert"])), uids


def log_skips(where: str, total: int, uids: Mapping[str, Sequence[str]], note: str = "") -> None:
    """The one warning line for rows left out of (or kept incomplete in) a set; nothing when all are empty.

    Args:
        where: the set and its source (``"train from file 'x.jsonl' (split 'train')"``).
        total: rows looked at.
        uids: reason -> uids of its rows; ``no_expert`` rows are reported as kept, every other reason as skipped.
        note: appended as is (e.g. the limit or the mapping in use).
    """
    skips = {reason: ids for reason, ids in uids.items() if ids and reason != "no_expert"}
    kept_without = list(uids.get("no_expert", []))
    if not skips and not kept_without:
        return
    parts = [
        f"{len(ids)} with {REASONS.get(reason, reason)} (rows {list(ids[:SHOWN_ROWS])})"
        for reason, ids in skips.items()
    ]
    message = f"{where}: skipped {sum(len(ids) for ids in skips.values())} of {total} rows"
    if parts:
        message += ": " + "; ".join(parts)
    if kept_without:
        message += (
            f"; kept {len(kept_without)} rows without an expert solution (rows {kept_without[:SHOWN_ROWS]})"
        )
    logger.warning("%s%s", message, f" [{note}]" if note else "")


def load_rows(
    source: TableSource,
    to_example: ToExample,
    columns: Sequence[tuple[str, str]],
    *,
    label: str,
    uid_prefix: str,
    optional_columns: Sequence[str] = (),
    limit: int | None = None,
    shuffle_seed: int | None = None,
    expect_expert: bool = False,
    cache_dir: str | None = None,
    hint: str = "",
) -> MappedRows:
    """Load ``source``, check its columns, map its rows (shuffled with ``shuffle_seed`` first, when set),
    log the skips once, and raise when no row is usable.

    Args:
        source: where the split comes from.
        to_example: the row mapping.
        columns: (config key, column) pairs, the columns ``to_example`` needs (dotted paths); a missing one
            raises naming both.
        label: names the set in logs and errors (``"train"``, ``"eval set 'aime24'"``).
        uid_prefix: row uids are ``"<uid_prefix>/<row index in the file>"``.
        optional_columns: top-level columns read when present.
        limit: keep at most this many usable rows.
        shuffle_seed: shuffle the row order with ``random.Random(shuffle_seed)``; None keeps the file order.
        expect_expert: count kept rows without an expert solution.
        cache_dir: the ``datasets`` cache folder.
        hint: appended to the error when a hub dataset or a local file cannot be found.

    Raises:
        DataSourceError: the message starts with ``label``.
    """
    described = source.describe()
    try:
        table = load_table(source, cache_dir, hint)
        for key, column in columns:
            check_column(table.schema, column, key, described)
    except DataSourceError as error:
        raise DataSourceError(f"{label}: {error}") from error
    records = table.records
    if isinstance(records, datasets.Dataset):  # read only the columns the mapping uses
        wanted = {column.split(".")[0] for _, column in columns} | set(optional_columns)
        records = records.select_columns(sorted(wanted & set(records.column_names)))
    order = list(range(len(records)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
        records = (
            records.select(order) if isinstance(records, datasets.Dataset) else [records[i] for i in order]
        )
    mapped, uids = map_rows(to_example, records, order, uid_prefix, limit, expect_expert)
    looked_at = len(mapped.rows) + sum(mapped.skipped.values())
    log_skips(f"{label} from {described}", looked_at, uids)
    if not mapped.rows:
        reasons = ", ".join(f"{count} {reason}" for reason, count in mapped.skipped.items())
        raise DataSourceError(f"{label}: no usable row in {described} ({len(order)} rows: {reasons})")
    return mapped
