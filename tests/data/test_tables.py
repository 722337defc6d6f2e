"""``echorl_lightning.data.tables`` and ``.rows``: reading a split with clear errors, cells, and the one row
mapping.

Every file is written here with made-up rows; the errors must name the file (and the line), never surface
as a bare ``StopIteration`` or a ``datasets`` exception.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import ast  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import random  # noqa: E402
from collections.abc import Mapping  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import datasets  # noqa: E402
import pytest  # noqa: E402

from echorl_lightning.data.rows import Row, load_rows, map_rows  # noqa: E402
from echorl_lightning.data.tables import (  # noqa: E402
    DataSourceError,
    TableSource,
    cell_text,
    check_column,
    get_column,
    load_table,
)
from tests.helpers.paths import ROOT

DATA = ROOT / "echorl_lightning" / "data"


def _qa(row: Mapping[str, Any], index: int) -> tuple[str | None, str | None, str | None]:
    return cell_text(row.get("q")), cell_text(row.get("a")), cell_text(row.get("s"))


# ---- reading: bad files ---------------------------------------------------------------------------------
def test_empty_files_are_named(tmp_path: Path) -> None:
    for name, text in (("e.jsonl", ""), ("blank.jsonl", "\n  \n"), ("e.json", " ")):
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(DataSourceError, match=rf"data file '{path}' is empty"):
            load_table(TableSource(str(path)))
    empty_parquet = tmp_path / "e.parquet"
    empty_parquet.write_bytes(b"")
    with pytest.raises(DataSourceError, match="e.parquet' is empty"):
        load_table(TableSource(str(empty_parquet)))


def test_a_line_that_is_not_json_is_named_with_its_number(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"q": "1+1?", "a": "2"}\n\n{"q": "2+2?", "a": 4\n[1, 2]\n')
    # line 2 is blank (allowed); line 3 misses its closing brace
    with pytest.raises(DataSourceError, match=r"bad.jsonl', line 3: not JSON \(Expecting ',' delimiter"):
        load_table(TableSource(str(path)))
    path.write_text('{"q": "1+1?", "a": "2"}\n[1, 2]\n')
    with pytest.raises(DataSourceError, match=r"bad.jsonl', line 2: a JSON list, expected an object"):
        load_table(TableSource(str(path)))


def test_json_array_file_and_its_errors(tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    path.write_text('[{"q": "1+1?", "a": 2},\n {"q": "3+3?", "a": 6.0}]')
    table = load_table(TableSource(str(path)))
    assert list(table.records) == [{"q": "1+1?", "a": 2}, {"q": "3+3?", "a": 6.0}]
    assert table.schema == {"q": None, "a": None}
    path.write_text('[{"q": "1+1?", "a": 2},\n {"q": "3+3?" "a": 6}]')
    with pytest.raises(
        DataSourceError, match=r"rows.json', line 2, column 15: not JSON \(Expecting ',' delimiter\)"
    ):
        load_table(TableSource(str(path)))


def test_unreadable_parquet_missing_file_and_unsupported_suffix(tmp_path: Path) -> None:
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"this is not parquet at all")
    with pytest.raises(DataSourceError, match=r"data file '.*broken.parquet': not a Parquet file: text"):
        load_table(TableSource(str(broken)), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataSourceError, match=r"data file '.*nope.jsonl' does not exist; use x$"):
        load_table(TableSource(str(tmp_path / "nope.jsonl")), hint="use x")
    other = tmp_path / "rows.txt"
    other.write_text("x")
    with pytest.raises(DataSourceError, match=r"unsupported data file .*rows.txt"):
        load_table(TableSource(str(other)))


def test_unreachable_hub_dataset_names_it_offline_and_the_hint(tmp_path: Path) -> None:
    source = TableSource("made-up-org/no-such-set", "cfg", "test")
    with pytest.raises(DataSourceError) as info:
        load_table(source, cache_dir=str(tmp_path / "cache"), hint="set data.init_args.path to a local file")
    message = str(info.value)
    assert "cannot load hub dataset 'made-up-org/no-such-set' (name='cfg', split='test'), offline" in message
    assert message.endswith("; set data.init_args.path to a local file")
    assert isinstance(info.value, ValueError)  # DataSourceError is a ValueError


def test_parquet_schema_and_jsonl_union_schema(tmp_path: Path) -> None:
    rows = [{"q": "a", "m": {"x": 1}}, {"q": "b", "m": {"y": "2"}, "extra": True}]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # every key path present in at least one row; struct fields nest
    assert load_table(TableSource(str(jsonl))).schema == {
        "q": None,
        "m": {"x": None, "y": None},
        "extra": None,
    }
    parquet = tmp_path / "rows.parquet"
    datasets.Dataset.from_list([{"q": "a", "m": {"x": 1}}]).to_parquet(str(parquet))
    table = load_table(TableSource(str(parquet), split="test"), cache_dir=str(tmp_path / "cache"))
    assert sorted(table.schema) == ["m", "q"] and sorted(table.schema["m"]) == ["x"]
    assert [dict(r) for r in table.records] == [{"q": "a", "m": {"x": 1}}]


# ---- cells ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, role, expected",
    [
        (" 7 ", None, " 7 "),  # strings as they are (callers strip)
        (12.0, None, "12"),  # integral float: no ".0"
        (0.5, None, "0.5"),
        (3, None, "3"),
        (True, None, None),  # booleans are not answers
        (None, None, None),
        ({"content": "x"}, "user", None),
        ([{"role": "user", "content": "hi"}], None, None),  # a chat list needs a role
        (
            [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "u1"},
                {"role": "user", "content": "u2"},
            ],
            "user",
            "u2",
        ),  # the last message with the role
        ([{"role": "user", "content": 5}], "user", None),  # non-text content
    ],
)
def test_cell_text(value: Any, role: str | None, expected: str | None) -> None:
    assert cell_text(value, role) == expected


def test_get_column_and_check_column() -> None:
    row = {"reward_model": {"ground_truth": "7"}, "flat": None}
    assert get_column(row, "reward_model.ground_truth") == "7"
    assert get_column(row, "reward_model.missing") is None
    assert get_column(row, "flat.deeper") is None  # a None level
    assert get_column(row, "absent") is None
    schema = {"prompt": None, "reward_model": {"ground_truth": None, "style": None}}
    check_column(schema, "reward_model.ground_truth", "answer_column", "file 'x'")
    with pytest.raises(
        DataSourceError,
        match=r"answer_column='answer': no column 'answer' in file 'x'; "
        r"available columns: \['prompt', 'reward_model'\]",
    ):
        check_column(schema, "answer", "answer_column", "file 'x'")
    with pytest.raises(
        DataSourceError, match=r"available fields of 'reward_model': \['ground_truth', 'style'\]"
    ):
        check_column(schema, "reward_model.answer", "answer_column", "file 'x'")


# ---- mapping ----------------------------------------------------------------------------------------------
def test_map_rows_skips_counts_and_limit() -> None:
    records = [
        {"q": "1+1?", "a": "2", "s": "one and one"},
        {"q": "  ", "a": "3"},  # blank problem
        {"q": {"text": "not text"}, "a": "3"},  # non-text problem
        {"q": "2+2?", "a": " "},  # blank reference
        {"q": "3+3?", "a": 6.0, "s": " "},  # blank expert -> None, counted
        {"q": "4+4?", "a": "8"},  # not reached: limit 2
    ]
    mapped, uids = map_rows(_qa, records, [10, 11, 12, 13, 14, 15], "t", limit=2, expect_expert=True)
    assert mapped.rows == [Row("1+1?", "2", "one and one", "t/10"), Row("3+3?", "6", None, "t/14")]
    assert mapped.skipped == {"no_prompt": 2, "no_reference": 1} and mapped.no_expert == 1
    assert uids == {"no_prompt": ["t/11", "t/12"], "no_reference": ["t/13"], "no_expert": ["t/14"]}


def test_load_rows_missing_fields_are_counted_skips_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "mixed.jsonl"
    rows = [
        {"q": "1+1?", "a": "2"},
        {"a": "3"},
        {"q": ["not", "text"], "a": "4"},
        {"q": "5+5?"},
        {"q": "6?", "a": 6},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING, logger="echorl_lightning.data.rows"):
        mapped = load_rows(
            TableSource(str(path)), _qa, [("prompt_column", "q")], label="train", uid_prefix="train"
        )
    assert [(r.problem, r.reference, r.uid) for r in mapped.rows] == [
        ("1+1?", "2", "train/0"),
        ("6?", "6", "train/4"),
    ]
    assert mapped.skipped == {"no_prompt": 2, "no_reference": 1}
    assert caplog.messages == [
        f"train from file '{path}' (split 'train'): skipped 3 of 5 rows: 2 with no prompt text "
        "(rows ['train/1', 'train/2']); 1 with no reference (rows ['train/3'])"
    ]
    # nothing usable: the error names the set, the file and the counts
    path.write_text('{"q": "", "a": "1"}\n{"q": "x"}\n')
    with pytest.raises(
        DataSourceError,
        match=r"val: no usable row in file .*mixed.jsonl.*\(2 rows: 1 no_prompt, 1 no_reference\)",
    ):
        load_rows(TableSource(str(path)), _qa, [], label="val", uid_prefix="val")


def test_load_rows_seeded_shuffle_keeps_file_indices(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"q": f"{i}?", "a": str(i)}) + "\n" for i in range(6)))
    mapped = load_rows(TableSource(str(path)), _qa, [], label="t", uid_prefix="t", limit=3, shuffle_seed=1)
    order = list(range(6))
    random.Random(1).shuffle(order)  # the same shuffle, by hand: the first 3 rows of that order
    assert [r.uid for r in mapped.rows] == [f"t/{i}" for i in order[:3]]


# ---- the import structure ---------------------------------------------------------------------------------
def _package_imports(path: Path) -> tuple[set[str], list[str]]:
    """(top-level ``echorl_lightning.data.*`` modules imported, imports made inside a function)."""
    tree = ast.parse(path.read_text())
    top = {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    nested = [
        ast.unparse(node)
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(fn)
        if isinstance(node, ast.ImportFrom | ast.Import)
    ]
    return {m for m in top if m.startswith("echorl_lightning.data.")}, nested


def test_data_layer_has_no_cycle_and_no_function_level_imports() -> None:
    graph = {}
    for name in ("tables", "rows", "benchmarks", "hub", "base", "types", "answers"):
        modules, nested = _package_imports(DATA / f"{name}.py")
        assert nested == [], f"{name}.py imports inside a function: {nested}"
        graph[name] = {m.rsplit(".", 1)[1] for m in modules}
        assert len((DATA / f"{name}.py").read_text().splitlines()) < 400, name
    assert graph["tables"] == set() and graph["rows"] == {"tables"}
    assert "hub" not in graph["benchmarks"] and "benchmarks" in graph["hub"]

    def reaches(start: str, target: str, seen: frozenset[str] = frozenset()) -> bool:
        return any(
            n == target or (n not in seen and reaches(n, target, seen | {n})) for n in graph.get(start, ())
        )

    assert not [name for name in graph if reaches(name, name)]
