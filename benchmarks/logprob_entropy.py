"""Peak memory and time of ``echorl_lightning.ops.logprobs_and_entropy`` against the naive reference.

Usage (from the repository root; see benchmarks/README.md):

    python benchmarks/logprob_entropy.py                      # V = 151,936, T = 2,048, N = 1, float32
    python benchmarks/logprob_entropy.py --chunk-size 64      # a fixed chunk instead of the auto one
    python benchmarks/logprob_entropy.py --device cuda        # on a GPU, if there is one

Every (variant, mode) runs in its own fresh subprocess, so one variant's peak cannot hide the other's. A
worker builds the inputs (logits [N, T, V] of the chosen dtype, token ids, and for the backward a random
d loss / d logp), runs a small warm-up of the same function, then reads its baseline, runs the full-size
call once and reads the peak: memory is the extra peak above the inputs. On Linux CPU the peak is the
process's peak resident set size (VmHWM, reset just before the call); on CUDA,
``torch.cuda.max_memory_allocated`` (see ``peak_meter``).
Time is the median of ``--repeats`` further calls. The naive reference is ``log_softmax`` over the full
vocabulary, ``gather``, and ``-(p * logp).sum(-1)``; in the forward+backward mode both variants also
allocate the [N, T, V] gradient of the logits, which counts in both peaks.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch

from echorl_lightning.ops import auto_chunk_size, logprobs_and_entropy, logprobs_and_entropy_from_hidden

Variant = Literal["naive", "ours"]
Mode = Literal["forward", "forward+backward"]


def naive(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: logits [N, T, V], tokens [N, T] -> (logp [N, T], entropy [N, T])."""
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)  # [N, T, V]
    logp = logp_all.gather(-1, tokens[..., None]).squeeze(-1)  # [N, T]
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)  # [N, T]
    return logp, entropy


def _status_kib(field: str) -> int:
    """A ``kB`` field (VmRSS, VmHWM) of /proc/self/status; OSError where there is no such file."""
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise OSError(f"no {field} in /proc/self/status")
    return int(match.group(1))


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def peak_meter(device: torch.device) -> Callable[[], int]:
    """Start measuring now; the returned function gives the peak bytes above the current usage since then.

    CUDA: ``torch.cuda.max_memory_allocated``. Linux CPU: the peak resident set size VmHWM, first reset to
    the current VmRSS through /proc/self/clear_refs (``ru_maxrss`` cannot be reset, and Linux carries the
    parent's high-water mark into a subprocess over exec). Elsewhere: ``ru_maxrss``, which is only right
    when the inputs are the largest thing the process held before.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        return lambda: torch.cuda.max_memory_allocated(device) - base
    try:
        Path("/proc/self/clear_refs").write_text("5")
        base = _status_kib("VmRSS")
        return lambda: (_status_kib("VmHWM") - base) * 1024
    except OSError:
        base = _maxrss_bytes()
        return lambda: _maxrss_bytes() - base


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker(args: argparse.Namespace) -> dict[str, float]:
    """Measure one (variant, mode) in this process; returns extra peak bytes and the median seconds."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    backward = args.mode == "forward+backward"
    chunk, temperature, hidden_size = args.chunk_size, args.temperature, args.hidden_size

    def inputs(t: int, v: int) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """The leaves (logits [N, t, v], or hidden [N, t, D] and weight [v, D]), tokens and d loss / d logp."""
        gen = torch.Generator(device).manual_seed(0)
        if hidden_size:
            shapes, scales = [(args.n, t, hidden_size), (v, hidden_size)], [1.0, hidden_size**-0.5]
        else:
            shapes, scales = [(args.n, t, v)], [2.0]
        leaves = [
            torch.randn(shape, generator=gen, device=device, dtype=dtype).mul_(scale).requires_grad_(backward)
            for shape, scale in zip(shapes, scales, strict=True)
        ]
        tokens = torch.randint(0, v, (args.n, t), generator=gen, device=device)
        return leaves, tokens, torch.randn(args.n, t, generator=gen, device=device)

    def call(leaves: list[torch.Tensor], tokens: torch.Tensor, grad_logp: torch.Tensor) -> None:
        if args.variant == "naive":
            logits = torch.nn.functional.linear(*leaves) if hidden_size else leaves[0]
            logp, _ = naive(logits, tokens, temperature)
        elif hidden_size:
            logp, _ = logprobs_and_entropy_from_hidden(*leaves, tokens, temperature, chunk_size=chunk)
        else:
            logp, _ = logprobs_and_entropy(leaves[0], tokens, temperature, chunk_size=chunk)
        if backward:
            (logp * grad_logp).sum().backward()
            for leaf in leaves:
                leaf.grad = None
        _sync(device)

    # Load kernels and thread pools outside the measured peak, on inputs too small to raise it.
    call(*inputs(4, min(args.vocab, 1024)))
    full = inputs(args.tokens, args.vocab)
    extra_peak = peak_meter(device)
    call(*full)
    extra = extra_peak()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        call(*full)
        times.append(time.perf_counter() - start)
    return {"extra_peak_bytes": extra, "seconds": statistics.median(times)}


def run_in_subprocess(args: argparse.Namespace, variant: Variant, mode: Mode) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--worker", "--variant", variant, "--mode", mode]
    for key in (
        "vocab",
        "tokens",
        "n",
        "dtype",
        "temperature",
        "repeats",
        "threads",
        "device",
        "hidden_size",
    ):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    if args.chunk_size is not None:
        cmd += ["--chunk-size", str(args.chunk_size)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, default=151_936, help="V (Qwen2.5's vocabulary)")
    parser.add_argument("--tokens", type=int, default=2_048, help="T, response tokens per sequence")
    parser.add_argument("--n", type=int, default=1, help="N, sequences")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--chunk-size", type=int, default=None, help="rows per chunk (default: auto)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls after the first; median reported")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--hidden-size",
        type=int,
        default=0,
        help="D > 0: compare logprobs_and_entropy_from_hidden(hidden [N, T, D], weight [V, D]) with the naive "
        "reference on F.linear(hidden, weight) instead (no logits given)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat the whole comparison; medians reported")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=["naive", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["forward", "forward+backward"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    chunk = args.chunk_size or auto_chunk_size(args.vocab)
    itemsize = getattr(torch, args.dtype).itemsize
    if args.hidden_size:
        what = f"logprobs_and_entropy_from_hidden vs naive on F.linear: D={args.hidden_size:,}"
        grad_bytes = (args.n * args.tokens + args.vocab) * args.hidden_size * itemsize  # hidden and weight
    else:
        what = "logprobs_and_entropy vs naive:"
        grad_bytes = args.n * args.tokens * args.vocab * itemsize  # the logits
    print(
        f"{what} V={args.vocab:,} T={args.tokens:,} N={args.n} {args.dtype} inputs, {args.device}, "
        f"{args.threads} threads, chunk_size={chunk} rows{' (auto)' if args.chunk_size is None else ''}, "
        f"median of {args.repeats} calls x {args.rounds} rounds"
    )
    print(
        f"{'mode':<18}{'naive MB':>10}{'ours MB':>10}{'mem ours/naive':>16}{'naive s':>9}{'ours s':>9}{'speed':>8}"
    )
    for mode in ("forward", "forward+backward"):
        rounds: dict[str, list[dict[str, float]]] = {"naive": [], "ours": []}
        for _ in range(args.rounds):  # alternate the variants so a noisy neighbour hits both
            for variant in ("naive", "ours"):
                rounds[variant].append(run_in_subprocess(args, variant, mode))
        res = {
            v: {k: statistics.median(r[k] for r in rs) for k in ("extra_peak_bytes", "seconds")}
            for v, rs in rounds.items()
        }
        nv, us = res["naive"]["extra_peak_bytes"], res["ours"]["extra_peak_bytes"]
        print(
            f"{mode:<18}{nv / 2**20:>10.0f}{us / 2**20:>10.0f}{us / nv:>16.3f}{res['naive']['seconds']:>9.3f}"
            f"{res['ours']['seconds']:>9.3f}{res['naive']['seconds'] / res['ours']['seconds']:>7.2f}x"
        )
    print(
        f"(forward+backward peaks include the {grad_bytes / 2**20:.0f} MB gradient of the inputs, which both "
        f"variants must return; beyond it: naive {round((nv - grad_bytes) / 2**20)} MB, "
        f"ours {round((us - grad_bytes) / 2**20)} MB)"
    )


if __name__ == "__main__":
    main()
