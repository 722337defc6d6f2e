"""Per-sample seeds of the vLLM engine: derive_seed and the request seed plan (no vLLM needed)."""

from __future__ import annotations

import hashlib

import pytest

from echorl_lightning.rollout.seeds import MAX_SEED, derive_seed
from echorl_lightning.rollout.types import SamplingConfig
from echorl_lightning.rollout.vllm_requests import sample_seeds


def test_derive_seed_is_the_masked_blake2b_of_the_tuple() -> None:
    # key (7, 0, 1) -> text "7,0,1" -> 8-byte BLAKE2b digest read little-endian, top bit cleared
    digest = hashlib.blake2b(b"7,0,1", digest_size=8).digest()
    assert derive_seed(7, 0, 1) == int.from_bytes(digest, "little") & (2**63 - 1)
    assert derive_seed(7, 0, 1) == derive_seed(7, 0, 1)  # a pure function
    assert derive_seed(7, 0, 1) != derive_seed(7, 1, 0)  # order matters
    assert derive_seed(1, 23) != derive_seed(12, 3)  # "1,23" vs "12,3": the separator keeps them apart
    assert derive_seed(-1) != derive_seed(1)


def test_derive_seed_rejects_non_integers() -> None:
    with pytest.raises(TypeError, match="coordinate 1 must be an int, got float"):
        derive_seed(0, 1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got bool"):
        derive_seed(True)
    with pytest.raises(ValueError, match="at least one"):
        derive_seed()


def test_seeds_distinct_across_epochs_rounds_ranks_prompts_samples() -> None:
    # the caller folds (base, epoch, round, rank) into sampling.seed; the engine adds (prompt, sample):
    # 3 epochs x 2 rounds x 4 ranks x 16 prompts x 8 samples = 3,072 draws, all with their own seed
    seeds = []
    for epoch in range(3):
        for round_idx in range(2):
            for rank in range(4):
                call = SamplingConfig(n=8, seed=derive_seed(0, epoch, round_idx, rank))
                seeds += sample_seeds(call, num_prompts=16)
    assert len(seeds) == 3 * 2 * 4 * 16 * 8 == 3072
    assert len(set(seeds)) == 3072
    assert all(seed is not None and 0 <= seed <= MAX_SEED for seed in seeds)
    # (the additive scheme this replaces, (base + rank) + i * n + j, gave rank 1's first sample and rank 0's
    # second sample the same seed: (0 + 1) + 0 * 8 + 0 = 1 = (0 + 0) + 0 * 8 + 1)


def test_sample_seeds_plan() -> None:
    sampling = SamplingConfig(n=2, seed=5)
    # prompt-major: request (i, j) gets derive_seed(derive_seed(5, i), j)
    assert sample_seeds(sampling, 2) == [
        derive_seed(derive_seed(5, 0), 0),
        derive_seed(derive_seed(5, 0), 1),
        derive_seed(derive_seed(5, 1), 0),
        derive_seed(derive_seed(5, 1), 1),
    ]
    # explicit per-prompt seeds replace derive_seed(sampling.seed, i), also without sampling.seed
    assert sample_seeds(SamplingConfig(n=2), 2, prompt_seeds=[40, 41]) == [
        derive_seed(40, 0),
        derive_seed(40, 1),
        derive_seed(41, 0),
        derive_seed(41, 1),
    ]
    # a prompt's seeds do not depend on which other prompts share the call (rank-independent evaluation)
    assert sample_seeds(SamplingConfig(n=2), 1, prompt_seeds=[41]) == [derive_seed(41, 0), derive_seed(41, 1)]
    assert sample_seeds(SamplingConfig(n=3), 2) == [None] * 6  # unseeded
    assert sample_seeds(SamplingConfig(n=3, temperature=0.0, seed=1), 2) == [
        None,
        None,
    ]  # greedy: 1 per prompt
    with pytest.raises(ValueError, match="prompt_seeds has 1 entries for 2 prompts"):
        sample_seeds(sampling, 2, prompt_seeds=[1])
