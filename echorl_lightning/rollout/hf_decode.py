"""Decoding one chunk of left-padded rows with ``model.generate``, in segments that drop finished rows.

``generate`` keeps every row of its batch in the forward until the last row ends: a row that sampled EOS early
still pays the attention, the MLP and the growth of the KV cache (in transformers' dynamic cache, a copy of
every layer's keys and values per step) until the longest row is done. With ``compact_every = k`` the chunk is
decoded k new tokens at a time; after each segment the rows that sampled EOS leave the batch and the cache
(``Cache.batch_select_indices``), and the others continue from the cache the previous segment built (the
segment's input is the whole sequence so far; ``generate`` feeds only the tokens the cache does not hold yet).

Sampling is unchanged: every token is drawn from the policy given the same context as in one ``generate``
call, with the same logits processors; what differs is the random stream (finished rows no longer draw), so a
seeded result is reproducible for a fixed ``compact_every`` as for a fixed chunk size. Each segment's
entropies are recorded by a fresh recorder and joined per row.

One ``generate`` call instead (``compact_every=None``, or at least ``max_new_tokens``) when the cache is off,
for a static or other preallocated cache (``cache_implementation`` set), and for a sharded policy, whose ranks
must make the same number of forwards (transformers' ``synced_gpus`` covers one call, not a loop of them).
Rows leave only transformers' own dynamic cache of attention layers (keys and values per row and nothing
else, :func:`drops_rows`); a model whose ``generate`` builds any other cache (recurrent or linear-attention
state, a model's own cache class) has its chunk decoded again in one call after the first segment: that
segment's draws are thrown away whatever they were, so the samples stay the policy's.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList


def cache_keyword(model: torch.nn.Module) -> str:
    """The keyword under which the installed transformers' ``generate`` takes an existing cache: ``cache`` where
    the model's forward names it so (transformers >= 5.2x), else ``past_key_values``. A PEFT wrapper is looked
    through (its forward takes ``**kwargs``)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return "cache" if "cache" in params and "past_key_values" not in params else "past_key_values"


def returned_cache(output: Any) -> Any:
    """The cache a ``generate`` call returned (``output.cache`` or, before transformers renamed it,
    ``output.past_key_values``); ``None`` when it returned none."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def drops_rows(cache: Any) -> bool:
    """Whether rows can leave ``cache`` by ``batch_select_indices``: exactly transformers' ``DynamicCache`` whose
    layers are all attention layers (``DynamicLayer``, ``DynamicSlidingWindowLayer``; before transformers gave
    caches layers, a ``DynamicCache`` held key and value lists only). A linear-attention or recurrent layer keeps
    per-row state that the selection would not cut."""
    if cache is None or type(cache).__name__ != "DynamicCache" or not hasattr(cache, "batch_select_indices"):
        return False
    layers = getattr(cache, "layers", None)
    if layers is None:
        return True
    return all(type(layer).__name__ in ("DynamicLayer", "DynamicSlidingWindowLayer") for layer in layers)


def decode_rows(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    config: GenerationConfig,
    eos_id: int,
    compact_every: int | None,
    recorder: Callable[[], LogitsProcessor] | None = None,
) -> tuple[list[list[int]], list[list[float]] | None]:
    """The new tokens of every row (and the recorder's per-step values, when one is given), in row order.

    Args:
        input_ids: [rows, P] left-padded prompts.
        attention_mask: [rows, P] 1 on prompt tokens.
        config: the call's complete ``GenerationConfig`` (its ``max_new_tokens`` is the whole budget).
        eos_id: the stop token; a row whose segment holds it leaves the batch.
        compact_every: new tokens per segment, or ``None`` for one call (also the case without the cache or
            with a ``cache_implementation`` such as a static cache).
        recorder: builds a fresh logits processor with ``per_row() -> [rows, steps]`` (the entropy
            recorder), one per segment.

    Returns:
        ``tokens``: per row, the generated ids (after a row's EOS: padding up to the end of its last
        segment); ``values``: per row, the recorder's value at each of those positions, or ``None`` without
        a recorder.
    """
    total = int(config.max_new_tokens)
    one_call = compact_every is None or not config.use_cache or config.cache_implementation is not None
    step = total if one_call else min(compact_every, total)
    rows = input_ids.shape[0]
    tokens: list[list[int]] = [[] for _ in range(rows)]
    values: list[list[float]] | None = None if recorder is None else [[] for _ in range(rows)]
    live = torch.arange(rows)  # [live] original row of each row still in the batch
    ended = torch.zeros(rows, dtype=torch.bool)  # [live] the row has sampled EOS
    prompt_ids, prompt_mask = input_ids, attention_mask
    cache, done = None, 0
    while done < total:
        segment = copy.deepcopy(config)
        segment.max_new_tokens = min(step, total - done)
        segment.return_dict_in_generate = True
        processor = recorder() if recorder is not None else None
        kwargs = {} if cache is None else {cache_keyword(model): cache}
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=segment,
            logits_processor=LogitsProcessorList([processor] if processor is not None else []),
            **kwargs,
        )
        sequences = output.sequences  # [live, width + new]
        new = sequences[:, input_ids.shape[1] :]  # [live, new]
        per_step = processor.per_row().tolist() if processor is not None else None  # [live, new]
        for i, (row, ids) in enumerate(zip(live.tolist(), new.tolist(), strict=True)):
            tokens[row] += ids
            if values is not None and per_step is not None:
                values[row] += per_step[i]
        done += new.shape[1]
        ended |= (new == eos_id).any(dim=-1).cpu()
        if done >= total or bool(ended.all()):
            break
        cache = returned_cache(output)
        if not drops_rows(cache):  # not a plain dynamic cache: the whole chunk again, in one call
            return decode_rows(model, prompt_ids, prompt_mask, config, eos_id, None, recorder)
        if bool(ended.any()):
            keep = (~ended).nonzero().squeeze(-1)  # [kept] rows without EOS so far
            live, ended = live[keep], ended[keep]
            keep = keep.to(sequences.device)
            cache.batch_select_indices(keep)
            sequences, attention_mask = sequences[keep], attention_mask[keep]
        grown = torch.ones(
            (sequences.shape[0], new.shape[1]), dtype=attention_mask.dtype, device=attention_mask.device
        )  # the continuing rows' new tokens are all real: none of them holds EOS yet
        input_ids, attention_mask = sequences, torch.cat([attention_mask, grown], dim=1)
    return tokens, values
