"""Collision-free sampling seeds: a 63-bit hash of the integer coordinates of one draw.

A rollout sample is identified by (base seed, epoch, round, rank, prompt index, sample index). Adding or
multiplying those coordinates (``base + rank``, then ``+ i * n + j``) makes different draws share a seed,
so different prompts or ranks get identical sampling noise. :func:`derive_seed` hashes the whole tuple
with BLAKE2b instead: distinct tuples give distinct seeds except with probability about k^2 / 2^64 for k
seeds (1e-8 for 500 million samples), and the result fits every seed field it is passed to (vLLM's int64
seeds, ``torch.Generator.manual_seed``).

Seeds nest: ``derive_seed(derive_seed(base, epoch, round, rank), i, j)`` is the seed of sample j of
prompt i of a call whose ``SamplingConfig.seed`` is ``derive_seed(base, epoch, round, rank)``; that is how
:class:`~echorl_lightning.rollout.vllm_engine.VLLMEngine` seeds its requests. Pure functions of their
arguments, no global state.
"""

from __future__ import annotations

import hashlib

#: Largest derived seed: seeds are in [0, 2^63 - 1], so they fit a signed 64-bit integer.
MAX_SEED = 2**63 - 1


def derive_seed(*key: int) -> int:
    """A seed in [0, 2^63 - 1] determined by the integer tuple ``key`` (order matters).

    Raises ``TypeError`` for a non-integer coordinate (bools and floats included: ``1.0`` and ``1``
    must not silently mean the same draw) and ``ValueError`` for an empty key.
    """
    if not key:
        raise ValueError("derive_seed needs at least one integer coordinate")
    for position, value in enumerate(key):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"seed coordinate {position} must be an int, got {type(value).__name__}")
    digest = hashlib.blake2b(",".join(str(value) for value in key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & MAX_SEED
