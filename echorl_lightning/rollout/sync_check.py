"""How far an engine's copy of the weights is from the policy: the engine's log-probs of its own sampled
tokens against the policy's.

An engine that holds its own weights (vLLM) reports, with ``SamplingConfig.return_logprobs``, the log-prob of
each token it sampled (at temperature 1). :func:`engine_logprob_diff` recomputes those log-probs with the
policy and returns the mean and max absolute difference over every reported token: precision noise (about
1e-6 in float32, 1e-2 in bfloat16) after a correct sync, nats after a missed one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from echorl_lightning.rollout.types import Completion


@torch.no_grad()
def policy_token_logprobs(
    model: torch.nn.Module, prompt: Sequence[int], response: Sequence[int]
) -> torch.Tensor:
    """The policy's log-prob at temperature 1 of each response token given the prompt and the tokens before it.

    Returns:
        [len(response)] float32 on the CPU.
    """
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt) + list(response)], device=device)  # [1, P + R]
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()  # [R, V]: position t predicts t + 1
    logp = torch.log_softmax(logits, dim=-1)
    return logp.gather(-1, ids[0, len(prompt) :, None])[:, 0].cpu()


def engine_logprob_diff(
    model: torch.nn.Module, prompts: Sequence[Sequence[int]], groups: Sequence[Sequence[Completion]]
) -> tuple[float, float, int]:
    """``(mean, max, tokens)`` of ``|engine log-prob - policy log-prob|`` over every token that carries one.

    ``groups[i]`` are completions of ``prompts[i]``; completions without ``logprobs`` are skipped. Raises
    ``ValueError`` when no completion carries log-probs (nothing to compare).
    """
    if len(prompts) != len(groups):
        raise ValueError(f"{len(prompts)} prompts but {len(groups)} completion groups")
    was_training = model.training
    model.eval()
    diffs: list[torch.Tensor] = []
    try:
        for prompt, group in zip(prompts, groups, strict=True):
            for completion in group:
                if completion.logprobs is None or not completion.token_ids:
                    continue
                reference = policy_token_logprobs(model, prompt, completion.token_ids)
                engine = torch.tensor(completion.logprobs, dtype=torch.float32)
                diffs.append((engine - reference).abs())
    finally:
        model.train(was_training)
    if not diffs:
        raise ValueError("no completion carries engine log-probs (sample with return_logprobs=True)")
    flat = torch.cat(diffs)
    return float(flat.mean()), float(flat.max()), int(flat.numel())
