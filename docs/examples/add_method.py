"""Add a method: a new advantage estimator and a preset that uses it.

Run from the repository root: HF_HUB_OFFLINE=1 python docs/examples/add_method.py
Selected from YAML after `imports: [docs/examples/add_method.py]`: `model.init_args.method: grpo_median`, or
`model.init_args.algorithm.adv_estimator: median`.
"""

import torch

from echorl_lightning.algorithms.advantages import ADVANTAGES, register_advantage
from echorl_lightning.algorithms.presets import METHODS, MethodConfig, resolve_method


@register_advantage("median")
def median_advantage(rewards: torch.Tensor) -> torch.Tensor:
    """r_i - median of the group. rewards: [B, G] -> advantages [B, G]."""
    return rewards - rewards.median(dim=-1, keepdim=True).values


METHODS.register("grpo_median")(MethodConfig(adv_estimator="median", loss_agg_mode="token-mean"))

method = resolve_method("grpo_median", clip_high=0.28)  # any axis can still be overridden
print(method.adv_estimator, method.policy_loss, method.clip_low, method.clip_high, method.loss_agg_mode)

rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0, 1.0]])  # [B=2, G=5]
advantages = ADVANTAGES.get(method.adv_estimator)(rewards)  # [2, 5]
print(advantages.tolist())  # row 0: median 1 -> [0, -1, -1, 0, 0]; row 1 (all success): zeros
