"""One generation round of RLVR: G sampled rollouts per prompt (plus, for LUFFY, the prompt's expert solution
as an off-policy member of its group), decoded and scored by the verifier.

Rows come out prompt-major and group-contiguous (G' = G rows per prompt, or G + 1 with the expert row last), as
every group-relative estimator expects (EchoRL, arXiv 2605.31228; ECHORL.md). Left out: anything after scoring
(padding, log-probs, advantages: the rollout callback's later steps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from echorl_lightning.data.types import PromptExample, StepChecker, Verifier
from echorl_lightning.rollout.types import RolloutEngine, SamplingConfig


@dataclass
class ScoredRows:
    """Generated and scored rows, G' per prompt, contiguous.

    Attributes:
        prompts: N prompt token-id lists.
        responses: N response token-id lists (EOS kept where the response stopped).
        truncated: N flags, cut at the length limit without EOS.
        off_policy: N flags, the expert row of a group (LUFFY).
        scores: N verifier scores (0.0 where the verifier could not judge).
        num_unjudged: how many items the verifier could not judge.
        entropy: N per-token entropy lists from the engine (``SamplingConfig.return_entropy``), or None when
            the engine gave none for some row (expert rows never have one).
        step_valid: N step-checker verdicts (True: every step valid; None: not judged), or None without a
            step checker.
        sampler_logp: N per-token lists of the engine's log-probs of its sampled tokens
            (``SamplingConfig.return_logprobs``; an expert row's list is empty), or None when the engine gave
            none.
    """

    prompts: list[list[int]] = field(default_factory=list)
    responses: list[list[int]] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)
    off_policy: list[bool] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    num_unjudged: int = 0
    entropy: list[list[float]] | None = field(default_factory=list)
    step_valid: list[bool | None] | None = None
    sampler_logp: list[list[float]] | None = field(default_factory=list)

    def extend(self, other: ScoredRows) -> None:
        """Append another round's rows."""
        for name in ("prompts", "responses", "truncated", "off_policy", "scores"):
            getattr(self, name).extend(getattr(other, name))
        self.num_unjudged += other.num_unjudged
        if other.step_valid is not None:
            self.step_valid = (self.step_valid or []) + list(other.step_valid)
        if self.entropy is None or other.entropy is None:
            self.entropy = None
        else:
            self.entropy.extend(other.entropy)
        if self.sampler_logp is None or other.sampler_logp is None:
            self.sampler_logp = None
        else:
            self.sampler_logp.extend(other.sampler_logp)


def generate_and_score(
    engine: RolloutEngine,
    tokenizer: Any,
    examples: Sequence[PromptExample],
    prompt_ids: Sequence[list[int]],
    sampling: SamplingConfig,
    verifier: Verifier,
    *,
    with_expert: bool = False,
    step_checker: StepChecker | None = None,
) -> ScoredRows:
    """Generate ``sampling.n`` rollouts per prompt and score them.

    Args:
        engine: the rollout engine, holding the current policy weights.
        tokenizer: decodes responses (special tokens skipped) and encodes expert solutions.
        examples: the prompts' examples (references, expert solutions, uids).
        prompt_ids: their token ids.
        sampling: G = ``sampling.n`` and the sampling settings.
        verifier: scores the decoded responses against the references.
        with_expert: add each prompt's expert solution (cut to ``max_new_tokens - 1`` tokens, then EOS) as
            the last member of its group; raises when a prompt has none.
        step_checker: also judge every row's reasoning steps (``ScoredRows.step_valid``).

    Returns:
        The rows, ``len(examples) * (G + with_expert)`` of them.
    """
    rows = ScoredRows()
    groups = engine.generate(prompt_ids, sampling)
    for ex, p_ids, group in zip(examples, prompt_ids, groups, strict=True):
        members = [(c.token_ids, c.truncated, False) for c in group]
        if rows.entropy is not None and all(c.entropy is not None for c in group) and not with_expert:
            rows.entropy.extend(list(c.entropy) for c in group)
        else:
            rows.entropy = None
        if rows.sampler_logp is not None and all(c.logprobs is not None for c in group):
            rows.sampler_logp.extend(list(c.logprobs or []) for c in group)
            if with_expert:
                rows.sampler_logp.append([])  # the expert row was not sampled
        else:
            rows.sampler_logp = None
        if with_expert:
            if not ex.expert:
                raise ValueError(
                    f"LUFFY needs an expert solution for every prompt; prompt {ex.uid!r} has none"
                )
            expert = tokenizer(ex.expert, add_special_tokens=False)["input_ids"][
                : sampling.max_new_tokens - 1
            ]
            members.append((expert + [tokenizer.eos_token_id], False, True))
        for ids, truncated, off in members:
            rows.prompts.append(list(p_ids))
            rows.responses.append(list(ids))
            rows.truncated.append(truncated)
            rows.off_policy.append(off)
    texts = tokenizer.batch_decode(rows.responses, skip_special_tokens=True)
    per_prompt = len(rows.responses) // len(examples)
    raw = verifier(texts, [ex.reference for ex in examples for _ in range(per_prompt)])
    if step_checker is not None:
        rows.step_valid = list(step_checker(texts, [ex for ex in examples for _ in range(per_prompt)]))
    rows.num_unjudged = sum(s is None for s in raw)
    rows.scores = [float(s) if s is not None else 0.0 for s in raw]
    return rows


def pad_per_token(values: Sequence[Sequence[float]], width: int) -> Tensor:
    """Per-token values of N responses, right-padded with 0 to ``width`` columns: [N, width] float32."""
    out = torch.zeros(len(values), width)
    for i, row in enumerate(values):
        out[i, : len(row)] = torch.tensor(list(row), dtype=torch.float32)
    return out
