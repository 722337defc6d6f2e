"""What a prompt datamodule hands to the rollout loop, and the verifier protocol.

A datamodule serves :class:`PromptExample` items (text, already templated for the policy) and owns a
verifier; the rollout pipeline (:mod:`echorl_lightning.pipeline.steps`) tokenizes, generates, scores and
cuts the micro-batches that the training buffer serves.

:class:`Verifier` is the protocol a verifier meets; :data:`VerifierFn` is the looser type datamodules take
from a config, so that a plain function without exact type hints (``def my_verifier(completions,
references): ...``) is accepted by LightningCLI (jsonargparse checks a Protocol's signature strictly).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class PromptExample:
    """One prompt of a verifiable task.

    Attributes:
        prompt: the exact text fed to the policy (chat template / instruction already applied).
        reference: what the verifier compares a completion against (e.g. the final answer).
        expert: an off-policy expert solution (response text, no EOS) for LUFFY, or None.
        uid: a stable identifier (dataset row or generator seed), used in logs and error messages.
    """

    prompt: str
    reference: str
    expert: str | None = None
    uid: str = ""


@runtime_checkable
class Verifier(Protocol):
    """Batch verifier: one score per completion, ``None`` where the item could not be judged (counted,
    scored as 0 by the caller)."""

    def __call__(self, completions: Sequence[str], references: Sequence[str]) -> list[float | None]: ...


VerifierFn = Callable[..., list[float | None]]
"""Any callable ``(completions, references) -> list[float | None]``: a :class:`Verifier` instance, a class
path with ``init_args``, or a plain function's import path in YAML."""


@runtime_checkable
class StepChecker(Protocol):
    """Checks the reasoning steps of completions: per completion ``True`` when every step is valid, ``False``
    when at least one is not, ``None`` where the steps cannot be judged (e.g. no parseable step). Used for
    ``rollout/step_valid_frac`` (the share of correct-answer rollouts whose every step is valid)."""

    def __call__(
        self, completions: Sequence[str], examples: Sequence[PromptExample]
    ) -> list[bool | None]: ...
