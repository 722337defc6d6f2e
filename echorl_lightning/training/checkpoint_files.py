"""Is this file a checkpoint at all? A look at a ``--ckpt_path`` before torch opens it, so a broken or wrong
file ends in one line that names it and says what it is, not in a zip-reader or unpickler error.

A torch checkpoint is a zip archive (``torch.save``'s format since torch 1.6) or, from older versions, a bare
pickle (first byte ``0x80``); a distributed (FSDP2) checkpoint is a folder holding ``.metadata``. Anything else
is named by what it looks like: empty, a truncated archive, a safetensors file, JSON, text, or unknown bytes.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from echorl_lightning.files.text import describe_bytes

#: The ``ckpt_path`` words Lightning resolves itself (``last`` and so on): not files to look at.
LIGHTNING_KEYWORDS = ("last", "best", "hpc", "registry")


class CheckpointFileError(ValueError):
    """A ``ckpt_path`` that is not a checkpoint this project can read."""


def describe_non_checkpoint(head: bytes) -> str:
    """What a file that is not a torch checkpoint looks like, from its first bytes (``files.text.describe_bytes``;
    a safetensors file also says where such weights go)."""
    kind = describe_bytes(head)
    if kind == "a safetensors file":
        return (
            "a safetensors file (model weights, no training state), not a checkpoint: to start from these "
            "weights, point model.init_args.model at its folder"
        )
    return f"{kind}, not a checkpoint"


def check_checkpoint_path(path: str | Path, key: str = "--ckpt_path") -> None:
    """Raise :class:`CheckpointFileError` naming ``key`` and ``path`` unless it looks like a readable checkpoint.

    Lightning's keywords (``last``, ...) and remote URLs are left to Lightning.
    """
    text = str(path)
    if text in LIGHTNING_KEYWORDS or "://" in text:
        return
    where = f"{key}: {text}"
    file = Path(text)
    if not file.exists():
        raise CheckpointFileError(f"{where}: no such file or folder")
    if file.is_dir():
        if not (file / ".metadata").is_file():
            raise CheckpointFileError(
                f"{where}: a folder without .metadata, so not a distributed (FSDP2) checkpoint; give a .ckpt file "
                "or the checkpoint folder itself"
            )
        return
    size = file.stat().st_size
    if size == 0:
        raise CheckpointFileError(f"{where}: the file is empty (a checkpoint whose writing was interrupted?)")
    with file.open("rb") as handle:
        head = handle.read(64)
    if head[:4] == b"PK\x03\x04":
        if not zipfile.is_zipfile(file):
            raise CheckpointFileError(
                f"{where}: truncated or corrupted ({size} bytes; the archive's end record is missing): the "
                "checkpoint was not written completely or not copied whole"
            )
        return
    if head[:1] == b"\x80":  # a pickle (torch's legacy format): the weights-only load decides
        return
    with file.open("rb") as handle:
        handle.seek(max(0, size - 65_558))  # the zip end record sits in the last 64 KiB + 22 bytes
        tail = handle.read()
    if b"PK\x05\x06" in tail:
        raise CheckpointFileError(
            f"{where}: corrupted ({size} bytes): the end of a checkpoint archive without its beginning (a "
            "partial or damaged copy)"
        )
    raise CheckpointFileError(f"{where}: {describe_non_checkpoint(head)}")
