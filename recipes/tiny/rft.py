"""Rejection-sampling fine-tuning (RFT): the second warm-start stage of the Countdown policy.

SFT on solver traces (``configs/warmstart_countdown.yaml``) spreads per-problem success around its mean, so few
problems are solved 8 times in 8: too few advantage-degenerated groups for EchoRL to feed on.
A round of RFT samples ``k`` completions per training problem from the current policy (at ``temperature``,
default 0.7: more right answers per sample than T = 1; at most ``max_new_tokens``, default 192, since a valid
solver trace is at most about 160 tokens and a search still running there has gone wrong), keeps the right
answers (by default only those whose every step is valid, ``CountdownVerifier(require_valid_trace=True)``, so
the stage never imitates a faulty step that happened to end well) and fine-tunes on them: token-mean NLL of
completion + EOS (:func:`~recipes.tiny.sft.response_nll`), a fresh AdamW at a constant ``lr`` each round,
``steps`` batches of ``batch`` distinct pairs. Repeating it concentrates the policy on the problems and
searches it already solves, and makes per-problem success bimodal: the shipped recipe's 3 rounds raise the
share of all-success groups at T = 1 (``experiments/results/countdown_regime.md`` has the figures).

    OMP_NUM_THREADS=1 python -m recipes.tiny.rft --model runs/warmstart_countdown/hf \\
        --config configs/warmstart_countdown.yaml --out runs/warmstart_countdown/rft

The output folder is a Hugging Face model plus the input's tokenizer files, copied byte for byte. Leaves out
batched generation across rounds, a KL anchor and any learning-rate schedule: the stage is a few hundred steps
of a model with under 1M parameters.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from echorl_lightning.data.types import PromptExample
from echorl_lightning.tasks.countdown import AnyDifficulty, CountdownTask, CountdownVerifier
from recipes.task_config import config_difficulty
from recipes.tiny.sft import response_nll, sample_completions
from recipes.tiny.sft_data import sft_collate

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)

Sample = tuple[list[int], list[int], float]  # (prompt ids, completion ids, score)


@dataclass(frozen=True)
class RoundStats:
    """One RFT round: ``kept`` of ``sampled`` completions fine-tuned on, the last batch's loss, CPU seconds."""

    round: int
    sampled: int
    kept: int
    loss: float
    cpu_s: float


@torch.no_grad()
def sample_scored(
    model,
    tok,
    examples: Sequence[PromptExample],
    k: int,
    verifier: Callable[[list[str], list[str]], list[float | None]],
    max_new_tokens: int = 384,
    batch: int = 16,
    temperature: float = 1.0,
) -> list[Sample]:
    """``k`` completions per example at ``temperature``, each ``(prompt ids, completion ids, score)``; the
    ``k`` rows of one example are contiguous. A completion that never produced EOS, or that the verifier scores
    None, scores 0."""
    model.eval()
    rows: list[Sample] = []
    for start in range(0, len(examples), batch):
        chunk = examples[start : start + batch]
        prompt_ids = tok([ex.prompt for ex in chunk], add_special_tokens=False)["input_ids"]
        completions, ended = sample_completions(
            model, prompt_ids, k, max_new_tokens, temperature, tok.eos_token_id, tok.pad_token_id
        )
        scores = verifier(tok.batch_decode(completions), [ex.reference for ex in chunk for _ in range(k)])
        for i, completion in enumerate(completions):
            score = float(scores[i] or 0.0) if ended[i] else 0.0
            rows.append((prompt_ids[i // k], completion, score))
    return rows


def fine_tune(
    model,
    pairs: Sequence[tuple[list[int], list[int]]],
    steps: int,
    lr: float,
    eos_id: int,
    pad_id: int,
    rng: random.Random,
    batch: int = 16,
) -> float:
    """``steps`` AdamW steps (constant ``lr``, no weight decay), each on ``batch`` distinct ``(prompt ids,
    completion ids)`` pairs drawn from ``pairs`` (all of them when fewer): the token-mean NLL of completion +
    EOS. Returns the last batch's loss."""
    pairs = list(pairs)  # one copy to draw from, not one a step
    if not pairs:
        raise ValueError("fine_tune: no (prompt, completion) pairs to train on")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        drawn = rng.sample(pairs, min(batch, len(pairs)))
        b = sft_collate([p for p, _ in drawn], [c for _, c in drawn], eos_id, pad_id)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits  # [N, L, V]
        loss, _ = response_nll(logits, b["input_ids"], b["loss_mask"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return float(loss.detach())


def rft_rounds(
    model,
    tok,
    difficulty: AnyDifficulty,
    rounds: int = 3,
    prompts: int = 256,
    k: int = 8,
    steps: int = 150,
    lr: float = 3e-4,
    seed: int = 0,
    require_valid: bool = True,
    max_new_tokens: int = 192,
    temperature: float = 0.7,
    on_round: Callable[[RoundStats], None] | None = None,
) -> list[RoundStats]:
    """``rounds`` rounds of RFT on fresh ``train``-split problems (``prompts`` a round, seeds ``1000 * (seed +
    1) + round``), in place on ``model``. ``on_round`` sees each round's statistics as it ends (the probe
    measures the regime there; its time is not counted). Raises when a round keeps nothing."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    verifier = CountdownVerifier(require_valid_trace=require_valid)
    stats = []
    for r in range(rounds):
        start = time.process_time()
        train = CountdownTask(difficulty).prompts("train", prompts, 1000 * (seed + 1) + r)
        rows = sample_scored(model, tok, train, k, verifier, max_new_tokens, temperature=temperature)
        kept = [(p, c) for p, c, s in rows if s == 1.0]
        if not kept:
            raise RuntimeError(
                f"rft round {r + 1}: none of {len(rows)} samples was right; nothing to train on"
            )
        loss = fine_tune(model, kept, steps, lr, tok.eos_token_id, tok.pad_token_id, rng)
        stats.append(RoundStats(r + 1, len(rows), len(kept), loss, time.process_time() - start))
        if on_round is not None:
            on_round(stats[-1])
    return stats


def save(model, source: str | Path, out: str | Path) -> None:
    """Write ``model`` to ``out`` with the tokenizer files of the folder ``source``, byte for byte."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (Path(source) / name).is_file():
            shutil.copyfile(Path(source) / name, out / name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The stage's options (defaults: the shipped ``tiny-countdown`` recipe), shared with the probe."""
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=256, help="training problems sampled per round")
    parser.add_argument("--k", type=int, default=8, help="samples per training problem")
    parser.add_argument("--steps", type=int, default=150, help="fine-tuning batches of 16 per round")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--any-correct", action="store_true", help="keep right answers with faulty steps too")
    parser.add_argument("--max-new-tokens", type=int, default=192, help="samples cut here score 0")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of the rounds")
    parser.add_argument("--seed", type=int, default=0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="the SFT stage's exported folder")
    parser.add_argument(
        "--config", required=True, help="the warm-start config: its data.init_args.task.init_args.difficulty"
    )
    parser.add_argument("--out", required=True, help="the folder to write")
    add_arguments(parser)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, use_safetensors=True)
    total = 0.0

    def report(s: RoundStats) -> None:
        nonlocal total
        total += s.cpu_s
        print(
            f"round {s.round}: kept {s.kept} of {s.sampled}, last loss {s.loss:.3f}, {total / 60:.1f} CPU-min",
            flush=True,
        )

    rft_rounds(
        model,
        tok,
        config_difficulty(args.config),
        args.rounds,
        args.prompts,
        args.k,
        args.steps,
        args.lr,
        args.seed,
        not args.any_correct,
        args.max_new_tokens,
        args.temperature,
        report,
    )
    save(model, args.model, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
