"""FSDP2 sharding of the policy through Lightning, and full weights streamed out of the shards.

Sharded training of the EchoRL update uses Lightning's ``ModelParallelStrategy`` (FSDP2,
``torch.distributed.fsdp.fully_shard``): the strategy builds a device mesh, the module's ``configure_model``
calls :func:`apply_fsdp2` on the policy (and the frozen reference model), and parameters, gradients and AdamW
state then live as ``DTensor`` shards, 1/world of each per rank.

- :class:`FSDP2Strategy`: ``ModelParallelStrategy`` with pure data parallelism by default (all ranks shard,
  no tensor parallelism) and the mixed-precision settings of the shards (:class:`ShardingConfig`). A plain
  ``ModelParallelStrategy(data_parallel_size=N, tensor_parallel_size=1)`` trains too, with the defaults, but
  its load unpickles a checkpoint folder unrestricted; ``FSDP2Strategy.load_checkpoint`` reads every pickle
  weights-only (``checkpoint_safety``), and ``cli.py`` resumes with no other sharded strategy.
- :func:`apply_fsdp2`: ``fully_shard`` of every transformer block (the model's ``_no_split_modules``
  classes) and then of the root, which keeps the embeddings, the final norm and the LM head (tied or not:
  a tied head is the embedding, one parameter in one unit). ``MixedPrecisionPolicy``: ``param_dtype`` bf16
  on CUDA, fp32 on CPU unless set; ``reduce_dtype`` fp32. Marks the model ``_is_fsdp_managed_module`` so
  transformers' ``generate`` runs with ``synced_gpus=True`` (a rank that finished keeps joining the
  all-gathers of the others' forwards).
- :func:`call_through_root`: the hidden-state path (``training.forward``) calls the decoder and reads the
  head weight directly, which would skip the root unit's pre-forward (lazy init, all-gather of the
  embeddings/norm/head). It is run as the root's forward for one call instead (the ``forward`` attribute
  shadowed on the instance), so FSDP2's own hooks unshard the root around it, register the backward
  hooks on its outputs and reduce-scatter the head/embedding gradients after the backward.
- :func:`total_grad_norm`: the 2-norm of all gradients, ``DTensor`` shards reduced over the mesh.
- :func:`save_hf_streamed`: a Hugging Face folder (safetensors shards + index, config, generation config)
  written from a sharded model one tensor at a time: each parameter is gathered on every rank
  (``full_tensor()``), the writer rank keeps it until its file shard is written (``max_shard_bytes``) and
  the others drop it at once, so no rank ever holds a second full copy of the model.

Left out: tensor parallelism (``tensor_parallel_size`` > 1 is refused: no TP plan is written), FSDP1
(Lightning's ``FSDPStrategy``, which also refuses a CPU accelerator), CPU offload, rank-0-only loading of the
pretrained weights (every rank loads the full checkpoint on the CPU before sharding), and LoRA merging.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from safetensors.torch import save_file
from torch import Tensor, nn

from echorl_lightning.rollout.weight_stream import full_weight, require_streamable, vllm_weight_name
from echorl_lightning.training.checkpoint_safety import META_FILE, load_sharded_checkpoint, reading_checkpoint

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

DTypeName = Literal["float32", "bfloat16", "float16"]
T = TypeVar("T")
log = logging.getLogger(__name__)


def _fsdp2() -> Any:
    """The module holding ``fully_shard``, ``FSDPModule`` and ``MixedPrecisionPolicy`` (torch >= 2.6 public
    path, 2.4-2.5 private one)."""
    try:
        import torch.distributed.fsdp as fsdp

        fsdp.FSDPModule  # noqa: B018 - raises AttributeError before torch 2.6
        return fsdp
    except AttributeError:  # pragma: no cover - torch 2.4 / 2.5
        import torch.distributed._composable.fsdp as fsdp

        return fsdp


@dataclass(frozen=True)
class ShardingConfig:
    """Mixed precision and resharding of the FSDP2 units.

    Attributes:
        param_dtype: dtype the parameters are all-gathered and computed in; None: bfloat16 on CUDA, float32
            elsewhere (the shards, gradients and AdamW state keep the policy's own dtype).
        reduce_dtype: dtype of the gradient reduce-scatter; None: float32.
        reshard_after_forward: free each block's gathered parameters after its forward (ZeRO-3); False keeps
            them until the backward (ZeRO-2-like: more memory, no second all-gather, and an HF ``generate``
            gathers each block once per call instead of once per decoded token).
    """

    param_dtype: DTypeName | None = None
    reduce_dtype: DTypeName | None = None
    reshard_after_forward: bool = True

    def mixed_precision(self, device_type: str) -> Any:
        """The ``MixedPrecisionPolicy`` on ``device_type`` ("cuda", "cpu")."""
        default = "bfloat16" if device_type == "cuda" else "float32"
        return _fsdp2().MixedPrecisionPolicy(
            param_dtype=getattr(torch, self.param_dtype or default),
            reduce_dtype=getattr(torch, self.reduce_dtype or "float32"),
        )


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` as pure FSDP2 data parallelism, with the shards' precision.

    Args:
        data_parallel_size: ranks that shard the model; "auto": all of them (nodes x devices).
        param_dtype: see :class:`ShardingConfig` (bf16 on GPUs unless set).
        reduce_dtype: see :class:`ShardingConfig`.
        reshard_after_forward: see :class:`ShardingConfig`.
        save_distributed_checkpoint: one file per rank (True, Lightning's distributed checkpoint; resumes
            with ``ckpt_path`` pointing at the folder) or one full file assembled on rank 0.
        process_group_backend: None: nccl on GPUs, gloo on CPU.

    Use the trainer's ``precision: 32-true`` with it: the policy's fp32 weights are the master copy and
    ``param_dtype`` sets the compute dtype (``bf16-mixed`` works too, autocast on top).
    """

    def __init__(
        self,
        data_parallel_size: int | Literal["auto"] = "auto",
        param_dtype: DTypeName | None = None,
        reduce_dtype: DTypeName | None = None,
        reshard_after_forward: bool = True,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
    ) -> None:
        super().__init__(
            data_parallel_size=data_parallel_size,
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
        )
        self.sharding = ShardingConfig(param_dtype, reduce_dtype, reshard_after_forward)

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Resume from a distributed checkpoint folder or a full file with every pickle in it read weights-only
        (``checkpoint_safety``; Lightning's own load unpickles a folder's ``.metadata`` and its non-tensor
        entries unrestricted). ``weights_only=False``, passed on purpose, loads as Lightning does.

        Raises:
            CheckpointRefused: a pickle in it would call something a checkpoint of this project never holds.
        """
        if weights_only is False:
            log.warning("%s: loading with weights_only=False: its pickles may run any code", checkpoint_path)
            return super().load_checkpoint(checkpoint_path, weights_only=False)
        path = Path(self.broadcast(checkpoint_path))
        if path.is_dir() and (path / META_FILE).is_file():
            return load_sharded_checkpoint(
                path, self.model, self.optimizers, strict=self.lightning_module.strict_loading
            )
        with reading_checkpoint(path):
            return super().load_checkpoint(path, weights_only=True)


def sharding_config(strategy: Any) -> ShardingConfig:
    """The strategy's :class:`ShardingConfig` (the defaults for a plain ``ModelParallelStrategy``)."""
    config = getattr(strategy, "sharding", None)
    return config if isinstance(config, ShardingConfig) else ShardingConfig()


def data_parallel_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """The 1-D mesh to shard over: the whole mesh, or its ``data_parallel`` dimension when the
    ``tensor_parallel`` one (Lightning's 2-D mesh) has size 1; tensor parallelism is refused."""
    names = mesh.mesh_dim_names or ()
    if mesh.ndim == 1:
        return mesh
    if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
        raise ValueError(
            f"trainer.strategy: tensor_parallel_size={mesh['tensor_parallel'].size()} is not supported (the "
            "policy has no tensor-parallel plan); use FSDP2Strategy or ModelParallelStrategy with "
            "data_parallel_size=<world size> and tensor_parallel_size=1"
        )
    if "data_parallel" not in names:
        raise ValueError(f"device mesh {names}: expected a 'data_parallel' dimension to shard over")
    return mesh["data_parallel"]


def is_fsdp2(module: nn.Module) -> bool:
    """Whether ``module`` itself is an FSDP2 unit (``fully_shard`` was applied to it)."""
    return torch.distributed.is_available() and isinstance(module, _fsdp2().FSDPModule)


def block_modules(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of an HF model: submodules whose class is in ``model._no_split_modules``."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(
            f"{type(model).__name__}: no transformer block to shard (_no_split_modules={sorted(names)} names "
            "no submodule class)"
        )
    return blocks


def apply_fsdp2(model: nn.Module, mesh: DeviceMesh, config: ShardingConfig) -> None:
    """``fully_shard`` each transformer block of ``model``, then ``model`` itself (the root), in place.

    Args:
        model: an HF causal LM on the CPU or its device, not yet sharded.
        mesh: the strategy's device mesh (see :func:`data_parallel_mesh`).
        config: precision and resharding of the units.
    """
    if is_fsdp2(model):
        raise ValueError(f"{type(model).__name__} is already sharded")
    fsdp = _fsdp2()
    mesh = data_parallel_mesh(mesh)
    policy = config.mixed_precision(mesh.device_type)
    for block in block_modules(model):
        fsdp.fully_shard(
            block, mesh=mesh, mp_policy=policy, reshard_after_forward=config.reshard_after_forward
        )
    fsdp.fully_shard(model, mesh=mesh, mp_policy=policy)  # the root: gathered for a whole forward/backward
    model._is_fsdp_managed_module = True  # transformers' generate: synced_gpus=True under world size > 1


def call_through_root(model: nn.Module, fn: Callable[[], T]) -> T:
    """``fn()`` run as ``model``'s forward when ``model`` is an FSDP2 root, else plainly.

    FSDP2's forward hooks (root lazy init, all-gather of the root unit, backward hooks on the outputs and the
    reduce-scatter after the backward) are registered on ``model.__call__``; ``fn`` runs inside them.
    ``fn`` must not call ``model`` itself (the blocks inside it are their own units and may be called).
    """
    if not is_fsdp2(model):
        return fn()
    model.forward = fn  # shadows the class's forward for this call only
    try:
        return model()
    finally:
        del model.forward


def reshard(model: nn.Module) -> None:
    """Free the gathered parameters of an FSDP2 root (it keeps them after a no-grad forward)."""
    if is_fsdp2(model):
        model.reshard()


def total_grad_norm(parameters: Iterable[nn.Parameter]) -> Tensor | None:
    """The 2-norm of all gradients as one vector (None when no parameter has one).

    Plain tensors (DDP: already all-reduced) give their local norm; ``DTensor`` shards give the norm of the
    full gradient, the same value on every rank.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return None
    if hasattr(torch.nn.utils, "get_total_norm"):
        norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    else:  # pragma: no cover - torch < 2.6
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach()) for g in grads]))
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


# ---- a Hugging Face folder from shards ----------------------------------------------------------------


def _distinct_tensors(model: nn.Module) -> list[tuple[str, Tensor]]:
    """``(checkpoint name, tensor)`` of each distinct tensor of the state dict (a tied head once)."""
    require_streamable(model)
    seen: set[int] = set()
    out = []
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            out.append((vllm_weight_name(name), tensor))
    return out


def plan_file_shards(sizes: list[int], max_shard_bytes: int) -> list[int]:
    """The file-shard index of each tensor: consecutive tensors fill a file up to ``max_shard_bytes`` (a
    larger tensor gets a file of its own).

    Args:
        sizes: bytes of each tensor, in write order.
        max_shard_bytes: the most bytes of one file (> 0).

    Returns:
        one index per tensor, non-decreasing from 0.
    """
    out, shard, filled = [], 0, 0
    for size in sizes:
        if filled and filled + size > max_shard_bytes:
            shard, filled = shard + 1, 0
        out.append(shard)
        filled += size
    return out


def save_hf_streamed(
    model: nn.Module, path: str | Path, *, is_writer: bool, max_shard_bytes: int = 2 * 1024**3
) -> None:
    """Write ``model`` (sharded with FSDP2 or not) as a ``from_pretrained`` folder, one tensor at a time.

    Collective under FSDP2: every rank calls it, in step. Tensors keep the policy's dtype; a tied output
    embedding is written once, under the embedding's name (``from_pretrained`` ties it again).

    Args:
        model: an HF causal LM (``config``, optional ``generation_config``).
        path: the folder (created on the writer rank).
        is_writer: this rank writes the files (global rank 0); the others only take part in the gathers.
        max_shard_bytes: size of one safetensors file; the writer holds at most one file's tensors.
    """
    tensors = _distinct_tensors(model)
    sizes = [t.numel() * t.element_size() for _, t in tensors]
    shard_of = plan_file_shards(sizes, max_shard_bytes)
    n_files = shard_of[-1] + 1 if shard_of else 0
    path = Path(path)
    if is_writer:
        path.mkdir(parents=True, exist_ok=True)

    def file_name(i: int) -> str:
        return "model.safetensors" if n_files == 1 else f"model-{i + 1:05d}-of-{n_files:05d}.safetensors"

    pending: dict[str, Tensor] = {}
    weight_map: dict[str, str] = {}
    for i, (name, tensor) in enumerate(tensors):
        full = full_weight(tensor, tensor.dtype)  # gathered on every rank: a collective for DTensors
        if is_writer:
            pending[name] = full.cpu().contiguous()
            weight_map[name] = file_name(shard_of[i])
        del full
        if is_writer and (i + 1 == len(tensors) or shard_of[i + 1] != shard_of[i]):
            save_file(pending, str(path / file_name(shard_of[i])), metadata={"format": "pt"})
            pending = {}
    if not is_writer:
        return
    if n_files > 1:
        index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
    model.config.save_pretrained(path)
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        generation_config.save_pretrained(path)
