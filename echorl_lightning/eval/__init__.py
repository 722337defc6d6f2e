"""Evaluation of a policy on held-out prompts: sampling-based accuracy metrics (avg@k, pass@k, maj@k)."""

from echorl_lightning.eval.metrics import (
    AvgAtK,
    MajAtK,
    PassAtK,
    majority_correct,
    pass_at_k,
    sampled_eval_metrics,
)

__all__ = ["AvgAtK", "MajAtK", "PassAtK", "majority_correct", "pass_at_k", "sampled_eval_metrics"]
