"""Generation throughput of the vLLM engine against the HF engine, same prompts, G, lengths and seeds.

Usage (from the repository root, in a venv with vLLM's CPU build; see benchmarks/README.md):

    python benchmarks/vllm_vs_hf.py --model tiny-arith                 # the embedded demo model
    python benchmarks/vllm_vs_hf.py --model smol-shape --prompts 4     # a random model of a real small shape

Models: ``tiny-arith`` / ``tiny-countdown`` are the shipped policies on their tasks' prompts. ``smol-shape`` is
a randomly initialised Llama of a real small shape (hidden 576, 30 layers, 9 heads of 64 with 3 KV heads, MLP
1,536, vocabulary 49,152, tied embeddings: 135M parameters) on random 32-token prompts; a random model almost
never samples EOS, so every row runs to ``--max-new-tokens``.

Both engines sample ``--prompts`` x ``--samples`` rows of at most ``--max-new-tokens`` at T = 1 from the same
fp32 weights (the vLLM engine is synced from the HF policy, dtype float32, eager). ``--rounds`` alternates the
two engines and reports each one's median generated tokens/s and the ratio (vLLM / HF). Threads: ``--threads``
torch threads for both (vLLM's CPU worker binds its OpenMP threads to the same cores).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

from echorl_lightning.rollout import HFGenerateEngine, SamplingConfig, VLLMEngine  # noqa: E402
from echorl_lightning.tiny import TINY_COUNTDOWN_PATH, TINY_MODEL_PATH  # noqa: E402

SMOL_SHAPE = dict(
    hidden_size=576,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    intermediate_size=1536,
    vocab_size=49152,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
)


def shipped(path: str, prompts: int) -> tuple[torch.nn.Module, object, list[list[int]]]:
    """A shipped policy, its tokenizer and ``prompts`` of its task's validation prompts."""
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if path == TINY_COUNTDOWN_PATH:
        from echorl_lightning.tasks.countdown import CountdownTask

        texts = [example.prompt for example in CountdownTask().prompts("val", prompts)]
    else:
        from echorl_lightning.tasks.arithmetic import ArithmeticTask

        texts = [example.prompt for example in ArithmeticTask().prompts("val", prompts)]
    return model, tokenizer, [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


class EosOnly:
    """The one tokenizer attribute the engines read: the EOS id (the random model has no tokenizer)."""

    eos_token_id = SMOL_SHAPE["eos_token_id"]
    pad_token_id = SMOL_SHAPE["pad_token_id"]


def smol_shape(folder: Path, prompts: int) -> tuple[torch.nn.Module, object, list[list[int]]]:
    """The random real-shape Llama (saved to ``folder`` so vLLM can read its config) and random prompts."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOL_SHAPE)).eval()
    model.save_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, SMOL_SHAPE["vocab_size"], (prompts, 32), generator=generator)
    return model, EosOnly(), ids.tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", choices=["tiny-arith", "tiny-countdown", "smol-shape"], default="tiny-arith"
    )
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hf-batch-size", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        if args.model == "smol-shape":
            model, tokenizer, prompts = smol_shape(Path(tmp), args.prompts)
        else:
            path = TINY_MODEL_PATH if args.model == "tiny-arith" else TINY_COUNTDOWN_PATH
            model, tokenizer, prompts = shipped(path, args.prompts)
        params = sum(p.numel() for p in model.parameters())
        hf = HFGenerateEngine(batch_size=args.hf_batch_size)
        hf.setup(model, tokenizer)
        hf.load_weights(model)
        start = time.perf_counter()
        vllm = VLLMEngine(dtype="float32", kv_cache_memory_bytes=2 << 30)  # eager on CPU
        vllm.setup(model, tokenizer)
        vllm.load_weights(model)
        setup_s = time.perf_counter() - start

        sampling = SamplingConfig(n=args.samples, max_new_tokens=args.max_new_tokens, temperature=1.0, seed=0)
        rates: dict[str, list[float]] = {"hf": [], "vllm": []}
        for round_idx in range(args.rounds):
            for name, engine in (("hf", hf), ("vllm", vllm)):
                start = time.perf_counter()
                out = engine.generate(prompts, sampling)
                seconds = time.perf_counter() - start
                tokens = sum(len(c.token_ids) for group in out for c in group)
                rates[name].append(tokens / seconds)
                print(
                    f"round {round_idx} {name:4s}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.0f} tok/s"
                )

    hf_rate, vllm_rate = statistics.median(rates["hf"]), statistics.median(rates["vllm"])
    print(
        f"{args.model} ({params / 1e6:.1f}M params), {len(prompts)} prompts x {args.samples}, <= "
        f"{args.max_new_tokens} new tokens, T=1, fp32, {args.threads} threads, {platform.processor() or platform.machine()}: "
        f"HF {hf_rate:.0f} tok/s [{min(rates['hf']):.0f}-{max(rates['hf']):.0f}], vLLM {vllm_rate:.0f} tok/s "
        f"[{min(rates['vllm']):.0f}-{max(rates['vllm']):.0f}], vLLM/HF {vllm_rate / hf_rate:.2f}x "
        f"(vLLM setup + first sync {setup_s:.1f} s)"
    )


if __name__ == "__main__":
    main()
