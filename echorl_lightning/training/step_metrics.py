"""The logged ``actor/*`` and ``echo/loss`` values of one optimizer step, over all its micro-batches and ranks.

Each micro-batch's loss terms are already normalised by the counts of the whole optimizer step (see
``training/loss.py``), so a micro-batch's ``actor/pg_loss``, ``actor/kl`` and ``echo/loss`` are its share of the
step's value: summed over the step's micro-batches and over ranks they give exactly the global value. The other
statistics are averaged over micro-batches and ranks (``actor/ratio_max`` takes the maximum).

Left out: token weighting of the averaged statistics (each micro-batch counts once).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

ADDITIVE = ("actor/pg_loss", "actor/kl", "echo/loss")
MAXIMA = ("actor/ratio_max",)

Reduce = Callable[[Tensor, str], Tensor]
"""``(tensor, op) -> tensor`` over ranks, op in {"sum", "mean", "max"}; identity on one process."""


class StepMetrics:
    """Accumulates micro-batch metrics until the optimizer step."""

    def __init__(self) -> None:
        self._values: dict[str, list[Tensor]] = {}

    def add(self, metrics: dict[str, Tensor]) -> None:
        """One micro-batch's detached 0-dim metrics."""
        for name, value in metrics.items():
            self._values.setdefault(name, []).append(value.detach().float())

    def pop(self, reduce: Reduce) -> dict[str, Tensor]:
        """The step's values (reduced over ranks with ``reduce``), and a fresh start for the next step."""
        out: dict[str, Tensor] = {}
        for name in sorted(self._values):  # the same order on every rank: the reductions are collectives
            values = torch.stack(self._values[name])  # [micro-batches]
            if name in ADDITIVE:
                out[name] = reduce(values.sum(), "sum")
            elif name in MAXIMA:
                out[name] = reduce(values.max(), "max")
            else:
                out[name] = reduce(values.mean(), "mean")
        self._values = {}
        return out
