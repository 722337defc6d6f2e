"""EchoRL's own pieces: step splitting, EchoClip selection, the echo loss, echo statistics.

All are pure tensor functions; the LightningModule calls them and adds ``echo.coef * echo_loss`` to the RLVR
loss. Typical use, per rollout batch::

    ids = delimiter_token_ids(tokenizer, "\\n")                     # once per tokenizer
    ends = step_end_mask_from_tokens(response_ids, ids)              # [N, T]
    clip_mask = select_echo_clips(entropy, response_mask, ends, rewards, G, truncated=truncated)
    loss = echo_loss(logp, clip_mask, num_clips=global_num_clips)    # logp from the policy-gradient pass
    metrics = echo_metrics(entropy, response_mask, ends, clip_mask)
"""

from echorl_lightning.echo.clips import ECHO_SELECTORS, EchoSelector, eligible_rollouts, select_echo_clips
from echorl_lightning.echo.loss import echo_loss
from echorl_lightning.echo.stats import METRIC_NAMES, echo_metrics
from echorl_lightning.echo.steps import Steps, delimiter_token_ids, split_steps, step_end_mask_from_tokens

__all__ = [
    "ECHO_SELECTORS",
    "METRIC_NAMES",
    "EchoSelector",
    "Steps",
    "delimiter_token_ids",
    "echo_loss",
    "echo_metrics",
    "eligible_rollouts",
    "select_echo_clips",
    "split_steps",
    "step_end_mask_from_tokens",
]
