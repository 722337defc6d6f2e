"""Peak memory of one RL epoch (rollout, no-grad old-log-prob pass, one update): full logits vs hidden states.

Usage (from the repository root, venv active; see benchmarks/README.md):

    python benchmarks/step_memory.py                            # T = 512, 1,024, 2,048, both variants
    python benchmarks/step_memory.py --lengths 512 --rollout random   # no generation (faster)
    python benchmarks/step_memory.py --device cuda              # on a GPU (peak allocated memory)

The model is a randomly initialised Qwen2 with Qwen2.5's vocabulary (V = 151,936, untied head), hidden 256,
4 layers, intermediate 1,536: 83.3M parameters, so float32 weights + grads + AdamW's two moments take
16 bytes x 83.3M = 1.33 GB. One epoch of the flagship setting (``configs/qwen_grpo_echo.yaml`` scaled to
one group: G = 8 rollouts of one prompt, ``logprob_batch_size: 8``, micro-batches of 4 rows, gradient
checkpointing, temperature 1.0), in float32 on CPU:

1. rollout: ``model.generate`` samples 8 responses of exactly T tokens (``min_new_tokens = T``) after a
   P-token prompt (``--rollout random`` draws the tokens instead);
2. old-log-prob pass: :func:`echorl_lightning.training.forward.policy_response_logprobs` under no_grad, in
   batches of 8 rows (old log-probs and the token entropies EchoRL selects its clips with);
3. update: 2 micro-batches of 4 rows, forward + backward of a PPO-clip surrogate (random advantages,
   token-mean), then one AdamW step (which allocates the optimizer state).

Variants: ``full_logits`` (``model(...).logits`` over all P + T positions, then the chunked log-prob op:
what ``EchoRLModule.response_logprobs`` did before issue 10) and ``hidden`` (the decoder only, then
``logprobs_and_entropy_from_hidden`` over the T response positions). Each (variant, T) runs in its own
fresh subprocess, one at a time. The baseline is the process's resident set after imports and a warm-up on
a tiny model, before the policy is built; a phase's peak is the peak resident set size (VmHWM, reset through
/proc/self/clear_refs at the phase's start) minus that baseline, so the epoch's peak includes the 1.33 GB of
weights, gradients and AdamW state. On CUDA it is ``torch.cuda.max_memory_allocated`` minus the memory
allocated at the baseline. A variant is skipped when its rough estimate exceeds the available memory.

Left out: the trainer (Lightning hooks, the rollout callback's bookkeeping, the echo loss: a few [n, T]
tensors), bf16 autocast (slow on CPU), and the vLLM engine.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from echorl_lightning.training.forward import policy_response_logprobs

Variant = Literal["hidden", "full_logits"]
GB = 1e9


def _status_kib(field: str) -> int:
    """A ``kB`` field (VmRSS, VmHWM) of /proc/self/status."""
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise OSError(f"no {field} in /proc/self/status")
    return int(match.group(1))


class PeakMeter:
    """Absolute memory in bytes: ``now()`` the current usage, ``reset()`` starts a new peak, ``peak()`` the
    peak since the last reset (VmRSS / VmHWM on Linux CPU; allocated memory on CUDA)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def now(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.memory_allocated(self.device)
        return _status_kib("VmRSS") * 1024

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS

    def peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        return _status_kib("VmHWM") * 1024


def build_policy(args: argparse.Namespace, vocab: int, device: torch.device) -> Qwen2ForCausalLM:
    """Random Qwen2 (untied head), float32, on device; seeded."""
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=args.prompt_len + max(args.lengths) + 8,
        tie_word_embeddings=False,
        eos_token_id=0,
        pad_token_id=1,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).to(device)


def logprobs(
    model: Qwen2ForCausalLM, ids: torch.Tensor, prompt_len: int, variant: Variant, chunk_size: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logp, entropy) [n, T] of the responses ids[:, P:] (no padding: every row is P + T real tokens)."""
    mask = torch.ones_like(ids)
    positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)  # [n, P + T]
    return policy_response_logprobs(
        model,
        ids,
        mask,
        positions,
        prompt_len,
        ids[:, prompt_len:],
        1.0,
        chunk_size=chunk_size,
        full_logits=variant == "full_logits",
    )


def epoch(
    model: Qwen2ForCausalLM, args: argparse.Namespace, t_len: int, variant: Variant, meter: PeakMeter
) -> dict[str, dict[str, float]]:
    """Run one epoch; returns per phase {"peak": absolute peak bytes, "seconds": wall time}."""
    device = next(model.parameters()).device
    gen = torch.Generator(device).manual_seed(1)
    n, p_len, vocab = args.rows, args.prompt_len, model.config.vocab_size
    prompt = torch.randint(2, vocab, (1, p_len), generator=gen, device=device).expand(n, p_len)  # [n, P]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    phases: dict[str, dict[str, float]] = {}

    def phase(name: str, start: float) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        phases[name] = {"peak": meter.peak(), "seconds": time.perf_counter() - start}

    meter.reset()
    start = time.perf_counter()
    model.eval()
    if args.rollout == "generate":
        with torch.no_grad():
            ids = model.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=t_len,
                min_new_tokens=t_len,
                pad_token_id=1,
            )  # [n, P + T]
    else:
        ids = torch.cat([prompt, torch.randint(2, vocab, (n, t_len), generator=gen, device=device)], 1)
    assert ids.shape == (n, p_len + t_len), ids.shape
    phase("rollout", start)

    meter.reset()
    start = time.perf_counter()
    old_logp = []
    with torch.no_grad():
        for rows in torch.split(ids, args.logprob_batch_size):
            logp, _entropy = logprobs(model, rows, p_len, variant, args.chunk_size)
            old_logp.append(logp)
    old = torch.cat(old_logp)  # [n, T]
    phase("old_logprob", start)

    meter.reset()
    start = time.perf_counter()
    model.train()
    advantages = torch.randn(n, generator=gen, device=device)  # [n]
    for rows in torch.split(torch.arange(n, device=device), args.micro_batch):
        logp, _ = logprobs(model, ids[rows], p_len, variant, args.chunk_size)  # [m, T]
        ratio = torch.exp(logp - old[rows])
        adv = advantages[rows, None]  # [m, 1]
        surrogate = torch.minimum(ratio * adv, ratio.clamp(0.8, 1.2) * adv)
        loss = -surrogate.sum() / (n * t_len)  # token-mean over the whole step
        loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    phase("update", start)
    return phases


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One (variant, T) in this process."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    meter = PeakMeter(device)
    # Warm up kernels, thread pools and generate() on a tiny model, outside the baseline.
    tiny = argparse.Namespace(**{**vars(args), "lengths": [4], "prompt_len": 4, "rows": 2, "micro_batch": 1})
    epoch(build_policy(tiny, 64, device), tiny, 4, args.variant, meter)
    baseline = meter.now()
    model = build_policy(args, args.vocab, device)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    num_params = sum(p.numel() for p in model.parameters())
    phases = epoch(model, args, args.length, args.variant, meter)
    return {
        "variant": args.variant,
        "T": args.length,
        "params": num_params,
        "baseline": baseline,
        "phases": {k: {"peak": v["peak"] - baseline, "seconds": v["seconds"]} for k, v in phases.items()},
        "peak": max(v["peak"] for v in phases.values()) - baseline,
    }


def estimate_bytes(args: argparse.Namespace, variant: Variant, t_len: int) -> float:
    """A rough peak for the skip check: 16 bytes per parameter, plus for full_logits the float32 logits of
    the old-log-prob batch, or the logits and their gradient of a micro-batch (whichever is larger)."""
    params = 2 * args.vocab * args.hidden_size + 12 * args.layers * args.hidden_size * args.hidden_size
    logits = (args.prompt_len + t_len) * args.vocab * 4
    extra = max(args.logprob_batch_size, 2 * args.micro_batch) * logits if variant == "full_logits" else 2e9
    return 16 * params + extra


def available_bytes() -> float:
    match = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    return float("inf") if match is None else int(match.group(1)) * 1024.0


def run_in_subprocess(args: argparse.Namespace, variant: Variant, t_len: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", "--variant", variant, "--length", str(t_len)]
    for key in ("vocab", "hidden_size", "intermediate_size", "layers", "prompt_len", "rows", "micro_batch"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    cmd += ["--logprob-batch-size", str(args.logprob_batch_size), "--threads", str(args.threads)]
    cmd += ["--device", args.device, "--rollout", args.rollout, "--lengths", *map(str, args.lengths)]
    if args.chunk_size is not None:
        cmd += ["--chunk-size", str(args.chunk_size)]
    if not args.gradient_checkpointing:
        cmd += ["--no-gradient-checkpointing"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=[512, 1024, 2048], help="response lengths T"
    )
    parser.add_argument(
        "--variants", nargs="+", default=["full_logits", "hidden"], choices=["full_logits", "hidden"]
    )
    parser.add_argument("--vocab", type=int, default=151_936, help="V (Qwen2.5's vocabulary)")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--intermediate-size", type=int, default=1536)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=256, help="P, prompt tokens")
    parser.add_argument("--rows", type=int, default=8, help="rollouts (one group of G = 8)")
    parser.add_argument("--logprob-batch-size", type=int, default=8, help="rows per old-log-prob batch")
    parser.add_argument("--micro-batch", type=int, default=4, help="rows per training micro-batch")
    parser.add_argument("--chunk-size", type=int, default=None, help="log-prob chunk rows (default: auto)")
    parser.add_argument("--rollout", choices=["generate", "random"], default="generate")
    parser.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=["hidden", "full_logits"], help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    print(
        f"one epoch: {args.rows} rollouts, P={args.prompt_len}, V={args.vocab:,}, hidden {args.hidden_size}, "
        f"{args.layers} layers, old-log-prob batches of {args.logprob_batch_size}, micro-batches of "
        f"{args.micro_batch}, gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}, rollout "
        f"{args.rollout}, {args.device}, {args.threads} threads; peaks in GB (1e9 bytes) above the baseline"
    )
    results: dict[tuple[str, int], dict[str, Any]] = {}
    for t_len in args.lengths:
        for variant in args.variants:
            need, have = estimate_bytes(args, variant, t_len), available_bytes()
            if args.device == "cpu" and need > 0.8 * have:
                print(
                    f"skip {variant} T={t_len}: needs about {need / GB:.1f} GB, {have / GB:.1f} GB available"
                )
                continue
            res = run_in_subprocess(args, variant, t_len)
            results[(variant, t_len)] = res
            phases = "  ".join(
                f"{k} {v['peak'] / GB:.2f} GB {v['seconds']:.0f} s" for k, v in res["phases"].items()
            )
            print(
                f"{variant:<12} T={t_len:<5} params {res['params'] / 1e6:.1f}M  peak {res['peak'] / GB:.2f} GB  ({phases})"
            )
            print("json " + json.dumps(res), flush=True)
    print("\n| T | full logits: epoch peak | hidden: epoch peak | full / hidden |")
    print("|---|---|---|---|")
    for t_len in args.lengths:
        old, new = results.get(("full_logits", t_len)), results.get(("hidden", t_len))
        cells = [f"{r['peak'] / GB:.2f} GB" if r else "skipped" for r in (old, new)]
        ratio = f"{old['peak'] / new['peak']:.2f}" if old and new else "-"
        print(f"| {t_len:,} | {cells[0]} | {cells[1]} | {ratio} |")


if __name__ == "__main__":
    main()
