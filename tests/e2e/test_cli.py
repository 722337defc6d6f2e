"""End to end through ``cli.py``: the embedded tiny model, a real Trainer, real rollouts, TensorBoard.

Each test runs ``python cli.py`` in a subprocess, exactly as a user would, on shortened versions of the
shipped configs (a few prompts, short epochs). Marked ``slow``: together they take a few CPU-minutes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from echorl_lightning.tiny import TINY_MODEL_PATH
from echorl_lightning.training.checkpoint_safety import load_checkpoint_file
from tests.helpers.cli_runs import run_cli, scalars
from tests.helpers.paths import ROOT

pytestmark = pytest.mark.slow

CKPT = (
    '{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"dirpath": "%(d)s", '
    '"every_n_epochs": 1, "save_on_train_epoch_end": true, "save_top_k": 1, "save_last": "link"}}'
)


def rollout_args(prompts: int) -> list[str]:
    """The rollout group at test sizes: ``prompts`` x 4 rollouts of <= 48 tokens, one optimizer step."""
    return [
        f"--rollout.prompts_per_epoch={prompts}",
        "--rollout.group_size=4",
        "--rollout.max_new_tokens=48",
        "--rollout.num_minibatches=1",
        "--rollout.seed=0",
    ]


def small_demo_args(out: Path, epochs: int, prompts: int = 8, extra_callbacks: str = "") -> list[str]:
    callbacks = f"[{CKPT % {'d': out / 'checkpoints'}}{extra_callbacks}]"
    return [
        "--config",
        "configs/demo.yaml",  # first: options after it override the config's values
        *rollout_args(prompts),
        f"--trainer.max_epochs={epochs}",
        f"--trainer.default_root_dir={out}",
        f"--trainer.logger.init_args.save_dir={out}",
        f"--trainer.callbacks={callbacks}",
        "--trainer.check_val_every_n_epoch=1",
        "--data.init_args.num_val=8",
        "--data.init_args.num_train=256",
        "--model.init_args.eval.max_new_tokens=48",
    ]


def test_fit_two_epochs_learns_logs_and_resumes(tmp_path: Path) -> None:
    run_cli("fit", *small_demo_args(tmp_path, epochs=2))
    logged = scalars(tmp_path)
    for tag in (
        "echo/loss",
        "echo/num_clips",
        "rollout/frac_all_success",
        "rollout/frac_all_fail",
        "reward/mean",
        "actor/pg_loss",
        "actor/clipfrac",
        "actor/grad_norm",
        "entropy/token_mean",
        "echo/clip_tokens",
        "echo/peak_step_entropy",
        "perf/rollout_s",
        "perf/train_s",
        "val/accuracy",
    ):
        assert tag in logged, f"{tag} not logged; have {sorted(logged)}"
    for tag in ("actor/pg_loss", "echo/loss", "actor/grad_norm"):
        assert all(math.isfinite(v) for _, v in logged[tag]), tag
    # two rollout batches, one optimizer step each
    assert len(logged["rollout/frac_all_success"]) == 2

    ckpt = load_checkpoint_file(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu")
    assert ckpt["global_step"] == 2
    trained = {k.removeprefix("policy."): v for k, v in ckpt["state_dict"].items() if k.startswith("policy.")}
    shipped = load_file(str(Path(TINY_MODEL_PATH) / "model.safetensors"))
    changed = [k for k, v in shipped.items() if not torch.equal(v, trained[k])]
    assert len(changed) > len(shipped) // 2, f"only {len(changed)} of {len(shipped)} tensors changed"

    # resume: one more epoch from the checkpoint continues the step count
    run_cli(
        "fit", *small_demo_args(tmp_path, epochs=3), f"--ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"
    )
    resumed = load_checkpoint_file(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu")
    assert resumed["global_step"] == 3


def test_ddp_two_cpu_processes_keep_groups_whole(tmp_path: Path) -> None:
    probe = f', {{"class_path": "tests.helpers.group_probe.GroupProbe", "init_args": {{"out_dir": "{tmp_path / "probe"}"}}}}'
    run_cli(
        "fit",
        *small_demo_args(tmp_path, epochs=1, prompts=8, extra_callbacks=probe),
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.num_sanity_val_steps=0",
        timeout=900,
    )
    per_rank = [json.loads((tmp_path / "probe" / f"epoch0_rank{r}.json").read_text()) for r in (0, 1)]
    for rows in per_rank:
        assert sum(rows.values()) == 4 * 4  # 8 prompts / 2 ranks x G=4
        assert all(count % 4 == 0 for count in rows.values()), rows  # whole groups (G=4) only
    assert not set(per_rank[0]) & set(per_rank[1]), "a prompt was trained on two ranks"
    assert "actor/pg_loss" in scalars(tmp_path)


def test_qwen_config_runs_one_epoch_with_local_overrides(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    rows = [
        {"prompt": [{"role": "user", "content": f"Q: {a}+{b}"}], "reward_model": {"ground_truth": str(a + b)}}
        for a, b in [(3, 4), (12, 5), (7, 7), (20, 1), (9, 8), (6, 2), (11, 11), (4, 5)]
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    run_cli(
        "fit",
        "--config",
        "configs/qwen_grpo_echo.yaml",
        f"--model.init_args.model={TINY_MODEL_PATH}",
        "--model.init_args.engine=echorl_lightning.rollout.hf_engine.HFGenerateEngine",
        "--model.init_args.gradient_checkpointing=false",
        "--model.init_args.eval.max_new_tokens=32",
        f"--data.init_args.path={data}",
        "--data.init_args.eval.sets=[]",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.strategy=auto",
        "--trainer.precision=32-true",
        "--trainer.max_epochs=1",
        "--trainer.accumulate_grad_batches=2",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--trainer.callbacks.init_args.dirpath={tmp_path / 'checkpoints'}",
        *rollout_args(4),
    )
    logged = scalars(tmp_path)
    assert [s for s, _ in logged["actor/pg_loss"]] == [0]  # 2 accumulated micro-batches, 1 optimizer step
    assert "reward/mean" in logged


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_config_parses(config: str) -> None:
    proc = run_cli("fit", "--config", f"configs/{config}", "--print_config", timeout=300)
    assert "class_path" in proc.stdout
