"""What EchoRL costs per training step: step time with echo on and off, and the policy forwards of each.

Runs this project's CPU demo setting (see :mod:`vs_trl`: the embedded tiny model, 64 prompts x G = 8,
``--max-new-tokens``, T = 1, lr 5e-5, one GRPO optimizer step per rollout batch) with EchoRL on and off,
each measurement in a fresh process, the two strictly alternated over ``--reps`` repetitions (the order
flips every repetition). Per arm it reports the median step time (end of one optimizer step to the end of
the next, warm-up dropped), the ratio on / off (median over repetitions of the per-repetition ratio), the
decoder forwards per step outside ``generate`` (a forward hook on the policy's transformer body: the no-grad
old-log-prob pass and the training forward), and the time EchoClip selection takes (``select_echo_clips``,
wrapped). EchoRL's design (ECHORL.md) is zero extra forwards: the counts must be equal; the target for the
step-time ratio is <= 1.02. The echo loss itself (a masked mean over the same log-probs) is inside the
training phase and is not timed apart. Left out: DDP, vLLM and GPU runs.

Run from the repository root::

    HF_HUB_OFFLINE=1 python benchmarks/echo_overhead.py --steps 10 --reps 4   # the reported figures
    HF_HUB_OFFLINE=1 python benchmarks/echo_overhead.py --steps 2 --reps 1    # a quick check
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vs_trl import measure, summarize  # noqa: E402

TARGET_RATIO = 1.02


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=10, help="measured optimizer steps per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="steps dropped at the start of each process")
    parser.add_argument("--reps", type=int, default=4, help="alternated repetitions of on and off")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process")
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be >= 1")

    runs: dict[str, list[dict[str, float]]] = {"echo_on": [], "echo_off": []}
    for rep in range(args.reps):
        order = ["echo_on", "echo_off"] if rep % 2 == 0 else ["echo_off", "echo_on"]
        for arm in order:
            t0 = time.perf_counter()
            runs[arm].append(summarize(measure(arm, args.max_new_tokens, args)))
            s = runs[arm][-1]
            print(
                f"rep {rep} {arm:8s} {s['step_s']:.3f} s/step, {s['forwards']:.0f} forwards/step, "
                f"clip selection {1e3 * s['echo_select']:.2f} ms ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )

    ratios = [on["step_s"] / off["step_s"] for on, off in zip(runs["echo_on"], runs["echo_off"], strict=True)]
    ratio = statistics.median(ratios)
    print(f"\n{args.max_new_tokens} new tokens, {args.steps} steps x {args.reps} alternated repetitions\n")
    print("| arm | s/step | decoder forwards / step (outside generate) | EchoClip selection ms / step |")
    print("|---|---|---|---|")
    for arm, reps in runs.items():
        med = {k: statistics.median(r[k] for r in reps) for k in reps[0]}
        print(f"| {arm} | {med['step_s']:.3f} | {med['forwards']:.0f} | {1e3 * med['echo_select']:.2f} |")
    counts = {arm: sorted({r["forwards"] for r in reps}) for arm, reps in runs.items()}
    equal = counts["echo_on"] == counts["echo_off"]
    print(
        f"\nstep time ratio on / off: {ratio:.3f} (per repetition {min(ratios):.3f}-{max(ratios):.3f}); "
        f"target <= {TARGET_RATIO}: {'met' if ratio <= TARGET_RATIO else 'NOT met'}"
    )
    print(
        f"forwards per step: on {counts['echo_on']}, off {counts['echo_off']}: {'equal' if equal else 'DIFFERENT'}"
    )


if __name__ == "__main__":
    main()
