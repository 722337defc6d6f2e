"""Response log-probs of a policy on a fixed batch, for tests that compare two policies' outputs."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from echorl_lightning.rollout.batch import TokenBatch
from echorl_lightning.training.passes import ForwardConfig, response_logprobs


def logprobs(model: nn.Module, batch: TokenBatch) -> Tensor:
    """Response log-probs [n, T] at temperature 1, no grad, eval mode."""
    was = model.training
    model.eval()
    with torch.no_grad():
        logp, _ = response_logprobs(model, batch, 1.0, ForwardConfig())
    model.train(was)
    return logp * batch.response_mask
