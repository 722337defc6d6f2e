"""Segmented decoding that drops finished rows (``HFGenerateEngine(compact_every=k)``) on the shipped Countdown
model, whose responses run long and end at different steps: the same greedy tokens as one ``generate`` call,
sampled entropies that a teacher-forced forward of the policy reproduces, and rows really leaving the batch."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, GenerationConfig

from echorl_lightning.rollout import HFGenerateEngine, SamplingConfig
from echorl_lightning.rollout.hf_decode import cache_keyword, drops_rows, returned_cache
from echorl_lightning.tasks.countdown import CountdownTask
from echorl_lightning.tiny import TINY_COUNTDOWN_PATH


@pytest.fixture(scope="module")
def countdown() -> tuple[torch.nn.Module, object, list[list[int]]]:
    tokenizer = AutoTokenizer.from_pretrained(TINY_COUNTDOWN_PATH)
    model = AutoModelForCausalLM.from_pretrained(TINY_COUNTDOWN_PATH)
    prompts = [
        tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
        for ex in CountdownTask().prompts("val", 6)
    ]
    return model, tokenizer, prompts


def completions(model, tokenizer, prompts, sampling, compact_every, batch_size=8):
    engine = HFGenerateEngine(batch_size=batch_size, compact_every=compact_every)
    engine.setup(model, tokenizer)
    return [c for samples in engine.generate(prompts, sampling) for c in samples]


def batch_rows_per_call(model, monkeypatch) -> list[int]:
    """Rows of every ``generate`` call the engine makes on ``model`` (observed, the real call runs)."""
    rows: list[int] = []
    inner = model.generate

    def generate(*args, **kwargs):
        rows.append(kwargs["input_ids"].shape[0])
        return inner(*args, **kwargs)

    monkeypatch.setattr(model, "generate", generate)
    return rows


def test_greedy_tokens_equal_one_call_and_rows_leave(countdown, monkeypatch) -> None:
    model, tokenizer, prompts = countdown
    sampling = SamplingConfig(n=2, max_new_tokens=160, temperature=0.0)
    whole = completions(model, tokenizer, prompts, sampling, compact_every=None)
    rows = batch_rows_per_call(model, monkeypatch)
    segmented = completions(model, tokenizer, prompts, sampling, compact_every=5)
    assert [c.token_ids for c in segmented] == [c.token_ids for c in whole]
    assert [c.truncated for c in segmented] == [c.truncated for c in whole]
    lengths = sorted(len(c.token_ids) for c in whole)
    assert lengths[0] + 5 < lengths[-1]  # some rows end at least a segment before others
    # 12 rows in chunks of 8 and 4; a chunk's later segments run with fewer rows than its first
    assert rows[0] == 8 and min(rows) < 4 and len(rows) > 2


def test_cache_without_row_selection_decodes_in_one_call(countdown, monkeypatch) -> None:
    """A cache rows cannot leave: after the first segment the chunk is decoded again in one call."""
    model, tokenizer, prompts = countdown
    sampling = SamplingConfig(n=2, max_new_tokens=160, temperature=0.0)
    whole = completions(model, tokenizer, prompts, sampling, compact_every=None)
    for owner in DynamicCache.__mro__:  # wherever the installed transformers defines it
        if "batch_select_indices" in vars(owner):
            monkeypatch.delattr(owner, "batch_select_indices")
    assert not drops_rows(DynamicCache())
    rows = batch_rows_per_call(model, monkeypatch)
    segmented = completions(model, tokenizer, prompts, sampling, compact_every=5)
    assert [c.token_ids for c in segmented] == [c.token_ids for c in whole]
    assert rows == [8, 8, 4, 4]  # per chunk: the first segment, then the chunk again in one call


def test_only_plain_dynamic_caches_drop_rows(countdown) -> None:
    model = countdown[0]
    ids = torch.tensor([[5, 6, 7]])
    config = GenerationConfig(max_new_tokens=2, do_sample=False, return_dict_in_generate=True)
    config.pad_token_id = config.eos_token_id = 0
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
    assert drops_rows(returned_cache(out))  # what generate builds for a Llama: attention layers only
    assert not drops_rows(None)

    class OwnCache(DynamicCache):  # a model's own cache class may hold more per-row state
        pass

    assert not drops_rows(OwnCache())
    if hasattr(returned_cache(out), "layers"):  # transformers with layered caches
        cache = returned_cache(out)

        class LinearAttentionLayer:  # a layer with recurrent state
            pass

        cache.layers[0] = LinearAttentionLayer()
        assert not drops_rows(cache)


def test_sampled_entropies_match_a_teacher_forced_forward(countdown) -> None:
    """Every recorded entropy is that of softmax(logits / T) of the policy on the row's own prefix: a cache
    that kept the wrong rows, or lost a segment's last token, would give other logits from then on."""
    model, tokenizer, prompts = countdown
    temperature = 0.8
    sampling = SamplingConfig(n=2, max_new_tokens=96, temperature=temperature, seed=5, return_entropy=True)
    out = completions(model, tokenizer, prompts, sampling, compact_every=7)
    again = completions(model, tokenizer, prompts, sampling, compact_every=7)
    assert out == again  # seeded: reproducible for a fixed compact_every and chunk size
    checked = 0
    with torch.no_grad():
        for index, completion in enumerate(out):
            prompt = prompts[index // 2]
            ids = torch.tensor([prompt + completion.token_ids])  # [1, P + T]
            logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float() / temperature  # [T, V]
            logp = torch.log_softmax(logits, dim=-1)
            expected = -(logp.exp() * logp).sum(-1)  # [T]
            torch.testing.assert_close(torch.tensor(completion.entropy), expected, atol=1e-4, rtol=1e-4)
            checked += len(completion.token_ids)
    assert checked > 7 * len(out)  # most rows ran past their first segment


def test_cache_keyword_follows_the_installed_transformers(countdown) -> None:
    import inspect

    model = countdown[0]
    params = inspect.signature(model.forward).parameters
    expected = "past_key_values" if "past_key_values" in params else "cache"
    assert cache_keyword(model) == expected

    class Wrapper(torch.nn.Module):  # a PEFT-style wrapper: forward(**kwargs), the model behind it
        def get_base_model(self):
            return model

        def forward(self, **kwargs):
            return model(**kwargs)

    assert cache_keyword(Wrapper()) == expected


def test_compact_every_validated() -> None:
    with pytest.raises(ValueError, match="compact_every=0: must be an integer >= 1"):
        HFGenerateEngine(compact_every=0)
    assert HFGenerateEngine(compact_every=None).compact_every is None
