"""What the byte tokenizer costs on Countdown: tokens per trace and one RL step's time, byte vs task BPE.

Usage (from the repository root; see benchmarks/README.md):

    python benchmarks/countdown_tokens.py                  # 512-symbol BPEs, 256 rows, 3 rounds, 1 thread
    python benchmarks/countdown_tokens.py --vocab 1024     # a larger merge table

Three tokenizations of the same Countdown texts (prompt + solver trace, the warm-start's difficulty):

* ``byte``: the shipped one (``recipes.tiny.tokenizer``), one token per character;
* ``bpe-qwen2``: ``recipes.tiny.bpe.train_bpe_tokenizer`` with Qwen2's pre-tokenizer, the only one
  a ``model_type: qwen2`` folder keeps when transformers loads it (digits stay single tokens);
* ``bpe-gpt2``: the same trainer with GPT-2's regex (numbers merge), which needs a folder of another model
  type (a Llama config) to survive loading.

Each BPE is trained on ``--train`` ``train`` texts and measured on ``--held-out`` ``val`` texts (exact round trip
checked). Then, for each, a randomly initialised policy of the ``tiny-countdown`` shape (a 4-layer
Qwen2, hidden 96, with that vocabulary; the shipped model is now a Llama of that size with the ``bpe-gpt2``
kind) runs the two halves of an RL step at that tokenization's lengths:
**rollout**: ``generate`` of ``--rows`` rows from the held-out prompts, forced to exactly the mean response
length (``min_new_tokens = max_new_tokens``, so EOS cannot shorten one variant); **update**: forward +
backward of the next-token loss on those rows in 4 micro-batches, and one AdamW step. ``--rounds`` alternates
the variants and reports medians and the speed-up against ``byte``. The weights are random: only lengths and
shapes matter to the time, not what is sampled.
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

from echorl_lightning.tasks.countdown.problems import make_problems  # noqa: E402
from recipes.tiny.bpe import train_bpe_tokenizer  # noqa: E402
from recipes.tiny.model import build_tiny_model, tiny_qwen2_config  # noqa: E402
from recipes.tiny.tokenizer import build_tokenizer  # noqa: E402


def _lengths(tokenizer, problems) -> tuple[float, float, bool]:
    """Mean prompt and response tokens over ``problems``, and whether every text round-trips."""
    prompts, responses, exact = [], [], True
    for p in problems:
        prompt = tokenizer(p.prompt, add_special_tokens=False)["input_ids"]
        response = tokenizer(p.solution, add_special_tokens=False)["input_ids"]
        exact &= tokenizer.decode(prompt) == p.prompt and tokenizer.decode(response) == p.solution
        prompts.append(len(prompt))
        responses.append(len(response) + 1)  # + EOS
    return statistics.fmean(prompts), statistics.fmean(responses), exact


def _step_time(tokenizer, problems, rows: int, new_tokens: int, seed: int) -> tuple[float, float]:
    """(rollout s, update s) of one RL step of a random tiny-countdown-shaped policy with ``tokenizer``."""
    torch.manual_seed(seed)
    config = tiny_qwen2_config(max_position_embeddings=512, vocab_size=len(tokenizer))
    model = build_tiny_model(config).eval()
    tokenizer.padding_side = "left"
    texts = [problems[i % len(problems)].prompt for i in range(rows)]
    batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            **batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True, top_k=0, top_p=1.0
        )
    rollout = time.perf_counter() - start
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    mask = torch.cat([batch["attention_mask"], torch.ones(rows, new_tokens, dtype=torch.long)], dim=1)
    start = time.perf_counter()
    for ids, m in zip(out.chunk(4), mask.chunk(4), strict=True):
        labels = ids.masked_fill(m == 0, -100)
        model(input_ids=ids, attention_mask=m, labels=labels).loss.backward()
    optimizer.step()
    update = time.perf_counter() - start
    return rollout, update


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, default=512, help="the BPEs' largest vocabulary (>= 258)")
    parser.add_argument("--train", type=int, default=1500, help="train texts the BPEs learn from")
    parser.add_argument("--held-out", type=int, default=300, help="val texts measured")
    parser.add_argument("--rows", type=int, default=256, help="rollout rows (32 prompts x 8 in the sweep)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    train = make_problems("train", args.train)
    held_out = make_problems("val", args.held_out)
    texts = [p.prompt + p.solution for p in train]
    tokenizers = {
        "byte": build_tokenizer(),
        "bpe-qwen2": train_bpe_tokenizer(texts, args.vocab, pre_tokenization="qwen2"),
        "bpe-gpt2": train_bpe_tokenizer(texts, args.vocab, pre_tokenization="gpt2"),
    }
    chars = statistics.fmean(len(p.solution) + 1 for p in held_out)
    lengths = {name: _lengths(tok, held_out) for name, tok in tokenizers.items()}
    print(f"{args.held_out} held-out Countdown traces, {chars:.1f} characters per response (+ EOS)")
    for name, tok in tokenizers.items():
        prompt, response, exact = lengths[name]
        print(
            f"{name:10s} vocab {len(tok):4d}: prompt {prompt:5.1f} tokens, response {response:6.1f} tokens "
            f"({chars / response:.2f} chars/token), round trip {'exact' if exact else 'BROKEN'}"
        )
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in tokenizers}
    for r in range(args.rounds):
        for name, tok in tokenizers.items():
            times[name].append(_step_time(tok, held_out, args.rows, round(lengths[name][1]), seed=r))
    base = None
    for name in tokenizers:
        rollout = statistics.median(t[0] for t in times[name])
        update = statistics.median(t[1] for t in times[name])
        total = rollout + update
        base = base or total
        print(
            f"{name:10s} {args.rows} rows x {round(lengths[name][1])} tokens: rollout {rollout:5.1f} s, "
            f"update {update:5.1f} s, step {total:5.1f} s ({base / total:.2f}x byte's speed)"
        )


if __name__ == "__main__":
    main()
