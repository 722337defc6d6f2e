"""The results file and plot of :mod:`experiments.echo_vs_base`: per-arm mean +- std over seeds of held-out
accuracy (ID and OOD sets), step correctness where the task has a step checker (``val/<set>/step_valid_frac``),
all-success / all-fail fractions and EchoClip statistics, paired differences of each EchoRL arm against its
base method, a power estimate (:func:`experiments.power.power_estimate`: how many evaluation prompts x samples make a 2-point
difference stand out of the paired seed spread), and curves of accuracy and all-success fraction against step.

Every figure is computed from the runs' ``scalars.json`` records; nothing here is typed in by hand apart from
the two optional hand-written sections read from ``<out>/<name>_regime.md`` (how the task and budget were
chosen, written before the EchoRL arms ran) and ``<out>/<name>_discussion.md`` (the reading of the results).
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from echorl_lightning.tasks.countdown import CountdownDifficulty
from experiments.power import power_lines

TAIL = 5  # rollout fractions are averaged over the last (first) TAIL steps: one step holds only 64 groups
STUDIES = {
    "main": "EchoRL vs its base methods",
    "selector": "Clip-selector ablation (GRPO + EchoRL; `peak` is the paper's)",
    "coef": "Echo-coefficient sweep (EchoRL at other lambdas; 0.001 is the paper's)",
    "eligibility": "Clip eligibility (GRPO + EchoRL; `degenerate`, all-success groups only, is the paper's)",
}


def references(arm: Any) -> list[str]:
    """The arms an ablation arm is read against: its method with the paper's EchoRL and without EchoRL
    (``dapo+echo[coef=0.0015]`` -> ``["dapo+echo", "dapo"]``)."""
    return [f"{arm.method}+echo", arm.method]


def study_arms(study: str, arms: Sequence[Any], present: Sequence[str]) -> list[str]:
    """The rows of one study's table (and lines of its plot): for an ablation, the reference arms of
    :func:`references` that ran (base method first), then the study's arms, in the order given."""
    names = [a.name for a in dict.fromkeys(arms) if a.study == study]
    if study == "main":
        return names
    refs = [r for a in dict.fromkeys(arms) if a.study == study for r in reversed(references(a))]
    return [r for r in dict.fromkeys(refs) if r in present] + names


def study_pairs(study: str, arms: Sequence[Any], present: Sequence[str]) -> list[tuple[str, str]]:
    """The paired comparisons ``(arm, reference)`` of one study, both arms present: in ``main`` each EchoRL
    arm against its method; in an ablation each arm against each of its :func:`references` (all arms against
    the first reference, then all against the second)."""
    if study == "main":
        return [(a.name, a.method) for a in arms if a.study == study and a.echo and a.method in present]
    ablations = [a for a in arms if a.study == study]
    return [(a.name, ref) for i in range(2) for a in ablations if (ref := references(a)[i]) in present]


def _series(record: dict, tag: str) -> list[list[float]]:
    return record["scalars"].get(tag, [])


def eval_tags(record: dict) -> tuple[list[str], list[str]]:
    """``(per-set avg@k tags, group-average tags)`` present in a run, in a stable order."""
    per_set = sorted(
        (t for t in record["scalars"] if t.startswith("val/") and "/avg@" in t),
        key=lambda t: (not t.startswith("val/id"), t),
    )
    groups = [t for t in ("val/id_avg", "val/ood_avg") if t in record["scalars"]]
    return per_set, groups


def step_tags(record: dict) -> list[str]:
    """Per-set step-correctness tags (``val/<set>/step_valid_frac``) present in a run, ID first."""
    return sorted(
        (t for t in record["scalars"] if t.startswith("val/") and t.endswith("/step_valid_frac")),
        key=lambda t: (not t.startswith("val/id"), t),
    )


def run_summary(record: dict) -> dict[str, float]:
    """The per-run numbers of the tables (NaN-free: a missing statistic is left out)."""
    out: dict[str, float] = {}
    per_set, groups = eval_tags(record)
    for tag in per_set + groups + step_tags(record):
        values = _series(record, tag)
        out[f"{tag}:start"] = values[0][1]
        out[f"{tag}:final"] = values[-1][1]
    for tag in (
        "rollout/frac_all_success",
        "rollout/frac_all_fail",
        "reward/mean",
        "rollout/step_valid_frac",
    ):
        values = [v for _, v in _series(record, tag)]
        if values:
            out[f"{tag}:start"] = statistics.fmean(values[:TAIL])
            out[f"{tag}:final"] = statistics.fmean(values[-TAIL:])
    clips = [v for _, v in _series(record, "echo/num_clips")]
    if clips:
        out["echo/num_clips"] = statistics.fmean(clips)
        with_clips = [i for i, v in enumerate(clips) if v > 0]
        for tag in ("echo/clip_tokens", "echo/clip_frac", "echo/peak_step_pos", "echo/peak_step_entropy"):
            values = [v for _, v in _series(record, tag)]
            if with_clips and len(values) == len(clips):
                out[tag] = statistics.fmean(values[i] for i in with_clips)
    out["wall_min"] = record["wall_s"] / 60
    return out


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(values: Sequence[float], digits: int = 3) -> str:
    if not values:
        return "–"
    mean, std = _mean_std(values)
    mean = round(mean, digits) + 0.0  # a mean that rounds to zero reads 0.000, not -0.000
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _difficulty(d: dict) -> str:
    """``{min_operands: 3, max_operands: 4, ...}`` -> ``3-4 operands, +/- operands of 1-1 digits, ops +-*``;
    a Countdown difficulty (``min_numbers``, ...) -> ``3-3 numbers in 1..10, targets 10..99, intermediates
    <= 200, 6-20 trace lines``; a Countdown mixture (``components``, ``weights``) -> its components, each with
    its share."""
    if "components" in d:
        total = sum(d["weights"])
        names = d.get("names") or [f"c{i}" for i in range(len(d["components"]))]
        return "mixture of " + "; ".join(
            f"{name} ({w / total:.0%}): {_difficulty({**asdict(CountdownDifficulty()), **c})}"
            for name, w, c in zip(names, d["weights"], d["components"], strict=True)
        )
    if "min_numbers" in d:
        return (
            f"Countdown, {d['min_numbers']}-{d['max_numbers']} numbers in {d['min_number']}..{d['max_number']},"
            f" targets {d['min_target']}..{d['max_target']}, intermediates <= {d['max_intermediate']},"
            f" {d['min_steps']}-{d['max_steps']} trace lines"
        )
    ops = "-".join(str(d[k]) for k in ("min_operands", "max_operands"))
    digits = "-".join(str(d[k]) for k in ("min_digits", "max_digits"))
    return (
        f"{ops} operands, +/- operands of {digits} digits, * operands of <= {d['mul_digits']} digit(s), "
        f"ops `{d['ops']}`{', chained *' if d.get('chain_mul') else ''}"
    )


def _set_sizes(data: dict) -> str:
    """``"128 prompts per set"``, or each set's own size when the config names one
    (``"prompts per set: `id` 240, `ood_numbers` 64, ..."``)."""
    specs = data.get("eval_sets") or []
    if not any(spec.get("num") is not None for spec in specs):
        return f"{data['num_val']} prompts per set"
    sizes = ", ".join(f"`{spec['name']}` {spec.get('num') or data['num_val']}" for spec in specs)
    return f"prompts per set: {sizes}"


def _short(tag: str) -> str:
    """``val/ood_steps/avg@4`` -> ``ood_steps``, ``val/ood_avg`` -> ``ood_avg``,
    ``val/id/step_valid_frac`` -> ``id steps ok``."""
    return tag.split("/")[1] + (" steps ok" if tag.endswith("/step_valid_frac") else "")


def _label(key: str) -> str:
    """Column label of a summary key: ``val/id/avg@4:final`` -> ``id``, rollout tags keep their last part."""
    tag = key.split(":")[0]
    return _short(tag) if tag.startswith("val/") else tag.split("/")[-1]


def arm_table(
    arm_names: list[str],
    summaries: dict[str, list[dict[str, float]]],
    per_set: list[str],
    groups: list[str],
    steps: Sequence[str] = (),
) -> str:
    """One markdown table: a row per arm, mean ± std over its seeds (``steps``: step-correctness tags)."""
    header = ["arm", "seeds"]
    header += [f"{_short(t)} final" for t in per_set] + [f"{_short(t)} final" for t in groups if "ood" in t]
    header += [f"{_short(t)} final" for t in steps]
    header += [
        "all-success start → end",
        "all-fail end",
        "clips/step",
        "clip tokens",
        "clip/response",
        "clip end pos",
        "min/run",
    ]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in arm_names:
        runs = summaries[name]

        def col(key: str, runs: list[dict[str, float]] = runs, digits: int = 3) -> str:
            return _fmt([r[key] for r in runs if key in r], digits)

        cells = [f"`{name}`", str(len(runs))]
        cells += [col(f"{t}:final") for t in per_set] + [col(f"{t}:final") for t in groups if "ood" in t]
        cells += [col(f"{t}:final") for t in steps]
        cells.append(
            f"{col('rollout/frac_all_success:start', digits=2)} → {col('rollout/frac_all_success:final', digits=2)}"
        )
        cells.append(col("rollout/frac_all_fail:final", digits=2))
        for key, digits in (
            ("echo/num_clips", 1),
            ("echo/clip_tokens", 1),
            ("echo/clip_frac", 2),
            ("echo/peak_step_pos", 2),
        ):
            cells.append(col(key, digits=digits))
        cells.append(col("wall_min", digits=1))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def paired_deltas(
    pairs: list[tuple[str, str]], by_seed: dict[str, dict[int, dict[str, float]]], keys: list[str]
) -> str:
    """Markdown table of (arm - reference) per seed, mean ± std of the paired differences and the wins."""
    header = ["arm − reference", "seeds"] + [f"Δ {_label(k)}" for k in keys]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm, ref in pairs:
        seeds = sorted(set(by_seed.get(arm, {})) & set(by_seed.get(ref, {})))
        if not seeds:
            continue
        cells = [f"`{arm}` − `{ref}`", str(len(seeds))]
        for key in keys:
            diffs = [
                by_seed[arm][s][key] - by_seed[ref][s][key]
                for s in seeds
                if key in by_seed[arm][s] and key in by_seed[ref][s]
            ]
            wins = sum(d > 0 for d in diffs)
            cells.append(f"{_fmt(diffs, 3)} ({wins}/{len(diffs)} > 0)" if diffs else "–")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def commit_id() -> str:
    repo = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return sha + (" (with uncommitted changes)" if dirty else "")


def plot(records: list[dict], arms: list[Any], path: Path, per_set: list[str], groups: list[str]) -> None:
    """One row per study, columns: ID accuracy, OOD average accuracy, all-success fraction and, when the task
    checks steps, the training batches' step correctness (rollout/step_valid_frac; rollout curves are rolling
    means over TAIL steps) against optimizer step; a line per arm = mean over seeds, band = ± std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    studies = [s for s in STUDIES if any(a.study == s for a in arms)]
    id_tag = "val/id_avg" if "val/id_avg" in groups else per_set[0]
    panels = [(id_tag, "held-out ID accuracy (avg@k)"), ("rollout/frac_all_success", "all-success fraction")]
    if "val/ood_avg" in groups:
        panels.insert(1, ("val/ood_avg", "held-out OOD accuracy (avg@k)"))
    if any(_series(r, "rollout/step_valid_frac") for r in records):
        panels.append(("rollout/step_valid_frac", "correct rollouts with every step valid"))
    fig, axes = plt.subplots(
        len(studies), len(panels), figsize=(5 * len(panels), 3.6 * len(studies)), squeeze=False
    )
    by_arm: dict[str, list[dict]] = {}
    for record in records:
        by_arm.setdefault(record["arm"], []).append(record)
    for row, study in enumerate(studies):
        names = study_arms(study, arms, list(by_arm))  # ablations: with their references
        for col, (tag, title) in enumerate(panels):
            ax = axes[row][col]
            for i, name in enumerate(n for n in names if n in by_arm):
                curves = [np.array(_series(r, tag)) for r in by_arm[name] if _series(r, tag)]
                if not curves:
                    continue
                length = min(len(c) for c in curves)
                steps = curves[0][:length, 0]
                values = np.stack([c[:length, 1] for c in curves])  # [seeds, points]
                if tag.startswith("rollout/"):
                    kernel = np.ones(min(TAIL, length)) / min(TAIL, length)
                    values = np.stack([np.convolve(v, kernel, mode="valid") for v in values])
                    steps = steps[len(steps) - values.shape[1] :]
                mean, std = values.mean(0), values.std(0)
                style = "-" if "echo" in name else "--"
                color = f"C{i // 2}" if study == "main" else f"C{i}"
                ax.plot(steps, mean, style, color=color, label=name)
                ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.15)
            ax.set_title(f"{study}: {title}", fontsize=9)
            ax.set_xlabel("optimizer step (= rollout batch)")
            ax.grid(alpha=0.3)
            if col == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sweep_line(sweep: dict | None) -> str:
    """How the last sweep invocation of this arm/seed selection went (``runs_dir/sweep_<hash>.json``)."""
    if not sweep:
        return (
            "no one invocation trained this arm/seed selection (no runs_dir/sweep_<hash>.json for it); "
            "the run-minutes above are the runs' own"
        )
    line = f"`{sweep.get('command', 'python experiments/echo_vs_base.py')}` took {sweep['wall_s'] / 60:.1f} min wall"
    if "trained" in sweep:
        line += f" for {sweep['trained']} runs trained, two at a time"
        if sweep.get("reused"):
            line += (
                f" ({sweep['reused']} more reused from {sweep.get('reused_from', 'an earlier invocation')})"
            )
    return line


def _missing_line(missing: Sequence[tuple[str, int]]) -> str:
    """The report's line on unfinished runs: ``[("a", 3), ("a", 4), ("b", 0)]`` -> ``- **partial**: 3 runs
    of the selection not finished, left out: `a` seeds 3, 4; `b` seed 0; ...``."""
    by_arm: dict[str, list[int]] = {}
    for arm, seed in missing:
        by_arm.setdefault(arm, []).append(seed)
    runs = "; ".join(
        f"`{arm}` seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
        for arm, seeds in by_arm.items()
    )
    return (
        f"- **partial**: {len(missing)} run{'s' if len(missing) > 1 else ''} of the selection not finished, "
        f"left out: {runs}; an arm's `seeds` column says how many it has, and its paired differences use "
        "the seeds both arms have"
    )


DEFAULT_ALL_SUCCESS_TARGET = 0.40  # the arithmetic task's regime (issue of the first comparison)


def write_report(
    records: list[dict],
    arms: list[Any],
    out_dir: Path,
    name: str,
    base_config: dict,
    command: str,
    sweep: dict | None,
    hand_written: bool = False,
    task: str = "the embedded task",
    all_success_target: float | None = DEFAULT_ALL_SUCCESS_TARGET,
    missing: Sequence[tuple[str, int]] = (),
) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.md`` and ``<out_dir>/<name>.png``; returns both paths. ``all_success_target``:
    the regime's all-success fraction that base GRPO's first and last steps are held against (None: not
    reported); ``missing``: the (arm, seed) runs of the selection that had not finished (listed, left out)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path, png_path = out_dir / f"{name}.md", out_dir / f"{name}.png"
    per_set, groups = eval_tags(records[0])
    steps_ok = step_tags(records[0])
    summaries: dict[str, list[dict[str, float]]] = {}
    by_seed: dict[str, dict[int, dict[str, float]]] = {}
    for record in records:
        summary = run_summary(record)
        summaries.setdefault(record["arm"], []).append(summary)
        by_seed.setdefault(record["arm"], {})[record["seed"]] = summary
    arm_names = list(dict.fromkeys(r["arm"] for r in records))
    arm_of = {a.name: a for a in arms}

    trainer, model = base_config["trainer"], base_config["model"]["init_args"]
    rollout, data = base_config["rollout"], base_config["data"]["init_args"]
    steps, prompts, group = trainer["max_epochs"], rollout["prompts_per_epoch"], rollout["group_size"]
    seeds = sorted({r["seed"] for r in records})
    lines = [
        f"# {STUDIES['main']} on {task}",
        "",
        "Generated by `experiments/echo_vs_base.py` (do not edit by hand; rerun with `--report-only`).",
        "",
        f"- this report was written by `{command}`",
        "- code: the runs were trained at commit "
        + ", ".join(f"`{c}`" for c in sorted({r.get("commit", "unknown") for r in records}))
        + f"; this report was written at `{commit_id()}` on {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}; "
        f"{len(records)} runs, {sum(r['wall_s'] for r in records) / 60:.1f} run-minutes in all",
        f"- sweep: {_sweep_line(sweep)}",
        *([_missing_line(missing)] if missing else []),
        f"- seeds: {', '.join(map(str, seeds))} (each sets `seed_everything` and the rollout seed; task, model "
        "and evaluation prompts are the same for every run)",
        f"- budget per run (equal for every arm): {steps} optimizer steps x {prompts} prompts x {group} rollouts"
        f" = {steps * prompts * group:,} rollouts; lr {model['lr']:g}, rollout temperature "
        f"{rollout['temperature']:g}, response limit {rollout['max_new_tokens']} tokens",
        f"- model: `{model['model']}`; training task: {_difficulty(data['task']['init_args']['difficulty'])}",
        f"- evaluation: {_set_sizes(data)}, avg@{model['eval']['n']} at temperature "
        f"{model['eval']['temperature']:g}, every {trainer['check_val_every_n_epoch']} steps and before "
        "training; 'final' = after the last step. Sets: "
        + "; ".join(
            f"`{s['name']}` ({s.get('group')}: {s['split']} bucket, "
            f"{'training difficulty' if s.get('task') is None else _difficulty(s['task']['init_args']['difficulty'])})"
            for s in data.get("eval_sets") or []
        )
        + (
            " the datamodule's default sets: " + ", ".join(f"`{_short(t)}`" for t in per_set)
            if not data.get("eval_sets")
            else ""
        )
        + ". All are disjoint from the training prompts (hash buckets)."
        + (
            " 'steps ok' = share of correct samples whose every step is valid (the task's step checker)."
            if steps_ok
            else ""
        ),
        f"- rollout fractions (all-success, all-fail) are means over the first / last {TAIL} steps of {prompts} "
        "groups each;"
        " echo statistics are means over the steps that had clips ('clip end pos' 0 = first step, 1 = last).",
        "",
    ]
    regime = out_dir / f"{name}_regime.md"
    if hand_written and regime.exists():
        lines += [regime.read_text().strip(), ""]
    first = summaries[arm_names[0]][0]
    first_shared = all(r.get("start_eval") == "shared" for r in records)
    lines += [
        "Before training (every arm starts from the same model and samples its evaluations with the same seed"
        + ("; evaluated once, by `cli.py validate`, and shared by every run" if first_shared else "")
        + "): "
        + ", ".join(f"`{_short(t)}` {first[f'{t}:start']:.3f}" for t in per_set + groups if t != "val/id_avg")
        + ".",
        "",
    ]
    base = summaries.get("grpo", [])
    if base and all_success_target is not None:
        start, end = (
            statistics.fmean(s[f"rollout/frac_all_success:{when}"] for s in base)
            for when in ("start", "final")
        )
        verdict = {True: "met", False: "not met"}
        lines += [
            f"Base GRPO's all-success fraction: **{start:.2f}** over its first {TAIL} steps, **{end:.2f}** over its "
            f"last {TAIL} (target >= {all_success_target:.2f}: {verdict[start >= all_success_target]} at the start, "
            f"{verdict[end >= all_success_target]} at the end).",
            "",
        ]
    for study, title in STUDIES.items():
        if not any(arm_of[n].study == study for n in arm_names):
            continue
        names = study_arms(study, [arm_of[n] for n in arm_names], list(summaries))
        lines += [f"## {title}", "", arm_table(names, summaries, per_set, groups, steps_ok), ""]
        pairs = study_pairs(study, [arm_of[n] for n in names if n in arm_of], list(summaries))
        keys = [f"{t}:final" for t in per_set + groups if t != "val/id_avg" or "val/id/" not in str(per_set)]
        keys += [f"{t}:final" for t in steps_ok]
        keys.append("rollout/frac_all_success:final")
        if pairs:
            lines += [
                "Paired by seed (same seed, same prompts drawn at step 0):",
                "",
                paired_deltas(pairs, by_seed, keys),
                "",
            ]
    id_tag = next((t for t in per_set if t.startswith("val/id/")), None)
    if id_tag is not None and "grpo" in by_seed:
        key = f"{id_tag}:final"
        base = [
            by_seed["grpo"][seed][key] for seed in sorted(by_seed["grpo"]) if key in by_seed["grpo"][seed]
        ]
        pairs_id = [
            by_seed["grpo+echo"][seed][key] - by_seed["grpo"][seed][key]
            for seed in sorted(set(by_seed.get("grpo+echo", {})) & set(by_seed["grpo"]))
        ]
        if base:
            lines += power_lines(
                statistics.fmean(base),
                statistics.stdev(pairs_id) if len(pairs_id) > 1 else None,
                data["num_val"],
                model["eval"]["n"],
                len(seeds),
            )
    plot(records, arms, png_path, per_set, groups)
    lines += [f"![accuracy and all-success fraction against step]({png_path.name})", ""]
    discussion = out_dir / f"{name}_discussion.md"
    if hand_written and discussion.exists():
        lines += ["## Discussion", "", discussion.read_text().strip(), ""]
    md_path.write_text("\n".join(lines))
    return md_path, png_path
