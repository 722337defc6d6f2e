"""Where one update's time goes at a real small shape: decoder forward, log-prob head, head backward, decoder
backward, optimizer step.

The model is a randomly initialised Llama of a real small shape (``vllm_vs_hf.SMOL_SHAPE``: hidden 576, 30
layers, 9 heads of 64 with 3 KV heads, MLP 1,536, vocabulary 49,152, tied embeddings; 135M parameters), float32.
One micro-batch is ``--rows`` rows of ``--prompt`` prompt tokens and ``--response`` response tokens (random
ids, every token real: a random model runs every rollout to the limit), in G = ``--group`` groups with random
0/1 rewards. The update is the project's own: :func:`~echorl_lightning.training.forward.policy_response_logprobs`
split at the decoder's output (the decoder forward, then the chunked log-prob/entropy head over the T response
positions), GRPO's loss through :func:`~echorl_lightning.training.loss.rlvr_echo_loss` with an EchoClip on the
first row, the backward split at the same place (the head's backward into the hidden states, then the
decoder's), and one AdamW step. Each phase is timed with ``time.perf_counter`` around a finished call (CPU:
synchronous), ``--reps`` times after one warm-up; the medians are printed, with each phase's share.

Run from the repository root:

    HF_HUB_OFFLINE=1 python benchmarks/train_profile.py --response 128 512 --rows 8 --reps 3 --threads 2

Left out: the rollout (generation), the no-grad old-log-prob pass (one more decoder forward and head, no
backward), bf16, GPUs, and the trainer's own bookkeeping.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from machine import machine_line  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from vllm_vs_hf import SMOL_SHAPE  # noqa: E402

from echorl_lightning.algorithms.presets import resolve_method  # noqa: E402
from echorl_lightning.ops import logprobs_and_entropy_from_hidden  # noqa: E402
from echorl_lightning.rollout.batch import pad_rollouts  # noqa: E402
from echorl_lightning.training.forward import lm_head_parts  # noqa: E402
from echorl_lightning.training.loss import rlvr_echo_loss  # noqa: E402

PHASES = ("decoder_fwd", "head_fwd", "loss", "head_bwd", "decoder_bwd", "optimizer")


def one_update(
    model: LlamaForCausalLM, optimizer: torch.optim.Optimizer, batch, advantages, clip_mask
) -> dict:
    """One micro-batch update, each phase timed (seconds)."""
    times = {}
    method = resolve_method("grpo")
    decoder, weight, bias, logit_scale, softcap = lm_head_parts(model)
    p, t = batch.prompt_len, batch.responses.shape[1]

    t0 = time.perf_counter()
    hidden = (
        decoder(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
        )
        .last_hidden_state[:, p - 1 : p - 1 + t]
        .contiguous()
    )  # [n, T, D]
    times["decoder_fwd"] = time.perf_counter() - t0

    cut = hidden.detach().requires_grad_()  # the backward is split here
    t0 = time.perf_counter()
    logp, _ = logprobs_and_entropy_from_hidden(
        cut, weight, batch.responses, 1.0, bias, logit_scale=logit_scale, softcap=softcap
    )  # [n, T]
    times["head_fwd"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    mask = batch.response_mask
    loss, _ = rlvr_echo_loss(
        logp,
        logp.detach(),
        advantages,
        mask,
        torch.ones(len(batch)),
        clip_mask,
        method=method,
        echo_coef=0.001,
        max_len=t,
        num_tokens=mask.sum(),
        num_seqs=torch.tensor(float(len(batch))),
        num_clips=clip_mask.any(-1).float().sum(),
    )
    times["loss"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    loss.backward()  # into `cut` and the head weight
    times["head_bwd"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    hidden.backward(cut.grad)
    times["decoder_bwd"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    times["optimizer"] = time.perf_counter() - t0
    return times


def profile(rows: int, prompt: int, response: int, group: int, reps: int) -> dict[str, float]:
    """Median phase times of ``reps`` updates after one warm-up."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOL_SHAPE)).float().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    g = torch.Generator().manual_seed(0)
    vocab = SMOL_SHAPE["vocab_size"]
    prompts = [torch.randint(3, vocab, (prompt,), generator=g).tolist() for _ in range(rows)]
    responses = [torch.randint(3, vocab, (response,), generator=g).tolist() for _ in range(rows)]
    batch = pad_rollouts(prompts, responses, pad_id=SMOL_SHAPE["pad_token_id"])
    rewards = torch.randint(0, 2, (rows // group, group), generator=g).float()  # [B, G]
    advantages = (rewards - rewards.mean(-1, keepdim=True)).reshape(rows)  # [N]
    clip_mask = torch.zeros(rows, response, dtype=torch.bool)
    clip_mask[0, : response // 4] = True  # one EchoClip
    runs = [one_update(model, optimizer, batch, advantages, clip_mask) for _ in range(reps + 1)][1:]
    return {phase: statistics.median(r[phase] for r in runs) for phase in PHASES}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--response", type=int, nargs="+", default=[128, 512], help="response tokens T")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens P")
    parser.add_argument("--rows", type=int, default=8, help="rows of the micro-batch")
    parser.add_argument("--group", type=int, default=8, help="G, rows per group (divides --rows)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine_line()}; {args.rows} rows x (P={args.prompt} + T)")
    print("| T | " + " | ".join(PHASES) + " | total s | tokens/s of the update |")
    print("|---" * (len(PHASES) + 3) + "|")
    for response in args.response:
        med = profile(args.rows, args.prompt, response, args.group, args.reps)
        total = sum(med.values())
        cells = " | ".join(f"{med[p]:.2f} ({100 * med[p] / total:.0f}%)" for p in PHASES)
        print(f"| {response} | {cells} | {total:.2f} | {args.rows * response / total:,.0f} |", flush=True)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"peak resident set: {peak_gb:.2f} GB")


if __name__ == "__main__":
    main()
