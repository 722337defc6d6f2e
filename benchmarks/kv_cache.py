"""Rollout time of ``HFGenerateEngine`` with transformers' dynamic KV cache against a static one.

Usage (from the repository root; see benchmarks/README.md):

    python benchmarks/kv_cache.py                              # tiny-countdown, 32 prompts x 8, 384 tokens
    python benchmarks/kv_cache.py --max-new-tokens 64          # short responses

Both variants sample the same rollout batch (the same Countdown ``val`` prompts, seed and engine batch size)
from the shipped ``tiny-countdown`` policy on the CPU; only ``cache_implementation`` differs (``None``: the
dynamic cache, which concatenates every layer's keys and values at each decoding step; ``"static"``: a cache
preallocated to prompt + ``max_new_tokens``). ``--rounds`` alternates the two variants and reports the median
wall time of each and their ratio, and checks that both returned the same tokens. Threads: ``--threads``
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

import torch  # noqa: E402
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tokenizer = AutoTokenizer.from_pretrained(TINY_COUNTDOWN_PATH)
    model = AutoModelForCausalLM.from_pretrained(TINY_COUNTDOWN_PATH, dtype=torch.float32)
    prompts = [
        tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
        for ex in CountdownTask().prompts("val", args.prompts)
    ]
    sampling = SamplingConfig(n=args.samples, max_new_tokens=args.max_new_tokens, temperature=1.0, seed=0)
    variants = {"dynamic": None, "static": "static"}
    times: dict[str, list[float]] = {name: [] for name in variants}
    tokens: dict[str, list[list[int]]] = {}
    for _ in range(args.rounds):
        for name, cache in variants.items():
            engine = HFGenerateEngine(batch_size=args.batch_size, cache_implementation=cache)
            engine.setup(model, tokenizer)
            start = time.perf_counter()
            out = engine.generate(prompts, sampling)
            times[name].append(time.perf_counter() - start)
            tokens[name] = [c.token_ids for samples in out for c in samples]
    rows = len(prompts) * args.samples
    mean_len = statistics.mean(len(t) for t in tokens["dynamic"])
    print(
        f"tiny-countdown, {rows} rows, <= {args.max_new_tokens} new tokens (mean {mean_len:.0f}), batch "
        f"{args.batch_size}, {args.threads} thread(s), {args.rounds} rounds"
    )
    for name in variants:
        runs = ", ".join(f"{t:.1f}" for t in times[name])
        print(f"{name:>8}: median {statistics.median(times[name]):.1f} s ({runs})")
    ratio = statistics.median(times["dynamic"]) / statistics.median(times["static"])
    print(
        f"speed-up of static over dynamic: {ratio:.2f}x; same tokens: {tokens['static'] == tokens['dynamic']}"
    )


if __name__ == "__main__":
    main()
