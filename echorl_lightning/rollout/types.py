"""The rollout-engine protocol and its request/response types.

An engine turns token-id prompts into G sampled completions each. Engines never read the training loop's
state: the caller passes the policy weights (``load_weights``) and every sampling setting explicitly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling settings of one ``generate`` call.

    Attributes:
        n: completions per prompt (G).
        max_new_tokens: response length limit (T_max); a completion that reaches it without EOS is truncated.
        temperature: softmax temperature (1.0 = the policy's distribution).
        top_p: nucleus sampling mass (1.0 = off).
        seed: base seed for reproducible sampling, or None.
        return_entropy: also return each sampled token's full-vocabulary entropy at ``temperature`` (before
            top-p), where the engine can (``Completion.entropy``; None where it cannot).
        return_logprobs: also return the engine's log-prob of each sampled token in the distribution it was
            sampled from (temperature and top-p applied), where the engine keeps its own copy of the weights
            (``Completion.logprobs``; the vLLM engine), so a caller can check that copy against the policy.
    """

    n: int = 1
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    return_entropy: bool = False
    return_logprobs: bool = False


@dataclass(frozen=True)
class Completion:
    """One sampled response.

    Attributes:
        token_ids: response token ids, cut just after the first EOS (EOS kept), at most max_new_tokens.
        truncated: True when no EOS was produced within max_new_tokens.
        entropy: per token of ``token_ids``, the entropy of the distribution it was sampled from (at the
            sampling temperature, before top-p), when requested and the engine computes it; else None.
        logprobs: per token of ``token_ids``, the engine's log-prob of that token in the distribution it was
            sampled from (at the sampling temperature, after top-p), when requested and the engine reports it;
            else None.
        off_policy: True for a row the engine did not sample (LUFFY's expert solution, added to its group).
    """

    token_ids: list[int]
    truncated: bool
    entropy: list[float] | None = None
    logprobs: list[float] | None = None
    off_policy: bool = False


@runtime_checkable
class RolloutEngine(Protocol):
    """Generates completions for token-id prompts.

    ``setup(model, tokenizer)`` is called once before the first rollout (an HF engine keeps references, a
    vLLM engine builds its ``LLM`` from the model's path and dtype). ``load_weights(model)`` makes the engine sample from ``model``'s current weights (a reference for a
    colocated HF engine, a weight copy for vLLM). ``generate`` returns, for each prompt in order, exactly
    ``sampling.n`` completions.
    """

    def setup(self, model: torch.nn.Module, tokenizer: Any) -> None: ...

    def load_weights(self, model: torch.nn.Module) -> None: ...

    def generate(
        self, prompt_token_ids: Sequence[Sequence[int]], sampling: SamplingConfig
    ) -> list[list[Completion]]: ...
