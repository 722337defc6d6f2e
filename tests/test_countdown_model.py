"""The Countdown warm-start through ``cli.py`` (its config parses and trains), and the shipped model."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from echorl_lightning.data.countdown import CountdownDifficulty, parse_reference
from echorl_lightning.data.countdown_dm import countdown_prompts
from echorl_lightning.data.types import PromptExample
from echorl_lightning.rewards.countdown import (
    CountdownStepChecker,
    CountdownVerifier,
    first_invalid_step,
    first_repeated_move,
)
from echorl_lightning.tiny import TINY_COUNTDOWN_PATH
from echorl_lightning.tiny.sft import sample_completions

REPO = Path(__file__).resolve().parent.parent
# Greedy decoding of the shipped model (5,000 SFT steps and 24 GRPO steps with the process-checked reward, on
# numbers in 1..20) on id val problems 0..31, measured when it was exported: 24/32 correct, 29/32 stop with EOS;
# of the 3 cut at 384 tokens, 2 loop (re-try a move from a pool already tried) and 1 writes `(no)` on a move that
# hits the target, then loops. Sampled figures in experiments/results/countdown_regime.md. A broken model falls
# below these floors; one that never learned to stop fails the stop floor.
SHIPPED_GREEDY_FLOOR = 0.5
SHIPPED_STOP_FLOOR = 0.75


def test_warmstart_config_matches_the_task_defaults() -> None:
    # the config spells out every difficulty knob: they must be the task's defaults, so the shipped model,
    # CountdownDataModule() and the regime script all mean the same task
    config = yaml.safe_load((REPO / "configs/warmstart_countdown.yaml").read_text())
    assert CountdownDifficulty(**config["data"]["init_args"]["difficulty"]) == CountdownDifficulty()
    demo = yaml.safe_load((REPO / "configs/countdown_demo.yaml").read_text())
    assert CountdownDifficulty(**demo["data"]["init_args"]["difficulty"]) == CountdownDifficulty()
    # the last warm-start stage (GRPO) trains on the same task, with the process-checked reward and no echo
    rl = yaml.safe_load((REPO / "configs/warmstart_countdown_rl.yaml").read_text())
    assert CountdownDifficulty(**rl["data"]["init_args"]["difficulty"]) == CountdownDifficulty()
    assert rl["data"]["init_args"]["verifier"]["init_args"] == {"require_valid_trace": True}
    assert rl["model"]["init_args"]["echo"]["enabled"] is False
    assert demo["model"]["init_args"]["model"] == "echorl_lightning/assets/tiny-countdown"
    # the demo keeps demo.yaml's structure: the same top-level, trainer and callback keys
    base = yaml.safe_load((REPO / "configs/demo.yaml").read_text())
    assert demo.keys() == base.keys() and demo["trainer"].keys() == base["trainer"].keys()
    assert [c["class_path"] for c in demo["trainer"]["callbacks"]] == [
        c["class_path"] for c in base["trainer"]["callbacks"]
    ]
    assert demo["model"]["init_args"].keys() == base["model"]["init_args"].keys()


def test_cli_fit_on_countdown_exports_a_model(tmp_path: Path) -> None:
    out = tmp_path / "hf"
    cmd = [
        sys.executable, "cli.py", "fit", "--config", "configs/warmstart_countdown.yaml",
        "--trainer.max_steps=12", "--trainer.val_check_interval=12", "--trainer.log_every_n_steps=1",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--trainer.callbacks.init_args.output_dir={out}",
        "--model.init_args.hidden_size=32", "--model.init_args.num_hidden_layers=2",
        "--model.init_args.intermediate_size=64", "--model.init_args.val_samples=2",
        "--model.init_args.max_new_tokens=16", "--model.init_args.warmup_steps=2",
        "--data.init_args.batch_size=8", "--data.init_args.num_val=4",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader(next(tmp_path.rglob("metrics.csv")).open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5  # from ~log(258) = 5.55 down
    assert any(r.get("val/pass@1") for r in rows)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) < 100_000  # the overridden 2-layer width-32 model
    assert model.config.max_position_embeddings == 512  # the config's, room for 20-line traces


def test_shipped_model_loads_and_solves() -> None:
    tok = AutoTokenizer.from_pretrained(TINY_COUNTDOWN_PATH)
    model = AutoModelForCausalLM.from_pretrained(TINY_COUNTDOWN_PATH).eval()
    assert sum(p.numel() for p in model.parameters()) < 3_000_000
    assert (model.generation_config.eos_token_id, model.generation_config.pad_token_id) == (256, 257)
    examples = countdown_prompts("val", 32)
    prompt_ids = tok([ex.prompt for ex in examples], add_special_tokens=False)["input_ids"]
    completions, ended = sample_completions(
        model, prompt_ids, 1, 384, None, tok.eos_token_id, tok.pad_token_id
    )
    texts = tok.batch_decode(completions)
    scores = CountdownVerifier()(texts, [ex.reference for ex in examples])
    accuracy = sum(s or 0.0 for s in scores) / len(scores)
    assert float(ended.float().mean()) >= SHIPPED_STOP_FLOOR, int(ended.sum())
    for text, example, end in zip(texts, examples, ended.tolist(), strict=True):
        if end:  # it stops right after its Answer line, never in the middle of the search
            assert text.strip().split("\n")[-1].startswith("Answer: "), text[-200:]
        else:  # a completion cut at the token limit is a search gone wrong: it loops or broke a step before
            complete = text.rsplit("\n", 1)[0]  # the line the limit cut is incomplete: not judged
            task = parse_reference(example.reference)
            assert (
                first_repeated_move(complete, *task) is not None
                or first_invalid_step(complete, *task) is not None
            ), text[-300:]
    assert accuracy > SHIPPED_GREEDY_FLOOR, accuracy
    # the completions are search traces: several lines, and the step checker can judge each of them
    assert sum(len(t.split("\n")) for t in texts) / len(texts) >= 5
    checked = CountdownStepChecker()(texts, [PromptExample(ex.prompt, ex.reference) for ex in examples])
    assert None not in checked


def test_rl_warmstart_config_builds(tmp_path: Path) -> None:
    # configs/warmstart_countdown_rl.yaml through the real CLI (its SFT input swapped for the shipped model,
    # which a fresh clone has): the datamodule scores with the process-checked verifier
    from echorl_lightning.cli import main

    cli = main(
        args=["--config", str(REPO / "configs/warmstart_countdown_rl.yaml"),
              f"--model.init_args.model={TINY_COUNTDOWN_PATH}", f"--trainer.default_root_dir={tmp_path}",
              f"--trainer.logger.init_args.save_dir={tmp_path}"],
        run=False,
    )  # fmt: skip
    assert (
        isinstance(cli.datamodule.verifier, CountdownVerifier) and cli.datamodule.verifier.require_valid_trace
    )
    assert [spec.name for spec in cli.datamodule.eval_specs] == ["id"]
