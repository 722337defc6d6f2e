"""vLLM requests and responses as plain data (no vLLM needed).

The pure conversions, including finish reasons a healthy engine never gives (``abort``, ``error``), on
``types.SimpleNamespace`` responses with the fields of vLLM's ``RequestOutput`` (``.outputs``) and
``CompletionOutput`` (``.index``, ``.token_ids``, ``.finish_reason``, ``.stop_reason``, ``.logprobs``). The same
code against a real engine: ``tests/rollout/test_vllm_engine.py``.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from echorl_lightning.rollout import Completion, SamplingConfig
from echorl_lightning.rollout.vllm_requests import (
    check_prompt_lengths,
    check_sampling,
    completion_from_sample,
    completions_from_outputs,
    samples_per_request_prompt,
    sampling_kwargs,
    to_vllm_prompts,
)

EOS = 256


def request(token_ids: list[int], finish_reason: str | None, stop_reason: object = None) -> SimpleNamespace:
    """A single-sample ``RequestOutput``."""
    sample = SimpleNamespace(
        index=0, token_ids=token_ids, finish_reason=finish_reason, stop_reason=stop_reason
    )
    return SimpleNamespace(outputs=[sample])


def test_to_vllm_prompts() -> None:
    assert to_vllm_prompts([[1, 2], (3,)]) == [{"prompt_token_ids": [1, 2]}, {"prompt_token_ids": [3]}]


def test_sampling_kwargs_stop_on_trainer_eos_only() -> None:
    sampling = SamplingConfig(n=4, max_new_tokens=16, temperature=0.7, top_p=0.9, seed=10)
    assert sampling_kwargs(sampling, eos_id=EOS, seed=123) == dict(
        n=1,  # one request per sample
        temperature=0.7,
        top_p=0.9,
        top_k=0,
        min_p=0.0,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        repetition_penalty=1.0,
        min_tokens=0,
        max_tokens=16,
        seed=123,
        ignore_eos=True,  # the checkpoint's generation_config EOS ids stay out of the stop set
        stop_token_ids=[EOS],  # ... and the trainer's EOS is the one stop token
        detokenize=False,
        logprobs=None,
    )
    with_logprobs = SamplingConfig(n=4, max_new_tokens=16, return_logprobs=True)
    assert sampling_kwargs(with_logprobs, eos_id=EOS, seed=1)["logprobs"] == 0  # the sampled token's own
    greedy = sampling_kwargs(SamplingConfig(n=3, temperature=0.0, top_p=0.5), eos_id=EOS, seed=None)
    assert (greedy["n"], greedy["top_p"], greedy["seed"]) == (1, 1.0, None)
    assert samples_per_request_prompt(SamplingConfig(n=3, temperature=0.0)) == 1
    assert samples_per_request_prompt(SamplingConfig(n=3)) == 3


def test_check_sampling_temperature_range() -> None:
    for temperature in (0.0, 0.01, 0.6, 2.0):
        check_sampling(SamplingConfig(temperature=temperature))
    for temperature in (0.005, 2.5):  # vLLM would clamp 0.005 up to 0.01 and refuse 2.5
        with pytest.raises(ValueError, match=f"temperature={temperature}"):
            check_sampling(SamplingConfig(temperature=temperature))


def test_check_prompt_lengths_names_prompt_length_and_limit() -> None:
    # limit 10, max_new_tokens 4: 6 + 4 = 10 fits, 7 + 4 = 11 does not
    check_prompt_lengths([[1] * 6, [2] * 3], max_new_tokens=4, max_model_len=10)
    with pytest.raises(ValueError, match=r"prompt 2 has 7 tokens: 7 \+ max_new_tokens 4 = 11 exceeds .* 10"):
        check_prompt_lengths([[1] * 6, [2] * 3, [3] * 7, [4] * 9], max_new_tokens=4, max_model_len=10)


def test_completion_from_sample_finish_reasons() -> None:
    assert completion_from_sample([5, 6, EOS], "stop", EOS, 4) == Completion([5, 6, EOS], False)
    assert completion_from_sample([5, 6, 7, 8], "length", EOS, 4) == Completion([5, 6, 7, 8], True)
    assert completion_from_sample([5, 6], "length", EOS, 4) == Completion([5, 6], True)  # shorter: still cut
    assert completion_from_sample([5, EOS, 7, EOS], "stop", EOS, 4) == Completion([5, EOS], False)  # 1st EOS
    assert completion_from_sample([1, 2, 3, 4, EOS], "length", EOS, 4) == Completion([1, 2, 3, 4], True)
    with pytest.raises(RuntimeError, match="without the trainer's EOS 256 \\(last token \\[9\\]\\)"):
        completion_from_sample([9, 9], "stop", EOS, 4)  # e.g. a checkpoint EOS id leaked into the stop set
    for reason in (None, "abort", "error", "repetition"):
        with pytest.raises(RuntimeError, match=f"reason {reason!r}"):
            completion_from_sample([5, EOS], reason, EOS, 4)


def test_completion_logprobs_cut_with_the_tokens() -> None:
    # vLLM's per-position dicts {token_id: Logprob}; the sampled token's entry is the one kept
    positions = [
        {5: SimpleNamespace(logprob=-0.5)},
        {EOS: SimpleNamespace(logprob=-1.25)},
        {7: SimpleNamespace(logprob=-3.0)},
    ]
    cut = completion_from_sample([5, EOS, 7], "stop", EOS, 4, positions)
    assert cut == Completion([5, EOS], False, logprobs=[-0.5, -1.25])  # cut after the first EOS, as the ids
    assert completion_from_sample([5, EOS], "stop", EOS, 4).logprobs is None  # none asked for
    with pytest.raises(RuntimeError, match="1 log-probs for 2 tokens"):
        completion_from_sample([5, EOS], "stop", EOS, 4, positions[:1])


def test_completions_from_outputs_groups_prompt_major() -> None:
    outputs = [
        request([5, 6, EOS], "stop", stop_reason=EOS),  # prompt 0, sample 0
        request([5, 6, 7, 8], "length"),  # prompt 0, sample 1: max_tokens = 4 reached
        request([EOS], "stop", stop_reason=EOS),  # prompt 1, sample 0
        request([1, EOS, 3], "stop"),  # prompt 1, sample 1: anything after the first EOS dropped
    ]
    assert completions_from_outputs(outputs, per_prompt=2, eos_id=EOS, max_new_tokens=4) == [
        [Completion([5, 6, EOS], False), Completion([5, 6, 7, 8], True)],
        [Completion([EOS], False), Completion([1, EOS], False)],
    ]


def test_completions_from_outputs_errors_name_prompt_and_sample() -> None:
    good = request([EOS], "stop")
    with pytest.raises(ValueError, match="3 outputs, not a multiple of 2"):
        completions_from_outputs([good, good, good], 2, EOS, 4)
    two_samples = SimpleNamespace(outputs=[good.outputs[0], good.outputs[0]])
    with pytest.raises(ValueError, match="2 completions for sample 1 of prompt 0, expected 1"):
        completions_from_outputs([good, two_samples], 2, EOS, 4)
    with pytest.raises(RuntimeError, match="sample 0 of prompt 1: .*reason 'abort'"):
        completions_from_outputs([good, good, request([5], "abort"), good], 2, EOS, 4)
