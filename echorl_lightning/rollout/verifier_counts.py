"""What a verifier counted during one epoch's rollout: ``rollout/verifier_*``, the per-epoch change of the counters
(timeouts, memory kills, errors) of verifiers that keep them.

A verifier that keeps counters exposes them as ``stats() -> {name: number}`` (e.g. ``MathVerifier``, whose
worker processes can time out); any other verifier yields no metric. Left out: counters that go down (read as
negative deltas, as reported).
"""

from __future__ import annotations

import torch
from torch import Tensor

from echorl_lightning.data.types import Verifier


class VerifierCounts:
    """The counters of one verifier as last seen, turned into per-epoch deltas."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def deltas(self, verifier: Verifier) -> dict[str, Tensor]:
        """``rollout/<counter>``: each counter's change since the previous call (the first call: since 0);
        empty for a verifier without ``stats()``."""
        stats = getattr(verifier, "stats", None)
        if not callable(stats):
            return {}
        now = {k: float(v) for k, v in stats().items()}
        deltas = {f"rollout/{k}": torch.tensor(v - self._last.get(k, 0.0)) for k, v in now.items()}
        self._last = now
        return deltas
