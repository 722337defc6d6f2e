"""The echo loss: hand-computed values, the no-clip case, and where its gradient lands."""

from __future__ import annotations

import torch

from echorl_lightning.echo import echo_loss, select_echo_clips

LOGP = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -1.5, -4.0], [-7.0, -8.0, -9.0]])
CLIP = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]]).bool()


def test_echo_loss_hand_computed():
    # row 0: (1 + 2) / 2 = 1.5; row 1: 0.5 / 1 = 0.5; row 2 has no clip -> (1.5 + 0.5) / 2 = 1.0
    torch.testing.assert_close(echo_loss(LOGP, CLIP), torch.tensor(1.0), rtol=0, atol=1e-6)
    # global clip count 4 (other ranks / micro-batches hold 2 more): (1.5 + 0.5) / 4 = 0.5
    torch.testing.assert_close(echo_loss(LOGP, CLIP, num_clips=4), torch.tensor(0.5), rtol=0, atol=1e-6)
    torch.testing.assert_close(
        echo_loss(LOGP, CLIP, num_clips=torch.tensor(4)), torch.tensor(0.5), rtol=0, atol=1e-6
    )


def test_echo_loss_ignores_values_off_the_clip():
    logp = LOGP.clone()
    logp[0, 2] = float("-inf")
    logp[2, :] = float("nan")
    logp.requires_grad_(True)
    loss = echo_loss(logp, CLIP)
    torch.testing.assert_close(loss, torch.tensor(1.0), rtol=0, atol=1e-6)
    loss.backward()
    # d loss / d logp[n, t] = -1 / (|c_n| * num_clips) on the clip: row 0 -1/(2*2), row 1 -1/(1*2)
    expected = torch.tensor([[-0.25, -0.25, 0.0], [-0.5, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.equal(logp.grad, expected)


def test_echo_loss_without_clips_is_exactly_zero_and_differentiable():
    logp = LOGP.clone().requires_grad_(True)
    loss = echo_loss(logp, torch.zeros(3, 3, dtype=torch.bool))
    assert loss.item() == 0.0 and not torch.signbit(loss)
    assert loss.requires_grad
    loss.backward()
    assert torch.equal(logp.grad, torch.zeros(3, 3))


def test_gradient_lands_on_clip_tokens_only():
    gen = torch.Generator().manual_seed(0)
    n, t, v = 4, 5, 7
    logits = torch.randn(n, t, v, generator=gen, requires_grad=True)
    tokens = torch.randint(0, v, (n, t), generator=gen)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)  # [N, T]
    clip = torch.tensor(
        [[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool
    )
    echo_loss(logp, clip).backward()
    grad_norm = logits.grad.abs().sum(dim=-1)  # [N, T]
    assert (grad_norm[clip] > 0).all()
    assert (grad_norm[~clip] == 0).all()
    # closed form: d/dz [-log softmax(z)_y] = softmax(z) - onehot(y), scaled by 1 / (|c| * num_clips)
    probs = torch.softmax(logits.detach(), dim=-1)
    onehot = torch.nn.functional.one_hot(tokens, v).float()
    scale = (clip.float() / clip.sum(dim=1, keepdim=True).clamp(min=1) / 3)[..., None]  # 3 clips
    torch.testing.assert_close(logits.grad, (probs - onehot) * scale, rtol=0, atol=1e-6)


def test_echo_gradient_where_the_group_advantage_is_zero():
    # An all-success group (G = 2): the group-normalised advantage (r - mean) / (std + 1e-6) is 0, so a
    # policy-gradient surrogate -A * ratio has zero gradient, while the echo term does not.
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 5, generator=gen, requires_grad=True)
    tokens = torch.randint(0, 5, (2, 3), generator=gen)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)  # [N, T]
    rewards = torch.tensor([1.0, 1.0])
    advantage = (rewards - rewards.mean()) / (rewards.std() + 1e-6)  # [0, 0]
    ratio = torch.exp(logp - logp.detach())
    (pg_grad,) = torch.autograd.grad(-(advantage[:, None] * ratio).mean(), logits, retain_graph=True)
    assert torch.equal(pg_grad, torch.zeros_like(pg_grad))
    entropy = torch.tensor([[0.1, 0.9, 0.2], [0.3, 0.3, 0.3]])
    ends = torch.tensor([[1, 0, 0], [0, 0, 0]]).bool()
    clip = select_echo_clips(entropy, torch.ones(2, 3), ends, rewards, 2)
    (echo_grad,) = torch.autograd.grad(echo_loss(logp, clip), logits)
    assert echo_grad.abs().sum() > 0
