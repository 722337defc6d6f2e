"""Reasoning-step splitting for EchoRL: where steps end and each step's entropy.

A response is split into reasoning steps at delimiter tokens: a step ends at, and includes, a token whose
decoded text contains the delimiter (default "\\n"; merged tokens such as ".\\n\\n" count). The last step runs
to the end of the response. The steps cover exactly the tokens of ``response_mask``: whether EOS is a response
token for step purposes is the caller's choice of mask (the trainer excludes it:
:func:`~echorl_lightning.training.echo_rows.echo_clip_rows`). A step's entropy is the mean token entropy over
its tokens.

This file implements:

* :func:`delimiter_token_ids`: the delimiter token ids of a tokenizer's vocabulary (computed once per
  tokenizer by the caller; nothing is cached here);
* :func:`step_end_mask_from_tokens`: where the response tokens are delimiter tokens;
* :func:`split_steps`: the step index of every response token and per-step length and mean entropy, fully
  vectorised (an exclusive cumsum of the step ends gives the step index, a ``scatter_add`` over a flat
  ``(row, step)`` index gives the per-step sums).

Left out: splitting on multi-token delimiters or on text spans that straddle tokens (a delimiter is only
seen inside one token's decoded text), and any minimum step length (:mod:`echorl_lightning.echo.clips`
applies ``min_step_tokens``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


def delimiter_token_ids(tokenizer: Any, delimiter: str = "\n") -> list[int]:
    """Every vocabulary id whose decoded text contains ``delimiter``.

    Each id is decoded alone (``tokenizer.decode([i])``), so merged tokens such as ``".\\n\\n"`` count.
    Special tokens (``tokenizer.all_special_ids``) are excluded. The scan costs one decode per vocabulary
    entry, so call it once per tokenizer and keep the result.

    Args:
        tokenizer: a Hugging Face tokenizer (``len(tokenizer)`` ids, ``decode``, ``all_special_ids``).
        delimiter: the step delimiter text; must be non-empty.

    Returns:
        The matching ids in increasing order.
    """
    if not delimiter:
        raise ValueError("echo.step_delimiter must be a non-empty string")
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    ids = []
    for token_id in range(len(tokenizer)):
        if token_id in special:
            continue
        text = tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if delimiter in text:
            ids.append(token_id)
    return ids


def step_end_mask_from_tokens(tokens: Tensor, delimiter_token_ids: Iterable[int] | Tensor) -> Tensor:
    """Where a token ends a step.

    Args:
        tokens: ``[N, T]`` long, response token ids (padding included; :func:`split_steps` ignores ends that
            fall outside ``response_mask``).
        delimiter_token_ids: the delimiter ids, a sequence/set of ints or a 1-D tensor.

    Returns:
        ``[N, T]`` bool, True where ``tokens[n, t]`` is a delimiter id.
    """
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise TypeError(f"tokens must be an integer tensor, got {tokens.dtype}")
    if isinstance(delimiter_token_ids, Tensor):
        ids = delimiter_token_ids.to(device=tokens.device, dtype=tokens.dtype).flatten()
    else:
        ids = torch.tensor(sorted(set(delimiter_token_ids)), device=tokens.device, dtype=tokens.dtype)
    return torch.isin(tokens, ids)


@dataclass(frozen=True)
class Steps:
    """The steps of N responses; S = T (a response of T tokens has at most T steps).

    Attributes:
        step_id: ``[N, T]`` long, the step index of each response token, -1 off ``response_mask``.
        length: ``[N, S]`` long, tokens in step s of row n (0 where row n has fewer than s + 1 steps).
        entropy: ``[N, S]`` float32, mean token entropy of step s of row n (0 where the step does not exist).
        num_steps: ``[N]`` long, the number of (non-empty) steps of each row; 0 for an empty response.
    """

    step_id: Tensor
    length: Tensor
    entropy: Tensor
    num_steps: Tensor


def split_steps(entropy: Tensor, response_mask: Tensor, step_end_mask: Tensor) -> Steps:
    """Split every response into steps and compute per-step length and mean token entropy.

    A step ends at (and includes) a response token with ``step_end_mask`` True; the last step runs to the
    last response token. Ends outside ``response_mask`` are ignored. Every step index in
    ``0 .. num_steps - 1`` holds at least one token.

    Args:
        entropy: ``[N, T]`` float, token entropy (values off ``response_mask`` are ignored, even NaN).
        response_mask: ``[N, T]`` bool/int, 1 on response tokens.
        step_end_mask: ``[N, T]`` bool, True at a token that ends a step.

    Returns:
        The :class:`Steps` of the batch.
    """
    for name, tensor in (("response_mask", response_mask), ("step_end_mask", step_end_mask)):
        if tensor.shape != entropy.shape:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)}, expected {tuple(entropy.shape)} (entropy)"
            )
    if entropy.dim() != 2:
        raise ValueError(f"entropy must be [N, T], got shape {tuple(entropy.shape)}")
    n, t = entropy.shape
    mask = response_mask.bool()
    ends = (step_end_mask.bool() & mask).long()
    step_id = ends.cumsum(dim=-1) - ends  # [N, T], exclusive count of earlier ends
    step_id = step_id.masked_fill(~mask, -1)
    num_steps = (step_id + 1).amax(dim=-1) if t > 0 else step_id.new_zeros(n)  # [N]

    flat = torch.arange(n, device=entropy.device)[:, None] * t + step_id.clamp(min=0)  # [N, T]
    values = torch.where(mask, entropy.float(), 0.0)  # [N, T]
    sums = values.new_zeros(n * t).scatter_add_(0, flat.flatten(), values.flatten())  # [N * S]
    length = step_id.new_zeros(n * t).scatter_add_(0, flat.flatten(), mask.long().flatten())  # [N * S]
    sums, length = sums.view(n, t), length.view(n, t)  # [N, S]
    step_entropy = sums / length.clamp(min=1)  # [N, S]
    return Steps(step_id=step_id, length=length, entropy=step_entropy, num_steps=num_steps)
