"""EchoRL vs its base methods on the embedded task: the paper's main claim in miniature, plus the clip-selector
ablation and the echo-coefficient sweep (EchoRL, arXiv 2605.31228; ``shared/ECHORL.md``).

Every run is one ``python cli.py fit`` of ``experiments/configs/echo_vs_base.yaml`` with the arm's method and
``echo.*`` settings, so all arms share the task, the model, the evaluation sets and the rollout budget
(``max_epochs x prompts_per_epoch x group_size`` rollouts). Runs go to ``runs/echo_vs_base/<arm>/seed<k>``;
a finished run leaves ``scalars.json`` (every TensorBoard scalar) and is skipped when the harness is run
again with the same settings, so an interrupted sweep resumes; one with other settings is moved aside to
``seed<k>.replaced-<hash>``, never overwritten. ``--quick`` runs go to the runs folder's ``quick/``.
:mod:`experiments.report` turns the runs into ``experiments/results/echo_vs_base.md`` and its plot.

    python experiments/echo_vs_base.py            # the full sweep: 11 arms x 3 seeds (measured 78 min, 2 cores)
    python experiments/echo_vs_base.py --quick    # one seed of GRPO vs GRPO + EchoRL (measured 6 min)
    python experiments/echo_vs_base.py --report-only   # rebuild the table and plot from finished runs
    python experiments/echo_vs_base.py --report-only --partial   # ... of a sweep still running or cut short
    python experiments/echo_vs_base.py --config experiments/configs/echo_forking.yaml [--quick]   # Countdown

``--config`` names another base config; its optional top-level ``harness:`` mapping (removed from every
run's config) sets the report name, the task's label, the runs folder, the default arms and seeds and the
``--quick`` budget (``quick_epochs``, ``quick_num_val``) and the regime's ``all_success_target`` (default 0.40;
null: not reported), so one harness serves every task. With
``shared_start_eval: true`` the evaluation before training, which is the same for every run (same model, same
prompts, sampling seeded by the eval config, not by the run's seed), runs once as ``python cli.py validate``
(cached in ``<runs_dir>/start_eval``) and is merged into each run's record as its step-0 point, instead of each
run repeating it as Lightning's sanity check.

Runs execute ``--jobs`` at a time, each with ``--threads`` torch threads (2 x 1 fills a 2-core machine).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from experiments.report import DEFAULT_ALL_SUCCESS_TARGET, commit_id, write_report  # noqa: E402
from experiments.scalars import read_scalars  # noqa: E402

BASE_CONFIG = REPO / "experiments/configs/echo_vs_base.yaml"
HARNESS_KEYS = {
    "name",
    "task",
    "runs_dir",
    "seeds",
    "arms",
    "quick_arms",
    "quick_epochs",
    "quick_num_val",
    "shared_start_eval",
    "all_success_target",
}
# what an evaluation before training does not depend on: every run's step-0 evaluation is the same (same model,
# same prompts, sampling seeded by the eval config), so with harness.shared_start_eval it runs once
_TRAINING_ONLY = {
    "seed_everything": None,
    "rollout": None,
    "trainer": (
        "max_epochs",
        "check_val_every_n_epoch",
        "default_root_dir",
        "logger",
        "num_sanity_val_steps",
    ),
    "model": ("method", "echo", "algorithm", "lr"),
}


@dataclass(frozen=True)
class Arm:
    """One configuration of the comparison.

    Attributes:
        name: the arm's label in tables and plots (``grpo+echo``, ``grpo+echo[lowest]``, ...).
        study: ``main`` (method +- EchoRL), ``selector`` (clip-selector ablation) or ``coef`` (lambda sweep).
        method: the RLVR preset (``model.init_args.method``).
        echo: EchoRL on or off.
        selector: ``echo.selector``.
        coef: ``echo.coef`` (lambda).
        apply_to: ``echo.apply_to`` (which groups give clips).
        valid_steps_only: ``echo.valid_steps_only`` (clips only from rollouts whose every step checks).
    """

    name: str
    study: str
    method: str
    echo: bool
    selector: str = "peak"
    coef: float = 0.001
    apply_to: str = "degenerate"
    valid_steps_only: bool = False

    @property
    def slug(self) -> str:
        """A directory name for the arm."""
        return (
            self.name.replace("+", "_").replace("[", "_").replace("]", "").replace("=", "").replace(",", "_")
        )


MAIN_ARMS = [
    Arm(f"{method}{'+echo' if echo else ''}", "main", method, echo)
    for method in ("grpo", "dapo", "dr_grpo")
    for echo in (False, True)
]
# the peak selector and lambda = 0.001 are the paper's settings: the main arm grpo+echo is their reference
SELECTOR_ARMS = [
    Arm(f"grpo+echo[{s}]", "selector", "grpo", True, selector=s) for s in ("lowest", "random", "full")
]
COEF_ARMS = [Arm(f"grpo+echo[coef={c:g}]", "coef", "grpo", True, coef=c) for c in (0.01, 0.1)]
# outside the default sweep (its 90-minute budget): run with --arms grpo grpo+echo grpo+echo[success]
EXTRA_ARMS = [
    Arm("grpo+echo[success]", "eligibility", "grpo", True, apply_to="success"),
    Arm("grpo+echo[valid]", "eligibility", "grpo", True, valid_steps_only=True),
]
ARMS = {arm.name: arm for arm in MAIN_ARMS + SELECTOR_ARMS + COEF_ARMS + EXTRA_ARMS}
DEFAULT_ARMS = [arm.name for arm in MAIN_ARMS + SELECTOR_ARMS + COEF_ARMS]
QUICK_ARMS = ["grpo", "grpo+echo"]
_COEF_ARM = re.compile(r"(grpo|dapo|dr_grpo)\+echo\[(valid,)?coef=((?:\d+\.?\d*|\.\d+)(?:e-?\d+)?)\]")


def arm_by_name(name: str) -> Arm:
    """A registered arm of :data:`ARMS`, or a coefficient arm ``<method>+echo[coef=<lambda>]`` of any lambda
    (``grpo+echo[coef=0.002]``: a config names the coefficient it measured), ``[valid,coef=<lambda>]`` for its
    clips from step-checked rollouts only; ValueError naming the known ones otherwise."""
    if name in ARMS:
        return ARMS[name]
    match = _COEF_ARM.fullmatch(name)
    if match is None:
        raise ValueError(
            f"unknown arm {name!r}; known: {', '.join(sorted(ARMS))}, or <method>+echo[coef=<lambda>] "
            "(or [valid,coef=<lambda>]) with method grpo, dapo or dr_grpo"
        )
    valid = match.group(2) is not None
    return Arm(
        name,
        "eligibility" if valid else "coef",
        match.group(1),
        True,
        coef=float(match.group(3)),
        valid_steps_only=valid,
    )


def load_base(path: str | Path) -> tuple[dict, dict]:
    """``(run config, harness settings)`` of a base config: its ``harness:`` mapping split off (empty when
    absent); unknown harness keys raise, naming the known ones."""
    config = yaml.safe_load(Path(path).read_text())
    harness = config.pop("harness", None) or {}
    unknown = set(harness) - HARNESS_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown harness keys {sorted(unknown)}; known: {sorted(HARNESS_KEYS)}")
    for name in [*harness.get("arms", []), *harness.get("quick_arms", [])]:
        try:
            arm_by_name(name)
        except ValueError as err:
            raise ValueError(f"{path}: {err} (in harness)") from None
    target = harness.get("all_success_target")
    if target is not None and (
        isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 <= target <= 1
    ):
        raise ValueError(
            f"{path}: harness.all_success_target must be a fraction in [0, 1] or null, got {target!r}"
        )
    return config, harness


def run_config(arm: Arm, seed: int, run_dir: Path, args: argparse.Namespace) -> dict:
    """The base config with the arm's settings, the seed, the budget overrides and the run's paths."""
    config, _ = load_base(args.config)
    trainer, model = config["trainer"], config["model"]["init_args"]
    rollout = config["rollout"]
    config["seed_everything"] = seed
    trainer["default_root_dir"] = str(run_dir)
    trainer["logger"]["init_args"].update(save_dir=str(run_dir), name="tb", version=0)
    rollout["seed"] = seed
    model["method"] = arm.method
    model["echo"].update(enabled=arm.echo, selector=arm.selector, coef=arm.coef, apply_to=arm.apply_to)
    if arm.valid_steps_only:  # only where asked, so the configs of every earlier run keep their hash
        model["echo"]["valid_steps_only"] = True
    if args.epochs is not None:
        trainer["max_epochs"] = args.epochs
    if args.val_every is not None:
        trainer["check_val_every_n_epoch"] = args.val_every
    if args.prompts_per_epoch is not None:
        rollout["prompts_per_epoch"] = args.prompts_per_epoch
    if args.num_val is not None:  # every evaluation set, also those that name their own size
        config["data"]["init_args"]["num_val"] = args.num_val
        for spec in config["data"]["init_args"].get("eval_sets") or []:
            if spec.get("num") is not None:
                spec["num"] = args.num_val
    if args.harness.get("shared_start_eval"):
        trainer["num_sanity_val_steps"] = 0  # the step-0 evaluation comes from start_eval()
    return config


def _env(args: argparse.Namespace) -> dict[str, str]:
    return dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS=str(args.threads),
        MKL_NUM_THREADS=str(args.threads),
        TOKENIZERS_PARALLELISM="false",
    )


def set_aside(run_dir: Path) -> Path | None:
    """Move a finished run (one with ``scalars.json``) out of the way of a run with other settings, to
    ``<name>.replaced-<its config hash>`` beside it (``-2``, ``-3``... if taken), so nothing finished is lost.
    Returns where it went, or None when ``run_dir`` holds no finished run (an unfinished attempt stays, to be
    overwritten)."""
    done = run_dir / "scalars.json"
    if not done.exists():
        return None
    try:
        record = json.loads(done.read_text())
        sha = record.get("config_sha") or record.get("eval_sha") or "unknown"
    except (json.JSONDecodeError, AttributeError):
        sha = "unreadable"
    target, n = run_dir.with_name(f"{run_dir.name}.replaced-{sha}"), 1
    while target.exists():
        n += 1
        target = run_dir.with_name(f"{run_dir.name}.replaced-{sha}-{n}")
    shutil.move(str(run_dir), str(target))
    return target


def _cli(subcommand: str, run_dir: Path, config_text: str, args: argparse.Namespace) -> tuple[int, float]:
    """``python cli.py <subcommand>`` on ``config_text`` in a fresh ``run_dir`` (a finished run with other
    settings moved aside by :func:`set_aside`, an unfinished attempt's record and TensorBoard logs removed;
    config in ``config.yaml``, output in ``log.txt``): ``(exit code, wall seconds)``."""
    moved = set_aside(run_dir)
    if moved is not None:
        print(f"[keep] {run_dir} held a finished run with other settings: moved to {moved}", flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "scalars.json").unlink(missing_ok=True)
    shutil.rmtree(run_dir / "tb", ignore_errors=True)
    (run_dir / "config.yaml").write_text(config_text)
    start = time.perf_counter()
    with open(run_dir / "log.txt", "w") as log:
        proc = subprocess.run(
            [sys.executable, "cli.py", subcommand, "--config", str(run_dir / "config.yaml")],
            cwd=REPO,
            env=_env(args),
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        )
    return proc.returncode, time.perf_counter() - start


def _eval_digest(config: dict) -> str:
    """Hash of what a step-0 evaluation depends on: the run config less its training-only keys."""
    kept = json.loads(json.dumps(config))
    for section, keys in _TRAINING_ONLY.items():
        if keys is None:
            kept.pop(section, None)
            continue
        target = kept.get(section, {})
        target = target.get("init_args", target) if section == "model" else target
        for key in keys:
            target.pop(key, None)
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def start_eval(arm: Arm, seed: int, args: argparse.Namespace) -> dict[str, list[list[float]]]:
    """The evaluation before training, shared by every run (``harness.shared_start_eval``): one
    ``python cli.py validate`` of the untrained model, cached in ``<runs_dir>/start_eval`` by the hash of
    everything it depends on. Returns its ``val/*`` and ``data/eval_prompts`` scalars (all at step 0)."""
    run_dir = Path(args.runs_dir).resolve() / "start_eval"
    config = run_config(arm, seed, run_dir, args)
    digest = _eval_digest(config)
    done = run_dir / "scalars.json"
    if done.exists() and json.loads(done.read_text()).get("eval_sha") == digest:
        return json.loads(done.read_text())["scalars"]
    print(f"[eval] before training (shared by every run) -> {run_dir}", flush=True)
    returncode, wall = _cli("validate", run_dir, yaml.safe_dump(config, sort_keys=False), args)
    if returncode != 0:
        raise RuntimeError(f"the shared evaluation failed (exit {returncode}); see {run_dir / 'log.txt'}")
    scalars = {
        tag: series
        for tag, series in read_scalars(run_dir / "tb").items()
        if tag.startswith("val/") or tag == "data/eval_prompts"
    }
    if not any("/avg@" in tag for tag in scalars):
        raise RuntimeError(f"the shared evaluation logged no val/<set>/avg@k; see {run_dir / 'log.txt'}")
    done.write_text(json.dumps({"eval_sha": digest, "wall_s": wall, "scalars": scalars}))
    print(f"[done] shared evaluation in {wall / 60:.1f} min", flush=True)
    return scalars


def with_start(scalars: dict, start: dict) -> dict:
    """A run's scalars with the shared step-0 evaluation put in front of each evaluated tag."""
    merged = dict(scalars)
    for tag, series in start.items():
        later = [point for point in merged.get(tag, []) if point[0] > 0]
        merged[tag] = [[0, series[0][1]]] + later
    return merged


def run_one(
    arm: Arm, seed: int, args: argparse.Namespace, start_scalars: dict | None = None
) -> tuple[Path, bool]:
    """Train one (arm, seed) unless a finished run with the same config exists; returns its directory and
    whether it was trained now. ``start_scalars``: the shared step-0 evaluation (:func:`start_eval`), merged into the
    run's record."""
    run_dir = Path(args.runs_dir).resolve() / arm.slug / f"seed{seed}"
    config = run_config(arm, seed, run_dir, args)
    text = yaml.safe_dump(config, sort_keys=False)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    done = run_dir / "scalars.json"
    if done.exists() and json.loads(done.read_text()).get("config_sha") == digest:
        print(f"[skip] {arm.name} seed {seed}: finished run in {run_dir}", flush=True)
        return run_dir, False
    print(f"[run ] {arm.name} seed {seed} -> {run_dir}", flush=True)
    returncode, wall = _cli("fit", run_dir, text, args)
    if returncode != 0:
        raise RuntimeError(f"{arm.name} seed {seed} failed (exit {returncode}); see {run_dir / 'log.txt'}")
    scalars = read_scalars(run_dir / "tb")
    if "rollout/frac_all_success" not in scalars:
        raise RuntimeError(f"{arm.name} seed {seed}: no rollout/frac_all_success logged in {run_dir / 'tb'}")
    record = {"arm": arm.name, "seed": seed, "config_sha": digest, "commit": commit_id(), "wall_s": wall}
    if start_scalars is not None:
        record["start_eval"] = "shared"
        scalars = with_start(scalars, start_scalars)
    record["scalars"] = scalars
    done.write_text(json.dumps(record))
    print(f"[done] {arm.name} seed {seed} in {wall / 60:.1f} min", flush=True)
    return run_dir, True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(BASE_CONFIG), help="base config (with an optional harness:)")
    parser.add_argument("--quick", action="store_true", help="one seed of GRPO vs GRPO + EchoRL")
    parser.add_argument(
        "--arms", nargs="+", help="a subset of the arms (any grpo/dapo/dr_grpo+echo[coef=X] too)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 0 1 2; --quick: 0)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument(
        "--runs-dir",
        help="default: the harness's runs_dir, else runs/echo_vs_base (with --quick: its quick/)",
    )
    parser.add_argument("--out", default=str(REPO / "experiments/results"), help="results folder")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from finished runs")
    parser.add_argument(
        "--partial",
        action="store_true",
        help="with --report-only: report the finished runs of the selection and list the unfinished ones "
        "in the report (default: an unfinished run is an error)",
    )
    budget = parser.add_argument_group("budget overrides (default: the base config's)")
    budget.add_argument("--epochs", type=int, help="optimizer steps (rollout batches) per run")
    budget.add_argument("--val-every", type=int, help="evaluate every this many steps")
    budget.add_argument("--prompts-per-epoch", type=int, help="prompts per rollout batch")
    budget.add_argument("--num-val", type=int, help="prompts per evaluation set (every set)")
    args = parser.parse_args(argv)
    base, harness = load_base(args.config)
    args.harness = harness
    if (
        args.runs_dir is None
    ):  # --quick runs apart from the full sweep's (same arm/seed folders, other budget)
        runs_dir = REPO / harness.get("runs_dir", "runs/echo_vs_base")
        args.runs_dir = str(runs_dir / "quick" if args.quick else runs_dir)
    if args.arms is None:
        args.arms = harness.get("quick_arms", QUICK_ARMS) if args.quick else harness.get("arms", DEFAULT_ARMS)
    for name in args.arms:
        try:
            arm_by_name(name)
        except ValueError as err:
            parser.error(f"--arms: {err}")
    if args.seeds is None:
        args.seeds = [0] if args.quick else harness.get("seeds", [0, 1, 2])
    if args.quick:  # the config's quick budget, unless given on the command line
        if args.epochs is None:
            args.epochs = harness.get("quick_epochs")
        if args.num_val is None:
            args.num_val = harness.get("quick_num_val")
    every = base.get("trainer", {}).get("check_val_every_n_epoch")
    if args.epochs is not None and args.val_every is None and every and args.epochs % every:
        args.val_every = args.epochs  # else the last step is never evaluated and 'final' is the step-0 point
    if args.partial and not args.report_only:
        parser.error("--partial only goes with --report-only (a sweep trains every run it selects)")
    if args.jobs < 1 or args.threads < 1:
        parser.error("--jobs and --threads must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    arms = [arm_by_name(name) for name in args.arms]
    # seed-major order: a partial sweep already holds one seed of every arm
    jobs = [(arm, seed) for seed in args.seeds for arm in arms]
    command = " ".join(["python experiments/echo_vs_base.py", *(sys.argv[1:] if argv is None else argv)])
    start = time.perf_counter()
    trained = 0
    if not args.report_only:
        start_scalars = None
        if args.harness.get("shared_start_eval"):
            try:
                start_scalars = start_eval(arms[0], args.seeds[0], args)
            except RuntimeError as error:
                raise SystemExit(str(error)) from None
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(run_one, arm, seed, args, start_scalars) for arm, seed in jobs]
            errors = []
            for future in futures:
                try:
                    trained += future.result()[1]
                except RuntimeError as error:
                    errors.append(str(error))
        if errors:
            raise SystemExit("some runs failed:\n  " + "\n  ".join(errors))
    records, missing = [], []
    for arm, seed in jobs:
        path = Path(args.runs_dir).resolve() / arm.slug / f"seed{seed}" / "scalars.json"
        if path.exists():
            records.append(json.loads(path.read_text()))
        elif args.partial:
            missing.append((arm.name, seed))
        else:
            raise SystemExit(
                f"no finished run for {arm.name} seed {seed} ({path}); run without --report-only, or "
                "add --partial to report the finished ones"
            )
    if not records:
        raise SystemExit(f"no finished run of the selection in {args.runs_dir}")
    if missing:
        print(f"[partial] {len(missing)} of {len(jobs)} runs unfinished, listed in the report", flush=True)
    selection = hashlib.sha256(json.dumps([args.arms, args.seeds]).encode()).hexdigest()[:8]
    # one record per arm/seed selection, so a supplementary run never overwrites the main sweep's
    sweep_file = Path(args.runs_dir).resolve() / f"sweep_{selection}.json"
    if not args.report_only:
        sweep_file.write_text(
            json.dumps(
                {
                    "command": command,
                    "wall_s": time.perf_counter() - start,
                    "trained": trained,
                    "reused": len(jobs) - trained,
                }
            )
        )
    sweep = json.loads(sweep_file.read_text()) if sweep_file.exists() else None
    name = args.harness.get("name", "echo_vs_base") + ("_quick" if args.quick else "")
    md, png = write_report(
        records,
        [arm_by_name(r["arm"]) for r in records],
        Path(args.out),
        name,
        base_config=run_config(arms[0], args.seeds[0], Path("."), args),
        command=command,
        sweep=sweep,
        hand_written=not args.quick,
        task=args.harness.get("task", "the embedded task"),
        all_success_target=args.harness.get("all_success_target", DEFAULT_ALL_SUCCESS_TARGET),
        missing=missing,
    )
    print(f"wrote {md} and {png}", flush=True)


if __name__ == "__main__":
    main()
