"""Seeded short fits through ``cli.py``, recorded so that two checkouts can be compared for behaviour.

A refactor that must not change behaviour is checked by running this script on the code before and after it
(each on its own checkout, with its own shipped configs) and comparing the two records::

    HF_HUB_OFFLINE=1 python scripts/behaviour_snapshot.py run --out /tmp/before      # on the old checkout
    HF_HUB_OFFLINE=1 python scripts/behaviour_snapshot.py run --out /tmp/after       # on the new checkout
    python scripts/behaviour_snapshot.py compare /tmp/before /tmp/after              # a markdown table

Each variant is one of the shipped configs with a few settings changed (fewer prompts, shorter responses,
three epochs, a checkpoint after every epoch in the record's folder). A record holds, per variant, the final
weights (``weights.pt``) and every logged scalar (``scalars.json``, tag -> [(step, value)]); timing tags
(throughput, durations, ETA) are left out since they differ between any two runs.
``--variants a,b`` runs only those; ``--python`` runs the fits with another interpreter (the vLLM variant
needs one with vLLM installed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

SHORT = {
    "rollout": {"prompts_per_epoch": 8, "group_size": 4, "max_new_tokens": 32, "logprob_batch_size": 64},
    "trainer": {"max_epochs": 3, "check_val_every_n_epoch": 3, "limit_val_batches": 1},
}
VLLM_ENGINE = {"class_path": "echorl_lightning.rollout.vllm_engine.VLLMEngine"}

# name -> (config file, {dotted key: value}); keys under model.init_args / data.init_args / rollout / trainer.
VARIANTS: dict[str, tuple[str, dict]] = {
    "demo_grpo_echo": ("configs/demo.yaml", {}),
    "grpo_no_echo": ("configs/demo.yaml", {"model.init_args.echo.enabled": False}),
    "dr_grpo_echo_success": (
        "configs/demo.yaml",
        {"model.init_args.method": "dr_grpo", "model.init_args.echo.apply_to": "success"},
    ),
    "dapo": (
        "configs/demo.yaml",
        {"model.init_args.method": "dapo", "model.init_args.algorithm": {"overlong_buffer": 16}},
    ),
    "rloo_kl_ppo2": (
        "configs/demo.yaml",
        {
            "model.init_args.method": "rloo",
            "model.init_args.algorithm": {"kl_coef": 0.01},
            "rollout.ppo_epochs": 2,
            "rollout.num_minibatches": 2,
        },
    ),
    "reinforce_pp": ("configs/demo.yaml", {"model.init_args.method": "reinforce_pp"}),
    "gspo": ("configs/demo.yaml", {"model.init_args.method": "gspo"}),
    "luffy": ("configs/demo.yaml", {"model.init_args.method": "luffy"}),
    "lora": (
        "configs/demo.yaml",
        {"model.init_args.lora": {"r": 4, "alpha": 8.0}, "model.init_args.lr": 1e-3},
    ),
    "countdown": ("configs/countdown_demo.yaml", {"rollout.max_new_tokens": 96}),
    "vllm_engine": ("configs/demo.yaml", {"model.init_args.engine": VLLM_ENGINE}),
}

TIMING = re.compile(r"(^perf/|per_s|tokens_s|seconds|_time|eta|duration|/s$|_sec)")


def _set(config: dict, dotted: str, value: object) -> None:
    *parents, last = dotted.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value


def variant_config(name: str, out: Path) -> Path:
    """Write the YAML of variant ``name`` (its record folder ``out``) and return its path."""
    path, changes = VARIANTS[name]
    config = yaml.safe_load((ROOT / path).read_text())
    for group, values in SHORT.items():
        for key, value in values.items():
            _set(config, f"{group}.{key}", value)
    for key, value in changes.items():
        _set(config, key, value)
    trainer = config["trainer"]
    trainer["default_root_dir"] = str(out)
    trainer["logger"]["init_args"]["save_dir"] = str(out)
    kept = [c for c in trainer.get("callbacks", []) if not c["class_path"].endswith("ModelCheckpoint")]
    kept.append(
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {
                "dirpath": str(out / "checkpoints"),
                "save_last": True,
                "save_on_train_epoch_end": True,
            },
        }
    )
    trainer["callbacks"] = kept
    file = out / "config.yaml"
    file.write_text(yaml.safe_dump(config, sort_keys=False))
    return file


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every non-timing scalar logged under ``folder`` (TensorBoard event files), tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(folder.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            if not TIMING.search(tag):
                scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return scalars


def run(args: argparse.Namespace) -> None:
    import torch

    names = args.variants.split(",") if args.variants else list(VARIANTS)
    for name in names:
        out = Path(args.out).resolve() / name
        out.mkdir(parents=True, exist_ok=True)
        config = variant_config(name, out)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        start = time.perf_counter()
        proc = subprocess.run(
            [args.python, "cli.py", "fit", "--config", str(config)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        (out / "log.txt").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            print(f"{name}: FAILED (exit {proc.returncode}), see {out / 'log.txt'}")
            continue
        ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        torch.save({k: v for k, v in ckpt["state_dict"].items()}, out / "weights.pt")
        (out / "scalars.json").write_text(json.dumps(read_scalars(out), indent=0))
        print(f"{name}: done in {time.perf_counter() - start:.0f} s")


def compare(args: argparse.Namespace) -> None:
    import torch

    before, after = Path(args.before), Path(args.after)
    print("| variant | tensors | max abs weight diff | scalar tags | scalar points | points that differ |")
    print("|---|---|---|---|---|---|")
    for name in VARIANTS:
        a, b = before / name, after / name
        if not (a / "weights.pt").exists() or not (b / "weights.pt").exists():
            print(f"| {name} | missing | | | | |")
            continue
        wa, wb = torch.load(a / "weights.pt"), torch.load(b / "weights.pt")
        if wa.keys() != wb.keys():
            diff = f"key sets differ: {sorted(wa.keys() ^ wb.keys())[:4]}"
        else:
            diff = f"{max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa):.3g}"
        sa, sb = json.loads((a / "scalars.json").read_text()), json.loads((b / "scalars.json").read_text())
        points = sum(len(v) for v in sa.values())
        differ = sum(
            1
            for tag in sa.keys() | sb.keys()
            for p, q in zip(sa.get(tag, []), sb.get(tag, []), strict=False)
            if p != q
        ) + sum(abs(len(sa.get(t, [])) - len(sb.get(t, []))) for t in sa.keys() | sb.keys())
        tags = (
            f"{len(sa)}"
            if sa.keys() == sb.keys()
            else f"{len(sa)} vs {len(sb)}: {sorted(sa.keys() ^ sb.keys())}"
        )
        print(f"| {name} | {len(wa)} | {diff} | {tags} | {points} | {differ} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run")
    p_run.add_argument("--out", required=True)
    p_run.add_argument("--variants", default="")
    p_run.add_argument("--python", default=sys.executable)
    p_cmp = sub.add_parser("compare")
    p_cmp.add_argument("before")
    p_cmp.add_argument("after")
    args = parser.parse_args()
    run(args) if args.command == "run" else compare(args)


if __name__ == "__main__":
    main()
