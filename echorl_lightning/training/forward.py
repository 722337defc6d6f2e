"""The policy forward: response log-probs and entropy without full-vocabulary logits.

Every pass over rollouts (the training forward, the no-grad old-log-prob pass that gives EchoRL its token
entropies, the reference-model pass) needs, for each response token, the log-prob of the sampled token and the
full-vocabulary entropy at the rollout temperature tau. The default path runs the decoder only
(``model.get_decoder()``: no LM head), keeps the final hidden states at the T positions that predict the
response, and hands them with the output embedding to
:func:`echorl_lightning.ops.logprobs_and_entropy_from_hidden`, which computes logits chunk by chunk and
recomputes them in the backward. Peak memory beyond the decoder is then a few [chunk, V] buffers instead of
the [n, P + T, V] logits (and their gradient) of ``model(...).logits``.

The decoder is trusted to compute what the model's own forward computes before the LM head; what the model
does after the head is looked up by ``config.model_type`` in :data:`LM_HEADS`, a registry of functions
``config -> (logit_scale, softcap)`` applied inside each chunk:

- ``qwen2`` (Qwen2 / 2.5), ``qwen3``, ``llama`` (Llama 3.x), ``mistral``, ``gemma``: plain ``lm_head``;
- ``gemma2``, ``gemma3_text`` (Gemma 3 text-only): ``final_logit_softcapping``;
- ``cohere``, ``cohere2``: ``logit_scale``; ``granite``: ``1 / logits_scaling``.

Any other model type is refused with an error naming it (register it after reading its forward, or pass
``full_logits=True``), and so is an output embedding that is not a plain ``nn.Linear`` (LoRA or
``modules_to_save`` on ``lm_head``: its weight alone is not the head). A peft-wrapped model works through
the wrapper's ``get_decoder`` / ``get_output_embeddings`` (LoRA in the decoder is applied). Under
``torch.autocast`` the head runs in the autocast dtype, as ``nn.Linear`` would.

``full_logits=True`` is the reference path: ``model(...).logits`` over all P + T positions, then the
chunked :func:`echorl_lightning.ops.logprobs_and_entropy` on the response slice.

Left out: multimodal wrappers (``gemma3`` with a vision tower; use the text-only checkpoint), MoE router
losses (the decoder's auxiliary outputs are dropped). Under FSDP2, calling the decoder directly would skip the
root unit's pre-forward all-gather of the embeddings and head: the module runs this function as the root's
forward (``training.sharding.call_through_root``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from transformers import PretrainedConfig

from echorl_lightning.ops import logprobs_and_entropy, logprobs_and_entropy_from_hidden
from echorl_lightning.registry import Registry

HeadTransform = Callable[[PretrainedConfig], tuple[float, float | None]]

# model_type -> (logit_scale, softcap) applied to lm_head(hidden); see the module docstring.
LM_HEADS: Registry[HeadTransform] = Registry("LM head of model type")


def _plain_head(config: PretrainedConfig) -> tuple[float, float | None]:
    """logits = lm_head(hidden)."""
    return 1.0, None


def _softcapped_head(config: PretrainedConfig) -> tuple[float, float | None]:
    """logits = c * tanh(lm_head(hidden) / c), c = ``final_logit_softcapping`` (None: no cap)."""
    cap = config.final_logit_softcapping
    return 1.0, None if cap is None else float(cap)


def _cohere_head(config: PretrainedConfig) -> tuple[float, float | None]:
    """logits = lm_head(hidden) * ``logit_scale``."""
    return float(config.logit_scale), None


def _granite_head(config: PretrainedConfig) -> tuple[float, float | None]:
    """logits = lm_head(hidden) / ``logits_scaling``."""
    return 1.0 / float(config.logits_scaling), None


for _name in ("qwen2", "qwen3", "llama", "mistral", "gemma"):
    LM_HEADS.register(_name)(_plain_head)
for _name in ("gemma2", "gemma3_text"):
    LM_HEADS.register(_name)(_softcapped_head)
for _name in ("cohere", "cohere2"):
    LM_HEADS.register(_name)(_cohere_head)
LM_HEADS.register("granite")(_granite_head)


def lm_head_parts(model: nn.Module) -> tuple[nn.Module, Tensor, Tensor | None, float, float | None]:
    """The pieces of ``model``'s forward the hidden path needs, or a ValueError naming what is unsupported.

    Args:
        model: an HF causal LM (or a peft wrapper of one).

    Returns:
        (decoder, head weight [V, D], head bias [V] or None, logit_scale, softcap).
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in LM_HEADS:
        raise ValueError(
            f"model type {model_type!r}: not known to compute its logits as lm_head(hidden) plus a registered "
            f"scale/soft-cap (known: {', '.join(LM_HEADS.names())}); register it in "
            "echorl_lightning.training.forward.LM_HEADS after reading its forward, or use full_logits=True"
        )
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise ValueError(
            f"model type {model_type!r}: the output embedding is a {type(head).__name__}, not a plain nn.Linear "
            "(LoRA or modules_to_save on lm_head?); its weight alone is not the head: use full_logits=True"
        )
    decoder = model.get_decoder()
    if decoder is model or decoder is head:
        raise ValueError(f"model type {model_type!r}: get_decoder() does not return a separate decoder")
    logit_scale, softcap = LM_HEADS.get(model_type)(model.config)
    return decoder, head.weight, head.bias, logit_scale, softcap


def policy_response_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    position_ids: Tensor,
    prompt_len: int,
    responses: Tensor,
    temperature: float,
    *,
    chunk_size: int | None = None,
    full_logits: bool = False,
) -> tuple[Tensor, Tensor]:
    """Log-probs and entropy of the response tokens from one forward over ``prompt + response``.

    Args:
        model: an HF causal LM of a type in :data:`LM_HEADS` (any causal LM with ``full_logits``).
        input_ids: [n, P + T] long; prompts left-padded to P, responses right-padded to T
            (``echorl_lightning.rollout.buffer.pad_rollouts``).
        attention_mask: [n, P + T], 1 on real tokens.
        position_ids: [n, P + T] long, 0 at each row's first real token.
        prompt_len: P >= 1; position P - 1 + t predicts response token t.
        responses: [n, T] long, ``input_ids[:, P:]``.
        temperature: tau > 0; the (scaled, soft-capped) logits are divided by it.
        chunk_size: rows of [n*T] per log-prob/entropy chunk; None: ``ops.auto_chunk_size``.
        full_logits: compute ``model(...).logits`` over every position (the reference path).

    Returns:
        (logp [n, T], entropy [n, T]), float32; logp carries a gradient when grad mode is on, entropy none.
    """
    n, t = responses.shape
    if input_ids.shape != (n, prompt_len + t):
        raise ValueError(
            f"input_ids has shape {tuple(input_ids.shape)}, expected [n={n}, P + T={prompt_len + t}]"
        )
    if prompt_len < 1:
        raise ValueError(
            f"prompt_len must be >= 1 (position P - 1 predicts the first response token), got {prompt_len}"
        )
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
    if full_logits:
        logits = model(**inputs, use_cache=False).logits  # [n, P + T, V]
        response_logits = logits[:, prompt_len - 1 : prompt_len - 1 + t]  # [n, T, V]
        return logprobs_and_entropy(response_logits, responses, temperature, chunk_size=chunk_size)

    decoder, weight, bias, logit_scale, softcap = lm_head_parts(model)
    hidden = decoder(**inputs, use_cache=False).last_hidden_state  # [n, P + T, D]
    hidden = hidden[:, prompt_len - 1 : prompt_len - 1 + t].contiguous()  # [n, T, D]
    device_type = hidden.device.type
    # The head in the dtype nn.Linear would run in: the autocast dtype if autocast is on, else weight's.
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
    hidden, weight = hidden.to(dtype), weight.to(dtype)
    bias = None if bias is None else bias.to(dtype)
    with torch.autocast(device_type, enabled=False):
        return logprobs_and_entropy_from_hidden(
            hidden,
            weight,
            responses,
            temperature,
            bias,
            chunk_size=chunk_size,
            logit_scale=logit_scale,
            softcap=softcap,
        )
