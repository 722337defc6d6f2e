"""Loss aggregation modes and KL estimators: hand-computed values, loop references, global-batch counts."""

from __future__ import annotations

import math

import pytest
import torch

from echorl_lightning.algorithms import AGGREGATIONS, KL_ESTIMATORS, aggregate_loss, compute_kl

TOL = 1e-5
MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


def _loop_aggregate(
    name: str,
    loss: list[list[float]],
    mask: list[list[float]],
    max_len: int | None = None,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
) -> float:
    """Slow reference of the four modes, one element at a time."""
    n, t = len(loss), len(loss[0])
    if name == "token-mean":
        total = sum(loss[i][j] for i in range(n) for j in range(t) if mask[i][j] == 1)
        count = sum(mask[i][j] for i in range(n) for j in range(t)) if num_tokens is None else num_tokens
        return total / max(count, 1)
    seq_values = []
    for i in range(n):
        token_sum = sum(loss[i][j] for j in range(t) if mask[i][j] == 1)
        length = sum(mask[i])
        if name == "seq-mean-token-mean":
            seq_values.append(token_sum / length if length > 0 else 0.0)
        elif name == "seq-mean-token-sum":
            seq_values.append(token_sum)
        else:
            seq_values.append(token_sum / (t if max_len is None else max_len))
    return sum(seq_values) / max(n if num_seqs is None else num_seqs, 1)


def _random_loss(seed: int, n: int = 6, t: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    loss = torch.randn(n, t, generator=gen)  # [N, T]
    lengths = torch.randint(1, t + 1, (n,), generator=gen)
    lengths[2] = 0  # a row without tokens
    mask = (torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)).float()  # [N, T]
    return loss, mask


# ---- aggregation -------------------------------------------------------------------------------------------------


def test_aggregation_hand_computed() -> None:
    # loss [[1, 2, 3], [4, 5, 6]], mask [[1, 1, 0], [1, 0, 0]]:
    # token-mean              (1 + 2 + 4) / 3 tokens           = 2.3333333
    # seq-mean-token-mean     ((1 + 2) / 2 + 4 / 1) / 2 seqs   = 2.75
    # seq-mean-token-sum      (3 + 4) / 2                      = 3.5
    # seq-mean-token-sum-norm (3 / 3 + 4 / 3) / 2 (max_len T=3) = 1.1666667; max_len = 4: (0.75 + 1) / 2 = 0.875
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    expected = {
        "token-mean": 2.3333333,
        "seq-mean-token-mean": 2.75,
        "seq-mean-token-sum": 3.5,
        "seq-mean-token-sum-norm": 1.1666667,
    }
    for name, value in expected.items():
        torch.testing.assert_close(aggregate_loss(name, loss, mask), torch.tensor(value), atol=TOL, rtol=0)
    torch.testing.assert_close(
        aggregate_loss("seq-mean-token-sum-norm", loss, mask, 4), torch.tensor(0.875), atol=TOL, rtol=0
    )


def test_global_counts_hand_computed() -> None:
    # same batch, global counts of a larger step: token-mean 7 / 7 tokens = 1.0;
    # seq-mean-token-mean 5.5 / 4 seqs = 1.375; seq-mean-token-sum 7 / 4 = 1.75 (tensor counts work too)
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(aggregate_loss("token-mean", loss, mask, num_tokens=7), torch.tensor(1.0))
    torch.testing.assert_close(
        aggregate_loss("seq-mean-token-mean", loss, mask, num_seqs=torch.tensor(4.0)), torch.tensor(1.375)
    )
    torch.testing.assert_close(
        aggregate_loss("seq-mean-token-sum", loss, mask, num_seqs=4.0), torch.tensor(1.75)
    )


@pytest.mark.parametrize("name", MODES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aggregation_matches_loop_reference(name: str, seed: int) -> None:
    loss, mask = _random_loss(seed)
    for kwargs in ({}, {"max_len": 8, "num_tokens": 40.0, "num_seqs": 9.0}):
        expected = _loop_aggregate(name, loss.tolist(), mask.tolist(), **kwargs)
        got = aggregate_loss(
            name,
            loss,
            mask,
            kwargs.get("max_len"),
            num_tokens=kwargs.get("num_tokens"),
            num_seqs=kwargs.get("num_seqs"),
        )
        torch.testing.assert_close(got, torch.tensor(expected), atol=TOL, rtol=0)


@pytest.mark.parametrize("name", MODES)
def test_micro_batches_with_global_counts_equal_the_full_batch(name: str) -> None:
    # gradient accumulation: two micro-batches (each trimmed to its own padded width) with the counts of the
    # whole step sum to the full-batch loss, and so do their gradients
    loss, mask = _random_loss(3, n=6, t=5)
    loss = loss.requires_grad_()
    max_len = 5
    full = aggregate_loss(name, loss, mask, max_len)
    (full_grad,) = torch.autograd.grad(full, loss)

    num_tokens, num_seqs = mask.sum(), float(mask.shape[0])
    total = torch.zeros(())
    for rows in (slice(0, 2), slice(2, 6)):
        width = max(int(mask[rows].sum(dim=1).max()), 1)
        total = total + aggregate_loss(
            name, loss[rows, :width], mask[rows, :width], max_len, num_tokens=num_tokens, num_seqs=num_seqs
        )
    (split_grad,) = torch.autograd.grad(total, loss)
    torch.testing.assert_close(total, full, atol=TOL, rtol=0)
    torch.testing.assert_close(split_grad, full_grad, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", MODES)
def test_empty_batch_gives_zero_differentiable_loss(name: str) -> None:
    loss = torch.full((2, 3), float("nan")).requires_grad_()  # garbage everywhere, nothing counts
    result = aggregate_loss(name, loss, torch.zeros(2, 3))
    assert result == 0.0
    result.backward()
    assert torch.equal(loss.grad, torch.zeros(2, 3))


@pytest.mark.parametrize("name", MODES)
def test_padding_values_do_not_leak(name: str) -> None:
    loss, mask = _random_loss(4)
    garbage = loss.masked_fill(mask == 0, float("inf"))
    torch.testing.assert_close(aggregate_loss(name, garbage, mask), aggregate_loss(name, loss, mask))


def test_aggregation_errors() -> None:
    with pytest.raises(ValueError, match="unknown loss aggregation mode 'mean'; known: seq-mean-token-mean"):
        aggregate_loss("mean", torch.zeros(1, 1), torch.ones(1, 1))
    with pytest.raises(ValueError, match="response_mask must have the shape"):
        aggregate_loss("token-mean", torch.zeros(2, 3), torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"loss_mat must be \[N, T\]"):
        aggregate_loss("token-mean", torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="max_len"):
        aggregate_loss("seq-mean-token-sum-norm", torch.zeros(1, 1), torch.ones(1, 1), 0)
    with pytest.raises(ValueError, match="num_tokens"):
        aggregate_loss("token-mean", torch.zeros(1, 1), torch.ones(1, 1), num_tokens=torch.ones(2))
    assert AGGREGATIONS.names() == sorted(MODES)


# ---- KL --------------------------------------------------------------------------------------------------------


def test_kl_hand_computed() -> None:
    # token 0: logp = log 0.5, ref = log 0.25 -> x = ref - logp = -log 2 = -0.6931472
    #   k1 = 0.6931472; k2 = 0.6931472^2 / 2 = 0.2402265; k3 = 0.5 + 0.6931472 - 1 = 0.1931472
    # token 1: logp = log 0.25, ref = log 0.5 -> x = +0.6931472
    #   k1 = -0.6931472; k2 = 0.2402265; k3 = 2 - 0.6931472 - 1 = 0.3068528
    logp = torch.log(torch.tensor([[0.5, 0.25]]))
    ref = torch.log(torch.tensor([[0.25, 0.5]]))
    expected = {
        "k1": [[0.6931472, -0.6931472]],
        "k2": [[0.2402265, 0.2402265]],
        "k3": [[0.1931472, 0.3068528]],
    }
    for name, value in expected.items():
        torch.testing.assert_close(compute_kl(name, logp, ref), torch.tensor(value), atol=TOL, rtol=0)


@pytest.mark.parametrize("name", ["k1", "k2", "k3"])
@pytest.mark.parametrize("seed", [0, 1])
def test_kl_matches_loop_reference(name: str, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    logp = torch.log(torch.rand(4, 6, generator=gen) * 0.95 + 0.01)
    ref = torch.log(torch.rand(4, 6, generator=gen) * 0.95 + 0.01)
    got = compute_kl(name, logp, ref)
    for i in range(4):
        for j in range(6):
            x = float(ref[i, j]) - float(logp[i, j])
            want = {"k1": -x, "k2": x * x / 2, "k3": math.exp(x) - x - 1}[name]
            assert abs(float(got[i, j]) - want) <= TOL


@pytest.mark.parametrize("name", ["k1", "k2", "k3"])
def test_kl_is_zero_at_the_reference(name: str) -> None:
    logp = torch.log(torch.tensor([[0.1, 0.7, 0.2]]))
    assert torch.equal(compute_kl(name, logp, logp.clone()), torch.zeros(1, 3))


def test_k2_k3_are_non_negative() -> None:
    gen = torch.Generator().manual_seed(3)
    logp, ref = torch.randn(8, 8, generator=gen), torch.randn(8, 8, generator=gen)
    assert (compute_kl("k2", logp, ref) >= 0).all()
    assert (compute_kl("k3", logp, ref) >= 0).all()


def test_kl_errors() -> None:
    with pytest.raises(ValueError, match="unknown KL estimator 'low_var_kl'; known: k1, k2, k3"):
        compute_kl("low_var_kl", torch.zeros(1, 1), torch.zeros(1, 1))
    with pytest.raises(ValueError, match="ref_logp must have the shape"):
        compute_kl("k1", torch.zeros(1, 2), torch.zeros(1, 3))
    assert KL_ESTIMATORS.names() == ["k1", "k2", "k3"]
