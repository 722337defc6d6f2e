"""Loading a checkpoint never runs code (``echorl_lightning.training.checkpoint_safety``).

For each format the project reads, a booby-trapped file (its unpickling would create a marker file, through
``os.system("touch ...")`` or ``pathlib.Path.touch``) is refused with a message that names the file and the
callable, the marker never appears, and a genuine file of that format loads exactly:

- a Lightning single-file checkpoint (single process and DDP; a LoRA run's adapter-only one): the readers,
  a real Trainer, and ``python cli.py fit --ckpt_path``;
- a distributed checkpoint folder (FSDP2): a trap in ``.metadata``, in a non-tensor entry of the shards and
  in ``meta.pt``;
- a pickled rollout buffer; a model folder (safetensors only: ``.bin`` weights are refused unread).

A control shows each trap does fire under an unrestricted load, so "no marker" means something. Exact resume
of genuine checkpoints through these readers, and the traps refused by the 2-process DDP and FSDP2 runs
themselves: ``tests/e2e/test_resume.py`` (single process, ``cli.py``), ``tests/e2e/test_multiprocess_equality.py``
(DDP and FSDP2 on 2 CPU processes), ``tests/training/test_lora_training.py`` (LoRA).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import pytest
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from torch import nn
from transformers import AutoModelForCausalLM

from echorl_lightning.cli import use_safe_checkpoint_loads
from echorl_lightning.module import load_policy
from echorl_lightning.tiny import TINY_MODEL_PATH
from echorl_lightning.training.checkpoint_safety import (
    CHECKPOINT_TYPES,
    META_FILE,
    ROLLOUT_BUFFER_TYPES,
    CheckpointRefused,
    SafeCheckpointIO,
    load_checkpoint_file,
    load_safetensors_model,
    load_sharded_checkpoint,
    read_distributed_metadata,
)
from echorl_lightning.training.config import AlgorithmOverrides, EchoConfig, EvalConfig
from echorl_lightning.training.lora import LoraConfig
from echorl_lightning.training.sharding import FSDP2Strategy
from tests.helpers.checkpoints import How, Trap
from tests.helpers.paths import ROOT

# what the refusal names: os.system pickles as posix.system; Path.touch (a method) as getattr(Path, "touch"),
# which torch names "getattr"
CALLED = {"system": "posix.system" if os.name == "posix" else "nt.system", "touch": "getattr"}


def assert_refused(err: pytest.ExceptionInfo[CheckpointRefused], source: Path | str, how: How) -> None:
    text = str(err.value)
    assert str(source) in text and "refused" in text, text
    assert f"its pickle calls {CALLED[how]}" in text, text


def genuine_checkpoint() -> dict[str, Any]:
    """What a Lightning checkpoint of ``EchoRLModule`` built in Python holds (tensors, AdamW state, loops,
    callback state, the config dataclasses as hyperparameters)."""
    return {
        "epoch": 0,
        "global_step": 1,
        "pytorch-lightning_version": L.__version__,
        "state_dict": {"policy.w": torch.arange(6.0).view(2, 3)},
        "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 1}}}},
        "callbacks": {
            "ModelCheckpoint{...}": {"best_model_path": "/x/epoch=0.ckpt", "kth_value": torch.tensor(1.0)}
        },
        "optimizer_states": [
            {
                "state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.ones(2, 3)}},
                "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "foreach": None, "params": [0]}],
            }
        ],
        "lr_schedulers": [{"base_lrs": [1e-3], "last_epoch": 1, "lr_lambdas": [None]}],
        "hparams_name": "kwargs",
        "hyper_parameters": {
            "model": TINY_MODEL_PATH,
            "algorithm": AlgorithmOverrides(kl_coef=0.05),
            "echo": EchoConfig(coef=0.1),
            "eval": EvalConfig(n=2),
            "lora": LoraConfig(r=4),
        },
    }


def assert_same(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b) and type(a) is type(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b and type(a) is type(b)


# ---- the traps fire when nothing restricts them ---------------------------------------------------------


@pytest.mark.parametrize("how", ["system", "touch"])
def test_control_each_trap_creates_its_marker_under_an_unrestricted_load(tmp_path: Path, how: How) -> None:
    marker = tmp_path / "marker"
    torch.save({"state_dict": {}, "x": Trap(marker, how)}, tmp_path / "trap.ckpt")
    torch.load(tmp_path / "trap.ckpt", weights_only=False)
    assert marker.exists()


# ---- single-file checkpoints (single process, DDP, LoRA) ------------------------------------------------


@pytest.mark.parametrize("how", ["system", "touch"])
def test_a_trapped_single_file_checkpoint_is_refused_by_every_reader(tmp_path: Path, how: How) -> None:
    marker, path = tmp_path / "marker", tmp_path / "epoch=0-step=1.ckpt"
    ckpt = genuine_checkpoint()
    ckpt["hyper_parameters"]["echo"] = Trap(marker, how)  # deep inside an otherwise genuine checkpoint
    torch.save(ckpt, path)
    with pytest.raises(CheckpointRefused) as err:
        load_checkpoint_file(path)
    assert_refused(err, path, how)
    with pytest.raises(CheckpointRefused) as err:
        SafeCheckpointIO().load_checkpoint(path)  # single device and DDP: weights_only None, the default
    assert_refused(err, path, how)
    with pytest.raises(CheckpointRefused):
        SafeCheckpointIO().load_checkpoint(path, weights_only=True)
    with pytest.raises(CheckpointRefused):  # a rollout buffer's reader allows no config types either
        load_checkpoint_file(path, allowed=ROLLOUT_BUFFER_TYPES)
    assert not marker.exists()


def test_a_genuine_checkpoint_loads_exactly_with_its_config_types(tmp_path: Path) -> None:
    torch.save(genuine_checkpoint(), tmp_path / "a.ckpt")
    assert_same(load_checkpoint_file(tmp_path / "a.ckpt"), genuine_checkpoint())
    assert_same(SafeCheckpointIO().load_checkpoint(tmp_path / "a.ckpt"), genuine_checkpoint())
    with pytest.raises(FileNotFoundError):
        SafeCheckpointIO().load_checkpoint(tmp_path / "missing.ckpt")


def test_the_allowlist_is_exactly_the_config_types(tmp_path: Path) -> None:
    assert set(CHECKPOINT_TYPES) == {AlgorithmOverrides, EchoConfig, EvalConfig, LoraConfig}
    from echorl_lightning.algorithms.presets import resolve_method

    # a project dataclass a checkpoint never holds (the resolved method) is refused like any other global
    torch.save({"hyper_parameters": {"method": resolve_method("grpo")}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointRefused, match="MethodConfig"):
        load_checkpoint_file(tmp_path / "other.ckpt")


def test_a_lora_adapter_checkpoint_genuine_and_trapped(tmp_path: Path) -> None:
    """A LoRA run checkpoints only the adapters and its ``LoraConfig`` (exact resume: test_lora_training)."""
    adapters = {
        f"policy.base_model.model.layers.0.q_proj.lora_{ab}.default.weight": torch.randn(4, 8) for ab in "AB"
    }
    ckpt = {"state_dict": adapters, "hyper_parameters": {"lora": LoraConfig(r=4, alpha=8.0)}}
    torch.save(ckpt, tmp_path / "lora.ckpt")
    assert_same(load_checkpoint_file(tmp_path / "lora.ckpt"), ckpt)
    marker = tmp_path / "marker"
    torch.save({**ckpt, "state_dict": {**adapters, "x": Trap(marker)}}, tmp_path / "trap.ckpt")
    with pytest.raises(CheckpointRefused) as err:
        load_checkpoint_file(tmp_path / "trap.ckpt")
    assert_refused(err, tmp_path / "trap.ckpt", "system")
    assert not marker.exists()


def test_weights_only_false_stays_the_users_explicit_choice(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    torch.save({"x": Trap(marker)}, tmp_path / "trap.ckpt")
    SafeCheckpointIO().load_checkpoint(tmp_path / "trap.ckpt", weights_only=False)  # Lightning's opt-out
    assert marker.exists()


def test_a_trainer_refuses_a_trapped_checkpoint_before_training(tmp_path: Path) -> None:
    from tests.helpers.tiny_fit import cpu_trainer, tiny_policy_and_data

    marker = tmp_path / "marker"
    torch.save({**genuine_checkpoint(), "state_dict": {"x": Trap(marker, "touch")}}, tmp_path / "trap.ckpt")
    module, data = tiny_policy_and_data(num_train=8, num_val=0)
    trainer = cpu_trainer(max_epochs=1, logger=False, plugins=[SafeCheckpointIO()])
    with pytest.raises(CheckpointRefused) as err:
        trainer.fit(module, data, ckpt_path=tmp_path / "trap.ckpt")
    assert_refused(err, tmp_path / "trap.ckpt", "touch")
    assert trainer.global_step == 0 and not marker.exists()


def test_cli_resume_refuses_a_trapped_checkpoint(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    torch.save({**genuine_checkpoint(), "x": Trap(marker)}, tmp_path / "last.ckpt")
    cmd = [
        sys.executable,
        "cli.py",
        "fit",
        "--config",
        "configs/demo.yaml",
        f"--ckpt_path={tmp_path / 'last.ckpt'}",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"cli.py: {tmp_path / 'last.ckpt'}: refused to load: its pickle calls posix.system" in proc.stderr
    assert "Traceback" not in proc.stderr and not marker.exists()


def test_the_cli_gives_every_strategy_a_safe_load_or_refuses_to_resume_with_it() -> None:
    single = L.Trainer(accelerator="cpu", logger=False).strategy
    assert type(single.checkpoint_io) is TorchCheckpointIO  # Lightning's default ...
    assert use_safe_checkpoint_loads(single) is None
    assert isinstance(single.checkpoint_io, SafeCheckpointIO)  # ... replaced
    ddp = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False).strategy
    assert use_safe_checkpoint_loads(ddp) is None and isinstance(ddp.checkpoint_io, SafeCheckpointIO)
    assert use_safe_checkpoint_loads(FSDP2Strategy()) is None  # reads every pickle restricted itself
    problem = use_safe_checkpoint_loads(L.strategies.ModelParallelStrategy())
    assert "ModelParallelStrategy reads checkpoints with its own unrestricted" in str(problem)


# ---- distributed checkpoint folders (FSDP2) -------------------------------------------------------------


def two_layers(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    return model, torch.optim.AdamW(model.parameters(), lr=0.01)


def save_folder(folder: Path, model: nn.Module, optim_state: dict[str, Any], meta: dict[str, Any]) -> None:
    """A folder as Lightning's ModelParallelStrategy writes one: shards of ``state_dict`` and ``optimizer_0``
    (``.metadata`` + ``__0_0.distcp``), and ``meta.pt`` with the rest."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no process group: saving as one process"
        state = {"state_dict": get_model_state_dict(model), "optimizer_0": optim_state}
        dcp.save(state, checkpoint_id=folder)
    torch.save(meta, folder / META_FILE)


@pytest.fixture
def trained(tmp_path: Path) -> tuple[nn.Module, torch.optim.Optimizer]:
    model, optimizer = two_layers(0)
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    return model, optimizer


def load_folder(folder: Path) -> tuple[nn.Module, torch.optim.Optimizer, dict[str, Any]]:
    model, optimizer = two_layers(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meta = load_sharded_checkpoint(folder, model, [optimizer])
    return model, optimizer, meta


def test_a_genuine_distributed_checkpoint_folder_loads_exactly(tmp_path: Path, trained: Any) -> None:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    model, optimizer = trained
    meta = {"global_step": 1, "hyper_parameters": {"echo": EchoConfig(coef=0.1)}}
    save_folder(tmp_path / "ckpt", model, get_optimizer_state_dict(model, optimizer), meta)
    again, again_optimizer, again_meta = load_folder(tmp_path / "ckpt")
    assert_same(again_meta, meta)
    assert_same(again.state_dict(), model.state_dict())
    assert_same(again_optimizer.state_dict(), optimizer.state_dict())  # AdamW moments, step, param groups


@pytest.mark.parametrize("where", [".metadata", "entry", META_FILE])
def test_a_trapped_distributed_checkpoint_folder_is_refused(tmp_path: Path, trained: Any, where: str) -> None:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    model, optimizer = trained
    marker, folder = tmp_path / "marker", tmp_path / "ckpt"
    optim_state = get_optimizer_state_dict(model, optimizer)
    if where == "entry":  # a non-tensor entry of the shards, which torch's planner unpickles unrestricted
        optim_state["param_groups"][0]["lr"] = Trap(marker)
    meta = {"global_step": 1, "x": Trap(marker)} if where == META_FILE else {"global_step": 1}
    save_folder(folder, model, optim_state, meta)
    if where == ".metadata":  # what torch.distributed.checkpoint reads with pickle.load
        metadata = read_distributed_metadata(folder / ".metadata")
        metadata.planner_data = Trap(marker)
        (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(CheckpointRefused) as err:
        load_folder(folder)
    source = {
        ".metadata": folder / ".metadata",
        "entry": f"{folder} (entry optimizer_0.param_groups.0.lr)",
        META_FILE: folder / META_FILE,
    }[where]
    assert_refused(err, source, "system")
    assert not marker.exists()
    if where == ".metadata":  # control: torch's own reader runs the trap
        from torch.distributed.checkpoint import FileSystemReader

        FileSystemReader(folder).read_metadata()
        assert marker.exists()


def test_a_metadata_file_that_is_no_metadata_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".metadata").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointRefused, match="holds a dict, not a distributed checkpoint's Metadata"):
        read_distributed_metadata(tmp_path / ".metadata")


# ---- rollout buffers and model folders ------------------------------------------------------------------


def test_a_rollout_buffer_genuine_and_trapped(tmp_path: Path) -> None:
    from tests.helpers.multiproc_worker import fixed_buffer

    batches = fixed_buffer()
    torch.save(batches, tmp_path / "buffer.pt")
    again = load_checkpoint_file(tmp_path / "buffer.pt", allowed=ROLLOUT_BUFFER_TYPES)
    assert [type(b) for b in again] == [type(b) for b in batches]
    for a, b in zip(again, batches, strict=True):
        assert_same(vars(a), vars(b))
    with pytest.raises(CheckpointRefused, match="RolloutBatch"):  # not a checkpoint's type
        load_checkpoint_file(tmp_path / "buffer.pt")
    marker = tmp_path / "marker"
    torch.save([*batches, Trap(marker, "touch")], tmp_path / "trap.pt")
    with pytest.raises(CheckpointRefused) as err:
        load_checkpoint_file(tmp_path / "trap.pt", allowed=ROLLOUT_BUFFER_TYPES)
    assert_refused(err, tmp_path / "trap.pt", "touch")
    assert not marker.exists()


def test_a_model_folder_with_pickled_bin_weights_is_refused_unread(tmp_path: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL_PATH)
    model.save_pretrained(tmp_path / "safe")  # safetensors: loads
    loaded = load_safetensors_model(tmp_path / "safe")
    assert_same(loaded.state_dict(), model.state_dict())
    marker, folder = tmp_path / "marker", tmp_path / "bin"
    model.config.save_pretrained(folder)
    torch.save({**model.state_dict(), "x": Trap(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointRefused, match="only safetensors model folders are read") as err:
        load_safetensors_model(folder)
    assert str(folder) in str(err.value)
    with pytest.raises(ValueError, match=r"model: cannot load .*only safetensors"):
        load_policy(str(folder), "float32")  # EchoRLModule's model and reference model
    assert not marker.exists()
