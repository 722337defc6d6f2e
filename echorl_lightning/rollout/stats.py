"""Statistics of one rollout batch: rewards, group outcomes, lengths.

:func:`rollout_metrics` reads only tensors. Over the on-policy rows (LUFFY's expert rows are excluded):

* ``reward/mean``: mean verifier score; ``reward/shaped_mean``: mean reward after shaping (DAPO's overlong
  penalty), equal to ``reward/mean`` without shaping.
* ``rollout/frac_all_success``: share of groups whose on-policy rollouts all scored ``success_reward``
  (the advantage-degenerated groups EchoRL mines); ``rollout/frac_all_fail``: share with none.
* ``rollout/response_length``: mean response tokens (EOS included); ``rollout/truncated_frac``: share of
  responses cut at the length limit.
* ``rollout/step_valid_frac`` (tasks with a step checker): the share of successful rollouts whose every step
  is valid, over those whose steps could be judged (a faulty step that happened to end well counts against it).

Left out: clip and entropy statistics (``echorl_lightning.echo.stats``) and timings (the callback's).
"""

from __future__ import annotations

import torch
from torch import Tensor


def rollout_metrics(
    scores: Tensor,
    rewards: Tensor,
    truncated: Tensor,
    lengths: Tensor,
    off_policy: Tensor,
    group_size: int,
    success_reward: float = 1.0,
    step_valid: Tensor | None = None,
) -> dict[str, Tensor]:
    """Reward and group statistics of one rollout batch.

    Args:
        scores: [N] verifier scores, groups of ``group_size`` contiguous rows.
        rewards: [N] rewards after shaping.
        truncated: [N] bool, cut at the length limit.
        lengths: [N] response lengths in tokens.
        off_policy: [N] bool, expert rows (LUFFY).
        group_size: G', rows per group (expert rows included).
        success_reward: the score that counts as success.
        step_valid: [N] float step-checker verdicts (1 valid, 0 not, NaN not judged), or None without a step
            checker.

    Returns:
        0-dim float tensors keyed by metric name.
    """
    on = ~off_policy  # [N]
    grouped = scores.view(-1, group_size)  # [B', G']
    off_grouped = off_policy.view(-1, group_size)  # [B', G']
    all_success = ((grouped == success_reward) | off_grouped).all(-1)  # [B']
    all_fail = ((grouped != success_reward) | off_grouped).all(-1)  # [B']
    out = {
        "reward/mean": scores[on].mean(),
        "reward/shaped_mean": rewards[on].mean(),
        "rollout/frac_all_success": all_success.float().mean(),
        "rollout/frac_all_fail": all_fail.float().mean(),
        "rollout/response_length": lengths[on].float().mean(),
        "rollout/truncated_frac": truncated[on].float().mean(),
    }
    if step_valid is not None:
        judged = ~step_valid.isnan()  # [N]
        valid = step_valid == 1  # [N]
        counted = judged & on & (scores == success_reward)  # [N] successful, judged rollouts
        # always logged (the same keys on every rank: DDP reduces each key with a collective); NaN when no
        # successful rollout could be judged in this batch
        out["rollout/step_valid_frac"] = (
            valid[counted].float().mean() if counted.any() else torch.tensor(float("nan"))
        )
    return out
