"""EchoRL late in training: does its effect grow with the share of advantage-degenerated (all-success) groups?

The paper's argument is about time: as training goes on, more groups succeed G times out of G, their
advantages vanish, and EchoRL recovers signal from them. This harness tests that where it should show:

1. **The base run.** One ``cli.py fit`` of ``experiments/configs/late_training.yaml``: GRPO without EchoRL,
   trained long, its policy exported every few steps (``ExportHFModel(every_n_epochs=...)``). Its curve
   (all-success fraction, gradient norm, held-out accuracy against steps) is the first table and plot.
2. **Branch points.** For each target all-success fraction (0.25, 0.45, 0.6), the first export whose
   all-success fraction (the mean over the ``SMOOTH`` rollout batches around it) reaches the target; when none
   does, the highest one left (marked "not reached").
3. **Branches.** From each point's export, ``--seeds`` seeds of GRPO, GRPO + EchoRL at the paper's lambda
   (0.001) and at a calibrated lambda (the one whose echo gradient is ``--share`` of the policy gradient at the
   middle point, measured by ``experiments/echo_gradient_share.py``), each continued ``--branch-steps`` steps
   with the same rollouts per step, a fresh AdamW state and the base run's lr; at the highest point also the
   calibrated arm with clips from rollouts whose every step the task's checker accepts
   (``echo.valid_steps_only``). Branches run through ``experiments/echo_vs_base.py`` (its runs, reuse and
   shared evaluation before training).
4. **The report** (``experiments/results/late_training.md`` and ``.png``): per branch point, EchoRL - GRPO
   paired by seed on held-out accuracy (id, ood) and on step correctness, mean +- std and the 95% interval;
   the plot draws the effect against the all-success fraction.

    python experiments/late_training.py            # the study (5 seeds; measured in the report's header)
    python experiments/late_training.py --quick    # the same pipeline at a toy budget, a few minutes
    python experiments/late_training.py --report-only   # rebuild the report from finished runs

Finished runs are reused (the base run by its config's hash, branches by echo_vs_base's), so an interrupted
study resumes. ``--quick`` runs go to ``runs/late_training/quick`` and write ``late_training_quick.*``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from experiments import echo_vs_base  # noqa: E402
from experiments.late_training_report import write_report  # noqa: E402
from experiments.report import commit_id  # noqa: E402
from experiments.scalars import read_scalars  # noqa: E402

BASE_CONFIG = REPO / "experiments/configs/late_training.yaml"
TARGETS = (0.25, 0.45, 0.6)
SMOOTH = 10  # rollout batches averaged around an export for its all-success fraction
PAPER_COEF = 0.001
QUICK = {"base_steps": 4, "export_every": 2, "branch_steps": 2, "prompts": 16, "num_val": 16, "seeds": [0]}


# ---- the base run ----------------------------------------------------------------------------------------
def base_config(args: argparse.Namespace, run_dir: Path) -> dict:
    """The base config with the run's paths and the budget overrides."""
    config = yaml.safe_load(Path(args.config).read_text())
    trainer, rollout = config["trainer"], config["rollout"]
    trainer["default_root_dir"] = str(run_dir)
    trainer["logger"]["init_args"].update(save_dir=str(run_dir), name="tb", version=0)
    exports = [c for c in trainer.get("callbacks") or [] if c["class_path"].endswith("ExportHFModel")]
    if len(exports) != 1:
        raise ValueError(
            f"{args.config}: trainer.callbacks needs exactly one ExportHFModel (the branch points)"
        )
    exports[0]["init_args"]["output_dir"] = str(run_dir / "export")
    if args.export_every is not None:
        exports[0]["init_args"]["every_n_epochs"] = args.export_every
    if args.base_steps is not None:
        trainer["max_epochs"] = args.base_steps
        trainer["check_val_every_n_epoch"] = min(trainer["check_val_every_n_epoch"], args.base_steps)
    if args.prompts is not None:
        rollout["prompts_per_epoch"] = args.prompts
    if args.num_val is not None:
        config["data"]["init_args"]["num_val"] = args.num_val
    return config


def export_every(config: dict) -> int:
    (export,) = [c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("ExportHFModel")]
    return int(export["init_args"]["every_n_epochs"])


def run_base(args: argparse.Namespace) -> dict:
    """Train the base run unless a finished one with the same config exists; its record."""
    run_dir = Path(args.runs_dir).resolve() / "base"
    config = base_config(args, run_dir)
    text = yaml.safe_dump(config, sort_keys=False)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    done = run_dir / "scalars.json"
    if done.exists() and json.loads(done.read_text()).get("config_sha") == digest:
        print(f"[skip] base run: finished in {run_dir}", flush=True)
        return json.loads(done.read_text())
    if args.report_only:
        raise SystemExit(f"no finished base run in {run_dir}; run without --report-only")
    print(f"[run ] base run ({config['trainer']['max_epochs']} steps) -> {run_dir}", flush=True)
    returncode, wall = echo_vs_base._cli("fit", run_dir, text, args)
    if returncode != 0:
        raise SystemExit(f"the base run failed (exit {returncode}); see {run_dir / 'log.txt'}")
    record = {"config_sha": digest, "commit": commit_id(), "wall_s": wall, "config": config}
    record["scalars"] = read_scalars(run_dir / "tb")
    done.write_text(json.dumps(record))
    print(f"[done] base run in {wall / 60:.1f} min", flush=True)
    return record


def export_curve(record: dict) -> list[dict]:
    """One row per export (and the starting model, step 0): its all-success fraction and gradient norm, the
    means over the ``SMOOTH`` rollout batches around it (batches ``k - SMOOTH/2 .. k + SMOOTH/2 - 1``, the
    first batches for step 0), and the held-out accuracy logged at that step, if any."""
    config, scalars = record["config"], record["scalars"]
    every, steps = export_every(config), config["trainer"]["max_epochs"]
    frac = dict((int(s), v) for s, v in scalars["rollout/frac_all_success"])
    norm = dict((int(s), v) for s, v in scalars.get("actor/grad_norm", []))
    evals = {tag: dict((int(s), v) for s, v in scalars.get(tag, [])) for tag in ("val/id_avg", "val/ood_avg")}
    order = sorted(frac)  # the logged steps of the rollout batches, one per epoch
    rows = []
    for k in [0, *range(every, steps + 1, every)]:
        lo = max(0, min(k - SMOOTH // 2, len(order) - SMOOTH))
        window = order[lo : lo + SMOOTH]
        rows.append(
            {
                "step": k,
                "all_success": statistics.fmean(frac[s] for s in window),
                "grad_norm": statistics.fmean(norm[s] for s in window if s in norm) if norm else math.nan,
                "id": evals["val/id_avg"].get(k, math.nan),
                "ood": evals["val/ood_avg"].get(k, math.nan),
            }
        )
    return rows


def branch_points(curve: list[dict], targets: tuple[float, ...] = TARGETS) -> list[dict]:
    """For each target, the first export (after the previous point's) whose all-success fraction reaches it;
    else the highest export left, marked not reached."""
    points, after = [], -1
    for target in targets:
        later = [row for row in curve if row["step"] > after]
        if not later:
            break
        hit = [row for row in later if row["all_success"] >= target]
        row = hit[0] if hit else max(later, key=lambda r: r["all_success"])
        points.append({**row, "target": target, "reached": bool(hit)})
        after = row["step"]
    return points


# ---- the branches ----------------------------------------------------------------------------------------
def point_dir(args: argparse.Namespace, point: dict) -> Path:
    return Path(args.runs_dir).resolve() / f"branch_step{point['step']}"


def branch_config(args: argparse.Namespace, base: dict, point: dict) -> Path:
    """The branch point's config for echo_vs_base: the base config from the point's export, the branch
    budget, evaluation before (shared) and after the branch, no export."""
    config = json.loads(json.dumps(base["config"]))
    trainer, model = config["trainer"], config["model"]["init_args"]
    trainer.pop("callbacks", None)
    trainer["max_epochs"] = trainer["check_val_every_n_epoch"] = args.branch_steps
    if point["step"] > 0:
        model["model"] = str(Path(args.runs_dir).resolve() / "base" / "export" / f"epoch{point['step']}")
    model["echo"]["enabled"] = True
    directory = point_dir(args, point)
    config["harness"] = {
        "name": "branch",
        "task": "the embedded arithmetic task",
        "runs_dir": str(directory),
        "shared_start_eval": True,
        "all_success_target": None,
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def calibrate(args: argparse.Namespace, config: Path) -> tuple[float, str]:
    """The lambda whose echo gradient is ``args.share`` of the policy gradient on this config's model (median
    over 3 rollout batches), measured by echo_gradient_share.py; ``(lambda, how)``. Cached beside the config."""
    cache = config.parent / "calibration.json"
    key = hashlib.sha256((config.read_text() + str(args.share)).encode()).hexdigest()[:16]
    if cache.exists() and json.loads(cache.read_text()).get("key") == key:
        saved = json.loads(cache.read_text())
        return saved["coef"], saved["how"]
    if args.report_only:
        raise SystemExit(f"no calibration in {cache}; run without --report-only")
    cmd = [
        sys.executable,
        "experiments/echo_gradient_share.py",
        "--config",
        str(config),
        "--seeds",
        "0",
        "1",
        "2",
    ]
    proc = subprocess.run(
        cmd, cwd=REPO, env=echo_vs_base._env(args), capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"the calibration failed:\n{proc.stderr[-3000:]}")
    ratios = []  # |grad L_echo| / |grad L_RLVR| of each rollout batch with a clip (columns 5 and 4)
    for line in proc.stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 11 and cells[0].isdigit() and int(cells[1]) > 0 and float(cells[3]) > 0:
            ratios.append(float(cells[4]) / float(cells[3]))
    if ratios and statistics.median(ratios) > 0:
        coef = float(f"{args.share / statistics.median(ratios):.2g}")
        how = (
            f"lambda x |grad L_echo| / |grad L_RLVR| = {args.share:g} at this point's model, median over "
            f"{len(ratios)} rollout batches with clips (ratios {', '.join(f'{r:.3g}' for r in ratios)})"
        )
    else:
        coef, how = args.fallback_coef, "no rollout batch with a clip at this point: the fallback lambda"
    cache.write_text(json.dumps({"key": key, "coef": coef, "how": how}))
    return coef, how


def point_arms(coef: float, top: bool) -> list[str]:
    arms = ["grpo", "grpo+echo", f"grpo+echo[coef={coef:g}]"]
    return arms + ([f"grpo+echo[valid,coef={coef:g}]"] if top else [])


def run_point(args: argparse.Namespace, config: Path, arms: list[str]) -> dict[str, dict[int, dict]]:
    """Train (or reuse) the point's branches through echo_vs_base; ``{arm: {seed: record}}``."""
    argv = ["--config", str(config), "--arms", *arms, "--seeds", *map(str, args.seeds)]
    argv += ["--jobs", str(args.jobs), "--threads", str(args.threads), "--out", str(config.parent / "report")]
    if args.num_val is not None:
        argv += ["--num-val", str(args.num_val)]
    if args.prompts is not None:
        argv += ["--prompts-per-epoch", str(args.prompts)]
    echo_vs_base.main(argv + (["--report-only"] if args.report_only else []))
    out: dict[str, dict[int, dict]] = {}
    for name in arms:
        arm = echo_vs_base.arm_by_name(name)
        for seed in args.seeds:
            path = config.parent / arm.slug / f"seed{seed}" / "scalars.json"
            out.setdefault(name, {})[seed] = json.loads(path.read_text())
    return out


# ---- the driver -----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(BASE_CONFIG), help="the base run's config")
    parser.add_argument("--quick", action="store_true", help="the whole pipeline at a toy budget")
    parser.add_argument("--seeds", type=int, nargs="+", help="branch seeds (default 0-4; --quick: 0)")
    parser.add_argument("--branch-steps", type=int, help="steps per branch (default 20)")
    parser.add_argument("--base-steps", type=int, help="steps of the base run (default: the config's)")
    parser.add_argument(
        "--export-every", type=int, help="export every this many steps (default: the config's)"
    )
    parser.add_argument(
        "--prompts", type=int, help="prompts per step, base run and branches (default: config)"
    )
    parser.add_argument("--num-val", type=int, help="prompts per evaluation set (default: the config's)")
    parser.add_argument("--share", type=float, default=0.05, help="the calibrated lambda's gradient share")
    parser.add_argument(
        "--fallback-coef", type=float, default=0.01, help="lambda when calibration finds no clip"
    )
    parser.add_argument("--jobs", type=int, default=2, help="branch runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per branch run")
    parser.add_argument("--base-threads", type=int, default=2, help="torch threads of the base run")
    parser.add_argument("--runs-dir", help="default runs/late_training (--quick: its quick/)")
    parser.add_argument("--out", default=str(REPO / "experiments/results"), help="results folder")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from finished runs")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key, None) is None:
                setattr(args, key, value)
    if args.seeds is None:
        args.seeds = [0, 1, 2, 3, 4]
    if args.branch_steps is None:
        args.branch_steps = 20
    if args.runs_dir is None:
        args.runs_dir = str(REPO / "runs/late_training" / ("quick" if args.quick else ""))
    for key in ("branch_steps", "base_steps", "export_every", "prompts", "num_val", "jobs", "threads"):
        value = getattr(args, key)
        if value is not None and value < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1, got {value}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    threads = args.threads
    args.threads = args.base_threads  # echo_vs_base._cli / _env read args.threads
    base = run_base(args)
    args.threads = threads
    base_wall = time.perf_counter() - start
    curve = export_curve(base)
    points = branch_points(curve)
    print("[points] " + ", ".join(f"step {p['step']} ({p['all_success']:.2f})" for p in points), flush=True)
    configs = [branch_config(args, base, p) for p in points]
    coef, how = calibrate(args, configs[len(configs) // 2])
    print(f"[lambda] calibrated {coef:g}: {how}", flush=True)
    results = []
    for i, (point, config) in enumerate(zip(points, configs, strict=True)):
        arms = point_arms(coef, top=i == len(points) - 1)
        results.append(
            {"point": point, "arms": arms, "runs": run_point(args, config, arms), "calibration": how}
        )
    run_minutes = (
        sum(r["wall_s"] for res in results for runs in res["runs"].values() for r in runs.values()) / 60
    )
    total = time.perf_counter() - start
    wall = {"base": base["wall_s"], "branches": total - base_wall, "run_minutes": run_minutes, "total": total}
    record = Path(args.runs_dir).resolve() / "study.json"  # the invocation that trained, for --report-only
    if not args.report_only:
        record.write_text(json.dumps({"argv": args.argv, "wall": wall}))
    elif record.exists():
        saved = json.loads(record.read_text())
        wall, args.argv = saved["wall"], [*saved["argv"], "# report rebuilt with --report-only"]
    md = write_report(
        args, base, curve, results, wall, every=export_every(base["config"]), target=TARGETS[-1]
    )
    print(f"wrote {md}", flush=True)


if __name__ == "__main__":
    main()
