"""Rollout time of ``HFGenerateEngine`` with transformers' dynamic KV cache, the same cache with finished rows
dropped every ``compact_every`` tokens, and a static cache.

Usage (from the repository root; see benchmarks/README.md):

    python benchmarks/kv_cache.py                              # tiny-countdown, 32 prompts x 8, 384 tokens
    python benchmarks/kv_cache.py --max-new-tokens 64          # short responses

Both variants sample the same rollout batch (the same Countdown ``val`` prompts, seed and engine batch size)
from the shipped ``tiny-countdown`` policy on the CPU; only ``cache_implementation`` differs (``None``: the
dynamic cache, which concatenates every layer's keys and values at each decoding step; ``"static"``: a cache
preallocated to prompt + ``max_new_tokens``), each decoding a batch in one ``generate`` call; ``compacted`` is
the engine's default: the dynamic cache, decoded ``--compact-every`` tokens at a time with the rows that sampled
EOS dropped after each segment. ``--rounds`` alternates the variants and reports the median wall time of each
and its speed-up over ``dynamic``; ``dynamic`` and ``static`` draw the same tokens (checked), ``compacted`` the
same distribution with another random stream (its mean response length is printed). Threads: ``--threads``
(default 1, as the experiment harness runs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from machine import machine_line  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from echorl_lightning.rollout import HFGenerateEngine, SamplingConfig  # noqa: E402
from echorl_lightning.tasks.countdown import CountdownTask  # noqa: E402
from echorl_lightning.tiny import TINY_COUNTDOWN_PATH  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compact-every", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tokenizer = AutoTokenizer.from_pretrained(TINY_COUNTDOWN_PATH)
    model = AutoModelForCausalLM.from_pretrained(TINY_COUNTDOWN_PATH, dtype=torch.float32)
    prompts = [
        tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
        for ex in CountdownTask().prompts("val", args.prompts)
    ]
    sampling = SamplingConfig(n=args.samples, max_new_tokens=args.max_new_tokens, temperature=1.0, seed=0)
    variants = {  # name: (cache_implementation, compact_every)
        "dynamic": (None, None),
        "compacted": (None, args.compact_every),
        "static": ("static", None),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    tokens: dict[str, list[list[int]]] = {}
    for _ in range(args.rounds):
        for name, (cache, compact) in variants.items():
            engine = HFGenerateEngine(
                batch_size=args.batch_size, cache_implementation=cache, compact_every=compact
            )
            engine.setup(model, tokenizer)
            start = time.perf_counter()
            out = engine.generate(prompts, sampling)
            times[name].append(time.perf_counter() - start)
            tokens[name] = [c.token_ids for samples in out for c in samples]
    rows = len(prompts) * args.samples
    print(
        f"tiny-countdown, {rows} rows, <= {args.max_new_tokens} new tokens, batch {args.batch_size}, "
        f"{args.threads} thread(s), {args.rounds} rounds; machine: {machine_line()}"
    )
    base = statistics.median(times["dynamic"])
    for name in variants:
        runs = ", ".join(f"{t:.1f}" for t in times[name])
        mean_len = statistics.mean(len(t) for t in tokens[name])
        print(
            f"{name:>9}: median {statistics.median(times[name]):.1f} s ({runs}), "
            f"{base / statistics.median(times[name]):.2f}x dynamic; mean response {mean_len:.0f} tokens"
        )
    print(f"static drew the dynamic cache's tokens: {tokens['static'] == tokens['dynamic']}")


if __name__ == "__main__":
    main()
