"""recipes/tiny/rft.py: the rejection-sampling fine-tuning stage of the Countdown warm-start."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from echorl_lightning.tiny import TINY_COUNTDOWN_PATH
from recipes.tiny.rft import fine_tune, main
from recipes.tiny.sft import response_nll
from recipes.tiny.sft_data import sft_collate
from tests.helpers.paths import ROOT as REPO

CONFIG = str(REPO / "configs/warmstart_countdown.yaml")


def test_fine_tune_lowers_the_nll_of_the_kept_samples():
    tok = AutoTokenizer.from_pretrained(TINY_COUNTDOWN_PATH)
    model = AutoModelForCausalLM.from_pretrained(TINY_COUNTDOWN_PATH, dtype=torch.float32)
    prompt = tok("Numbers: 3 5 12\nTarget: 20\n", add_special_tokens=False)["input_ids"]
    text = "3+5=8 [8 12 -> 20]\n8+12=20 [20 -> 20]\nAnswer: 3+5+12"
    kept = [(prompt, tok(text, add_special_tokens=False)["input_ids"])]
    batch = sft_collate([prompt], [kept[0][1]], tok.eos_token_id, tok.pad_token_id)

    def nll() -> float:
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return float(response_nll(logits, batch["input_ids"], batch["loss_mask"])[0])

    before = nll()
    fine_tune(
        model, kept, steps=5, lr=1e-3, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, rng=random.Random(0)
    )
    assert nll() < before and not model.training
    with pytest.raises(ValueError, match="no \\(prompt, completion\\) pairs"):
        fine_tune(model, [], steps=1, lr=1e-3, eos_id=0, pad_id=0, rng=random.Random(0))


@pytest.mark.slow
def test_stage_writes_a_loadable_model_with_the_same_tokenizer(capsys, tmp_path):
    out = tmp_path / "rft"
    main(
        [
            "--model",
            TINY_COUNTDOWN_PATH,
            "--config",
            CONFIG,
            "--out",
            str(out),
            "--rounds",
            "1",
            "--prompts",
            "4",
            "--k",
            "4",
            "--steps",
            "2",
        ]
    )
    printed = capsys.readouterr().out
    assert "round 1: kept " in printed and " of 16," in printed, printed  # 4 problems x 4 samples
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (Path(TINY_COUNTDOWN_PATH) / name).read_bytes()
    before = AutoModelForCausalLM.from_pretrained(TINY_COUNTDOWN_PATH).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # two AdamW steps moved the weights
    assert AutoTokenizer.from_pretrained(out)("Target: 20").input_ids
    # a model that never finishes a line keeps nothing: an error naming the round, not a silent no-op
    with pytest.raises(RuntimeError, match="rft round 1: none of 8 samples was right"):
        main(
            [
                "--model",
                TINY_COUNTDOWN_PATH,
                "--config",
                CONFIG,
                "--out",
                str(tmp_path / "x"),
                "--rounds",
                "1",
                "--prompts",
                "2",
                "--k",
                "4",
                "--steps",
                "1",
                "--max-new-tokens",
                "4",
            ]
        )
    assert not (tmp_path / "x").exists()
