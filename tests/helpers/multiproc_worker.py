"""Helpers of the multi-process equality tests: a fixed rollout buffer, one-process and 2-process fits.

:func:`fixed_buffer` builds one global rollout batch of N rows (prompts, responses, old and reference
log-probs, advantages, EchoClips) from the embedded tiny model, split into two halves stamped with the
counts of the whole optimizer step, as the rollout callback's all-reduce would stamp them. A 1-process run
trains on both halves as 2 accumulated micro-batches; a 2-process run gives half ``r`` to rank ``r``: the
same global batch, so the update must give the same weights.

:func:`worker` is the ``torch.multiprocessing.spawn`` target: it sets the variables a launcher would set
(``LOCAL_RANK``, ``WORLD_SIZE``, ...), so Lightning joins the spawned processes instead of launching its own,
and runs the fits of one job (several Trainers may run in the same processes, e.g. fit then resume). Every
Trainer reads checkpoints with ``SafeCheckpointIO`` (FSDP2Strategy reads its folders restricted itself), and a
job may also try to resume from a booby-trapped checkpoint, which every rank must refuse.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from echorl_lightning.callbacks.export_hf import ExportHFModel
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer

from echorl_lightning.module import EchoRLModule
from echorl_lightning.rollout.batch import RolloutBatch, pad_rollouts
from echorl_lightning.tiny import TINY_MODEL_PATH
from echorl_lightning.training.checkpoint_safety import (
    ROLLOUT_BUFFER_TYPES,
    CheckpointRefused,
    SafeCheckpointIO,
    load_checkpoint_file,
)
from echorl_lightning.training.config import AlgorithmOverrides, EchoConfig
from echorl_lightning.training.forward import policy_response_logprobs
from echorl_lightning.training.sharding import FSDP2Strategy

TEMPERATURE = 0.9
LR = 1e-3


def fixed_buffer(n_rows: int = 8, seed: int = 0) -> list[RolloutBatch]:
    """Two micro-batches (rows ``[0, n/2)`` and ``[n/2, n)``) of one optimizer step, global counts stamped."""
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_PATH)
    g = torch.Generator().manual_seed(seed)
    prompts, responses = [], []
    for i in range(n_rows):
        a, b, c = (int(x) for x in torch.randint(1, 10, (3,), generator=g))
        prompts.append(tokenizer(f"Q: {a}+{b}*{c}\n", add_special_tokens=False)["input_ids"])
        length = int(torch.randint(3, 15, (1,), generator=g))
        body = torch.randint(32, 127, (length,), generator=g).tolist()
        responses.append(body + ([tokenizer.eos_token_id] if i % 3 else []))  # some truncated
    tokens = pad_rollouts(prompts, responses, pad_id=tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL_PATH, dtype=torch.float32).eval()
    with torch.no_grad():
        logp, _ = policy_response_logprobs(
            model,
            tokens.input_ids,
            tokens.attention_mask,
            tokens.position_ids,
            tokens.prompt_len,
            tokens.responses,
            TEMPERATURE,
        )
    mask = tokens.response_mask  # [N, T]
    clip_mask = torch.zeros_like(mask, dtype=torch.bool)
    clip_mask[0, :3] = clip_mask[5, :2] = True  # two EchoClips (prefixes)
    pg_mask = torch.ones(n_rows)
    pg_mask[0] = 0.0  # a row kept only for its clip
    batch = RolloutBatch(
        **{name: getattr(tokens, name) for name in tokens.__dataclass_fields__},
        old_logp=(logp + 0.3 * torch.randn(logp.shape, generator=g)) * mask,  # ratios off 1, some clipped
        advantages=torch.randn(n_rows, generator=g),
        pg_mask=pg_mask,
        clip_mask=clip_mask,
        off_policy=torch.zeros(n_rows, dtype=torch.bool),
        temperature=TEMPERATURE,
        max_response_len=15,
        group_size=2,
        num_tokens=(mask * pg_mask[:, None]).sum(),
        num_seqs=pg_mask.sum(),
        num_clips=clip_mask.any(-1).float().sum(),
        ref_logp=(logp - 0.2 * torch.randn(logp.shape, generator=g)) * mask,
    )
    halves = torch.arange(n_rows).chunk(2)
    out = []
    for rows in halves:
        part = batch.rows(rows)
        out.append(part.trimmed(int(part.response_mask.sum(-1).max())))
    return out


def make_module() -> EchoRLModule:
    """GRPO + KL (k3, a sharded reference model) + EchoRL (coef 0.1, so its gradient counts)."""
    module = EchoRLModule(
        model=TINY_MODEL_PATH,
        lr=LR,
        method="grpo",
        algorithm=AlgorithmOverrides(kl_coef=0.05),
        echo=EchoConfig(coef=0.1),
    )
    return module


def fit(
    batches: list[RolloutBatch],
    out: Path,
    *,
    strategy: Any = "auto",
    devices: int = 1,
    epochs: int = 1,
    checkpoint_dir: Path | None = None,
    ckpt_path: str | None = None,
    accelerator: str = "cpu",
) -> EchoRLModule:
    """Train on ``batches`` (this rank's micro-batches; accumulated into one optimizer step per epoch), export
    the policy to ``out/export`` and write rank 0's last logged metrics to ``out/metrics.json``."""
    module = make_module()
    callbacks: list[L.Callback] = [ExportHFModel(str(out / "export"))]
    if checkpoint_dir is not None:
        callbacks.append(
            L.callbacks.ModelCheckpoint(
                dirpath=checkpoint_dir, save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True
            )
        )
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        precision="32-true",
        max_epochs=epochs,
        accumulate_grad_batches=len(batches),
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=checkpoint_dir is not None,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        plugins=[SafeCheckpointIO()],
    )
    trainer.fit(module, DataLoader(batches, batch_size=None), ckpt_path=ckpt_path)
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        embed = module.policy.get_input_embeddings().weight
        metrics["embed_local_rows"] = float(getattr(embed, "to_local", lambda: embed)().shape[0])
        metrics["global_step"] = float(trainer.global_step)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    return module


def _strategy(name: str) -> Any:
    if name == "ddp":
        return L.strategies.DDPStrategy()
    return FSDP2Strategy(data_parallel_size=2, param_dtype="float32")  # a ModelParallelStrategy


def worker(rank: int, world: int, port: int, job: dict[str, Any]) -> None:
    """One rank of a job: ``job = {"strategy": "ddp" | "fsdp2", "buffer": path, "out": dir, "resume": bool,
    "accelerator": "cpu" | "cuda", "plain": bool, "trap": path}``.

    Runs one epoch (one update) on this rank's half of the buffer (the whole buffer on 1 process) into
    ``out/fit``; with ``resume``, saves a (distributed) checkpoint there and then, in a fresh Trainer and
    module, resumes from it for a second epoch into ``out/resumed``; with ``plain``, also runs the update
    unsharded on one device into ``out/plain``; with ``trap``, last, tries to resume from that booby-trapped
    checkpoint and writes the refusal to ``out/refused_rank<rank>.txt`` (it raises if nothing is refused).
    """
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        NODE_RANK="0",
        HF_HUB_OFFLINE="1",
    )
    torch.set_num_threads(1)
    batches = load_checkpoint_file(job["buffer"], allowed=ROLLOUT_BUFFER_TYPES)
    out = Path(job["out"])
    mine = [batches[rank]] if world > 1 else batches
    accelerator = job.get("accelerator", "cpu")
    ckpt_dir = out / "checkpoints" if job.get("resume") else None
    strategy = _strategy(job["strategy"])
    fit(mine, out / "fit", strategy=strategy, devices=world, checkpoint_dir=ckpt_dir, accelerator=accelerator)
    if job.get("plain"):
        fit(mine, out / "plain", devices=1, accelerator=accelerator)
    if ckpt_dir is not None:
        (ckpt,) = sorted(ckpt_dir.glob("*.ckpt"))
        fit(
            mine,
            out / "resumed",
            strategy=_strategy(job["strategy"]),
            devices=world,
            epochs=2,
            ckpt_path=str(ckpt),
        )
    if job.get("trap"):
        strategy = _strategy(job["strategy"])
        try:
            fit(mine, out / "trapped", strategy=strategy, devices=world, ckpt_path=job["trap"])
        except CheckpointRefused as err:
            (out / f"refused_rank{rank}.txt").write_text(str(err))
        else:
            raise AssertionError(f"rank {rank}: resumed from the trapped {job['trap']}")
