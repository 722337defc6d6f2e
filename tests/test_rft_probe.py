"""experiments/rft_probe.py: rejection-sampling fine-tuning on the embedded tiny-countdown model."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from echorl_lightning.data.sft import sft_collate
from echorl_lightning.tiny import TINY_COUNTDOWN_PATH
from echorl_lightning.tiny.sft import response_nll
from experiments.countdown_regime import group_regime
from experiments.rft_probe import fine_tune, main


def test_group_regime_hand_computed():
    # 3 problems x 2 samples: [1, 1] solved twice, [0, 0] never, [1, 0] once
    # pass@1 = 3 / 6 = 0.5; all-success 1 / 3; all-fail 1 / 3
    assert group_regime([1.0, 1.0, 0.0, 0.0, 1.0, 0.0], 2) == pytest.approx((0.5, 1 / 3, 1 / 3))
    with pytest.raises(ValueError, match="not whole groups of 2"):
        group_regime([1.0, 0.0, 1.0], 2)


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
    fine_tune(model, kept, steps=5, lr=1e-3, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
              rng=random.Random(0))  # fmt: skip
    assert nll() < before and not model.training


@pytest.mark.slow
def test_probe_end_to_end(capsys, tmp_path):
    main(["--prompts", "4", "--k", "4", "--steps", "2", "--eval", "2", "--out", str(tmp_path / "m")])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| SFT") or line.startswith("| round 1")]
    assert len(rows) == 2, out
    for row in rows:  # three fractions per row
        values = [float(c) for c in row.strip("|").split("|")[1:]]
        assert len(values) == 3 and all(0.0 <= v <= 1.0 for v in values)
    assert "kept " in rows[1] and (tmp_path / "m" / "config.json").exists()
    # a model that never finishes a line keeps nothing: an error naming the round, not a silent no-op
    with pytest.raises(RuntimeError, match="round 1: no sample of 8 was kept"):
        main(["--prompts", "2", "--k", "4", "--steps", "1", "--eval", "1", "--max-new-tokens", "4"])
