"""From prompts to a scored :class:`~echorl_lightning.rollout.batch.RolloutBatch`: generate, score, assemble.

Three plain functions, the engine-side steps of the rollout pipeline (``echorl_lightning.pipeline.steps``):
:func:`generate` samples G completions per prompt (plus, for LUFFY, the prompt's expert solution as an
off-policy member of its group), :func:`score` decodes them and asks the verifier (and the task's step
checker), :func:`assemble` pads the rows of one or more rounds into one batch. Rows come out prompt-major and
group-contiguous (G' = G rows per prompt, or G + 1 with the expert row last), as every group-relative
estimator expects. :func:`encode_prompts` turns prompt texts into the token ids the engine takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from echorl_lightning.data.types import PromptExample, StepChecker, Verifier
from echorl_lightning.rollout.batch import RolloutBatch, pad_per_token, pad_rollouts
from echorl_lightning.rollout.types import Completion, RolloutEngine, SamplingConfig


def encode_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of prompt texts (no special tokens added); raises on a prompt that encodes to nothing."""
    ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    for i, p in enumerate(ids):
        if not p:
            raise ValueError(f"prompt {i} tokenizes to nothing: {prompts[i]!r}")
    return ids


def generate(
    engine: RolloutEngine,
    tokenizer: Any,
    examples: Sequence[PromptExample],
    prompt_ids: Sequence[list[int]],
    sampling: SamplingConfig,
    *,
    with_expert: bool = False,
) -> list[list[Completion]]:
    """G = ``sampling.n`` completions per prompt, in prompt order.

    Args:
        engine: the rollout engine, holding the current policy weights.
        tokenizer: encodes expert solutions.
        examples: the prompts' examples (expert solutions, uids).
        prompt_ids: their token ids.
        sampling: G and the sampling settings.
        with_expert: add each prompt's expert solution (cut to ``max_new_tokens - 1`` tokens, then EOS) as the
            last member of its group, ``off_policy=True``; raises when a prompt has none.

    Returns:
        One list of G (or G + 1) completions per prompt.
    """
    groups = engine.generate(prompt_ids, sampling)
    if not with_expert:
        return groups
    out = []
    for ex, group in zip(examples, groups, strict=True):
        if not ex.expert:
            raise ValueError(f"LUFFY needs an expert solution for every prompt; prompt {ex.uid!r} has none")
        expert = tokenizer(ex.expert, add_special_tokens=False)["input_ids"][: sampling.max_new_tokens - 1]
        out.append([*group, Completion(expert + [tokenizer.eos_token_id], False, off_policy=True)])
    return out


@dataclass
class Scores:
    """The verdicts on N rows.

    Attributes:
        scores: N verifier scores (0.0 where the verifier could not judge).
        num_unjudged: how many rows the verifier could not judge.
        step_valid: N step-checker verdicts (True: every step valid; None: not judged), or None without a
            step checker.
    """

    scores: list[float]
    num_unjudged: int
    step_valid: list[bool | None] | None


def score(
    tokenizer: Any,
    examples: Sequence[PromptExample],
    groups: Sequence[Sequence[Completion]],
    verifier: Verifier,
    step_checker: StepChecker | None = None,
) -> Scores:
    """Decode every completion (special tokens skipped) and score it against its prompt's reference."""
    responses = [c.token_ids for group in groups for c in group]
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    per_prompt = len(responses) // len(examples)
    raw = verifier(texts, [ex.reference for ex in examples for _ in range(per_prompt)])
    step_valid = None
    if step_checker is not None:
        step_valid = list(step_checker(texts, [ex for ex in examples for _ in range(per_prompt)]))
    return Scores([float(s) if s is not None else 0.0 for s in raw], sum(s is None for s in raw), step_valid)


def assemble(
    prompt_ids: Sequence[list[int]],
    groups: Sequence[Sequence[Completion]],
    scores: Scores,
    *,
    pad_id: int,
    temperature: float,
    max_response_len: int,
) -> RolloutBatch:
    """The scored rows as one padded batch (see :class:`~echorl_lightning.rollout.batch.RolloutBatch`).

    Token entropies come from the engine when it gave them for every row (expert rows have none); the engine's
    own log-probs when it gave them for every sampled row (an expert row's are 0).
    """
    rows = [(p, c) for p, group in zip(prompt_ids, groups, strict=True) for c in group]
    tokens = pad_rollouts([p for p, _ in rows], [c.token_ids for _, c in rows], pad_id=pad_id)
    width = tokens.responses.shape[1]
    completions = [c for _, c in rows]
    entropy = None
    if all(c.entropy is not None for c in completions):
        entropy = pad_per_token([c.entropy or [] for c in completions], width)
    sampler_logp = None
    if all(c.logprobs is not None or c.off_policy for c in completions):
        sampler_logp = pad_per_token([c.logprobs or [] for c in completions], width)
    step_valid = None
    if scores.step_valid is not None:
        step_valid = torch.tensor([float("nan") if v is None else float(v) for v in scores.step_valid])
    return RolloutBatch(
        **{name: getattr(tokens, name) for name in tokens.__dataclass_fields__},
        temperature=temperature,
        max_response_len=max_response_len,
        group_size=len(groups[0]),
        scores=torch.tensor(scores.scores),
        truncated=torch.tensor([c.truncated for c in completions]),
        off_policy=torch.tensor([c.off_policy for c in completions]),
        step_valid=step_valid,
        sampler_logp=sampler_logp,
        entropy=entropy,
    )
