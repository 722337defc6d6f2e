"""The numerical guard: non-finite gradient norms skip steps, K in a row stop the run with a named cause."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from echorl_lightning.training.guard import NumericalGuard, non_finite_parameters


def test_skips_are_counted_and_a_finite_step_resets_the_run_of_skips() -> None:
    guard = NumericalGuard(max_consecutive=3)
    assert guard.check(1.5, step=0, lr=1e-4) is False
    assert guard.check(math.nan, step=1, lr=1e-4) is True
    assert guard.check(math.inf, step=2, lr=1e-4) is True
    assert guard.check(0.3, step=3, lr=1e-4) is False  # 2 skips, then a good step: consecutive back to 0
    assert (guard.skipped, guard.consecutive) == (2, 0)


def test_k_consecutive_skips_raise_naming_the_learning_rate() -> None:
    guard = NumericalGuard(max_consecutive=2)
    guard.check(math.nan, step=5, lr=1e6)
    with pytest.raises(FloatingPointError, match=r"2 optimizer steps in a row.*step 6.*lr=1e\+06"):
        guard.check(math.nan, step=6, lr=1e6)


def test_max_consecutive_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_consecutive_skips"):
        NumericalGuard(0)


def test_non_finite_parameters_names_them() -> None:
    net = nn.Linear(2, 2)
    with torch.no_grad():
        net.bias[1] = math.nan
    assert non_finite_parameters(net.named_parameters()) == ["bias"]
