"""Broken data files fail clearly: the fuzz table of the data-file input kind (JSONL, JSON, CSV, Parquet).

Each case breaks a valid file (written here, rows made up) the way files break: truncated, empty, another
encoding, stray bytes, JSON values of the wrong type, a field of another schema, binary garbage, a file of another
kind under the right name; ``HubPromptDataModule.check_data`` (what ``cli.py`` calls before any model loads) must
fail with a last line that names the file (and the line), what is wrong and the config key. Inputs a text editor
produces that can be read (a UTF-8 or UTF-16 byte-order mark, CRLF, ``;`` separators) are read; a row that can be
skipped is counted and logged with its row id. Nothing in the case's folder is written, changed or removed. The
other input kinds: ``tests/files/test_model_folder_fuzz.py``, ``tests/files/test_config_file_fuzz.py``; through
``cli.py``: ``tests/e2e/test_input_fuzz.py``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from echorl_lightning.data.hub import HubPromptDataModule
from echorl_lightning.data.tables import DataSourceError
from tests.helpers.input_files import (
    GARBAGE,
    KEY,
    ROWS,
    VALID,
    csv_text,
    cut_inside_last_row,
    json_text,
    jsonl_text,
    parquet_bytes,
    snapshot,
    utf16_without_bom,
    with_stray_byte,
)

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
