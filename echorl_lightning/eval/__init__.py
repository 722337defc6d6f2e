"""Evaluation of a policy on held-out prompts: sampling-based accuracy metrics (avg@k, pass@k, maj@k).

Reference: "EchoRL: Reinforcement Learning via Rollout Echoing", arXiv 2605.31228 (ICML 2026).
"""

from echorl_lightning.eval.metrics import (
    AvgAtK,
    MajAtK,
    PassAtK,
    majority_correct,
    pass_at_k,
    sampled_eval_metrics,
)

__all__ = ["AvgAtK", "MajAtK", "PassAtK", "majority_correct", "pass_at_k", "sampled_eval_metrics"]
