"""Is the warm-started Countdown policy in the regime issue 14 asks for? Measures it and writes the report.

For every evaluation set of the Countdown datamodule (held-out ``val`` problems: ``id``, ``ood_numbers``,
``ood_large``) it samples G completions per prompt at temperature T with the shipped model
(``echorl_lightning/assets/tiny-countdown``) and reports pass@1, the share of all-success and all-fail groups,
EOS rate, lines per response, distinct correct answers per prompt and the share of correct rollouts whose every
step is valid (:class:`~echorl_lightning.tasks.countdown.steps.CountdownStepChecker`). Inside successful rollouts
it measures step entropy as EchoRL does (arXiv 2605.31228): token entropy at T from one forward pass
(:func:`echorl_lightning.ops.logprobs_and_entropy`), steps split at newline tokens, EOS excluded
(:func:`echorl_lightning.echo.steps.split_steps`), and reports its distribution, its spread inside one rollout
and which kind of line holds each rollout's peak. It also describes the task itself on the ``id`` set: solver
trace lengths and distinct solutions per problem. Target (issue 14): pass@1 0.3-0.6, all-success >= 20%,
all-fail <= 25% on ``id``. Left out: greedy decoding and any training.

    python experiments/countdown_regime.py [--num 256] [--samples 8] [--warmstart-time stage1.txt stage2.txt]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from echorl_lightning.echo.steps import delimiter_token_ids, split_steps, step_end_mask_from_tokens  # noqa: E402
from echorl_lightning.ops import logprobs_and_entropy  # noqa: E402
from echorl_lightning.tasks.countdown.difficulty import AnyDifficulty, CountdownMixture, problem_difficulty  # noqa: E402
from echorl_lightning.tasks.countdown.problems import make_problem, parse_reference  # noqa: E402
from echorl_lightning.tasks.countdown.solver import count_solutions  # noqa: E402
from echorl_lightning.tasks.countdown.steps import CountdownStepChecker, first_invalid_step  # noqa: E402
from echorl_lightning.tasks.countdown.task import CountdownTask  # noqa: E402
from echorl_lightning.tasks.countdown.verifier import CountdownVerifier  # noqa: E402
from echorl_lightning.tiny import TINY_COUNTDOWN_PATH  # noqa: E402
from echorl_lightning.training.checkpoint_safety import load_safetensors_model  # noqa: E402
from experiments.countdown_traces import component_name, first_repeated_move, step_kind  # noqa: E402
from recipes.task_config import config_difficulty  # noqa: E402
from recipes.tiny.sft import sample_completions  # noqa: E402

TARGET = "pass@1 0.3-0.6, all-success groups >= 20%, all-fail groups <= 25% (id set, T = 1, 8 samples)"


@torch.no_grad()
def token_entropy(model, prompt_ids: list[list[int]], completions: list[list[int]], temperature: float):
    """``(entropy [N, T], response_mask [N, T], tokens [N, T])`` of right-padded completions, one forward."""
    n, t = len(completions), max(max((len(c) for c in completions), default=0), 1)
    width = max(len(p) + len(c) for p, c in zip(prompt_ids, completions, strict=True))
    ids = torch.zeros((n, width), dtype=torch.long)  # [N, L] right-padded
    attn = torch.zeros_like(ids)  # [N, L]
    tokens = torch.zeros((n, t), dtype=torch.long)  # [N, T]
    mask = torch.zeros((n, t), dtype=torch.bool)  # [N, T]
    index = torch.zeros((n, t), dtype=torch.long)  # [N, T] the position whose logits predict token j
    for i, (p, c) in enumerate(zip(prompt_ids, completions, strict=True)):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c, dtype=torch.long)
        attn[i, : len(p) + len(c)] = 1
        tokens[i, : len(c)] = torch.tensor(c, dtype=torch.long)
        mask[i, : len(c)] = True
        index[i] = (len(p) - 1 + torch.arange(t)).clamp(max=width - 1)
    logits = model(input_ids=ids, attention_mask=attn).logits  # [N, L, V]
    logits = logits.gather(1, index[..., None].expand(-1, -1, logits.shape[-1]))  # [N, T, V]
    _, entropy = logprobs_and_entropy(logits.float(), tokens, temperature)  # [N, T]
    return entropy, mask, tokens


def step_entropies(
    model,
    prompt_ids: list[list[int]],
    completions: list[list[int]],
    newline_ids: list[int],
    temperature: float,
) -> list[list[float]]:
    """Per completion the mean token entropy of each step (EOS excluded), one forward pass per 64."""
    out: list[list[float]] = []
    for start in range(0, len(completions), 64):
        entropy, mask, tokens = token_entropy(
            model, prompt_ids[start : start + 64], completions[start : start + 64], temperature
        )
        steps = split_steps(entropy, mask, step_end_mask_from_tokens(tokens, newline_ids))
        out += [steps.entropy[i, : int(steps.num_steps[i])].tolist() for i in range(entropy.shape[0])]
    return out


def fault_stats(texts: list[str], examples: list, scores: list[float]) -> dict:
    """Where rollouts first go wrong (:func:`~echorl_lightning.tasks.countdown.steps.first_invalid_step`):
    counts of the first fault's kind among failed rollouts (``valid trace`` when every line is valid, the
    answer missing or wrong) and among correct ones (``valid`` when none), and the per-line hazard: of the
    rollouts still valid when they reach line k, the share whose line k is their first invalid one."""
    failed: Counter[str] = Counter()
    correct: Counter[str] = Counter()
    at_line: Counter[int] = Counter()
    reached: Counter[int] = Counter()
    for text, example, score in zip(texts, examples, scores, strict=True):
        numbers, target = parse_reference(example.reference)
        fault = first_invalid_step(text, numbers, target)
        n_lines = len([line for line in text.split("\n") if line.strip()])
        last = fault[0] if fault else n_lines - 1
        for k in range(last + 1):
            reached[min(k, 10)] += 1
        if fault:
            at_line[min(fault[0], 10)] += 1
        kind = fault[1] if fault else ("valid" if score == 1.0 else "valid trace")
        (correct if score == 1.0 else failed)[kind] += 1
    hazard = {k: at_line[k] / reached[k] for k in sorted(reached) if reached[k]}
    return {"faults_failed": failed, "faults_correct": correct, "hazard": hazard}


def quantiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    q = statistics.quantiles(values, n=10) if len(values) > 1 else [values[0]] * 9
    return f"p10 {q[0]:.3f}, median {statistics.median(values):.3f}, p90 {q[8]:.3f} (n = {len(values)})"


def group_regime(scores: list[float], k: int) -> tuple[float, float, float]:
    """``(pass@1, all-success fraction, all-fail fraction)`` of ``k`` contiguous 0/1 scores per problem."""
    if not scores or len(scores) % k:
        raise ValueError(f"group_regime: {len(scores)} scores are not whole groups of {k}")
    groups = [scores[i : i + k] for i in range(0, len(scores), k)]
    return (
        sum(scores) / len(scores),
        sum(all(s == 1.0 for s in g) for g in groups) / len(groups),
        sum(all(s == 0.0 for s in g) for g in groups) / len(groups),
    )


def evaluate_set(
    model,
    tok,
    examples,
    samples: int,
    temperature: float,
    max_new_tokens: int,
    newline_ids: list[int],
    seed: int,
    components: list[str] | None = None,
) -> dict:
    """The set's statistics; ``components`` (one mixture component name per example) adds pass@1 and the
    all-success / all-fail shares of each component."""
    verifier, checker = CountdownVerifier(), CountdownStepChecker()
    prompt_ids = tok([ex.prompt for ex in examples], add_special_tokens=False)["input_ids"]
    completions: list[list[int]] = []
    ended: list[bool] = []
    for start in range(0, len(examples), 64):
        torch.manual_seed(seed + start)
        comp, end = sample_completions(
            model,
            prompt_ids[start : start + 64],
            samples,
            max_new_tokens,
            temperature,
            tok.eos_token_id,
            tok.pad_token_id,
        )
        completions += comp
        ended += end.tolist()
    texts = tok.batch_decode(completions)
    flat_examples = [ex for ex in examples for _ in range(samples)]
    scores = [s or 0.0 for s in verifier(texts, [ex.reference for ex in flat_examples])]
    valid = checker(texts, flat_examples)
    groups = [scores[i * samples : (i + 1) * samples] for i in range(len(examples))]
    ok = [i for i, s in enumerate(scores) if s == 1.0]
    pass1, all_success, all_fail = group_regime(scores, samples)
    stats: dict = {
        "pass@1": pass1,
        "all_success": all_success,
        "all_fail": all_fail,
        "eos_rate": sum(ended) / len(ended),
        "lines": statistics.mean(len([ln for ln in t.split("\n") if ln.strip()]) for t in texts),
        "lines_ok": statistics.mean(len([ln for ln in texts[i].split("\n") if ln.strip()]) for i in ok)
        if ok
        else 0.0,
        "step_valid_frac": sum(bool(valid[i]) for i in ok) / len(ok) if ok else float("nan"),
        "num_ok": len(ok),
        "n_prompts": len(examples),
        # the same problem drawn twice (numbers in another order) is one problem: the set's real size
        "distinct": CountdownTask().distinct_problems(examples),
        # per-sample variance of one prompt's success, unbiased from its c of n successes: c (n - c) /
        # (n (n - 1)); the harness's power estimate uses the bound p (1 - p), which this can only undercut
        "within_var": statistics.fmean(
            sum(g) * (samples - sum(g)) / (samples * (samples - 1)) for g in groups
        )
        if samples > 1
        else float("nan"),
    }
    if components:
        by: dict[str, list[list[float]]] = {}
        for name, group in zip(components, groups, strict=True):
            by.setdefault(name, []).append(group)
        stats["by_component"] = {
            name: (
                len(gs),
                statistics.fmean(x for g in gs for x in g),
                sum(all(g) for g in gs) / len(gs),
                sum(not any(g) for g in gs) / len(gs),
            )
            for name, gs in sorted(by.items())
        }
    stats.update(fault_stats(texts, flat_examples, scores))
    # searches going round in a loop (a move re-tried from a pool it was already tried from), overall and
    # among the rollouts cut at max_new_tokens
    loops = [
        first_repeated_move(t, *parse_reference(ex.reference)) is not None
        for t, ex in zip(texts, flat_examples, strict=True)
    ]
    cut = [i for i, e in enumerate(ended) if not e]
    stats["loop_frac"] = sum(loops) / len(loops)
    stats["loop_frac_cut"] = sum(loops[i] for i in cut) / len(cut) if cut else float("nan")
    distinct = [
        len({texts[i * samples + j].strip().split("\n")[-1] for j in range(samples) if groups[i][j]})
        for i in range(len(examples))
        if any(groups[i])
    ]
    stats["distinct_correct"] = Counter(distinct)
    entropies = step_entropies(
        model, [prompt_ids[i // samples] for i in ok], [completions[i] for i in ok], newline_ids, temperature
    )
    all_steps = [e for row in entropies for e in row]
    spread = [max(row) - min(row) for row in entropies if len(row) > 1]
    ratio = [max(row) / max(statistics.median(row), 1e-6) for row in entropies if len(row) > 1]
    peak_kind: Counter[str] = Counter()
    for i, row in zip(ok, entropies, strict=True):
        lines = texts[i].split("\n")
        if row and len(lines) == len(row):
            peak_kind[step_kind(lines[row.index(max(row))])] += 1
    stats.update(
        step_entropy=quantiles(all_steps),
        spread=quantiles(spread),
        peak_ratio=quantiles(ratio),
        peak_kind=peak_kind,
    )
    return stats


def task_stats(num: int, difficulty: AnyDifficulty) -> dict:
    """Solver trace lengths and distinct solutions per problem on the ``id`` val problems."""
    lengths, solutions = [], []
    for i in range(num):
        problem = make_problem("val", i, 0, difficulty)
        component = problem_difficulty("val", i, 0, difficulty)
        lengths.append(len(problem.solution.split("\n")))
        solutions.append(count_solutions(problem.numbers, problem.target, component.max_intermediate))
    # how many different problems the generator has at this difficulty: draws are independent, so a split
    # whose distinct count stops growing with more draws is that small
    space = {
        split: CountdownTask().distinct_problems(CountdownTask(difficulty).prompts(split, draws, 0))
        for split, draws in (("train", 4096), ("val", 2048))
    }
    return {"lengths": lengths, "solutions": solutions, "space": space}


def cpu_minutes(time_files: list[str] | None) -> str:
    """User + system CPU minutes summed over ``/usr/bin/time -v`` reports (one per warm-start stage), or
    ``not measured``."""
    if not time_files or not all(Path(f).exists() for f in time_files):
        return "not measured"
    user = system = 0.0
    walls = []
    for time_file in time_files:
        text = Path(time_file).read_text()
        user += float(re.search(r"User time \(seconds\): ([\d.]+)", text).group(1))
        system += float(re.search(r"System time \(seconds\): ([\d.]+)", text).group(1))
        walls.append(re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text).group(1))
    return (
        f"{(user + system) / 60:.1f} CPU-minutes (user {user:.0f} s + system {system:.0f} s; wall "
        f"{' + '.join(walls)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=TINY_COUNTDOWN_PATH)
    parser.add_argument(
        "--config",
        default=str(REPO / "configs/warmstart_countdown.yaml"),
        help="a config whose data.init_args.task.init_args.difficulty is the id difficulty (the warm-start's)",
    )
    parser.add_argument("--num", type=int, default=256, help="held-out prompts of the id set")
    parser.add_argument("--num-ood", type=int, default=128, help="held-out prompts of each ood set")
    parser.add_argument("--notes", default=None, help="a markdown file appended to the report")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=384)
    parser.add_argument("--sets", nargs="+", default=["id", "ood_numbers", "ood_large"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--warmstart-time", nargs="+", default=None, help="/usr/bin/time -v output of each warm-start stage"
    )
    parser.add_argument("--out", default=str(REPO / "experiments/results/countdown_regime.md"))
    args = parser.parse_args()

    tok = AutoTokenizer.from_pretrained(args.model)
    model = load_safetensors_model(args.model, dtype=torch.float32).eval()
    newline_ids = delimiter_token_ids(tok)
    difficulty = config_difficulty(args.config)
    results = {}
    for spec in CountdownTask(difficulty).default_eval_specs():
        if spec.name in args.sets:
            num = args.num if spec.group == "id" else args.num_ood
            # distinct problems, as the datamodule evaluates
            examples = spec.task.prompts(spec.split, num, 0, distinct=True)
            components = None
            if isinstance(spec.difficulty, CountdownMixture):  # uid countdown-<split>-<seed>-<index>
                components = [
                    component_name(spec.split, int(ex.uid.rsplit("-", 1)[1]), 0, spec.difficulty)
                    for ex in examples
                ]
            results[spec.name] = evaluate_set(
                model,
                tok,
                examples,
                args.samples,
                args.temperature,
                args.max_new_tokens,
                newline_ids,
                args.seed,
                components,
            )
            print(spec.name, {k: v for k, v in results[spec.name].items()}, flush=True)
    task = task_stats(args.num, difficulty)
    n_params = sum(p.numel() for p in model.parameters())
    write_report(Path(args.out), args, results, task, n_params)


def write_report(path: Path, args: argparse.Namespace, results: dict, task: dict, n_params: int) -> None:
    sets = list(results)
    rows = [
        ("distinct problems among the prompts", lambda s: f"{s['distinct']} of {s['n_prompts']}"),
        ("pass@1", lambda s: f"{s['pass@1']:.3f}"),
        ("all-success groups", lambda s: f"{s['all_success']:.3f}"),
        ("all-fail groups", lambda s: f"{s['all_fail']:.3f}"),
        ("EOS rate", lambda s: f"{s['eos_rate']:.3f}"),
        (
            "rollouts that re-try a move from the same pool (all / cut at the token limit)",
            lambda s: f"{s['loop_frac']:.3f} / {s['loop_frac_cut']:.3f}",
        ),
        ("lines per response (all / correct)", lambda s: f"{s['lines']:.1f} / {s['lines_ok']:.1f}"),
        ("correct rollouts with every step valid", lambda s: f"{s['step_valid_frac']:.3f} of {s['num_ok']}"),
        (
            "per-sample variance within a prompt (bound p(1-p))",
            lambda s: f"{s['within_var']:.3f} ({s['pass@1'] * (1 - s['pass@1']):.3f})",
        ),
    ]
    lines = [
        "# Countdown warm-start: the regime check",
        "",
        f"Written by `experiments/countdown_regime.py` (model `{Path(args.model).name}`, {n_params:,} parameters;"
        f" {args.num} held-out `val` prompts in `id`, {args.num_ood} in each ood set, {args.samples} samples at T = {args.temperature},"
        f" at most {args.max_new_tokens} new tokens). Target (issue 14): {TARGET}.",
        "",
        f"Warm-start cost (the commands in the header of `{os.path.relpath(Path(args.config).resolve(), REPO)}`, one thread, "
        f"{len(args.warmstart_time or [])} timed stage(s)): "
        f"{cpu_minutes(args.warmstart_time)}.",
        "",
        "| | " + " | ".join(f"`{s}`" for s in sets) + " |",
        "|---|" + "---|" * len(sets),
    ]
    lines += [f"| {name} | " + " | ".join(fn(results[s]) for s in sets) + " |" for name, fn in rows]
    if any("by_component" in results[s] for s in sets):
        lines += ["", "## By mixture component (prompts; pass@1; all-success; all-fail)", ""]
        for s in sets:
            for name, (n, p, ok, bad) in results[s].get("by_component", {}).items():
                lines.append(
                    f"- `{s}` / `{name}`: {n} prompts; pass@1 {p:.3f}; all-success {ok:.3f}; all-fail {bad:.3f}"
                )
    lines += ["", "## Distinct correct answers per prompt (prompts with at least one success)", ""]
    for s in sets:
        counts = results[s]["distinct_correct"]
        lines.append(f"- `{s}`: " + ", ".join(f"{k} distinct: {counts[k]}" for k in sorted(counts)))
    lines += ["", "## Step entropy inside successful rollouts (nats, mean over each step's tokens)", ""]
    for s in sets:
        r = results[s]
        lines += [
            f"- `{s}`: every step: {r['step_entropy']}",
            f"  - spread inside one rollout (max - min step entropy): {r['spread']}",
            f"  - peak step / median step of the same rollout: {r['peak_ratio']}",
            "  - line holding the peak (EchoRL's clip end): "
            + ", ".join(f"{k} {v}" for k, v in r["peak_kind"].most_common()),
        ]
    lines += [
        "",
        "## Where rollouts first go wrong (first invalid line, `tasks/countdown/steps.py:first_invalid_step`)",
        "",
    ]
    for s in sets:
        r = results[s]
        hazard = ", ".join(f"{'10+' if k == 10 else k}: {h:.2f}" for k, h in r["hazard"].items())
        lines += [
            f"- `{s}`: failed rollouts by first fault: "
            + ", ".join(f"{k} {v}" for k, v in r["faults_failed"].most_common()),
            "  - correct rollouts by first fault: "
            + ", ".join(f"{k} {v}" for k, v in r["faults_correct"].most_common()),
            f"  - per-line hazard (line index: share of rollouts still valid there that go wrong on it): {hazard}",
        ]
    sol = Counter(min(n, 10) for n in task["solutions"])
    length = Counter(task["lengths"])
    lines += [
        "",
        f"## The task itself (`id` val problems 0..{args.num - 1})",
        "",
        "- solver trace lines (Answer included): "
        + ", ".join(f"{k}: {length[k]}" for k in sorted(length))
        + f" (mean {statistics.mean(task['lengths']):.1f})",
        "- distinct solutions per problem (exhaustive search, operands of + and * unordered; 10 = 10 or more): "
        + ", ".join(f"{k}: {sol[k]}" for k in sorted(sol))
        + f" (median {statistics.median(task['solutions'])})",
        f"- distinct problems the generator draws at this difficulty: {task['space']['train']} in 4,096 `train`"
        f" draws (the RL prompt pool's size), {task['space']['val']} in 2,048 `val` draws",
        "",
    ]
    if args.notes:
        lines += [Path(args.notes).read_text()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
