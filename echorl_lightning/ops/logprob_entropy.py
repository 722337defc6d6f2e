"""Memory-bounded token log-probs and full-vocabulary entropy, from logits or from the last hidden state.

EchoRL needs, for every response token, the log-prob of the sampled token (the policy gradient and echo
losses) and the full-vocabulary Shannon entropy of the next-token distribution at the rollout temperature tau
(EchoClip selection, a constant)::

    z = logits / tau
    logp_t = z_t[token_t] - logsumexp(z_t)
    H_t    = logsumexp(z_t) - sum_v softmax(z_t)_v * z_{t,v}

With V = 151,936 (Qwen2.5) a [T, V] float32 softmax of one 2,048-token response is 1.2 GB; the naive
``log_softmax`` + ``gather`` + ``-(p * logp).sum(-1)`` holds three or four such tensors at once, and autograd
keeps one of them for the backward. Here the flattened [N*T, V] rows are processed in chunks of
``chunk_size`` rows: the forward keeps only the [N*T] logsumexp, and a custom ``torch.autograd.Function``
recomputes each chunk's softmax in the backward, writing

    d logp / d logits = (onehot(token) - softmax(z)) / tau

chunk by chunk into one preallocated gradient of the logits' dtype. Entropy is computed in the same pass
as the logsumexp (one read of each chunk) and returned detached. bf16/fp16 chunks are upcast to float32.

``logprobs_and_entropy_from_hidden`` goes one step further and never materialises the logits: each chunk
of logits is ``hidden_chunk @ weight.T`` (the LM head), recomputed in the backward. It also applies what
some models put after the LM head, inside the chunk: a logit scale s (Cohere's ``logit_scale``, Granite's
``1 / logits_scaling``) and a final soft-cap c (Gemma 2/3's ``final_logit_softcapping``)::

    y = c * tanh(s * (hidden @ weight.T + bias) / c)     (y = s * (...) without a soft-cap)
    d y / d (hidden @ weight.T + bias) = s * (1 - tanh^2)

Left out: double backward (``once_differentiable``), a gradient through the entropy (a constant in EchoRL),
and non-finite logits (a row holding -inf, e.g. after top-k masking, gives NaN entropy, as the naive
formula does). No fused GPU kernel: chunks are plain torch ops, so the same code runs on CPU and CUDA.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

# Target size of one chunk's float32 [rows, V] scratch buffer (at most two are alive at a time). Small enough
# that the chunk is a few percent of the naive [N*T, V] temporaries, large enough that the per-op cost of a
# few hundred chunks stays negligible on CUDA and on a busy multi-threaded CPU (benchmarks/README.md).
_CHUNK_BYTES = 128 * 2**20


def auto_chunk_size(vocab_size: int) -> int:
    """Rows per chunk so that one float32 [rows, vocab_size] buffer is about 128 MiB (220 rows at V=151,936)."""
    return max(1, _CHUNK_BYTES // (4 * vocab_size))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (for gradcheck); everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_common(tokens: Tensor, lead_shape: torch.Size, temperature: float, chunk_size: int | None) -> None:
    """Raise ValueError naming the bad argument: tokens must be long [N, T] = lead_shape, temperature > 0,
    chunk_size a positive int or None."""
    if tokens.shape != lead_shape:
        raise ValueError(f"tokens has shape {tuple(tokens.shape)}, expected {tuple(lead_shape)} ([N, T])")
    if tokens.dtype != torch.long:
        raise ValueError(f"tokens must be torch.long (int64) token ids, got {tokens.dtype}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None (auto), got {chunk_size!r}")


def _row_blocks(x: Tensor, rows: int) -> Iterator[tuple[int, Tensor]]:
    """Split x [N, T, D] into row blocks without copying.

    Yields ``(start, block)``: block [r, D] holds rows ``start .. start + r`` of the row-major flattening
    [N*T, D]. Blocks span sequences when [N, T] merge in place; otherwise (e.g. ``logits[:, P - 1 : -1]``
    of a model's output) each block stays inside one sequence.
    """
    n, t, d = x.shape
    if n == 1 or t == 1 or x.stride(0) == t * x.stride(1):
        flat = x.view(n * t, d)  # [N*T, D]
        for start in range(0, n * t, rows):
            yield start, flat[start : start + rows]
    else:
        for i in range(n):
            for start in range(0, t, rows):
                yield i * t + start, x[i, start : start + rows]


def _forward_block(
    block: Tensor, tokens: Tensor, inv_t: float, shifted: Tensor, exps: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Log-prob, logsumexp and entropy of one chunk of rows, reading the chunk once.

    Args:
        block: logits [r, V], any float dtype.
        tokens: token ids [r].
        inv_t: 1 / temperature.
        shifted, exps: scratch [r, V] in the compute dtype; overwritten.

    Returns:
        (logp [r], lse [r], entropy [r]) in the compute dtype, with z = block * inv_t and lse = logsumexp(z).
    """
    peak = block.amax(-1, keepdim=True).to(shifted.dtype) * inv_t  # [r, 1], max of z
    torch.add(-peak, block, alpha=inv_t, out=shifted)  # z - max z, one fused pass (upcasts bf16)
    torch.exp(shifted, out=exps)
    sum_exp = exps.sum(-1)  # [r]
    log_norm = sum_exp.log()  # [r], logsumexp(z) - max z
    # H = lse - sum_v p_v z_v = log_norm - sum_v exp(s_v) s_v / sum_v exp(s_v), with s = z - max z.
    # In place (torch.linalg.vecdot would allocate a third [r, V] buffer on CPU).
    entropy = log_norm - exps.mul_(shifted).sum(-1) / sum_exp
    logp = shifted.gather(1, tokens[:, None]).squeeze(1) - log_norm
    return logp, peak.squeeze(1) + log_norm, entropy


def _grad_block(
    block: Tensor, tokens: Tensor, lse: Tensor, grad_logp: Tensor, inv_t: float, out: Tensor
) -> None:
    """Write d(sum grad_logp * logp)/d block = grad_logp * (onehot(token) - softmax(z)) * inv_t into out.

    Args:
        block: logits [r, V]; tokens: [r]; lse: logsumexp(z) [r] in the compute dtype; grad_logp: [r].
        out: [r, V] in the compute dtype; overwritten.
    """
    scale = grad_logp.to(out.dtype) * inv_t  # [r]
    torch.add(-lse[:, None], block, alpha=inv_t, out=out)  # z - lse = log softmax(z)
    out.exp_().mul_(-scale[:, None])  # -scale * p
    out.scatter_add_(1, tokens[:, None], scale[:, None])  # + scale * onehot(token)


class _ChunkedLogProbEntropy(torch.autograd.Function):
    """logits [N, T, V] -> (logp [N, T], entropy [N, T]) with a chunked forward and backward."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, logits: Tensor, tokens: Tensor, temperature: float, chunk_size: int
    ) -> tuple[Tensor, Tensor]:
        n, t, v = logits.shape
        dtype = _compute_dtype(logits.dtype)
        inv_t = 1.0 / temperature
        rows = max(1, min(chunk_size, n * t))
        shifted = logits.new_empty((rows, v), dtype=dtype)
        exps = logits.new_empty((rows, v), dtype=dtype)
        logp = logits.new_empty(n * t, dtype=dtype)
        lse = logits.new_empty(n * t, dtype=dtype)
        entropy = logits.new_empty(n * t, dtype=dtype)
        flat_tokens = tokens.reshape(n * t)  # [N*T]
        for start, block in _row_blocks(logits, rows):
            r = block.shape[0]
            sl = slice(start, start + r)
            logp[sl], lse[sl], entropy[sl] = _forward_block(
                block, flat_tokens[sl], inv_t, shifted[:r], exps[:r]
            )
        ctx.save_for_backward(logits, flat_tokens, lse)
        ctx.temperature, ctx.rows = temperature, rows
        entropy = entropy.view(n, t)  # [N, T]
        ctx.mark_non_differentiable(entropy)
        return logp.view(n, t), entropy

    @staticmethod
    @once_differentiable
    def backward(
        ctx: FunctionCtx, grad_logp: Tensor, grad_entropy: Tensor | None
    ) -> tuple[Tensor, None, None, None]:
        logits, flat_tokens, lse = ctx.saved_tensors
        n, t, v = logits.shape
        inv_t = 1.0 / ctx.temperature
        grad_logits = logits.new_empty((n * t, v))  # [N*T, V] in logits' dtype
        # float32 logits: each chunk's gradient is computed in place in grad_logits; others need a scratch.
        same_dtype = grad_logits.dtype == lse.dtype
        scratch = None if same_dtype else logits.new_empty((ctx.rows, v), dtype=lse.dtype)
        flat_grad = grad_logp.reshape(n * t)  # [N*T]
        for start, block in _row_blocks(logits, ctx.rows):
            r = block.shape[0]
            sl = slice(start, start + r)
            out = grad_logits[sl] if scratch is None else scratch[:r]
            _grad_block(block, flat_tokens[sl], lse[sl], flat_grad[sl], inv_t, out)
            if scratch is not None:
                grad_logits[sl].copy_(out)
        return grad_logits.view(n, t, v), None, None, None


def logprobs_and_entropy(
    logits: Tensor, tokens: Tensor, temperature: float = 1.0, *, chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """Token log-probs (differentiable) and full-vocabulary entropy (detached) at a temperature.

    Args:
        logits: [N, T, V] float32, bf16 or fp16 (float64 is computed in float64); ``logits[:, t]`` is the
            distribution of ``tokens[:, t]``. May be a non-contiguous slice of a model's output.
        tokens: [N, T] long token ids in [0, V).
        temperature: tau > 0; z = logits / tau.
        chunk_size: rows of the flattened [N*T, V] processed at a time; None picks
            :func:`auto_chunk_size`. At most two float32 [chunk_size, V] buffers are alive at once
            (the backward also allocates the [N, T, V] gradient, in logits' dtype).

    Returns:
        (logp [N, T], entropy [N, T]), float32: logp = log softmax(z)[token], with a gradient w.r.t.
        logits; entropy = logsumexp(z) - sum_v softmax(z)_v z_v, without a gradient.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be [N, T, V], got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a float tensor, got {logits.dtype}")
    _check_common(tokens, logits.shape[:2], temperature, chunk_size)
    rows = chunk_size if chunk_size is not None else auto_chunk_size(logits.shape[-1])
    return _ChunkedLogProbEntropy.apply(logits, tokens, float(temperature), rows)


def _linear_into(h: Tensor, weight: Tensor, bias: Tensor | None, out: Tensor) -> Tensor:
    """Write the logits [r, V] of hidden rows h [r, D] under an LM head weight [V, D] and optional bias
    [V] into out [r, V] (weight's dtype) and return it."""
    if bias is None:
        return torch.mm(h, weight.t(), out=out)
    return torch.addmm(bias, h, weight.t(), out=out)


def _transform_into(block: Tensor, head: tuple[float, float | None], out: Tensor) -> Tensor:
    """Write the transformed logits y of raw logits block [r, V] into out [r, V] and return out.

    ``head`` is (logit_scale s, softcap c or None): y = c * tanh(s * block / c), or s * block without c.
    out is in the compute dtype and may alias block.
    """
    logit_scale, softcap = head
    if softcap is None:
        return out.copy_(block).mul_(logit_scale)
    return out.copy_(block).mul_(logit_scale / softcap).tanh_().mul_(softcap)


def _transformed_grad_block(
    block: Tensor,
    tokens: Tensor,
    lse: Tensor,
    grad_logp: Tensor,
    inv_t: float,
    head: tuple[float, float | None],
    out: Tensor,
    tanh: Tensor,
) -> None:
    """:func:`_grad_block` through the head transform: write d(sum grad_logp * logp) / d block into out.

    Args:
        block: raw logits [r, V] before the transform (any float dtype; may alias out).
        tokens, lse, grad_logp, inv_t: as in :func:`_grad_block`; lse is that of y / tau.
        head: (logit_scale s, softcap c or None).
        out: [r, V] in the compute dtype; overwritten.
        tanh: [r, V] scratch in the compute dtype, overwritten (unused without a soft-cap).
    """
    logit_scale, softcap = head
    if softcap is None:
        _grad_block(_transform_into(block, head, out), tokens, lse, grad_logp, inv_t, out)  # d / dy
        out.mul_(logit_scale)  # dy/dx = s
        return
    tanh.copy_(block).mul_(logit_scale / softcap).tanh_()  # tanh(s x / c)
    torch.mul(tanh, softcap, out=out)  # y
    _grad_block(out, tokens, lse, grad_logp, inv_t, out)  # d / dy, in place
    out.mul_(tanh.square_().neg_().add_(1.0).mul_(logit_scale))  # dy/dx = s (1 - tanh^2)


class _ChunkedLinearLogProbEntropy(torch.autograd.Function):
    """(hidden [N, T, D], weight [V, D], bias [V] | None) -> (logp [N, T], entropy [N, T]), never holding
    more than a chunk of logits. ``head`` = (logit_scale, softcap) or None (plain logits)."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        tokens: Tensor,
        temperature: float,
        chunk_size: int,
        head: tuple[float, float | None] | None,
    ) -> tuple[Tensor, Tensor]:
        n, t, _ = hidden.shape
        v = weight.shape[0]
        dtype = _compute_dtype(hidden.dtype)
        inv_t = 1.0 / temperature
        rows = max(1, min(chunk_size, n * t))
        shifted = hidden.new_empty((rows, v), dtype=dtype)
        exps = hidden.new_empty((rows, v), dtype=dtype)
        # A float32 chunk of logits is shifted in place; a bf16/fp16 one needs its own buffer.
        logits_buf = shifted if weight.dtype == dtype else hidden.new_empty((rows, v))
        logp = hidden.new_empty(n * t, dtype=dtype)
        lse = hidden.new_empty(n * t, dtype=dtype)
        entropy = hidden.new_empty(n * t, dtype=dtype)
        flat_tokens = tokens.reshape(n * t)  # [N*T]
        for start, h in _row_blocks(hidden, rows):
            r = h.shape[0]
            sl = slice(start, start + r)
            block = _linear_into(h, weight, bias, logits_buf[:r])  # [r, V]
            if head is not None:
                block = _transform_into(block, head, shifted[:r])  # [r, V], y in the compute dtype
            logp[sl], lse[sl], entropy[sl] = _forward_block(
                block, flat_tokens[sl], inv_t, shifted[:r], exps[:r]
            )
        ctx.save_for_backward(hidden, weight, bias, flat_tokens, lse)
        ctx.temperature, ctx.rows, ctx.head = temperature, rows, head
        entropy = entropy.view(n, t)  # [N, T]
        ctx.mark_non_differentiable(entropy)
        return logp.view(n, t), entropy

    @staticmethod
    @once_differentiable
    def backward(
        ctx: FunctionCtx, grad_logp: Tensor, grad_entropy: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None, None, None]:
        hidden, weight, bias, flat_tokens, lse = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        head = ctx.head
        n, t, d = hidden.shape
        v = weight.shape[0]
        inv_t = 1.0 / ctx.temperature
        grad_hidden = hidden.new_empty((n * t, d)) if need_hidden else None  # [N*T, D]
        # Accumulated over chunks in the parameters' own dtype (each matmul accumulates in float32).
        grad_weight = torch.zeros_like(weight) if need_weight else None  # [V, D]
        grad_bias = torch.zeros_like(bias) if need_bias else None  # [V]
        scratch = hidden.new_empty((ctx.rows, v), dtype=lse.dtype)
        logits_buf = scratch if weight.dtype == lse.dtype else hidden.new_empty((ctx.rows, v))
        tanh = hidden.new_empty((ctx.rows, v), dtype=lse.dtype) if head and head[1] is not None else scratch
        flat_grad = grad_logp.reshape(n * t)  # [N*T]
        for start, h in _row_blocks(hidden, ctx.rows):
            r = h.shape[0]
            sl = slice(start, start + r)
            block = _linear_into(h, weight, bias, logits_buf[:r])  # [r, V]
            if head is None:
                _grad_block(block, flat_tokens[sl], lse[sl], flat_grad[sl], inv_t, scratch[:r])
            else:
                _transformed_grad_block(
                    block, flat_tokens[sl], lse[sl], flat_grad[sl], inv_t, head, scratch[:r], tanh[:r]
                )
            grad_block = logits_buf[:r].copy_(scratch[:r])  # [r, V], d loss / d logits in weight's dtype
            if grad_hidden is not None:
                torch.mm(grad_block, weight, out=grad_hidden[sl])  # [r, D]
            if grad_weight is not None:
                grad_weight.addmm_(grad_block.t(), h)  # [V, D]
            if grad_bias is not None:
                grad_bias.add_(grad_block.sum(0))  # [V]
        if grad_hidden is not None:
            grad_hidden = grad_hidden.view(n, t, d)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


def logprobs_and_entropy_from_hidden(
    hidden: Tensor,
    weight: Tensor,
    tokens: Tensor,
    temperature: float = 1.0,
    bias: Tensor | None = None,
    *,
    chunk_size: int | None = None,
    logit_scale: float = 1.0,
    softcap: float | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`logprobs_and_entropy` of ``hidden @ weight.T + bias`` without materialising those logits.

    Args:
        hidden: last hidden state [N, T, D] (after the final norm), float32, bf16 or fp16;
            ``hidden[:, t]`` predicts ``tokens[:, t]``.
        weight: LM head weight [V, D], same dtype as hidden.
        tokens: [N, T] long token ids in [0, V).
        temperature: tau > 0.
        bias: LM head bias [V] or None.
        chunk_size: rows of [N*T] per chunk; None picks :func:`auto_chunk_size`.
        logit_scale: s, a factor on the logits applied after the LM head (Cohere, Granite); 1.0: none.
        softcap: c > 0, a final soft-cap ``c * tanh(logits / c)`` after the scale (Gemma 2/3); None: none.
            With either, one more float32 [chunk_size, V] scratch is alive in the backward.

    Returns:
        (logp [N, T], entropy [N, T]), float32, of the transformed logits divided by tau; logp has
        gradients w.r.t. hidden, weight and bias (the weight gradient is accumulated over chunks in
        weight's dtype); entropy has none.
    """
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [N, T, D], got shape {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[2]:
        raise ValueError(f"weight must be [V, D={hidden.shape[2]}], got shape {tuple(weight.shape)}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must be [V={weight.shape[0]}], got shape {tuple(bias.shape)}")
    if not hidden.is_floating_point() or weight.dtype != hidden.dtype:
        raise ValueError(f"hidden and weight must share a float dtype, got {hidden.dtype} and {weight.dtype}")
    if not (math.isfinite(logit_scale) and logit_scale != 0.0):
        raise ValueError(f"logit_scale must be a finite non-zero float, got {logit_scale}")
    if softcap is not None and not (math.isfinite(softcap) and softcap > 0.0):
        raise ValueError(f"softcap must be a finite float > 0 or None, got {softcap}")
    _check_common(tokens, hidden.shape[:2], temperature, chunk_size)
    rows = chunk_size if chunk_size is not None else auto_chunk_size(weight.shape[0])
    head = None if logit_scale == 1.0 and softcap is None else (float(logit_scale), softcap)
    return _ChunkedLinearLogProbEntropy.apply(hidden, weight, bias, tokens, float(temperature), rows, head)
