"""Reading checkpoints without running code: weights-only unpickling with an explicit allowlist.

A ``.ckpt`` file, a distributed checkpoint's ``.metadata`` and ``meta.pt``, and a pickled rollout buffer are
pickles, and a pickle may name any importable callable (``os.system``, ``pathlib.Path.touch``) that unpickling
then calls. Checkpoints are files users pass around, so every read here rebuilds only tensors, numbers,
strings, containers and the few project types a genuine file of that kind holds, and refuses anything else
with :class:`CheckpointRefused`, which names the file and the callable. Nothing of the file runs.

What a genuine file holds beyond tensors and plain containers:

- a Lightning checkpoint (single file, or a folder's ``meta.pt``): :data:`CHECKPOINT_TYPES`, the config
  dataclasses that ``EchoRLModule.save_hyperparameters`` stores when the module is built in Python
  (``cli.py`` stores them as dicts). Optimizer, scheduler, loop and callback states are numbers, strings,
  tuples, lists, dicts and tensors, which torch's weights-only unpickler rebuilds by itself;
- a distributed checkpoint's ``.metadata`` (a plain pickle that ``torch.distributed.checkpoint`` reads with
  ``pickle.load``): :data:`DISTRIBUTED_METADATA_TYPES`, torch's own metadata dataclasses, ``torch.Size``,
  dtypes and layouts, and the folder's ``pathlib`` path;
- a distributed checkpoint's non-tensor entries (an optimizer's param groups), which torch's planner reads
  with ``weights_only=False``: numbers, strings and containers only;
- a pickled rollout buffer (tests): :data:`ROLLOUT_BUFFER_TYPES`.

The readers:

- :func:`load_checkpoint_file`: ``torch.load(weights_only=True)`` of one file under an allowlist.
- :func:`reading_checkpoint`: the same allowlist and refusal around a ``torch.load`` that Lightning makes.
- :class:`SafeCheckpointIO`: Lightning's ``TorchCheckpointIO`` reading with :func:`load_checkpoint_file`;
  the checkpoint IO of single-device and DDP runs (``cli.py`` installs it).
- :func:`load_sharded_checkpoint`: Lightning's ``ModelParallelStrategy`` load of a distributed checkpoint
  folder (model state, each optimizer's state, ``meta.pt``) with every pickle above read restricted; used by
  ``FSDP2Strategy``.

Left out: ``weights_only=False`` (Lightning's ``--weights_only false``) still reads anything, on the user's
explicit word; a Trainer built in Python reads through Lightning's default checkpoint IO (torch's own
weights-only default, no allowlist) unless given ``plugins=[SafeCheckpointIO()]``; other checkpoint IOs and
strategies (DeepSpeed, FSDP1, a plain ``ModelParallelStrategy``) are Lightning's, refused by ``cli.py`` when
resuming. Model folders are read from safetensors only (:func:`load_safetensors_model`; the tiny warm-start
stages pass ``use_safetensors=True`` themselves), never from pickled ``.bin`` weights.
"""

from __future__ import annotations

import io
import logging
import pathlib
import pickle
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from torch import nn
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.filesystem import _StorageInfo

from echorl_lightning.rollout.batch import RolloutBatch
from echorl_lightning.training.checkpoint_files import check_checkpoint_path
from echorl_lightning.training.config import AlgorithmOverrides, EchoConfig, EvalConfig
from echorl_lightning.training.lora import LoraConfig

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

META_FILE = "meta.pt"  # what Lightning's ModelParallelStrategy pickles beside the shards

CHECKPOINT_TYPES: tuple[type, ...] = (AlgorithmOverrides, EchoConfig, EvalConfig, LoraConfig)
"""``EchoRLModule``'s hyperparameters ``algorithm``, ``echo``, ``eval`` and ``lora`` as built in Python."""

ROLLOUT_BUFFER_TYPES: tuple[type, ...] = (RolloutBatch,)
"""A list of training micro-batches saved with ``torch.save`` (the multi-process tests' fixed buffer)."""

DISTRIBUTED_METADATA_TYPES: tuple[Any, ...] = (
    dcp_metadata.Metadata,
    dcp_metadata.TensorStorageMetadata,
    dcp_metadata.BytesStorageMetadata,
    dcp_metadata.ChunkStorageMetadata,
    dcp_metadata.TensorProperties,
    dcp_metadata._MEM_FORMAT_ENCODING,  # how TensorProperties pickles its memory format
    dcp_metadata.MetadataIndex,
    dcp_metadata.StorageMeta,
    _StorageInfo,  # where each entry lies in the ``__<rank>_0.distcp`` files
    torch.Size,
    torch.serialization._get_layout,  # how ``torch.strided`` pickles
    pathlib.PosixPath,  # StorageMeta.checkpoint_id: the folder it was saved to
    pathlib.WindowsPath,
)
"""``torch.distributed.checkpoint``'s ``.metadata`` pickle; torch dtypes are allowed besides."""


class CheckpointRefused(pickle.UnpicklingError):
    """A file whose pickle would call something a checkpoint of this project never holds; nothing of it ran."""


def refusal(source: str | Path, reason: str) -> CheckpointRefused:
    """The error for ``source`` (a file, or a file and entry): why it is refused, and that nothing ran."""
    return CheckpointRefused(
        f"{source}: refused to load: {reason}. Checkpoints are read weights-only (tensors, numbers, strings, "
        "containers and this project's config types), so a foreign pickle is never run"
    )


def _reason(err: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler refused, from its message."""
    text = str(err)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"its pickle calls {found.group(1)}, which a checkpoint of this project never holds"
    detail = re.search(r"WeightsUnpickler error: (.*)", text)
    return f"its pickle is not weights-only ({(detail.group(1) if detail else text).strip()})"


def _allowing(types: Sequence[Any]) -> Any:
    """torch's safe-globals context for ``types`` (torch >= 2.5; torch 2.4 adds and then restores them)."""
    if hasattr(torch.serialization, "safe_globals"):
        return torch.serialization.safe_globals(list(types))
    return _added_safe_globals(types)  # pragma: no cover - torch 2.4


@contextmanager
def _added_safe_globals(types: Sequence[Any]) -> Iterator[None]:  # pragma: no cover - torch 2.4
    before = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals(list(types))
    try:
        yield
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)


@contextmanager
def reading_checkpoint(source: str | Path, allowed: Sequence[Any] = CHECKPOINT_TYPES) -> Iterator[None]:
    """Inside: ``torch.load(weights_only=True)`` also rebuilds ``allowed``; a refusal of it names ``source``.

    Raises:
        CheckpointRefused: a weights-only load inside refused the file (torch's ``UnpicklingError``).
    """
    try:
        with _allowing(allowed):
            yield
    except CheckpointRefused:
        raise
    except pickle.UnpicklingError as err:
        raise refusal(source, _reason(err)) from None


def load_checkpoint_file(
    path: str | Path, map_location: Any = None, allowed: Sequence[Any] = CHECKPOINT_TYPES
) -> Any:
    """``torch.load(path, weights_only=True)`` rebuilding ``allowed`` besides tensors and plain data.

    Args:
        path: a checkpoint file (``.ckpt``, ``meta.pt``) or a pickled rollout buffer.
        map_location: as ``torch.load``'s.
        allowed: :data:`CHECKPOINT_TYPES`, or :data:`ROLLOUT_BUFFER_TYPES` for a buffer.

    Raises:
        CheckpointRefused: its pickle names anything else.
    """
    check_checkpoint_path(path, key="checkpoint")
    with reading_checkpoint(path, allowed):
        return torch.load(path, map_location=map_location, weights_only=True)


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` whose loads are :func:`load_checkpoint_file` (local or fsspec paths).

    ``weights_only=False``, passed on purpose (``trainer.fit(..., weights_only=False)``), loads as Lightning
    does, with a warning; ``None`` (the default) and ``True`` load weights-only.
    """

    def load_checkpoint(
        self, path: Any, map_location: Any = lambda storage, loc: storage, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if weights_only is False:
            log.warning("%s: loading with weights_only=False: its pickle may run any code", path)
            return super().load_checkpoint(path, map_location=map_location, weights_only=False)
        fs = get_filesystem(path)
        if not fs.exists(path):
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        check_checkpoint_path(path, key="ckpt_path")
        with reading_checkpoint(path), fs.open(path, "rb") as f:
            return torch.load(f, map_location=map_location, weights_only=True)


# ---- distributed checkpoint folders ---------------------------------------------------------------------


class _RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that finds only the globals in ``allowed`` ((module, name) -> object)."""

    def __init__(self, file: IO[bytes], source: str | Path, allowed: dict[tuple[str, str], Any]) -> None:
        super().__init__(file)
        self.source, self.allowed = source, allowed

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.allowed:
            raise refusal(
                self.source,
                f"its pickle calls {module}.{name}, which a checkpoint of this project never holds",
            )
        return self.allowed[(module, name)]


def _distributed_metadata_globals() -> dict[tuple[str, str], Any]:
    names = {(obj.__module__, obj.__qualname__): obj for obj in DISTRIBUTED_METADATA_TYPES}
    dtypes = {v for v in vars(torch).values() if isinstance(v, torch.dtype)}
    return names | {("torch", str(d).removeprefix("torch.")): d for d in dtypes}


def read_distributed_metadata(path: str | Path) -> dcp_metadata.Metadata:
    """A distributed checkpoint's ``.metadata`` file, unpickled with :data:`DISTRIBUTED_METADATA_TYPES` only.

    Raises:
        CheckpointRefused: its pickle names anything else, or is not a ``Metadata``.
    """
    with open(path, "rb") as f:
        metadata = _RestrictedUnpickler(f, path, _distributed_metadata_globals()).load()
    if not isinstance(metadata, dcp_metadata.Metadata):
        raise refusal(path, f"it holds a {type(metadata).__name__}, not a distributed checkpoint's Metadata")
    return metadata


class SafeFileSystemReader(FileSystemReader):
    """torch's ``FileSystemReader`` (local folders) reading ``.metadata`` with :func:`read_distributed_metadata`
    instead of ``pickle.load``. The tensor entries torch reads weights-only itself."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_metadata.Metadata:
        rank = kwargs.get("rank")  # torch's fallback to a rank's own metadata file
        name = ".metadata" if rank is None else f"__{rank}.metadata"
        metadata = read_distributed_metadata(Path(self.path) / name)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = dcp_metadata.StorageMeta()
        metadata.storage_meta.load_id = getattr(self, "load_id", None)
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """torch's ``DefaultLoadPlanner``, whose non-tensor entries (an optimizer's param groups) it unpickles with
    ``weights_only=False``, handed them loaded weights-only: each entry is rebuilt with no extra type allowed
    and torch's planner reads a copy saved from what was rebuilt."""

    def __init__(self, folder: str | Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.folder = folder

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        with reading_checkpoint(f"{self.folder} (entry {read_item.dest_index.fqn})", allowed=()):
            entry = torch.load(value, weights_only=True)
        rebuilt = io.BytesIO()
        torch.save(entry, rebuilt)
        rebuilt.seek(0)
        super().load_bytes(read_item, rebuilt)


def load_distributed(state: dict[str, Any], folder: str | Path) -> None:
    """``torch.distributed.checkpoint.load(state, folder)`` in place, every pickle of it read restricted.

    Collective when a process group is initialised (every rank calls it with the same keys).

    Raises:
        CheckpointRefused: the folder's ``.metadata`` or an entry would call something else.
    """
    from torch.distributed.checkpoint import load
    from torch.distributed.checkpoint.api import CheckpointException

    reader = SafeFileSystemReader(folder)
    reader.read_metadata()  # refused here, plainly, before torch's collectives wrap the error
    try:
        load(state, storage_reader=reader, planner=SafeLoadPlanner(folder))
    except CheckpointException as err:
        refused = [exc for exc, _ in err.failures.values() if isinstance(exc, CheckpointRefused)]
        if refused:
            raise refused[0] from None
        raise


def load_sharded_checkpoint(
    folder: str | Path, module: nn.Module, optimizers: Iterable[torch.optim.Optimizer], strict: bool = True
) -> dict[str, Any]:
    """Restore a Lightning distributed checkpoint folder into ``module`` and ``optimizers``, as Lightning's
    ``ModelParallelStrategy.load_checkpoint`` does, reading ``meta.pt`` first (refused before any shard is
    read) with :func:`load_checkpoint_file` and the shards with :func:`load_distributed`.

    Args:
        folder: holds ``.metadata``, ``__<rank>_0.distcp`` and ``meta.pt`` (``state_dict`` and
            ``optimizer_<i>`` entries, as Lightning saves them).
        module: the LightningModule (its parameters DTensor shards, or plain tensors).
        optimizers: the trainer's optimizers, in order.
        strict: as ``load_state_dict``'s.

    Returns:
        ``meta.pt``: the rest of the checkpoint (loops, callbacks, hyperparameters, ...).
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    folder = Path(folder)
    meta = load_checkpoint_file(folder / META_FILE)
    state = {"state_dict": get_model_state_dict(module)}
    load_distributed(state, folder)
    module.load_state_dict(state["state_dict"], strict=strict)
    for i, optimizer in enumerate(optimizers):
        key = f"optimizer_{i}"
        optim_state = {key: get_optimizer_state_dict(module, optimizer)}
        load_distributed(optim_state, folder)
        set_optimizer_state_dict(
            module, optimizer, optim_state_dict=optim_state[key], options=StateDictOptions(cpu_offload=True)
        )
    return meta


# ---- model folders --------------------------------------------------------------------------------------


def load_safetensors_model(path: str | Path, **kwargs: Any) -> PreTrainedModel:
    """``AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, **kwargs)``: a folder or hub id whose
    weights are only a pickled ``pytorch_model.bin`` is refused before anything of it is read.

    Raises:
        CheckpointRefused: ``path`` is a local folder with ``.bin`` weights and no safetensors.
        OSError: as ``from_pretrained`` (no such folder or hub id, no weights).
    """
    from transformers import AutoModelForCausalLM

    folder = Path(path)
    if folder.is_dir() and not any(folder.glob("*.safetensors*")) and any(folder.glob("*.bin*")):
        raise refusal(
            folder,
            "its weights are pickled .bin files; only safetensors model folders are read "
            "(save_pretrained writes them by default)",
        )
    return AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, **kwargs)
