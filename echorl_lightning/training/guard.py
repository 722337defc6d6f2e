"""The numerical guard of the update: a step whose loss or gradient is not finite is skipped, not applied.

RL runs diverge in ways a finite loss does not show (a far too large learning rate can keep the loss finite
while the gradient norm is NaN: the optimizer steps and the parameters become non-finite).
:class:`NumericalGuard` looks at the total gradient norm just before each optimizer step (a non-finite loss
gives non-finite gradients, so one check covers both): a non-finite norm skips the step (the caller drops the
gradients, so nothing is applied), is counted and reported; ``max_consecutive`` skips in a row stop the run
with an error that names the likely causes. :func:`non_finite_parameters` lets the caller refuse to checkpoint
non-finite weights.

Left out: loss scaling (fp16's GradScaler does its own skipping) and per-rank decisions (under DDP/FSDP the
gradient norm is computed after the all-reduce, so every rank decides the same).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


class NumericalGuard:
    """Counts skipped optimizer steps.

    Args:
        max_consecutive: this many skipped steps in a row raise :class:`FloatingPointError`.
    """

    def __init__(self, max_consecutive: int = 3) -> None:
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive_skips must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.skipped = 0
        self.consecutive = 0

    def check(self, grad_norm: float, step: int, lr: float) -> bool:
        """Record one optimizer step's gradient norm; True when the step must be skipped.

        Raises:
            FloatingPointError: on the ``max_consecutive``-th skip in a row.
        """
        if math.isfinite(grad_norm):
            self.consecutive = 0
            return False
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive >= self.max_consecutive:
            raise FloatingPointError(
                f"{self.consecutive} optimizer steps in a row had a non-finite loss or gradient (last at step "
                f"{step}, gradient norm {grad_norm}); nothing was applied. Likely causes: a learning rate too high "
                f"for this model (model.init_args.lr={lr:g}), a precision that overflows (fp16: use bf16-mixed), "
                "or corrupt rollouts/rewards. Lower the learning rate or resume from the last checkpoint."
            )
        return True


def non_finite_parameters(named: Iterable[tuple[str, nn.Parameter]]) -> list[str]:
    """Names of the parameters holding a NaN or an infinity."""
    return [name for name, p in named if not bool(torch.isfinite(p.detach()).all())]
