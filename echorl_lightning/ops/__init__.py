"""Tensor operations shared by the algorithms: memory-bounded token log-probs and entropy.

See :mod:`echorl_lightning.ops.logprob_entropy`.
"""

from echorl_lightning.ops.logprob_entropy import (
    auto_chunk_size,
    logprobs_and_entropy,
    logprobs_and_entropy_from_hidden,
)

__all__ = ["auto_chunk_size", "logprobs_and_entropy", "logprobs_and_entropy_from_hidden"]
