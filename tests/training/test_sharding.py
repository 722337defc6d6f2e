"""FSDP2 through Lightning (``echorl_lightning.training.sharding``): the helpers on one process, a real 2-process
CPU run through ``cli.py`` (rollouts from the HF engine under FSDP2, gradient checkpointing and clipping,
Lightning's distributed checkpoint, the streamed HF export), and GPU checks marked ``gpu``.

The 2-process equality of the update (DDP and FSDP2 against 1 process) and the resume from a sharded
checkpoint are in ``tests/e2e/test_multiprocess_equality.py``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from echorl_lightning.tiny import TINY_MODEL_PATH
from echorl_lightning.training.checkpoint_safety import load_checkpoint_file
from echorl_lightning.training.sharding import (
    FSDP2Strategy,
    ShardingConfig,
    call_through_root,
    is_fsdp2,
    plan_file_shards,
    save_hf_streamed,
    sharding_config,
    total_grad_norm,
)
from tests.helpers.paths import ROOT


def test_plan_file_shards_fills_files_in_order() -> None:
    # max 8 bytes: 4 -> file 0 (4); 4 -> file 0 (8, full); 10 -> file 1 alone (larger than a file);
    # 1 -> 10 + 1 > 8: file 2 (1); 1 -> file 2 (2)
    assert plan_file_shards([4, 4, 10, 1, 1], 8) == [0, 0, 1, 2, 2]
    assert plan_file_shards([], 8) == []


@pytest.mark.parametrize("tied", [False, True])
def test_streamed_export_of_an_unsharded_model_loads_exactly(tmp_path: Path, tied: bool) -> None:
    config = Qwen2Config(
        vocab_size=258,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config)
    # 20 KiB files: the embedding (258 x 32 x 4 = 33 KiB) alone, then layers: several files and an index
    save_hf_streamed(model, tmp_path, is_writer=True, max_shard_bytes=20 * 1024)
    files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert len(files) > 2 and (tmp_path / "model.safetensors.index.json").is_file()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert ("lm_head.weight" in index["weight_map"]) is not tied  # a tied head is written once
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    want = model.state_dict()
    assert loaded.state_dict().keys() == want.keys()
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, want[name]), name
    if tied:
        assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


def test_streamed_export_writes_nothing_on_other_ranks(tmp_path: Path, tiny_random_model) -> None:
    save_hf_streamed(tiny_random_model, tmp_path / "out", is_writer=False)
    assert not (tmp_path / "out").exists()


def test_total_grad_norm_of_plain_tensors() -> None:
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    assert total_grad_norm([a, b]) is None
    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([12.0])
    assert float(total_grad_norm([a, b])) == pytest.approx(13.0, abs=1e-6)  # sqrt(9 + 16 + 144)


def test_call_through_root_on_an_unsharded_model_just_calls(tiny_random_model) -> None:
    assert not is_fsdp2(tiny_random_model)
    assert call_through_root(tiny_random_model, lambda: 7) == 7
    assert "forward" not in tiny_random_model.__dict__


def test_sharding_config_defaults_and_strategy_settings() -> None:
    assert sharding_config(None) == ShardingConfig()
    strategy = FSDP2Strategy(param_dtype="bfloat16", reduce_dtype="float32", reshard_after_forward=False)
    assert sharding_config(strategy) == ShardingConfig("bfloat16", "float32", False)
    cpu, cuda = ShardingConfig().mixed_precision("cpu"), ShardingConfig().mixed_precision("cuda")
    assert (cpu.param_dtype, cpu.reduce_dtype) == (torch.float32, torch.float32)
    assert (cuda.param_dtype, cuda.reduce_dtype) == (torch.bfloat16, torch.float32)


def test_fsdp1_strategy_refuses_a_cpu_accelerator() -> None:
    """Why the project shards with FSDP2 (ModelParallelStrategy) only: Lightning's FSDPStrategy needs CUDA."""
    with pytest.raises(ValueError, match="(?i)fsdp"):
        L.Trainer(accelerator="cpu", devices=2, strategy="fsdp", logger=False)


# ---- 2 CPU processes through cli.py -------------------------------------------------------------------


@pytest.mark.slow  # two interpreters, rollouts and one update: about 2 minutes on 2 busy cores
def test_fsdp2_fit_through_the_cli_with_rollouts_checkpoint_and_export(tmp_path: Path) -> None:
    export = tmp_path / "export"
    callbacks = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {
                "dirpath": str(tmp_path / "checkpoints"),
                "every_n_epochs": 1,
                "save_on_train_epoch_end": True,
                "save_top_k": 1,
            },
        },
        {
            "class_path": "echorl_lightning.callbacks.export_hf.ExportHFModel",
            "init_args": {"output_dir": str(export)},
        },
    ]
    strategy = {"class_path": "echorl_lightning.training.sharding.FSDP2Strategy"}
    args = [
        "fit",
        "--config",
        "configs/demo.yaml",
        "--rollout.prompts_per_epoch=8",
        "--rollout.group_size=4",
        "--rollout.max_new_tokens=32",
        "--trainer.max_epochs=1",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--trainer.callbacks={json.dumps(callbacks)}",
        "--trainer.devices=2",
        f"--trainer.strategy={json.dumps(strategy)}",
        "--trainer.gradient_clip_val=1.0",
        "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0",
        "--data.init_args.num_val=4",
        "--data.init_args.num_train=64",
        "--model.init_args.gradient_checkpointing=true",
        "--model.init_args.lr=1e-3",
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "cli.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"

    # the CLI links last.ckpt to the newest checkpoint (for --ckpt_path last)
    (ckpt,) = [p for p in (tmp_path / "checkpoints").glob("*.ckpt") if not p.is_symlink()]
    assert ckpt.is_dir() and len(list(ckpt.glob("*.distcp"))) == 2  # one shard file per rank
    meta = load_checkpoint_file(ckpt / "meta.pt")
    assert meta["global_step"] == 1
    loaded = AutoModelForCausalLM.from_pretrained(export).state_dict()
    start = AutoModelForCausalLM.from_pretrained(TINY_MODEL_PATH).state_dict()
    assert loaded.keys() == start.keys()
    moved = [k for k in start if not torch.equal(loaded[k], start[k])]
    assert len(moved) > len(start) // 2, moved  # the update is in the export


# ---- GPU ------------------------------------------------------------------------------------------------

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_gpu
def test_gpu_fsdp2_update_on_one_rank_equals_the_unsharded_update(tmp_path: Path) -> None:
    """FSDP2Strategy on one CUDA device (nccl, mesh of 1, fp32 params) against the plain single-device update
    of the same fixed buffer (tests/helpers/multiproc_worker.py): the same weights within 1e-5."""
    from tests.helpers.multiproc_worker import fixed_buffer, worker

    torch.save(fixed_buffer(), tmp_path / "buffer.pt")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    job = {
        "strategy": "fsdp2",
        "buffer": str(tmp_path / "buffer.pt"),
        "out": str(tmp_path),
        "accelerator": "cuda",
        "plain": True,
    }
    torch.multiprocessing.spawn(worker, args=(1, port, job), nprocs=1, join=True)
    sharded = AutoModelForCausalLM.from_pretrained(tmp_path / "fit" / "export").state_dict()
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "plain" / "export").state_dict()
    start = AutoModelForCausalLM.from_pretrained(TINY_MODEL_PATH).state_dict()
    assert max(float((plain[k] - start[k]).abs().max()) for k in start) > 5e-4  # it trained
    assert max(float((sharded[k] - plain[k]).abs().max()) for k in plain) < 1e-5


@pytest.mark.gpu
@needs_gpu
def test_gpu_hidden_path_never_holds_the_vocabulary_logits() -> None:
    """At Qwen2.5's V = 151,936, 4 rows x 1,024 response tokens: the full bf16 logits alone are 4 x 1,024 x
    151,936 x 2 B = 1.16 GiB (2.3 GiB in fp32); with chunks of 128 rows (74 MiB in fp32) the hidden path's
    forward + backward peak above the model (the embedding's fp32 gradient, 297 MiB, included) stays under
    half of the fp32 logits."""
    from echorl_lightning.training.forward import policy_response_logprobs

    config = Qwen2Config(
        vocab_size=151_936,
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(config).cuda()
    n, p, t = 4, 16, 1024
    ids = torch.randint(0, config.vocab_size, (n, p + t), device="cuda")
    mask = torch.ones_like(ids)
    positions = mask.cumsum(-1) - 1
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logp, _ = policy_response_logprobs(model, ids, mask, positions, p, ids[:, p:], 1.0, chunk_size=128)
    logp.sum().backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    fp32_logits = n * t * config.vocab_size * 4
    assert extra < fp32_logits / 2, f"peak {extra / 2**30:.2f} GiB above the model"
