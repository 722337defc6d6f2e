"""``rlvr_echo_loss``, the loss of one micro-batch, against hand-computed values: the policy-gradient term, the
echo term, the KL branch, ``pg_mask`` and the DDP/accumulation ``scale``."""

from __future__ import annotations

import pytest
import torch

from echorl_lightning.algorithms.presets import resolve_method
from echorl_lightning.training.loss import rlvr_echo_loss

# two rows, T = 2; row 1 has one response token; ratio = 1 everywhere (logp == old_logp)
LOGP = torch.tensor([[-1.0, -2.0], [-0.5, -1.0]])
MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
ADV = torch.tensor([1.0, -0.5])
CLIP = torch.tensor([[True, False], [False, False]])  # one EchoClip: row 0, token 0 (NLL 1.0)
TOKEN_MEAN = resolve_method("grpo", loss_agg_mode="token-mean")


def loss_of(logp: torch.Tensor, **kwargs: object) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    args: dict = dict(
        method=TOKEN_MEAN,
        echo_coef=0.1,
        max_len=2,
        num_tokens=torch.tensor(3.0),
        num_seqs=torch.tensor(2.0),
        num_clips=torch.tensor(1.0),
    )
    args.update(kwargs)
    pg_mask = args.pop("pg_mask", torch.ones(2))
    return rlvr_echo_loss(logp, LOGP, ADV, MASK, pg_mask, CLIP, **args)


def test_policy_gradient_plus_echo_with_scale() -> None:
    logp = LOGP.clone().requires_grad_()
    loss, metrics = loss_of(logp, scale=2.0)
    # pg: -A * ratio per token = [-1, -1] and [+0.5]; token-mean over 3 tokens = -1.5 / 3 = -0.5
    # echo: NLL of the clip token = 1.0, one clip -> 1.0; total = (-0.5 + 0.1 * 1.0) * scale 2 = -0.8
    assert float(loss) == pytest.approx(-0.8, abs=1e-6)
    assert float(metrics["actor/pg_loss"]) == pytest.approx(-0.5, abs=1e-6)
    assert float(metrics["echo/loss"]) == pytest.approx(1.0, abs=1e-6)
    assert "actor/kl" not in metrics
    (grad,) = torch.autograd.grad(loss, logp)
    # d/dlogp[0,0] = 2 * (-A_0 * ratio / 3 - 0.1) = 2 * (-1/3 - 0.1); d/dlogp[1,1] = 0 (padding)
    assert float(grad[0, 0]) == pytest.approx(2 * (-1 / 3 - 0.1), abs=1e-6)
    assert float(grad[1, 0]) == pytest.approx(2 * (0.5 / 3), abs=1e-6)
    assert float(grad[1, 1]) == 0.0


def test_pg_mask_drops_a_row_from_the_policy_gradient_but_not_from_echo() -> None:
    # row 1 masked out: pg tokens of row 0 only, -1 + -1 = -2, over num_tokens 2 -> -1; echo still 1.0
    loss, metrics = loss_of(LOGP, pg_mask=torch.tensor([1.0, 0.0]), num_tokens=torch.tensor(2.0))
    assert float(metrics["actor/pg_loss"]) == pytest.approx(-1.0, abs=1e-6)
    assert float(loss) == pytest.approx(-1.0 + 0.1, abs=1e-6)


def test_echo_coef_zero_keeps_the_logged_echo_loss_but_adds_nothing() -> None:
    loss, metrics = loss_of(LOGP, echo_coef=0.0)
    assert float(loss) == pytest.approx(-0.5, abs=1e-6)
    assert float(metrics["echo/loss"]) == pytest.approx(1.0, abs=1e-6)


def test_kl_branch_adds_beta_times_the_aggregated_kl() -> None:
    method = resolve_method("grpo", loss_agg_mode="token-mean", kl_coef=0.5, kl_estimator="k1")
    ref = LOGP - 0.2  # x = log pi_ref - log pi = -0.2, k1 = -x = 0.2 on every token
    loss, metrics = loss_of(LOGP, method=method, ref_logp=ref)
    # token-mean of 0.2 over 3 tokens = 0.2; total = -0.5 + 0.5 * 0.2 + 0.1 * 1.0 = -0.3
    assert float(metrics["actor/kl"]) == pytest.approx(0.2, abs=1e-6)
    assert float(loss) == pytest.approx(-0.3, abs=1e-6)


def test_kl_without_reference_log_probs_raises() -> None:
    method = resolve_method("grpo", kl_coef=0.5)
    with pytest.raises(ValueError, match="ref_logp"):
        loss_of(LOGP, method=method)
