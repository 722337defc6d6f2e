"""Probe: does rejection-sampling fine-tuning after the SFT warm-start reach issue 14's all-success target?

The regime asks for all-success groups >= 20% at pass@1 0.3-0.6 (8 samples at T = 1). SFT alone gives about
10% at pass@1 0.58 (``experiments/results/countdown_regime.md``): per-problem success is spread around the
mean, not split into solved and unsolved problems. A round of rejection sampling samples ``--k`` completions
of ``--prompts`` training problems from the current model, keeps the right answers (with
``--require-valid``, the default, only those whose every step is valid: ``CountdownVerifier(
require_valid_trace=True)``) and fine-tunes on them for ``--steps`` batches of 16. That concentrates the model
on the problems and the searches it already gets right. Before the first round and after each, the regime is
measured on ``--eval`` distinct ``id`` val problems x 8 at T = 1 (pass@1, all-success, all-fail), and the CPU
time of the rounds themselves is printed, to add to the SFT warm-start's.

    OMP_NUM_THREADS=1 python experiments/rft_probe.py --rounds 2 --steps 200 --eval 256   # the shipped model
    python experiments/rft_probe.py --model DIR --out DIR2 ...                              # save the result

This is a measurement, not the shipped recipe: the shipped ``tiny-countdown`` is the SFT stage alone.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from echorl_lightning.data.countdown_dm import countdown_prompts  # noqa: E402
from echorl_lightning.data.sft import sft_collate  # noqa: E402
from echorl_lightning.rewards.countdown import CountdownVerifier  # noqa: E402
from echorl_lightning.tiny import TINY_COUNTDOWN_PATH  # noqa: E402
from echorl_lightning.tiny.sft import response_nll, sample_completions  # noqa: E402
from experiments.countdown_regime import config_difficulty, group_regime  # noqa: E402


def sample_scored(model, tok, examples, k: int, verifier, max_new_tokens: int = 384, batch: int = 16):
    """``k`` completions per example at T = 1: ``(prompt ids, completion ids, score)`` per completion, the
    rows of one example contiguous; a completion that never produced EOS scores 0."""
    model.eval()
    rows = []
    for start in range(0, len(examples), batch):
        chunk = examples[start : start + batch]
        prompt_ids = tok([ex.prompt for ex in chunk], add_special_tokens=False)["input_ids"]
        completions, ended = sample_completions(
            model, prompt_ids, k, max_new_tokens, 1.0, tok.eos_token_id, tok.pad_token_id
        )
        scores = verifier(tok.batch_decode(completions), [ex.reference for ex in chunk for _ in range(k)])
        for i, completion in enumerate(completions):
            score = float(scores[i] or 0.0) if ended[i] else 0.0
            rows.append((prompt_ids[i // k], completion, score))
    return rows


def fine_tune(model, kept, steps: int, lr: float, eos_id: int, pad_id: int, rng: random.Random,
              batch: int = 16) -> float:  # fmt: skip
    """``steps`` AdamW steps on batches of ``batch`` pairs ``(prompt ids, completion ids)`` drawn from ``kept``
    (the NLL of completion + EOS); returns the last batch's loss."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        pairs = rng.sample(kept, min(batch, len(kept)))
        b = sft_collate([p for p, _ in pairs], [c for _, c in pairs], eos_id, pad_id)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits  # [N, L, V]
        loss, _ = response_nll(logits, b["input_ids"], b["loss_mask"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return float(loss.detach())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=TINY_COUNTDOWN_PATH)
    parser.add_argument("--config", default=str(REPO / "configs/warmstart_countdown.yaml"),
                        help="a config whose data.init_args.difficulty is the task")  # fmt: skip
    parser.add_argument("--prompts", type=int, default=256, help="training problems sampled per round")
    parser.add_argument("--k", type=int, default=8, help="samples per training problem")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--steps", type=int, default=300, help="fine-tuning batches of 16 per round")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--eval", type=int, default=128, help="distinct id val problems x 8 for the regime")
    parser.add_argument("--any-correct", action="store_true", help="keep right answers with faulty steps too")
    parser.add_argument("--max-new-tokens", type=int, default=384)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="save the final model and tokenizer here")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    difficulty = config_difficulty(args.config)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    val = countdown_prompts("val", args.eval, 0, difficulty, distinct=True)
    plain, keep = CountdownVerifier(), CountdownVerifier(require_valid_trace=not args.any_correct)

    def report(label: str) -> None:
        scores = [s for _, _, s in sample_scored(model, tok, val, 8, plain, args.max_new_tokens)]
        print(f"| {label} | %.3f | %.3f | %.3f |" % group_regime(scores, 8), flush=True)

    print(f"{args.model}; {len(val)} distinct id val problems x 8 at T = 1\n")
    print("| after | pass@1 | all-success | all-fail |\n|---|---|---|---|")
    report("SFT")
    cpu = 0.0
    for r in range(args.rounds):
        start = time.process_time()
        train = countdown_prompts("train", args.prompts, 1000 * (args.seed + 1) + r, difficulty)
        rows = sample_scored(model, tok, train, args.k, keep, args.max_new_tokens)
        kept = [(p, c) for p, c, s in rows if s == 1.0]
        if not kept:
            raise RuntimeError(f"round {r + 1}: no sample of {len(rows)} was kept; nothing to fine-tune on")
        loss = fine_tune(model, kept, args.steps, args.lr, tok.eos_token_id, tok.pad_token_id, rng)
        cpu += time.process_time() - start
        report(
            f"round {r + 1}: kept {len(kept)} of {len(rows)}, last loss {loss:.3f}, {cpu / 60:.1f} CPU-min"
        )
    if args.out:
        model.save_pretrained(args.out)
        tok.save_pretrained(args.out)


if __name__ == "__main__":
    main()
