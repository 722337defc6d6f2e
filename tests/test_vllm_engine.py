"""VLLMEngine: the pure request/response conversions on CPU, and one real engine test (vLLM + CUDA only).

The conversion tests feed ``types.SimpleNamespace`` objects shaped like vLLM's ``RequestOutput`` (``.outputs``)
and ``CompletionOutput`` (``.index``, ``.token_ids``, ``.finish_reason``, ``.stop_reason``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from echorl_lightning.rollout import Completion, RolloutEngine, SamplingConfig, VLLMEngine
from echorl_lightning.rollout.vllm_engine import (
    completions_from_outputs,
    hf_weight_items,
    sampling_kwargs,
    to_vllm_prompts,
    vllm_weight_name,
)

EOS = 256


def sample(
    index: int, token_ids: list[int], finish_reason: str | None, stop_reason: object = None
) -> SimpleNamespace:
    return SimpleNamespace(
        index=index, token_ids=token_ids, finish_reason=finish_reason, stop_reason=stop_reason
    )


def request(*samples: SimpleNamespace) -> SimpleNamespace:
    return SimpleNamespace(outputs=list(samples))


def test_engine_satisfies_protocol_and_imports_without_vllm() -> None:
    assert isinstance(VLLMEngine(), RolloutEngine)
    # importing the module and building the engine must not import vLLM (fresh interpreter: vLLM may be
    # installed and already imported by another test here)
    code = "import sys; from echorl_lightning.rollout import VLLMEngine; VLLMEngine(); assert 'vllm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_to_vllm_prompts() -> None:
    assert to_vllm_prompts([[1, 2], (3,)]) == [{"prompt_token_ids": [1, 2]}, {"prompt_token_ids": [3]}]


def test_sampling_kwargs_hand_computed() -> None:
    sampling = SamplingConfig(n=4, max_new_tokens=16, temperature=0.7, top_p=0.9, seed=10)
    # prompt 2 of the call: seed 10 + 2 * 4 = 18
    assert sampling_kwargs(sampling, eos_id=EOS, prompt_index=2) == dict(
        n=4, temperature=0.7, top_p=0.9, max_tokens=16, seed=18, detokenize=False, stop_token_ids=[EOS]
    )
    # greedy: vLLM requires n = 1; top-p is irrelevant and reset
    greedy = sampling_kwargs(SamplingConfig(n=3, temperature=0.0, top_p=0.5))
    assert (greedy["n"], greedy["top_p"], greedy["seed"]) == (1, 1.0, None) and "stop_token_ids" not in greedy


def test_sampling_seeds_distinct_over_a_call() -> None:
    # vLLM gives sample j of a request seed + j (vllm/v1/engine/parallel_sampling.py); 3 prompts x n=4, base 0
    sampling = SamplingConfig(n=4, seed=0)
    seeds = [sampling_kwargs(sampling, prompt_index=i)["seed"] + j for i in range(3) for j in range(4)]
    assert seeds == list(range(12))


def test_completions_from_outputs_finish_reasons() -> None:
    outputs = [
        request(
            sample(0, [5, 6, EOS], "stop", stop_reason=EOS),  # EOS kept by vLLM -> as is
            sample(1, [5, 6, 7, 8], "length"),  # max_tokens = 4 reached -> truncated
        ),
        request(
            sample(1, [9, 9], "stop", stop_reason="\n\n"),  # a stop string ended it: EOS appended
            sample(0, [5, EOS, 7], "stop"),  # anything after the first EOS dropped; listed out of index order
        ),
        request(
            sample(0, [5, 6, 7, 8], "stop", stop_reason=8),  # another stop id at the limit: last token -> EOS
            sample(1, [5, 6], "length"),  # max_model_len reached first: truncated, shorter than 4
        ),
    ]
    assert completions_from_outputs(outputs, n=2, eos_id=EOS, max_new_tokens=4) == [
        [Completion([5, 6, EOS], False), Completion([5, 6, 7, 8], True)],
        [Completion([5, EOS], False), Completion([9, 9, EOS], False)],
        [Completion([5, 6, 7, EOS], False), Completion([5, 6], True)],
    ]


def test_completions_from_outputs_errors() -> None:
    good = request(sample(0, [EOS], "stop"), sample(1, [EOS], "stop"))
    with pytest.raises(ValueError, match="1 samples for prompt 1, expected n=2"):
        completions_from_outputs([good, request(sample(0, [EOS], "stop"))], n=2, eos_id=EOS, max_new_tokens=4)
    with pytest.raises(ValueError, match="sample 1 of prompt 0 is unfinished"):
        completions_from_outputs([request(sample(0, [EOS], "stop"), sample(1, [5], None))], 2, EOS, 4)


def test_weight_names_and_items(tiny_random_model) -> None:
    assert vllm_weight_name("_orig_mod.model.layers.0._checkpoint_wrapped_module.mlp.up_proj.weight") == (
        "model.layers.0.mlp.up_proj.weight"
    )
    items = list(hf_weight_items(tiny_random_model))
    state = tiny_random_model.state_dict()
    assert [name for name, _ in items] == list(state)
    assert "lm_head.weight" in state and "model.embed_tokens.weight" in state
    assert all(tensor.data_ptr() == state[name].data_ptr() for name, tensor in items)  # no copies


def test_llm_kwargs_single_and_multi_rank() -> None:
    engine = VLLMEngine(model="ckpt", seed=5, max_model_len=64)
    single = engine.llm_kwargs("ckpt", rank=0, world_size=1)
    assert "distributed_executor_backend" not in single
    assert (single["model"], single["seed"], single["max_model_len"]) == ("ckpt", 5, 64)
    assert single["dtype"] == "bfloat16" and single["tensor_parallel_size"] == 1
    assert single["skip_tokenizer_init"] is True and single["generation_config"] == "vllm"
    multi = engine.llm_kwargs("ckpt", rank=2, world_size=4)
    assert multi["distributed_executor_backend"] == "external_launcher" and multi["seed"] == 7  # 5 + rank 2


def test_validation_without_vllm(tiny_random_model, tiny_tokenizer) -> None:
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        VLLMEngine(gpu_memory_utilization=0.0)
    engine = VLLMEngine()
    assert engine.generate([], SamplingConfig()) == []
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        engine.generate([[]], SamplingConfig())
    with pytest.raises(RuntimeError, match="setup"):
        engine.generate([[1]], SamplingConfig())
    with pytest.raises(ValueError, match="name_or_path"):  # random-init policy: no checkpoint to build from
        engine.setup(tiny_random_model, tiny_tokenizer)


@pytest.mark.vllm
def test_vllm_engine_end_to_end(tmp_path, tiny_tokenizer) -> None:
    pytest.importorskip(
        "vllm", reason="vLLM is not installed (optional GPU dependency: pip install '.[vllm]')"
    )
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA GPU")
    # head_dim 64: supported by every vLLM attention backend
    config = Qwen2Config(
        vocab_size=len(tiny_tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        eos_token_id=EOS,
        pad_token_id=tiny_tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    policy = Qwen2ForCausalLM.from_pretrained(tmp_path).cuda()

    engine = VLLMEngine(
        gpu_memory_utilization=0.2, max_model_len=128, enforce_eager=True, enable_sleep_mode=True
    )
    engine.setup(policy, tiny_tokenizer)
    engine.load_weights(policy)
    prompts = [[1, 2, 3], [4], [5, 6]]
    sampling = SamplingConfig(n=4, max_new_tokens=8, seed=0)
    out = engine.generate(prompts, sampling)
    assert [len(samples) for samples in out] == [4, 4, 4]
    for completion in (completion for samples in out for completion in samples):
        ids = completion.token_ids
        assert len(ids) <= 8
        if completion.truncated:
            assert EOS not in ids and len(ids) == 8
        else:
            assert ids.count(EOS) == 1 and ids[-1] == EOS
    assert engine.generate(prompts, sampling) == out  # seeded: reproducible

    # sync a policy whose head is all zeros: every logit is 0, greedy argmax takes the first index (token 0)
    with torch.no_grad():
        policy.lm_head.weight.zero_()
    engine.load_weights(policy)
    greedy = engine.generate(prompts, SamplingConfig(n=2, max_new_tokens=8, temperature=0.0))
    assert greedy == [[Completion([0] * 8, True)] * 2] * 3
    engine.load_weights(policy)  # wakes the weights (the engine sleeps after generate) so they can be read
    head_abs_sum = engine.llm.apply_model(lambda model: float(model.lm_head.weight.abs().sum()))
    embed = engine.llm.apply_model(
        lambda model: model.model.embed_tokens.weight[: len(tiny_tokenizer)].float().cpu()
    )
    assert head_abs_sum == [0.0]
    torch.testing.assert_close(embed[0], policy.model.embed_tokens.weight.detach().bfloat16().float().cpu())
