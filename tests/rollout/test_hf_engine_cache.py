"""HFGenerateEngine's ``cache_implementation``: a static KV cache gives the dynamic cache's completions, and needs
the cache turned on."""

from __future__ import annotations

import pytest
import torch

from echorl_lightning.rollout import HFGenerateEngine, SamplingConfig
from echorl_lightning.rollout.hf_engine import generation_config

EOS, PAD = 256, 257  # the byte tokenizer's


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_static_cache_gives_the_dynamic_cache_completions(temperature: float) -> None:
    """``cache_implementation="static"`` changes where keys and values live, not the distribution: on the
    shipped Countdown model (long responses) greedy and seeded sampled
    completions are the same tokens with the same per-token entropies (to float rounding), across two
    chunks of different prompt widths and rows that stop at different steps. Both decode each chunk in one call
    (a static cache is never compacted; compaction changes the random stream, see ``test_hf_decode.py``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from echorl_lightning.tasks.countdown import CountdownTask
    from echorl_lightning.tiny import TINY_COUNTDOWN_PATH

    tokenizer = AutoTokenizer.from_pretrained(TINY_COUNTDOWN_PATH)
    model = AutoModelForCausalLM.from_pretrained(TINY_COUNTDOWN_PATH)
    prompts = [
        tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
        for ex in CountdownTask().prompts("val", 6)
    ]
    sampling = SamplingConfig(n=2, max_new_tokens=160, temperature=temperature, seed=3, return_entropy=True)
    runs = {}
    for cache in (None, "static"):
        engine = HFGenerateEngine(batch_size=8, cache_implementation=cache, compact_every=None)
        engine.setup(model, tokenizer)
        runs[cache] = [c for samples in engine.generate(prompts, sampling) for c in samples]
    dynamic, static = runs[None], runs["static"]
    assert [c.token_ids for c in static] == [c.token_ids for c in dynamic]
    assert [c.truncated for c in static] == [c.truncated for c in dynamic]
    assert len({len(c.token_ids) for c in dynamic}) > 1  # rows ended at different steps
    if temperature > 0:
        for s, d in zip(static, dynamic, strict=True):
            torch.testing.assert_close(torch.tensor(s.entropy), torch.tensor(d.entropy), atol=1e-4, rtol=1e-4)


def test_static_cache_needs_the_cache() -> None:
    with pytest.raises(ValueError, match="cache_implementation='static' needs use_cache=True"):
        HFGenerateEngine(use_cache=False, cache_implementation="static")
    config = generation_config(SamplingConfig(), EOS, PAD, True, None, "static")
    assert config.cache_implementation == "static"
    assert generation_config(SamplingConfig(), EOS, PAD, True).cache_implementation is None
