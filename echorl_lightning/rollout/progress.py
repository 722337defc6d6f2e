"""Progress reports from one epoch's rollout: the observer protocol, the wrappers that feed it, and its arithmetic.

An epoch's rollout (the steps of :mod:`echorl_lightning.pipeline.steps`) runs in phases: generation (one per
generation round; DAPO's dynamic sampling may run several), verification, and the no-grad old-log-prob (and
reference) pass. The pipeline tells a :class:`RolloutObserver` when the rollout starts, when each phase
starts, advances (rows and response tokens done) and ends, and the rollout callback hands it the epoch's
rollout metrics at the end. :class:`ObservedEngine` and :func:`observed_verifier` report the generation and
verification phases around any engine and verifier; an engine whose ``generate`` takes a ``progress`` callable
(the HF engine: one call per generated chunk) reports per chunk, any other once at the end.

:func:`rate_and_eta` is the throughput/ETA arithmetic shared by every display. Rendering lives in
:mod:`echorl_lightning.callbacks.progress`. Left out: progress inside one ``generate`` chunk and inside the
log-prob pass (the pipeline's :func:`~echorl_lightning.training.passes.score_rollouts` reports nothing until
it returns).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from inspect import signature
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from echorl_lightning.data.types import Verifier
from echorl_lightning.rollout.types import Completion, RolloutEngine, SamplingConfig


@runtime_checkable
class RolloutObserver(Protocol):
    """Receives one epoch's rollout progress (called on every rank; displays act on rank 0)."""

    def rollout_start(self, epoch: int, rows: int) -> None:
        """The epoch's rollout begins; ``rows`` = the rows this rank generates in its first round."""

    def phase_start(self, name: str, total: int) -> None:
        """A phase (``generate``, ``verify``, ``old log-probs``, ...) of ``total`` rows begins."""

    def phase_advance(self, rows: int, tokens: int) -> None:
        """``rows`` more rows done in the current phase, holding ``tokens`` response tokens."""

    def phase_end(self) -> None:
        """The current phase is done."""

    def rollout_end(self, metrics: Mapping[str, Tensor]) -> None:
        """The epoch's rollout is done; ``metrics`` are the rollout callback's (``reward/mean``, ...)."""


class NullObserver:
    """Observes nothing (the rollout without a progress display)."""

    def rollout_start(self, epoch: int, rows: int) -> None:
        pass

    def phase_start(self, name: str, total: int) -> None:
        pass

    def phase_advance(self, rows: int, tokens: int) -> None:
        pass

    def phase_end(self) -> None:
        pass

    def rollout_end(self, metrics: Mapping[str, Tensor]) -> None:
        pass


def find_observer(candidates: Iterable[object]) -> RolloutObserver:
    """The first of ``candidates`` (e.g. ``trainer.callbacks``) that is a :class:`RolloutObserver`, else a
    :class:`NullObserver`."""
    for candidate in candidates:
        if isinstance(candidate, RolloutObserver):
            return candidate
    return NullObserver()


@contextmanager
def observed_phase(observer: RolloutObserver, name: str, rows: int, tokens: int) -> Iterator[None]:
    """Report the enclosed block as one phase of ``rows`` rows and ``tokens`` tokens, done when it exits."""
    observer.phase_start(name, rows)
    yield
    observer.phase_advance(rows, tokens)
    observer.phase_end()


def accepts_progress(generate: Callable[..., Any]) -> bool:
    """Whether an engine's ``generate`` takes a ``progress`` keyword."""
    try:
        return "progress" in signature(generate).parameters
    except (TypeError, ValueError):
        return False


class ObservedEngine:
    """A rollout engine that reports its ``generate`` calls as ``generate`` phases to an observer.

    Args:
        engine: the engine doing the work (set up and holding the current weights).
        observer: told about each call; per chunk when ``engine.generate`` takes ``progress``.
    """

    def __init__(self, engine: RolloutEngine, observer: RolloutObserver) -> None:
        self.engine = engine
        self.observer = observer

    def setup(self, model: torch.nn.Module, tokenizer: Any) -> None:
        self.engine.setup(model, tokenizer)

    def load_weights(self, model: torch.nn.Module) -> None:
        self.engine.load_weights(model)

    def generate(
        self, prompt_token_ids: Sequence[Sequence[int]], sampling: SamplingConfig
    ) -> list[list[Completion]]:
        total = len(prompt_token_ids) * sampling.n
        self.observer.phase_start("generate", total)
        if accepts_progress(self.engine.generate):
            out = self.engine.generate(prompt_token_ids, sampling, progress=self.observer.phase_advance)
        else:
            out = self.engine.generate(prompt_token_ids, sampling)
            self.observer.phase_advance(total, sum(len(c.token_ids) for group in out for c in group))
        self.observer.phase_end()
        return out


def observed_verifier(verifier: Verifier, observer: RolloutObserver) -> Verifier:
    """``verifier`` reporting each call as a ``verify`` phase (rows = completions, no tokens)."""

    def verify(completions: Sequence[str], references: Sequence[str]) -> list[float | None]:
        with observed_phase(observer, "verify", len(completions), 0):
            scores = verifier(completions, references)
        return scores

    return verify


@dataclass(frozen=True)
class PhaseRate:
    """Throughput and remaining time of a phase.

    Attributes:
        tokens_per_s: response tokens per second so far (0.0 before any time has passed).
        rows_per_s: rows per second so far.
        eta_s: seconds until the epoch's rollout ends: this phase's remaining rows at its rate so far, plus
            ``rest_s`` (the phases still to come); None before the first row is done.
    """

    tokens_per_s: float
    rows_per_s: float
    eta_s: float | None


def rate_and_eta(done: int, total: int, tokens: int, elapsed_s: float, rest_s: float = 0.0) -> PhaseRate:
    """Rates and ETA of a phase with ``done`` of ``total`` rows (``tokens`` tokens) after ``elapsed_s``.

    ``eta_s = (total - done) * elapsed_s / done + rest_s``, with ``rest_s`` the expected time of the phases
    not yet started (e.g. their durations in the previous epoch).
    """
    rows_per_s = done / elapsed_s if elapsed_s > 0 else 0.0
    tokens_per_s = tokens / elapsed_s if elapsed_s > 0 else 0.0
    eta = (total - done) * elapsed_s / done + rest_s if done > 0 else None
    return PhaseRate(tokens_per_s, rows_per_s, eta)
