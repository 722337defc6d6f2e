"""Echo statistics: hand-computed values, the no-clip case, consistency with the peak selector."""

from __future__ import annotations

import torch

from echorl_lightning.echo import METRIC_NAMES, echo_metrics, select_echo_clips

# T = 4
#   row 0: entropy [1, 3, 2, 2], ends after t=1   -> steps 2.0, 2.0               (K = 2)
#   row 1: entropy [4, 0, 1, 1], ends after t=0,2 -> steps 4.0, 0.5, 1.0          (K = 3)
#   row 2: entropy [2, 6, 9, 9], 2 response tokens, no end -> one step (2+6)/2 = 4.0 (K = 1)
ENTROPY = torch.tensor([[1.0, 3.0, 2.0, 2.0], [4.0, 0.0, 1.0, 1.0], [2.0, 6.0, 9.0, 9.0]])
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]])
ENDS = torch.tensor([[0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]).bool()


def check(metrics: dict[str, torch.Tensor], expected: dict[str, float]) -> None:
    assert set(metrics) == set(METRIC_NAMES) == set(expected)
    for name, value in expected.items():
        assert metrics[name].dim() == 0 and not metrics[name].requires_grad, name
        torch.testing.assert_close(metrics[name], torch.tensor(value), rtol=0, atol=1e-6, msg=name)


def test_echo_metrics_hand_computed():
    # clips: row 1 tokens 0..2 (last step = step 1 of 3), row 2 token 0 (inside its only step)
    clip = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]]).bool()
    entropy = ENTROPY.clone().requires_grad_(True)
    check(
        echo_metrics(entropy, MASK, ENDS, clip),
        {
            "echo/num_clips": 2.0,
            "echo/clip_tokens": 2.0,  # (3 + 1) / 2
            "echo/clip_frac": 0.625,  # (3/4 + 1/2) / 2
            "echo/peak_step_entropy": 2.25,  # (0.5 + 4.0) / 2
            "echo/peak_step_pos": 0.25,  # (1 / (3 - 1) + 0 [single step]) / 2
            "entropy/token_mean": 2.2,  # (1+3+2+2 + 4+0+1+1 + 2+6) / 10 = 22 / 10
            "entropy/step_mean": 2.25,  # (2 + 2 + 4 + 0.5 + 1 + 4) / 6 = 13.5 / 6
        },
    )


def test_echo_metrics_leave_out_entropies_not_computed():
    # row 0's entropies were not computed (NaN: an engine without entropies, a row no clip can come from);
    # the same clips as above, on rows 1 and 2, which were scored
    clip = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]]).bool()
    entropy = ENTROPY.clone()
    entropy[0] = float("nan")
    check(
        echo_metrics(entropy, MASK, ENDS, clip),
        {
            "echo/num_clips": 2.0,
            "echo/clip_tokens": 2.0,
            "echo/clip_frac": 0.625,
            "echo/peak_step_entropy": 2.25,
            "echo/peak_step_pos": 0.25,
            "entropy/token_mean": 14 / 6,  # (4+0+1+1 + 2+6) / 6 tokens, row 0 left out
            "entropy/step_mean": 2.375,  # (4 + 0.5 + 1 + 4) / 4 steps = 9.5 / 4, row 0's two left out
        },
    )


def test_echo_metrics_without_clips_are_zero():
    check(
        echo_metrics(ENTROPY, MASK, ENDS, torch.zeros(3, 4, dtype=torch.bool)),
        {
            "echo/num_clips": 0.0,
            "echo/clip_tokens": 0.0,
            "echo/clip_frac": 0.0,
            "echo/peak_step_entropy": 0.0,
            "echo/peak_step_pos": 0.0,
            "entropy/token_mean": 2.2,
            "entropy/step_mean": 2.25,
        },
    )


def test_echo_metrics_of_the_peak_selector():
    # one group of the first two rows: peak = row 1 step 0 (4.0) -> clip row 1 token 0 only
    clip = select_echo_clips(ENTROPY[:2], MASK[:2], ENDS[:2], torch.ones(2), 2)
    metrics = echo_metrics(ENTROPY[:2], MASK[:2], ENDS[:2], clip)
    torch.testing.assert_close(metrics["echo/peak_step_entropy"], torch.tensor(4.0), rtol=0, atol=1e-6)
    torch.testing.assert_close(metrics["echo/peak_step_pos"], torch.tensor(0.0), rtol=0, atol=1e-6)
    torch.testing.assert_close(metrics["echo/clip_frac"], torch.tensor(0.25), rtol=0, atol=1e-6)  # 1 / 4
    # full selector: the whole of row 1, last step index 2 of 3 -> position 2 / 2 = 1, entropy 1.0
    clip = select_echo_clips(ENTROPY[:2], MASK[:2], ENDS[:2], torch.ones(2), 2, selector="full")
    metrics = echo_metrics(ENTROPY[:2], MASK[:2], ENDS[:2], clip)
    torch.testing.assert_close(metrics["echo/peak_step_pos"], torch.tensor(1.0), rtol=0, atol=1e-6)
    torch.testing.assert_close(metrics["echo/peak_step_entropy"], torch.tensor(1.0), rtol=0, atol=1e-6)


def test_echo_metrics_empty_responses():
    empty = torch.zeros(2, 0)
    metrics = echo_metrics(empty, empty, empty.bool(), empty.bool())
    assert all(metrics[name].item() == 0.0 for name in METRIC_NAMES)
    metrics = echo_metrics(
        torch.ones(2, 3), torch.zeros(2, 3), torch.zeros(2, 3).bool(), torch.zeros(2, 3).bool()
    )
    assert all(metrics[name].item() == 0.0 for name in METRIC_NAMES)
