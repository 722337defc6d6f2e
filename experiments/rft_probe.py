"""Probe: the regime (issue 14's all-success target) after each round of the RFT warm-start stage.

The regime asks for all-success groups >= 20% at pass@1 0.3-0.6 (8 samples at T = 1). SFT alone gives about
10% at pass@1 0.58: per-problem success is spread around the mean, not split into solved and unsolved
problems. :mod:`recipes.tiny.rft` (rejection-sampling fine-tuning: sample ``--k`` completions of
``--prompts`` training problems, keep the right answers whose every step is valid, fine-tune ``--steps``
batches of 16, repeat) concentrates the model on the problems and searches it already gets right. This script
runs the same rounds on ``--model`` and, before the first round and after each, measures the regime on
``--eval`` distinct ``id`` val problems x 8 at T = 1 (pass@1, all-success, all-fail), with the rounds' own CPU
time (the measurements are not counted).

    OMP_NUM_THREADS=1 python experiments/rft_probe.py --model runs/warmstart_countdown/hf --eval 256
    python experiments/rft_probe.py --model DIR --out DIR2 ...                # save the result
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from echorl_lightning.tasks.countdown import CountdownTask, CountdownVerifier  # noqa: E402
from echorl_lightning.tiny import TINY_COUNTDOWN_PATH  # noqa: E402
from echorl_lightning.training.checkpoint_safety import load_safetensors_model  # noqa: E402
from experiments.countdown_regime import group_regime  # noqa: E402
from recipes.task_config import config_difficulty  # noqa: E402
from recipes.tiny.rft import RoundStats, add_arguments, rft_rounds, sample_scored, save  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=TINY_COUNTDOWN_PATH)
    parser.add_argument(
        "--config",
        default=str(REPO / "configs/warmstart_countdown.yaml"),
        help="a config whose data.init_args.task.init_args.difficulty is the task",
    )
    parser.add_argument("--eval", type=int, default=128, help="distinct id val problems x 8 for the regime")
    parser.add_argument("--eval-max-new-tokens", type=int, default=384, help="the regime's token limit")
    add_arguments(parser)
    parser.add_argument("--out", default=None, help="save the final model and tokenizer here")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    difficulty = config_difficulty(args.config)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = load_safetensors_model(args.model, dtype=torch.float32).eval()
    val = CountdownTask(difficulty).prompts("val", args.eval, 0, distinct=True)
    plain = CountdownVerifier()
    total = 0.0

    def report(label: str) -> None:
        scores = [s for _, _, s in sample_scored(model, tok, val, 8, plain, args.eval_max_new_tokens)]
        print(f"| {label} | %.3f | %.3f | %.3f |" % group_regime(scores, 8), flush=True)

    def after_round(s: RoundStats) -> None:
        nonlocal total
        total += s.cpu_s
        report(
            f"round {s.round}: kept {s.kept} of {s.sampled}, last loss {s.loss:.3f}, {total / 60:.1f} CPU-min"
        )

    print(f"{args.model}; {len(val)} distinct id val problems x 8 at T = 1\n")
    print("| after | pass@1 | all-success | all-fail |\n|---|---|---|---|")
    report("start")
    rft_rounds(
        model,
        tok,
        difficulty,
        args.rounds,
        args.prompts,
        args.k,
        args.steps,
        args.lr,
        args.seed,
        not args.any_correct,
        args.max_new_tokens,
        args.temperature,
        after_round,
    )
    if args.out:
        save(model, args.model, args.out)


if __name__ == "__main__":
    main()
