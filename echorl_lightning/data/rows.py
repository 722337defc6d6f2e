"""Rows of a table mapped to :class:`Row` items ``(problem, reference, expert, uid)``, with counted skips
and one log line per set.

This is the one mapping path of the data layer: the named benchmark sets
(:mod:`echorl_lightning.data.benchmarks`, one ``to_example`` per set) and the user's own files with a column
mapping (:mod:`echorl_lightning.data.hub`) both call :func:`load_rows`; the prompt token limit of
:class:`~echorl_lightning.data.base.PromptDataModule` logs through :func:`log_skips` as well. A row without
problem text or without a reference is skipped and counted, never an error; a set with no usable row is.
Left out: de-duplication of repeated problems.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets

from echorl_lightning.data.tables import DataSourceError, TableSource, check_column, load_table

logger = logging.getLogger(__name__)

SHOWN_ROWS = 5  # row ids quoted in a skipped-rows log line
REASONS = {
    "no_prompt": "no prompt text",
    "no_reference": "no reference",
    "too_long": "a prompt over the limit",
}

ToExample = Callable[[Mapping[str, Any], int], tuple[str | None, str | None, str | None]]
"""A pure ``(row, row index) -> (problem | None, reference | None, expert | None)``."""


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
    key: str | None = None,
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
        key: the config key whose value is ``source.path``, named beside a local file in errors.

    Raises:
        DataSourceError: the message starts with ``label``.
    """
    described = source.describe()
    try:
        table = load_table(source, cache_dir, hint, key)
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
