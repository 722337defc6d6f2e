"""echorl-lightning: EchoRL (rollout echoing) for RLVR post-training, as PyTorch Lightning modules.

Reference: "EchoRL: Reinforcement Learning via Rollout Echoing", arXiv 2605.31228 (ICML 2026).

Notation (used by every docstring and shape comment in the package):

    B   prompts in a rollout batch (per rank)
    G   rollouts per prompt (the group size); the G rollouts of one prompt are contiguous rows,
        so any per-sequence tensor of length N can be viewed as [B, G]
    N   = B * G sequences
    P   prompt tokens (left-padded)
    T   response tokens (right-padded)
    V   vocabulary size

    response_mask [N, T]  1 where a response token counts (EOS included), 0 on padding.
"""

__version__ = "0.1.0"
