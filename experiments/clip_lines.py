"""Which trace line ends the EchoClip under each selector, on Countdown rollouts of a model.

Samples G rollouts per training prompt at the rollout temperature, rewards them with ``CountdownVerifier``,
computes the policy's token entropy in one forward pass and picks clips with the training code's own
:func:`~echorl_lightning.echo.clips.select_echo_clips` (all-success groups, one clip per group). For each
selector it counts the kind of the line the clip ends on (``move``, ``no``, ``back``, ``answer``;
:func:`~experiments.countdown_traces.step_kind`), the clip's end position in its response (0 = first
line, 1 = last), its length in tokens, and whether a line up to and including its last one is an invalid
step of the search (:func:`~echorl_lightning.tasks.countdown.steps.first_invalid_step`: the clip then teaches a
faulty step that happened to end well). This explains the selector ablation of
``experiments/results/echo_forking.md``: on the arithmetic task ``lowest`` and ``full`` end on the same
``Answer:`` line; on Countdown they do not.

    python experiments/clip_lines.py                        # the embedded tiny-countdown, 64 prompts x 8
    python experiments/clip_lines.py --prompts 256 --config experiments/configs/echo_forking.yaml

The training prompts are drawn at the difficulty of ``--config``'s ``data.init_args.task.init_args.difficulty`` (default: the
warm-start's, configs/warmstart_countdown.yaml, the sweep's too).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from echorl_lightning.echo.clips import ECHO_SELECTORS, select_echo_clips  # noqa: E402
from echorl_lightning.echo.steps import delimiter_token_ids, step_end_mask_from_tokens  # noqa: E402
from echorl_lightning.tasks.countdown.difficulty import DEFAULT_DIFFICULTY, AnyDifficulty  # noqa: E402
from echorl_lightning.tasks.countdown.problems import parse_reference  # noqa: E402
from echorl_lightning.tasks.countdown.steps import first_invalid_step  # noqa: E402
from echorl_lightning.tasks.countdown.task import CountdownTask  # noqa: E402
from echorl_lightning.tasks.countdown.verifier import CountdownVerifier  # noqa: E402
from echorl_lightning.tiny import TINY_COUNTDOWN_PATH  # noqa: E402
from echorl_lightning.training.checkpoint_safety import load_safetensors_model  # noqa: E402
from experiments.countdown_regime import token_entropy  # noqa: E402
from experiments.countdown_traces import step_kind  # noqa: E402
from recipes.task_config import config_difficulty  # noqa: E402
from recipes.tiny.sft import sample_completions  # noqa: E402


def clip_lines(
    model,
    tok,
    prompts: int,
    group: int,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    batch: int = 16,
    difficulty: AnyDifficulty = DEFAULT_DIFFICULTY,
) -> dict[str, dict]:
    """Per selector: ``{"kinds": Counter, "pos": [...], "tokens": [...], "faulty": [...]}`` (one entry per
    clip; ``faulty``: the clip holds an invalid step) over the all-success groups of ``prompts`` training
    prompts at ``difficulty``."""
    examples = CountdownTask(difficulty).prompts("train", prompts, seed)
    verifier, newline_ids = CountdownVerifier(), delimiter_token_ids(tok)
    out: dict[str, dict] = {
        s: {"kinds": Counter(), "pos": [], "tokens": [], "faulty": []} for s in ECHO_SELECTORS.names()
    }
    out["_groups"] = {"all_success": 0, "total": 0}
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, len(examples), batch):
        chunk = examples[start : start + batch]
        prompt_ids = tok([ex.prompt for ex in chunk], add_special_tokens=False)["input_ids"]
        torch.manual_seed(seed + start)
        completions, ended = sample_completions(
            model, prompt_ids, group, max_new_tokens, temperature, tok.eos_token_id, tok.pad_token_id
        )
        texts = tok.batch_decode(completions)
        rewards = torch.tensor(
            [s or 0.0 for s in verifier(texts, [ex.reference for ex in chunk for _ in range(group)])]
        )  # [N]
        rows = [prompt_ids[i // group] for i in range(len(completions))]
        faults = [
            first_invalid_step(text, *parse_reference(chunk[i // group].reference))
            for i, text in enumerate(texts)
        ]
        entropy, mask, tokens = token_entropy(model, rows, completions, temperature)
        ends = step_end_mask_from_tokens(tokens, newline_ids) & mask  # [N, T]
        out["_groups"]["total"] += len(chunk)
        out["_groups"]["all_success"] += int((rewards.reshape(-1, group) == 1.0).all(1).sum())
        for name in ECHO_SELECTORS.names():
            clips = select_echo_clips(
                entropy,
                mask,
                ends,
                rewards,
                group,
                selector=name,
                truncated=~ended.bool(),
                generator=generator,
            )
            for i in clips.any(1).nonzero().flatten().tolist():
                k = int(clips[i].sum())
                lines = texts[i].split("\n")
                clip_text = tok.decode(completions[i][:k]).rstrip("\n")
                end = clip_text.count("\n")  # the clip's last line, 0-based
                out[name]["kinds"][step_kind(lines[end])] += 1
                out[name]["pos"].append(end / max(len(lines) - 1, 1))
                out[name]["tokens"].append(k)
                # first_invalid_step counts non-empty lines: the clip's last one is its count minus one
                last = sum(1 for line in clip_text.split("\n") if line.strip()) - 1
                out[name]["faulty"].append(faults[i] is not None and faults[i][0] <= last)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=TINY_COUNTDOWN_PATH)
    parser.add_argument("--prompts", type=int, default=64, help="training prompts (groups)")
    parser.add_argument("--group", type=int, default=8, help="rollouts per prompt (G)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=384)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--config",
        default=str(REPO / "configs/warmstart_countdown.yaml"),
        help="a config whose data.init_args.task.init_args.difficulty is the training task",
    )
    args = parser.parse_args(argv)
    difficulty = config_difficulty(args.config)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = load_safetensors_model(args.model, dtype=torch.float32).eval()
    stats = clip_lines(
        model,
        tok,
        args.prompts,
        args.group,
        args.temperature,
        args.max_new_tokens,
        args.seed,
        difficulty=difficulty,
    )
    groups = stats.pop("_groups")
    print(
        f"{groups['all_success']} all-success groups of {groups['total']} ({args.model}, G = {args.group}, "
        f"T = {args.temperature:g}, seed {args.seed})\n"
    )
    kinds = ["move", "no", "back", "answer", "other"]
    print(
        "| selector | clips | "
        + " | ".join(f"ends on `{k}`" for k in kinds)
        + " | end pos | tokens | through a faulty step |"
    )
    print("|---|---|" + "---|" * (len(kinds) + 3))
    for name, s in stats.items():
        n = len(s["pos"])
        if not n:
            print(f"| `{name}` | 0 |" + " – |" * (len(kinds) + 3))
            continue
        cells = [f"{s['kinds'][k]}" for k in kinds]
        print(
            f"| `{name}` | {n} | "
            + " | ".join(cells)
            + f" | {statistics.fmean(s['pos']):.2f} | {statistics.fmean(s['tokens']):.1f} | {sum(s['faulty'])} |"
        )


if __name__ == "__main__":
    main()
