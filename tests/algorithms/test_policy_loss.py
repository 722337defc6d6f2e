"""Policy losses: hand-computed values, per-element loop references (values and gradients), properties."""

from __future__ import annotations

import math

import pytest
import torch

from echorl_lightning.algorithms import (
    AGGREGATIONS,
    POLICY_LOSSES,
    aggregate_loss,
    compute_advantages,
    compute_policy_loss,
)

TOL = 1e-5


def _clamp(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return torch.clamp(x, low, high)


def _ppo_token(
    logp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, clip_low: float, clip_high: float
) -> tuple[torch.Tensor, bool, float]:
    """One token from 0-dim tensors: ``-min(rho * A, clip(rho) * A)``, whether the clipped branch is strictly
    the active one, and rho."""
    rho = torch.exp(torch.clamp(logp - old, -20.0, 20.0))
    unclipped = rho * adv
    clipped = _clamp(rho, 1.0 - clip_low, 1.0 + clip_high) * adv
    return (
        -torch.minimum(unclipped, clipped),
        bool(clipped.detach() < unclipped.detach()),
        float(rho.detach()),
    )


def _loop_loss(
    name: str,
    logp: torch.Tensor,
    old: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
    expert: torch.Tensor | None = None,
    gamma: float = 0.1,
) -> tuple[torch.Tensor, float]:
    """Slow per-element reference: the loss matrix built one scalar at a time (keeps autograd), and the
    clip fraction over the tokens the loss clips (on-policy tokens for luffy)."""
    n, t = logp.shape
    rows = []
    clipped_count, counted = 0, 0
    for i in range(n):
        if name == "gspo":
            valid = [j for j in range(t) if mask[i, j] == 1]
            if valid:
                # the sequence-level GSPO objective, gradient through s_i itself (no stop-gradient trick)
                s = torch.exp(sum(logp[i, j] - old[i, j] for j in valid) / len(valid))
                unclipped = s * adv[i]
                clipped = _clamp(s, 1.0 - clip_low, 1.0 + clip_high) * adv[i]
                seq_loss = -torch.minimum(unclipped, clipped)
                clipped_count += len(valid) * int(bool(clipped.detach() < unclipped.detach()))
                counted += len(valid)
        row = []
        for j in range(t):
            if mask[i, j] == 0:
                row.append(torch.zeros(()))
            elif name == "gspo":
                row.append(seq_loss)
            elif name == "luffy" and expert is not None and expert[i, j] == 1:
                p = torch.exp(logp[i, j])
                row.append(-(p / (p + gamma)) * adv[i])
            else:
                loss, was_clipped, _ = _ppo_token(logp[i, j], old[i, j], adv[i], clip_low, clip_high)
                row.append(loss)
                clipped_count += int(was_clipped)
                counted += 1
        rows.append(torch.stack(row))
    return torch.stack(rows), clipped_count / max(counted, 1)


def _random_batch(seed: int, b: int = 4, g: int = 4, t: int = 7) -> dict[str, torch.Tensor]:
    """Log-probs with old/new drift large enough to clip, GRPO advantages with an all-success and an
    all-fail group, right padding of random length, one empty row, and random expert tokens."""
    gen = torch.Generator().manual_seed(seed)
    n = b * g
    old = torch.log(torch.rand(n, t, generator=gen) * 0.9 + 0.05)  # [N, T]
    logp = old + 0.3 * torch.randn(n, t, generator=gen)  # [N, T]
    logp = logp.clamp(max=-1e-3)
    rewards = (torch.rand(b, g, generator=gen) > 0.5).float()  # [B, G]
    rewards[0] = 1.0
    rewards[1] = 0.0
    rewards[2:, :2] = torch.tensor([0.0, 1.0])  # the other groups have mixed outcomes
    adv = compute_advantages("grpo", rewards).reshape(-1)  # [N]
    lengths = torch.randint(1, t + 1, (n,), generator=gen)
    lengths[-1] = 0  # a row with no response tokens
    mask = (torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)).float()  # [N, T]
    expert = torch.zeros(n, t)
    expert[(torch.arange(n) % g) == 0] = 1.0  # first rollout of each group plays the expert solution
    return {"logp": logp, "old": old, "adv": adv, "mask": mask, "expert": expert}


# ---- hand-computed values ----------------------------------------------------------------------------------


def test_ppo_clip_hand_computed() -> None:
    # rho row 0 = [1.5, 0.9] with A = +1: min(1.5, 1.2) = 1.2 (clipped) -> -1.2; min(0.9, 0.9) -> -0.9
    # rho row 1 = [0.5, 1.1] with A = -1: min(-0.5, -0.8) = -0.8 (clipped) -> 0.8; min(-1.1, -1.1) -> 1.1
    # clipfrac = 2 clipped / 4 tokens = 0.5; ratio_mean = (1.5 + 0.9 + 0.5 + 1.1) / 4 = 1.0; ratio_max 1.5
    old = torch.zeros(2, 2)
    logp = torch.log(torch.tensor([[1.5, 0.9], [0.5, 1.1]]))
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 2)
    loss, metrics = compute_policy_loss("ppo_clip", logp, old, adv, mask, 0.2, 0.2)
    torch.testing.assert_close(loss, torch.tensor([[-1.2, -0.9], [0.8, 1.1]]), atol=TOL, rtol=0)
    torch.testing.assert_close(metrics["clipfrac"], torch.tensor(0.5), atol=TOL, rtol=0)
    torch.testing.assert_close(metrics["ratio_mean"], torch.tensor(1.0), atol=TOL, rtol=0)
    torch.testing.assert_close(metrics["ratio_max"], torch.tensor(1.5), atol=TOL, rtol=0)

    # masking the last token: its loss is 0 and clipfrac = 2 / 3; ratio_mean = (1.5 + 0.9 + 0.5) / 3
    mask[1, 1] = 0.0
    loss, metrics = compute_policy_loss("ppo_clip", logp, old, adv, mask, 0.2, 0.2)
    assert loss[1, 1] == 0.0
    torch.testing.assert_close(metrics["clipfrac"], torch.tensor(2 / 3), atol=TOL, rtol=0)
    torch.testing.assert_close(metrics["ratio_mean"], torch.tensor(2.9 / 3), atol=TOL, rtol=0)


def test_clip_higher_is_asymmetric() -> None:
    # A = +1, rho = 1.25: symmetric eps 0.2 caps it at 1.2 (loss -1.2, clipped); clip-higher 0.28 caps at
    # 1.28 > 1.25 (loss -1.25, not clipped). rho = 1.3: clipped to 1.28 -> -1.28.
    # A = -1, rho = 0.75: the low side keeps eps 0.2 in both: clamp to 0.8 -> loss 0.8, clipped.
    old = torch.zeros(3, 1)
    logp = torch.log(torch.tensor([[1.25], [1.3], [0.75]]))
    adv = torch.tensor([1.0, 1.0, -1.0])
    mask = torch.ones(3, 1)
    sym, sym_m = compute_policy_loss("ppo_clip", logp, old, adv, mask, 0.2, 0.2)
    high, high_m = compute_policy_loss("ppo_clip", logp, old, adv, mask, 0.2, 0.28)
    torch.testing.assert_close(sym, torch.tensor([[-1.2], [-1.2], [0.8]]), atol=TOL, rtol=0)
    torch.testing.assert_close(high, torch.tensor([[-1.25], [-1.28], [0.8]]), atol=TOL, rtol=0)
    torch.testing.assert_close(sym_m["clipfrac"], torch.tensor(1.0), atol=TOL, rtol=0)
    torch.testing.assert_close(high_m["clipfrac"], torch.tensor(2 / 3), atol=TOL, rtol=0)


def test_gspo_hand_computed() -> None:
    # log-ratios [0.1, -0.3, (pad) 5.0]: masked mean = -0.1, s = exp(-0.1) = 0.9048374 on both tokens
    # A = +1, clip [0.8, 1.2]: unclipped -> loss -0.9048374 per token; A = -1 -> +0.9048374
    old = torch.zeros(2, 3)
    logp = torch.tensor([[0.1, -0.3, 5.0], [0.1, -0.3, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    adv = torch.tensor([1.0, -1.0])
    loss, metrics = compute_policy_loss("gspo", logp, old, adv, mask, 0.2, 0.2)
    s = math.exp(-0.1)
    torch.testing.assert_close(loss, torch.tensor([[-s, -s, 0.0], [s, s, 0.0]]), atol=TOL, rtol=0)
    torch.testing.assert_close(metrics["ratio_mean"], torch.tensor(s), atol=TOL, rtol=0)
    assert metrics["clipfrac"] == 0.0


def test_gspo_clips_the_sequence_ratio() -> None:
    # log-ratios [0.002, 0.0]: s = exp(0.001) = 1.0010005 > 1 + 4e-4, A = +1 -> clipped to 1.0004
    old = torch.zeros(1, 2)
    logp = torch.tensor([[0.002, 0.0]])
    loss, metrics = compute_policy_loss("gspo", logp, old, torch.tensor([1.0]), torch.ones(1, 2), 3e-4, 4e-4)
    torch.testing.assert_close(loss, torch.tensor([[-1.0004, -1.0004]]), atol=TOL, rtol=0)
    torch.testing.assert_close(metrics["clipfrac"], torch.tensor(1.0), atol=TOL, rtol=0)


def test_luffy_hand_computed() -> None:
    # expert token p = 0.5, gamma = 0.1: loss = -(0.5 / 0.6) * A = -0.8333333 (A = 1), no clip even though
    # old_logp is far away; gradient d/dlogp = -A * gamma * p / (p + gamma)^2 = -0.1 * 0.5 / 0.36 = -0.1388889
    # on-policy token rho = 1.5, A = 1 -> clipped to 1.2 -> -1.2, gradient 0
    logp = torch.log(torch.tensor([[0.5, 0.6]])).requires_grad_()
    old = torch.log(torch.tensor([[0.01, 0.4]]))
    expert = torch.tensor([[1.0, 0.0]])
    loss, metrics = compute_policy_loss(
        "luffy", logp, old, torch.tensor([1.0]), torch.ones(1, 2), 0.2, 0.2, off_policy_mask=expert
    )
    torch.testing.assert_close(loss, torch.tensor([[-0.8333333, -1.2]]), atol=TOL, rtol=0, check_dtype=False)
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.1388889, 0.0]]), atol=TOL, rtol=0)
    torch.testing.assert_close(metrics["off_policy_frac"], torch.tensor(0.5), atol=TOL, rtol=0)
    torch.testing.assert_close(metrics["clipfrac"], torch.tensor(1.0), atol=TOL, rtol=0)  # 1 of 1 on-policy


def test_luffy_gamma_keyword() -> None:
    # p = 0.5, gamma = 0.5: loss = -(0.5 / 1.0) * 2 = -1.0
    loss, _ = compute_policy_loss(
        "luffy",
        torch.log(torch.tensor([[0.5]])),
        torch.zeros(1, 1),
        torch.tensor([2.0]),
        torch.ones(1, 1),
        0.2,
        0.2,
        off_policy_mask=torch.ones(1, 1),
        luffy_gamma=0.5,
    )
    torch.testing.assert_close(loss, torch.tensor([[-1.0]]), atol=TOL, rtol=0)


# ---- loop references on seeded random batches ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["ppo_clip", "gspo", "luffy"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_loop_reference(name: str, seed: int) -> None:
    batch = _random_batch(seed)
    clip_low, clip_high = (0.05, 0.08) if name == "gspo" else (0.2, 0.28)
    logp = batch["logp"].clone().requires_grad_()
    loss, metrics = compute_policy_loss(
        name,
        logp,
        batch["old"],
        batch["adv"],
        batch["mask"],
        clip_low,
        clip_high,
        off_policy_mask=batch["expert"],
    )
    ref_logp = batch["logp"].clone().requires_grad_()
    expert = batch["expert"] if name == "luffy" else None
    ref, ref_clipfrac = _loop_loss(
        name, ref_logp, batch["old"], batch["adv"], batch["mask"], clip_low, clip_high, expert
    )
    torch.testing.assert_close(loss, ref, atol=TOL, rtol=0)
    torch.testing.assert_close(metrics["clipfrac"], torch.tensor(ref_clipfrac), atol=TOL, rtol=0)
    assert 0.0 < ref_clipfrac < 1.0  # the batch exercises both branches

    # gradients: for GSPO this checks the stop-gradient trick against the sequence-level objective
    # differentiated directly through s_i
    for agg in ("seq-mean-token-mean", "token-mean"):
        (grad,) = torch.autograd.grad(aggregate_loss(agg, loss, batch["mask"]), logp, retain_graph=True)
        (ref_grad,) = torch.autograd.grad(
            aggregate_loss(agg, ref, batch["mask"]), ref_logp, retain_graph=True
        )
        torch.testing.assert_close(grad, ref_grad, atol=TOL, rtol=0)
        assert grad.abs().max() > 0


@pytest.mark.parametrize("seed", [0, 1])
def test_ratio_metrics_match_loop(seed: int) -> None:
    batch = _random_batch(seed)
    _, metrics = compute_policy_loss("ppo_clip", batch["logp"], batch["old"], batch["adv"], batch["mask"])
    ratios = [
        math.exp(float(batch["logp"][i, j] - batch["old"][i, j]))
        for i in range(batch["mask"].shape[0])
        for j in range(batch["mask"].shape[1])
        if batch["mask"][i, j] == 1
    ]
    torch.testing.assert_close(
        metrics["ratio_mean"], torch.tensor(sum(ratios) / len(ratios)), atol=TOL, rtol=0
    )
    torch.testing.assert_close(metrics["ratio_max"], torch.tensor(max(ratios)), atol=TOL, rtol=0)


# ---- properties ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ppo_clip", "gspo", "luffy"])
@pytest.mark.parametrize(
    "agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
)
def test_all_success_batch_has_exactly_zero_gradient(name: str, agg: str) -> None:
    batch = _random_batch(5)
    adv = compute_advantages("grpo", torch.ones(4, 4)).reshape(-1)  # every group all-success -> A = 0
    logp = batch["logp"].clone().requires_grad_()
    loss, _ = compute_policy_loss(
        name, logp, batch["old"], adv, batch["mask"], 0.2, 0.2, off_policy_mask=batch["expert"]
    )
    aggregate_loss(agg, loss, batch["mask"]).backward()
    assert torch.equal(logp.grad, torch.zeros_like(logp))


@pytest.mark.parametrize("name", ["ppo_clip", "gspo", "luffy"])
def test_clipfrac_is_zero_when_ratio_is_one(name: str) -> None:
    batch = _random_batch(6)
    _, metrics = compute_policy_loss(
        name,
        batch["logp"],
        batch["logp"].clone(),
        batch["adv"],
        batch["mask"],
        3e-4,
        4e-4,
        off_policy_mask=batch["expert"],
    )
    assert metrics["clipfrac"] == 0.0
    torch.testing.assert_close(metrics["ratio_mean"], torch.tensor(1.0), atol=TOL, rtol=0)
    assert metrics["approx_kl"] == 0.0


@pytest.mark.parametrize("name", ["ppo_clip", "gspo", "luffy"])
def test_padding_garbage_gives_no_nan(name: str) -> None:
    batch = _random_batch(7)
    pad = batch["mask"] == 0
    logp = batch["logp"].masked_fill(pad, float("nan")).requires_grad_()
    old = batch["old"].masked_fill(pad, float("-inf"))
    loss, metrics = compute_policy_loss(
        name, logp, old, batch["adv"], batch["mask"], 0.2, 0.2, off_policy_mask=batch["expert"]
    )
    assert torch.equal(loss[pad], torch.zeros(int(pad.sum())))
    aggregate_loss("token-mean", loss, batch["mask"]).backward()
    assert torch.isfinite(logp.grad).all()
    assert torch.equal(logp.grad[pad], torch.zeros(int(pad.sum())))
    assert all(torch.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize("name", ["ppo_clip", "gspo", "luffy"])
def test_metrics_are_detached_scalars(name: str) -> None:
    batch = _random_batch(8)
    logp = batch["logp"].clone().requires_grad_()
    _, metrics = compute_policy_loss(
        name, logp, batch["old"], batch["adv"], batch["mask"], 0.2, 0.2, off_policy_mask=batch["expert"]
    )
    assert {"clipfrac", "ratio_mean", "ratio_max", "approx_kl"} <= set(metrics)
    assert ("off_policy_frac" in metrics) == (name == "luffy")
    for value in metrics.values():
        assert value.dim() == 0 and not value.requires_grad


def test_unused_keywords_are_ignored() -> None:
    batch = _random_batch(9)
    plain, _ = compute_policy_loss("ppo_clip", batch["logp"], batch["old"], batch["adv"], batch["mask"])
    extra, _ = compute_policy_loss(
        "ppo_clip", batch["logp"], batch["old"], batch["adv"], batch["mask"], luffy_gamma=0.3, anything=1
    )
    assert torch.equal(plain, extra)


# ---- errors ----------------------------------------------------------------------------------------------------------


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(ValueError, match="unknown policy loss 'grpo'; known: gspo, luffy, ppo_clip"):
        compute_policy_loss("grpo", torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1))
    assert set(POLICY_LOSSES.names()) == {"gspo", "luffy", "ppo_clip"}
    assert len(AGGREGATIONS) == 4


def test_luffy_needs_off_policy_mask() -> None:
    with pytest.raises(ValueError, match="off_policy_mask"):
        compute_policy_loss("luffy", torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1), torch.ones(1, 2))
    with pytest.raises(ValueError, match="off_policy_mask must have the shape"):
        compute_policy_loss(
            "luffy",
            torch.zeros(1, 2),
            torch.zeros(1, 2),
            torch.zeros(1),
            torch.ones(1, 2),
            off_policy_mask=torch.ones(2),
        )


def test_bad_shapes_and_clip_ranges_raise() -> None:
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="old_logp"):
        compute_policy_loss("ppo_clip", z, torch.zeros(2, 4), torch.zeros(2), z)
    with pytest.raises(ValueError, match="response_mask"):
        compute_policy_loss("ppo_clip", z, z, torch.zeros(2), torch.ones(3, 2))
    with pytest.raises(ValueError, match="advantages"):
        compute_policy_loss("ppo_clip", z, z, torch.zeros(2, 3), z)
    with pytest.raises(ValueError, match="clip_low"):
        compute_policy_loss("ppo_clip", z, z, torch.zeros(2), z, clip_low=1.0)
    with pytest.raises(ValueError, match="clip_high"):
        compute_policy_loss("ppo_clip", z, z, torch.zeros(2), z, clip_high=-0.1)
