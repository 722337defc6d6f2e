"""The one rollout type, from the engine's samples to the loss: :class:`RolloutBatch`, on :class:`TokenBatch`.

Shapes (the package's one vocabulary): n rows of a micro-batch (N in a whole rollout batch), P prompt tokens
(left-padded), T response tokens (right-padded), so the response of every row starts at column P and the
positions ``P - 1 .. P + T - 2`` predict it.

- :class:`TokenBatch`: padded ``prompt + response`` rows, what any forward over rollouts needs (the no-grad
  old-log-prob pass, the reference pass, the training forward).
- :class:`RolloutBatch`: a :class:`TokenBatch` plus everything known about its rows. The rollout pipeline
  (``echorl_lightning.rollout.pipeline``) creates it from the scored samples and fills it step by step (old
  log-probs, advantages, EchoClips); the training buffer serves its micro-batches (the same type, a subset of
  the rows, stamped with the counts of their optimizer step) to the module's ``training_step``; observers (the
  EchoClip pictures) read the whole epoch's batch. The sampling settings the update must agree with
  (temperature, response limit) travel in it, so the module needs no other channel for them.

Both have ``.to(device)``, which Lightning's batch transfer calls directly (no deep copy of the dataclass).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

import torch
from torch import Tensor

B = TypeVar("B", bound="TokenBatch")


@dataclass
class TokenBatch:
    """Padded ``prompt + response`` rows.

    Attributes:
        input_ids: [n, P + T] long; pad id in padding.
        attention_mask: [n, P + T] long, 1 on real tokens.
        position_ids: [n, P + T] long, 0 at each row's first real token.
        responses: [n, T] long, the response tokens (EOS kept where the response stopped).
        response_mask: [n, T] float, 1 on response tokens (EOS included).
        prompt_len: P.
    """

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    responses: Tensor
    response_mask: Tensor
    prompt_len: int

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self: B, device: torch.device | str, non_blocking: bool = False, **_: Any) -> B:
        """A copy with every tensor on ``device`` (ints and None kept)."""
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return replace(self, **moved)

    def rows(self: B, index: Tensor) -> B:
        """The rows ``index`` ([m] long) of every per-row tensor (0-dim tensors and ints kept)."""
        picked = {
            f.name: getattr(self, f.name)[index]
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor) and getattr(self, f.name).dim() > 0
        }
        return replace(self, **picked)

    def trimmed(self: B, response_len: int) -> B:
        """The same rows cut to the first ``response_len`` response columns (per-token tensors are [n, T])."""
        t = self.responses.shape[1]
        cut: dict[str, Tensor] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, Tensor) or value.dim() != 2:
                continue
            if value.shape[1] == t and f.name not in ("input_ids", "attention_mask", "position_ids"):
                cut[f.name] = value[:, :response_len]
        width = self.prompt_len + response_len
        attention = self.attention_mask[:, :width]
        cut.update(
            input_ids=self.input_ids[:, :width],
            attention_mask=attention,
            position_ids=(attention.cumsum(-1) - 1).clamp(min=0),  # [n, P + T']
        )
        return replace(self, **cut)

    def compact(self: B) -> B:
        """The same rows without all-padding columns: prompt columns no row uses (left) and response columns
        beyond the longest response (right). ``prompt_len`` shrinks accordingly."""
        t_len = max(1, int(self.response_mask.sum(-1).max()))
        batch = self.trimmed(t_len)
        used = batch.attention_mask[:, : batch.prompt_len].sum(0) > 0  # [P] prompt columns some row uses
        left = int(used.float().argmax())  # the first used column (P >= 1 and every prompt is non-empty)
        if left == 0:
            return batch
        attention = batch.attention_mask[:, left:]
        return replace(
            batch,
            input_ids=batch.input_ids[:, left:],
            attention_mask=attention,
            position_ids=(attention.cumsum(-1) - 1).clamp(min=0),  # [n, P' + T]
            prompt_len=batch.prompt_len - left,
        )

    def pad_fraction(self) -> float:
        """Share of the [n, P + T] positions a forward over this batch spends on padding."""
        return 1.0 - float(self.attention_mask.sum()) / max(self.attention_mask.numel(), 1)


@dataclass
class RolloutBatch(TokenBatch):
    """Rollout rows and everything the pipeline learned about them; a whole epoch's batch or a micro-batch.

    Attributes (besides :class:`TokenBatch`'s; per-row tensors are [n], per-token ones [n, T]):
        temperature: tau of the rollouts; the training forward divides logits by it, so an exactly on-policy
            update sees ratio 1.
        max_response_len: T_max, the response length limit (the constant of ``seq-mean-token-sum-norm``).
        group_size: G', rows per group (G rollouts, plus LUFFY's expert row); groups are contiguous.
        scores: [n] verifier scores (0.0 where the verifier could not judge).
        truncated: [n] bool, cut at the length limit without EOS.
        off_policy: [n] bool, the expert row of a group (LUFFY).
        step_valid: [n] float step-checker verdicts (1 every step valid, 0 not, NaN not judged), or None
            without a step checker.
        sampler_logp: [n, T] the engine's log-probs of its own samples (0 on expert rows), or None when the
            engine reports none (the HF engine).
        entropy: [n, T] token entropy at the rollout temperature (from the engine, or the old-log-prob pass).
        old_logp: [n, T] float32 log-probs of the response tokens under the rollout policy (no grad), or None
            for an exactly on-policy update (one optimizer step per rollout batch, the rollout policy's own
            weights): the update then takes its own forward's log-probs, detached, as pi_old.
        ref_logp: [n, T] float32 reference-model log-probs when the method has a KL term, else None.
        is_weight: [n, T] float32 truncated importance weights for the engine/trainer mismatch
            (``rollout.engine_is_cap``), multiplying each token's policy-gradient loss, else None.
        rewards: [n] rewards after shaping (DAPO's overlong penalty).
        advantages: [n] per-sequence advantages.
        pg_mask: [n] float, 1 where the row takes part in the policy-gradient term (0: a row kept only for
            its EchoClip, or padding rows of DAPO's filter).
        step_mask: [n, T] float, response tokens that belong to a step (EOS excluded).
        step_end: [n, T] bool, tokens that end a step.
        clip_mask: [n, T] bool, the EchoClip tokens (at most one clip per row).
        num_tokens: 0-dim float, policy-gradient response tokens of the whole optimizer step, all ranks.
        num_seqs: 0-dim float, policy-gradient rows of the whole optimizer step, all ranks.
        num_clips: 0-dim float, rows holding an EchoClip in the whole optimizer step, all ranks.
    """

    temperature: float
    max_response_len: int
    group_size: int
    scores: Tensor | None = None
    truncated: Tensor | None = None
    off_policy: Tensor | None = None
    step_valid: Tensor | None = None
    sampler_logp: Tensor | None = None
    entropy: Tensor | None = None
    old_logp: Tensor | None = None
    ref_logp: Tensor | None = None
    is_weight: Tensor | None = None
    rewards: Tensor | None = None
    advantages: Tensor | None = None
    pg_mask: Tensor | None = None
    step_mask: Tensor | None = None
    step_end: Tensor | None = None
    clip_mask: Tensor | None = None
    num_tokens: Tensor | None = None
    num_seqs: Tensor | None = None
    num_clips: Tensor | None = None

    @property
    def off_policy_mask(self) -> Tensor:
        """[n, T] float, 1 on expert tokens (LUFFY), else 0."""
        return self.response_mask * self.off_policy[:, None].float()

    @property
    def lengths(self) -> Tensor:
        """[n] long, response tokens of each row (EOS included)."""
        return self.response_mask.sum(-1).long()


def pad_rollouts(
    prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int
) -> TokenBatch:
    """Pad N (prompt, response) pairs into one :class:`TokenBatch`.

    Args:
        prompts: N prompt token-id lists (non-empty).
        responses: N response token-id lists (EOS kept where the response stopped).
        pad_id: token id written into padding (never counted: masks are built from lengths).

    Returns:
        The batch, ``P`` = the longest prompt, ``T`` = the longest response (at least 1).
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    n = len(prompts)
    p_len = max(len(p) for p in prompts)
    t_len = max(1, max(len(r) for r in responses))
    input_ids = torch.full((n, p_len + t_len), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, p_len + t_len), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty")
        input_ids[i, p_len - len(p) : p_len] = torch.as_tensor(list(p), dtype=torch.long)
        attention_mask[i, p_len - len(p) : p_len + len(r)] = 1
        if len(r):
            input_ids[i, p_len : p_len + len(r)] = torch.as_tensor(list(r), dtype=torch.long)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # [N, P + T]
    return TokenBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        responses=input_ids[:, p_len:],
        response_mask=attention_mask[:, p_len:].float(),
        prompt_len=p_len,
    )


def pad_per_token(values: Sequence[Sequence[float]], width: int) -> Tensor:
    """Per-token values of N responses, right-padded with 0 to ``width`` columns: [N, width] float32."""
    out = torch.zeros(len(values), width)
    for i, row in enumerate(values):
        out[i, : len(row)] = torch.tensor(list(row), dtype=torch.float32)
    return out
