"""experiments/clip_lines.py: the selectors' clips on real rollouts of the embedded tiny-countdown model."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from echorl_lightning.tiny import TINY_COUNTDOWN_PATH
from experiments.clip_lines import REPO, clip_lines, main


@pytest.mark.slow
def test_clip_lines_on_the_embedded_model(capsys):
    tok = AutoTokenizer.from_pretrained(TINY_COUNTDOWN_PATH)
    model = AutoModelForCausalLM.from_pretrained(TINY_COUNTDOWN_PATH, dtype=torch.float32).eval()
    stats = clip_lines(model, tok, prompts=8, group=8, temperature=1.0, max_new_tokens=384, seed=0)
    groups = stats.pop("_groups")
    assert groups["total"] == 8 and 0 < groups["all_success"] <= 8  # the warm-start solves ~2/3 of samples
    counts = {name: len(s["pos"]) for name, s in stats.items()}
    assert set(counts) == {"peak", "lowest", "random", "full"}
    # one clip per all-success group, whatever the selector (eligibility does not depend on it)
    assert len(set(counts.values())) == 1 and 0 < counts["peak"] <= groups["all_success"]
    # `full` runs through the last line, the Answer; `peak` is a prefix of the same rollout
    assert stats["full"]["pos"] == [1.0] * counts["full"]
    assert stats["full"]["kinds"]["answer"] == counts["full"]
    assert all(p <= f for p, f in zip(stats["peak"]["tokens"], stats["full"]["tokens"], strict=True))
    # a fault inside the peak's prefix is inside the whole response too (the same rollout)
    assert all(f or not p for p, f in zip(stats["peak"]["faulty"], stats["full"]["faulty"], strict=True))
    for s in stats.values():
        assert sum(s["kinds"].values()) == len(s["pos"]) == len(s["faulty"])
        assert all(0.0 <= p <= 1.0 for p in s["pos"])
    main(["--prompts", "2", "--group", "2", "--max-new-tokens", "16"])  # the table, even with no clip
    out = capsys.readouterr().out
    assert "all-success groups of 2" in out and "| `peak` | 0 |" in out


def test_config_difficulty_reads_the_sweep_task(tmp_path):
    """clip_lines and countdown_regime draw prompts at a config's task difficulty
    (data.init_args.task.init_args.difficulty): the forking sweep's task caps traces at 12 lines where the
    default allows 20; a mixture comes back as a mixture; a config without one gets the default; a wrong key
    names itself."""
    from echorl_lightning.tasks.countdown.difficulty import DEFAULT_DIFFICULTY, CountdownMixture
    from recipes.task_config import config_difficulty

    sweep = config_difficulty(REPO / "experiments/configs/echo_forking.yaml")
    assert sweep.max_steps == 12 and DEFAULT_DIFFICULTY.max_steps == 20
    # the sweep trains on the warm-start's task
    assert config_difficulty(REPO / "configs/warmstart_countdown.yaml") == sweep
    mix = tmp_path / "mix.yaml"
    mix.write_text(
        "data:\n  init_args:\n    task:\n      init_args:\n        difficulty:\n"
        "          components: [{max_number: 10}, {}]\n          weights: [1, 3]\n"
    )
    got = config_difficulty(mix)
    assert isinstance(got, CountdownMixture) and got.components[0].max_number == 10
    bare = tmp_path / "bare.yaml"
    bare.write_text("data:\n  init_args: {num_train: 8}\n")
    assert config_difficulty(bare) == DEFAULT_DIFFICULTY
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  init_args:\n    task:\n      init_args:\n        difficulty: {max_numbr: 10}\n")
    with pytest.raises(TypeError, match="max_numbr"):
        config_difficulty(bad)


def test_step_entropies_are_line_means():
    """countdown_regime.step_entropies = the mean token entropy of each line (its newline included), from the
    same forward pass that clip_lines uses (token_entropy)."""
    from echorl_lightning.echo.steps import delimiter_token_ids
    from experiments.countdown_regime import step_entropies, token_entropy

    tok = AutoTokenizer.from_pretrained(TINY_COUNTDOWN_PATH)
    model = AutoModelForCausalLM.from_pretrained(TINY_COUNTDOWN_PATH, dtype=torch.float32).eval()
    prompt = tok(["Numbers: 3 5 12\nTarget: 20\n"], add_special_tokens=False)["input_ids"]
    text = ["3+5=8 [8 12 -> 20]\n8+12=20 [20 -> 20]\nAnswer: 3+5+12", "12+5=17 [17 3 -> 20]"]
    completions = tok(text, add_special_tokens=False)["input_ids"]
    entropy, mask, tokens = token_entropy(model, prompt * 2, completions, 1.0)
    assert entropy.shape == mask.shape == tokens.shape == (2, len(completions[0]))
    assert mask.sum(1).tolist() == [len(c) for c in completions]
    steps = step_entropies(model, prompt * 2, completions, delimiter_token_ids(tok), 1.0)
    assert [len(s) for s in steps] == [3, 1]  # lines of each completion
    newline = set(delimiter_token_ids(tok))
    for row, comp in enumerate(completions):
        means, start = [], 0
        for j, token in enumerate(comp):
            if token in newline or j == len(comp) - 1:  # a line ends at its newline, the last at the end
                means.append(entropy[row, start : j + 1].mean().item())
                start = j + 1
        assert steps[row] == pytest.approx(means, rel=1e-5)
