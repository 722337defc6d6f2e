"""Tests of echorl_lightning.ops: chunked token log-probs and entropy (values, gradients, dtypes, errors)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from echorl_lightning.ops import auto_chunk_size, logprobs_and_entropy, logprobs_and_entropy_from_hidden
from tests.helpers.paths import ROOT

LN2, LN3 = math.log(2.0), math.log(3.0)


def naive_reference(logits: torch.Tensor, tokens: torch.Tensor, temperature: float):
    """Full log_softmax, gather, -(p * logp).sum(-1): logits [N, T, V], tokens [N, T] -> two [N, T]."""
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)  # [N, T, V]
    logp = logp_all.gather(-1, tokens[..., None]).squeeze(-1)  # [N, T]
    entropy = -(logp_all.exp() * logp_all).sum(-1)  # [N, T]
    return logp, entropy


def loop_reference(logits: torch.Tensor, tokens: torch.Tensor, temperature: float):
    """One row at a time with Python floats (math.exp / math.log), in float64."""
    n, t, _ = logits.shape
    logp = torch.zeros(n, t, dtype=torch.float64)
    entropy = torch.zeros(n, t, dtype=torch.float64)
    for i in range(n):
        for j in range(t):
            z = [x / temperature for x in logits[i, j].tolist()]
            lse = math.log(sum(math.exp(x) for x in z))
            logp[i, j] = z[int(tokens[i, j])] - lse
            entropy[i, j] = -sum(math.exp(x - lse) * (x - lse) for x in z)
    return logp, entropy


# Row 0: logits [0, 2 ln 2, 2 ln 3], token 2.  Row 1: logits [3, 3, 3], token 0 (uniform at any temperature).
#
# tau = 1: z0 = [0, ln 4, ln 9], exp = [1, 4, 9], sum 14, p = [1, 4, 9] / 14
#   logp0 = ln 9 - ln 14 = ln(9/14)
#   H0 = ln 14 - (1*0 + 4 ln 4 + 9 ln 9) / 14 = ln 14 - (8 ln 2 + 18 ln 3) / 14
#   d logp0 / d logits0 = (onehot(2) - p) / 1 = [-1/14, -4/14, 5/14]
# tau = 2: z0 = [0, ln 2, ln 3], exp = [1, 2, 3], sum 6, p = [1, 2, 3] / 6
#   logp0 = ln 3 - ln 6 = -ln 2
#   H0 = ln 6 - (2 ln 2 + 3 ln 3) / 6
#   d logp0 / d logits0 = (onehot(2) - p) / 2 = [-1/12, -2/12, 3/12]
# Row 1 at either tau: p = 1/3 each, logp1 = -ln 3, H1 = ln 3, d logp1 / d logits1 = [2/3, -1/3, -1/3] / tau
HAND = {
    1.0: (
        [math.log(9 / 14), -LN3],
        [math.log(14) - (8 * LN2 + 18 * LN3) / 14, LN3],
        [[-1 / 14, -4 / 14, 5 / 14], [2 / 3, -1 / 3, -1 / 3]],
    ),
    2.0: (
        [-LN2, -LN3],
        [math.log(6) - (2 * LN2 + 3 * LN3) / 6, LN3],
        [[-1 / 12, -2 / 12, 3 / 12], [1 / 3, -1 / 6, -1 / 6]],
    ),
}


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("chunk_size", [1, 2])
def test_hand_computed(temperature: float, chunk_size: int) -> None:
    logits = torch.tensor([[[0.0, 2 * LN2, 2 * LN3], [3.0, 3.0, 3.0]]], requires_grad=True)  # [1, 2, 3]
    tokens = torch.tensor([[2, 0]])
    logp, entropy = logprobs_and_entropy(logits, tokens, temperature, chunk_size=chunk_size)
    want_logp, want_entropy, want_grad = HAND[temperature]
    torch.testing.assert_close(logp, torch.tensor([want_logp]), atol=1e-6, rtol=0)
    torch.testing.assert_close(entropy, torch.tensor([want_entropy]), atol=1e-6, rtol=0)
    logp.sum().backward()
    torch.testing.assert_close(logits.grad, torch.tensor([want_grad]), atol=1e-6, rtol=0)


def test_matches_python_loop() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64) * 3  # [N, T, V]
    tokens = torch.randint(0, 5, (2, 3), generator=gen)
    logp, entropy = logprobs_and_entropy(logits, tokens, 0.7, chunk_size=4)
    want_logp, want_entropy = loop_reference(logits, tokens, 0.7)
    torch.testing.assert_close(logp, want_logp, atol=1e-10, rtol=0)
    torch.testing.assert_close(entropy, want_entropy, atol=1e-10, rtol=0)


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 5, 7, 12, 100, None])  # N*T = 12: 3, 4, 12 divide it
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_matches_naive_reference(chunk_size: int | None, temperature: float) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 37, generator=gen) * 2  # [N, T, V]
    tokens = torch.randint(0, 37, (3, 4), generator=gen)
    weights = torch.randn(3, 4, generator=gen)  # d loss / d logp
    ours_in = logits.clone().requires_grad_(True)
    ref_in = logits.clone().requires_grad_(True)
    logp, entropy = logprobs_and_entropy(ours_in, tokens, temperature, chunk_size=chunk_size)
    want_logp, want_entropy = naive_reference(ref_in, tokens, temperature)
    torch.testing.assert_close(logp, want_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy, want_entropy.detach(), atol=1e-5, rtol=0)
    (logp * weights).sum().backward()
    (want_logp * weights).sum().backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad, atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk_size", [2, 3, 100])
def test_non_contiguous_slice(chunk_size: int) -> None:
    """A [:, 1:-1] slice of a model output cannot be flattened in place; blocks stay inside sequences."""
    gen = torch.Generator().manual_seed(2)
    full = torch.randn(3, 7, 11, generator=gen, requires_grad=True)  # [N, P + T, V]
    tokens = torch.randint(0, 11, (3, 5), generator=gen)
    logp, entropy = logprobs_and_entropy(full[:, 1:-1], tokens, 1.3, chunk_size=chunk_size)
    logp.sum().backward()
    grad = full.grad.clone()
    full.grad = None
    want_logp, want_entropy = naive_reference(full[:, 1:-1], tokens, 1.3)
    want_logp.sum().backward()
    torch.testing.assert_close(logp, want_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy, want_entropy.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(grad, full.grad, atol=1e-5, rtol=0)


def test_gradcheck_float64() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 4, (2, 3), generator=gen)
    assert torch.autograd.gradcheck(
        lambda x: logprobs_and_entropy(x, tokens, 1.7, chunk_size=4)[0], (logits,), eps=1e-6, atol=1e-8
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_input_upcasts(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(4)
    half = (torch.randn(2, 5, 29, generator=gen) * 2).to(dtype).requires_grad_(True)
    full = half.detach().float().requires_grad_(True)  # the same values, exactly, in float32
    tokens = torch.randint(0, 29, (2, 5), generator=gen)
    logp, entropy = logprobs_and_entropy(half, tokens, 0.9, chunk_size=3)
    want_logp, want_entropy = logprobs_and_entropy(full, tokens, 0.9, chunk_size=3)
    assert logp.dtype == entropy.dtype == torch.float32
    torch.testing.assert_close(logp, want_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy, want_entropy, atol=1e-5, rtol=0)
    logp.sum().backward()
    want_logp.sum().backward()
    assert half.grad.dtype == dtype
    # Both compute the float32 gradient identically; the half one is that gradient rounded once.
    assert torch.equal(half.grad, full.grad.to(dtype))


def test_entropy_is_detached_and_logp_is_not() -> None:
    logits = torch.randn(1, 3, 6, requires_grad=True)
    logp, entropy = logprobs_and_entropy(logits, torch.zeros(1, 3, dtype=torch.long))
    assert entropy.grad_fn is None and not entropy.requires_grad
    assert logp.grad_fn is not None
    with torch.no_grad():
        logp, entropy = logprobs_and_entropy(logits, torch.zeros(1, 3, dtype=torch.long))
    assert logp.grad_fn is None and entropy.grad_fn is None


def test_empty_response() -> None:
    logits = torch.randn(2, 0, 6, requires_grad=True)
    logp, entropy = logprobs_and_entropy(logits, torch.zeros(2, 0, dtype=torch.long))
    assert logp.shape == entropy.shape == (2, 0)
    logp.sum().backward()
    assert logits.grad.shape == (2, 0, 6)


def test_auto_chunk_size() -> None:
    # 128 MiB / (4 bytes * 151,936) = 220.9 -> 220 rows; a vocabulary too large for one row still gets 1
    assert auto_chunk_size(151_936) == 220
    assert auto_chunk_size(10**9) == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tokens": torch.zeros(2, 4, dtype=torch.long)}, r"tokens has shape \(2, 4\), expected \(2, 3\)"),
        ({"tokens": torch.zeros(2, 3, dtype=torch.int32)}, "tokens must be torch.long"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"chunk_size": 0}, "chunk_size must be a positive int"),
        ({"logits": torch.randn(6, 5)}, r"logits must be \[N, T, V\]"),
        ({"logits": torch.zeros(2, 3, 5, dtype=torch.long)}, "logits must be a float tensor"),
    ],
)
def test_bad_input_raises(kwargs: dict, match: str) -> None:
    args = {"logits": torch.randn(2, 3, 5), "tokens": torch.zeros(2, 3, dtype=torch.long), **kwargs}
    with pytest.raises(ValueError, match=match):
        logprobs_and_entropy(**args)


# ---- from the last hidden state ----------------------------------------------------------------------------


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 5, 100])
def test_from_hidden_matches_naive(use_bias: bool, chunk_size: int) -> None:
    gen = torch.Generator().manual_seed(5)
    hidden = torch.randn(2, 6, 8, generator=gen)  # [N, T, D]
    weight = torch.randn(23, 8, generator=gen) * 0.5  # [V, D]
    bias = torch.randn(23, generator=gen) if use_bias else None
    tokens = torch.randint(0, 23, (2, 6), generator=gen)
    weights = torch.randn(2, 6, generator=gen)
    ours = [x.clone().requires_grad_(True) for x in (hidden, weight, *([bias] if use_bias else []))]
    ref = [x.clone().requires_grad_(True) for x in (hidden, weight, *([bias] if use_bias else []))]
    logp, entropy = logprobs_and_entropy_from_hidden(
        ours[0], ours[1], tokens, 0.8, ours[2] if use_bias else None, chunk_size=chunk_size
    )
    logits = torch.nn.functional.linear(ref[0], ref[1], ref[2] if use_bias else None)  # [N, T, V]
    want_logp, want_entropy = naive_reference(logits, tokens, 0.8)
    torch.testing.assert_close(logp, want_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy, want_entropy.detach(), atol=1e-5, rtol=0)
    assert entropy.grad_fn is None
    (logp * weights).sum().backward()
    (want_logp * weights).sum().backward()
    for got, want in zip(ours, ref, strict=True):
        torch.testing.assert_close(got.grad, want.grad, atol=1e-5, rtol=0)


def test_from_hidden_gradcheck_float64() -> None:
    gen = torch.Generator().manual_seed(6)
    hidden = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 5, (2, 3), generator=gen)
    assert torch.autograd.gradcheck(
        lambda h, w, b: logprobs_and_entropy_from_hidden(h, w, tokens, 1.4, b, chunk_size=4)[0],
        (hidden, weight, bias),
        eps=1e-6,
        atol=1e-8,
    )


def test_from_hidden_frozen_head_and_sliced_hidden() -> None:
    """Only hidden needs a gradient (a frozen LM head); hidden is a non-contiguous [:, 1:] slice."""
    gen = torch.Generator().manual_seed(7)
    full = torch.randn(3, 5, 6, generator=gen, requires_grad=True)  # [N, P + T, D]
    weight = torch.randn(9, 6, generator=gen)
    tokens = torch.randint(0, 9, (3, 4), generator=gen)
    logp, _ = logprobs_and_entropy_from_hidden(full[:, 1:], weight, tokens, chunk_size=3)
    logp.sum().backward()
    grad = full.grad.clone()
    full.grad = None
    want_logp, _ = naive_reference(full[:, 1:] @ weight.T, tokens, 1.0)
    want_logp.sum().backward()
    torch.testing.assert_close(logp, want_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(grad, full.grad, atol=1e-5, rtol=0)
    assert weight.grad is None


def test_from_hidden_bad_weight_raises() -> None:
    with pytest.raises(ValueError, match=r"weight must be \[V, D=4\]"):
        logprobs_and_entropy_from_hidden(
            torch.randn(1, 2, 4), torch.randn(5, 3), torch.zeros(1, 2, dtype=torch.long)
        )


@pytest.mark.parametrize("use_bias", [True, False])
def test_from_hidden_bf16_matches_logits_path(use_bias: bool) -> None:
    """bf16 head: each chunk's logits are the bf16 matmul, so the result equals the logits path on
    F.linear's bf16 logits; gradients flow through the same bf16 matmuls."""
    gen = torch.Generator().manual_seed(8)
    hidden = torch.randn(2, 5, 16, generator=gen).bfloat16()
    weight = (torch.randn(40, 16, generator=gen) * 0.3).bfloat16()
    bias = torch.randn(40, generator=gen).bfloat16() if use_bias else None
    tokens = torch.randint(0, 40, (2, 5), generator=gen)
    h1, w1 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    h2, w2 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    logp, entropy = logprobs_and_entropy_from_hidden(h1, w1, tokens, 1.0, bias, chunk_size=3)
    want_logp, want_entropy = logprobs_and_entropy(
        torch.nn.functional.linear(h2, w2, bias), tokens, chunk_size=3
    )
    assert logp.dtype == torch.float32
    torch.testing.assert_close(logp, want_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy, want_entropy, atol=1e-5, rtol=0)
    logp.sum().backward()
    want_logp.sum().backward()
    assert h1.grad.dtype == w1.grad.dtype == torch.bfloat16
    torch.testing.assert_close(h1.grad, h2.grad, atol=0, rtol=0)
    # The weight gradient is summed over 4 chunks in bf16 here, in one matmul there: equal up to bf16 rounding.
    torch.testing.assert_close(w1.grad.float(), w2.grad.float(), atol=1e-2, rtol=1e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_naive_reference() -> None:
    gen = torch.Generator().manual_seed(9)
    logits = (torch.randn(2, 9, 1000, generator=gen) * 2).cuda().requires_grad_(True)
    tokens = torch.randint(0, 1000, (2, 9), generator=gen).cuda()
    logp, entropy = logprobs_and_entropy(logits, tokens, 0.8, chunk_size=4)
    logp.sum().backward()
    grad = logits.grad.clone()
    logits.grad = None
    want_logp, want_entropy = naive_reference(logits, tokens, 0.8)
    want_logp.sum().backward()
    torch.testing.assert_close(logp, want_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy, want_entropy.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(grad, logits.grad, atol=1e-5, rtol=0)


# ---- memory: the benchmark's worker, in fresh subprocesses ------------------------------------------------


def _extra_peak_bytes(variant: str) -> int:
    script = ROOT / "benchmarks" / "logprob_entropy.py"
    cmd = [sys.executable, str(script), "--worker", "--variant", variant, "--mode", "forward"]
    cmd += ["--vocab", "32768", "--tokens", "256", "--chunk-size", "16", "--repeats", "1", "--threads", "1"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["extra_peak_bytes"]


@pytest.mark.skipif(sys.platform != "linux", reason="peak RSS (ru_maxrss) is read in KiB on Linux only")
def test_forward_peak_memory_is_a_chunk_not_the_vocabulary() -> None:
    """[256, 32768] float32 is 32 MiB: the naive forward holds about three such tensors; ours two
    [16, 32768] buffers (2 MiB each) and a few [256] vectors."""
    naive_bytes, ours_bytes = _extra_peak_bytes("naive"), _extra_peak_bytes("ours")
    assert naive_bytes > 64 * 2**20
    assert ours_bytes < naive_bytes / 8
