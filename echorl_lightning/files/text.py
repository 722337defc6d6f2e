"""A user's text file as text, or one line that names the file, the line and column, and what the bytes are.

Accepted: UTF-8 with or without a byte-order mark (BOM), and UTF-16 / UTF-32 with a BOM (Windows Notepad's
"Unicode"). Refused, at the first offending byte: any other 8-bit encoding (Latin-1, Windows-1252, ...: their
bytes do not say which one they are, so a guess could change the text silently), UTF-16 without a BOM, and
binary files, which are named by their magic bytes where they have any (a Parquet, ZIP, gzip, pickle or
safetensors file under a text file's name).

Left out: decoding the 8-bit encodings (the message says to save the file as UTF-8).
"""

from __future__ import annotations

import codecs
from pathlib import Path

# longest first: the UTF-32 LE mark starts with the UTF-16 LE one
BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32", "UTF-32"),
    (codecs.BOM_UTF32_BE, "utf-32", "UTF-32"),
    (codecs.BOM_UTF8, "utf-8-sig", "UTF-8"),
    (codecs.BOM_UTF16_LE, "utf-16", "UTF-16"),
    (codecs.BOM_UTF16_BE, "utf-16", "UTF-16"),
)
MAGIC = (
    (b"PAR1", "a Parquet file"),
    (b"PK\x03\x04", "a ZIP archive (an Excel workbook, a torch .pt / .ckpt file, ...)"),
    (b"\x1f\x8b", "a gzip-compressed file"),
    (b"\x89HDF", "an HDF5 file"),
    (b"ARROW1", "an Arrow file"),
    (b"SQLite format 3", "an SQLite database"),
)
BINARY_SHARE = 0.05  # control bytes (other than tab, newline, CR, form feed) beyond this share: binary


class TextFileError(ValueError):
    """A file that is not text this project reads; the message names it (and the line and column)."""


def sniff(head: bytes) -> str | None:
    """What a file's first bytes say it is, for the binary formats a user may put under a wrong name."""
    for magic, kind in MAGIC:
        if head.startswith(magic):
            return kind
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle (a torch .bin / .pt file?)"
    if len(head) >= 10 and head[8:10] == b'{"' and int.from_bytes(head[:8], "little") < 1 << 32:
        return "a safetensors file"
    return None


def describe_bytes(head: bytes) -> str:
    """What a file that should have been of another kind is, from its first bytes (for messages)."""
    kind = sniff(head)
    if kind is not None:
        return kind
    if head.lstrip()[:1] in (b"{", b"["):
        return "JSON text"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 3 or _looks_binary(head):  # not just a character cut at the end
            return "binary data of an unknown kind"
    return "binary data of an unknown kind" if _looks_binary(head) else "text"


def _looks_utf16(data: bytes) -> bool:
    """Mostly-ASCII UTF-16 without a BOM: one of the two byte positions is nearly always zero."""
    sample = data[:4096]
    even, odd = sample[0::2], sample[1::2]
    return len(sample) >= 4 and max(even.count(0) / len(even), odd.count(0) / max(len(odd), 1)) > 0.3


def _looks_binary(data: bytes) -> bool:
    sample = data[:4096]
    control = sum(1 for byte in sample if byte < 32 and byte not in (9, 10, 12, 13))
    return control > BINARY_SHARE * len(sample)


def position(data: bytes, offset: int) -> tuple[int, int]:
    """(line, column), both from 1, of byte ``offset`` of UTF-8 ``data`` (the column counts characters)."""
    start = data.rfind(b"\n", 0, offset) + 1
    column = len(data[start:offset].decode("utf-8", errors="replace")) + 1
    return data.count(b"\n", 0, offset) + 1, column


def decode_text(data: bytes, name: str) -> str:
    """``data`` as text (see the module docstring for what is accepted).

    Args:
        data: the file's bytes.
        name: how messages name the file, e.g. ``"config file 'x.yaml'"``.

    Raises:
        TextFileError: ``"<name>, line 3, column 7: byte 0xe9 is not UTF-8 ..."``, or ``"<name>: ..."`` for a
            file that is binary or UTF-16 without a BOM.
    """
    for bom, codec, label in BOMS:
        if data.startswith(bom):
            try:
                return data.decode(codec)
            except UnicodeDecodeError as error:
                raise TextFileError(
                    f"{name}: starts with a {label} byte-order mark, but byte {error.start} is not {label}; "
                    "save it as UTF-8"
                ) from None
    kind = sniff(data[:16])
    if kind is not None:
        raise TextFileError(f"{name}: binary data, not text: {kind} (by its first bytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        if _looks_utf16(data):
            raise TextFileError(f"{name}: UTF-16 text without a byte-order mark; save it as UTF-8") from None
        line, column = position(data, error.start)
        byte = data[error.start]
        if _looks_binary(data):
            raise TextFileError(
                f"{name}: binary data, not text (byte 0x{byte:02x} at line {line}, column {column})"
            ) from None
        raise TextFileError(
            f"{name}, line {line}, column {column}: byte 0x{byte:02x} is not UTF-8 (a Latin-1 or "
            "Windows-1252 file?); save it as UTF-8"
        ) from None


def json_message(message: str) -> str:
    """``json.JSONDecodeError.msg`` without its dangling ``at`` (the position is given separately)."""
    return message.removesuffix(" at").removesuffix(" starting")


def read_text(path: str | Path, name: str) -> str:
    """The file at ``path`` as text; ``name`` as in :func:`decode_text` (an unreadable path raises OSError)."""
    return decode_text(Path(path).expanduser().read_bytes(), name)
