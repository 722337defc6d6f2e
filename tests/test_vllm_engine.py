"""VLLMEngine: its guards and call sequence on CPU, and one real engine test (vLLM + CUDA only).

vLLM cannot run on CPU, so the CPU tests drive the engine against ``ShapedLLM``, a plain object with the
attributes and methods of vLLM 0.33's ``LLM`` that the adapter uses (``llm_engine.model_config``,
``llm_engine.model_executor``, ``generate``, ``sleep``, ``wake_up``, ``apply_model``,
``reset_prefix_cache``), answering with ``RequestOutput``-shaped namespaces. The test marked ``vllm`` runs
the real thing where vLLM and a GPU are present (``python -m pytest -m vllm``).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterable
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import torch

from echorl_lightning.rollout import Completion, RolloutEngine, SamplingConfig, VLLMEngine
from echorl_lightning.rollout.seeds import derive_seed
from echorl_lightning.rollout.vllm_engine import (
    MULTIPROCESSING_ENV,
    force_inprocess_engine_core,
    launcher_env,
    require_inprocess,
)
from tests.test_vllm_weight_stream import TIED_KEY, tied_model

EOS = 256


class ShapedLLM:
    """Records the adapter's calls; ``respond(prompt_ids, params) -> (token_ids, finish_reason)``."""

    def __init__(self, respond: Callable[[list[int], Any], tuple[list[int], str]], max_model_len: int = 16):
        config = SimpleNamespace(dtype=torch.bfloat16, max_model_len=max_model_len)
        self.llm_engine = SimpleNamespace(model_config=config, model_executor=object())
        self.respond = respond
        self.calls: list[tuple[Any, ...]] = []
        self.asleep: set[str] = set()
        self.loaded: dict[str, torch.Tensor] = {}
        self.reset_ok = True

    def sleep(self, level: int = 1) -> None:
        self.calls.append(("sleep", level))
        self.asleep = {"weights", "kv_cache"}

    def wake_up(self, tags: list[str] | None = None) -> bool:
        self.calls.append(("wake_up", tuple(tags or ())))
        self.asleep.difference_update(tags or ())
        return not self.asleep

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:  # vLLM model's method
        assert "weights" not in self.asleep
        for name, tensor in weights:
            self.loaded[name] = tensor.clone()
        return set(self.loaded)

    def apply_model(self, fn: Callable[[Any], Any]) -> list[Any]:
        self.calls.append(("apply_model",))
        return [fn(self)]

    def reset_prefix_cache(self) -> bool:
        self.calls.append(("reset_prefix_cache",))
        return self.reset_ok

    def generate(self, prompts: list[dict], sampling_params: list[Any], use_tqdm: bool) -> list[Any]:
        assert not self.asleep and not use_tqdm and len(prompts) == len(sampling_params)
        self.calls.append(("generate", [p["prompt_token_ids"] for p in prompts], sampling_params))
        outputs = []
        for prompt, params in zip(prompts, sampling_params, strict=True):
            token_ids, reason = self.respond(prompt["prompt_token_ids"], params)
            sample = SimpleNamespace(index=0, token_ids=token_ids, finish_reason=reason, stop_reason=None)
            outputs.append(SimpleNamespace(outputs=[sample]))
        return outputs


class ShapedEngine(VLLMEngine):
    """VLLMEngine whose vLLM objects are ``ShapedLLM`` and plain ``SamplingParams`` namespaces."""

    def __init__(self, llm: ShapedLLM, **kwargs: Any) -> None:
        super().__init__(model="ckpt", **kwargs)
        self.shaped = llm
        self.env_at_build: str | None = None

    def _build_llm(self, kwargs: dict[str, Any]) -> Any:
        self.env_at_build = os.environ.get(MULTIPROCESSING_ENV)
        random.seed(99)  # what vLLM's worker does to the process's RNGs (set_random_seed)
        torch.manual_seed(99)
        return self.shaped

    def _sampling_params(self, kwargs: dict[str, Any]) -> Any:
        return SimpleNamespace(**kwargs)


def echo_respond(prompt: list[int], params: Any) -> tuple[list[int], str]:
    """Answer ``[first prompt token, EOS]``."""
    return [prompt[0], EOS], "stop"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """LOCAL_RANK unset and vLLM's multiprocessing switch at 1; both restored after the test."""
    monkeypatch.setenv("LOCAL_RANK", "placeholder")
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setenv(MULTIPROCESSING_ENV, "1")
    return monkeypatch


def test_engine_satisfies_protocol_and_imports_without_vllm() -> None:
    assert isinstance(VLLMEngine(), RolloutEngine)
    # importing the module and building the engine must not import vLLM (fresh interpreter)
    code = "import sys; from echorl_lightning.rollout import VLLMEngine; VLLMEngine(); assert 'vllm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_llm_kwargs_single_and_multi_rank() -> None:
    engine = VLLMEngine(model="ckpt", seed=5, max_model_len=64)
    single = engine.llm_kwargs("ckpt", rank=0, world_size=1)
    assert "distributed_executor_backend" not in single
    assert (single["model"], single["seed"], single["max_model_len"]) == ("ckpt", 5, 64)
    assert single["dtype"] == "bfloat16" and single["tensor_parallel_size"] == 1
    assert single["skip_tokenizer_init"] is True and single["generation_config"] == "vllm"
    multi = engine.llm_kwargs("ckpt", rank=2, world_size=4)
    assert multi["distributed_executor_backend"] == "external_launcher" and multi["seed"] == 7  # 5 + rank 2


def test_launcher_env() -> None:
    base = {"MASTER_ADDR": "h", "MASTER_PORT": "1"}
    assert launcher_env(0, 1, 0, {}) == {"LOCAL_RANK": "0"}
    assert launcher_env(0, 1, 0, {"LOCAL_RANK": "0"}) == {}
    with pytest.raises(ValueError, match="runs on cuda:0, but the trainer's device is cuda:2"):
        launcher_env(0, 1, 2, {})
    # rank 3 of 4 on cuda:1 (e.g. 2 nodes x 2 GPUs): LOCAL_RANK from the device, not the rank
    assert launcher_env(3, 4, 1, base) == {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}
    assert launcher_env(3, 4, 1, {**base, "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == {}
    with pytest.raises(ValueError, match="LOCAL_RANK=0 in the environment, but this rank's local_rank is 1"):
        launcher_env(3, 4, 1, {**base, "LOCAL_RANK": "0"})
    with pytest.raises(RuntimeError, match="needs MASTER_PORT"):
        launcher_env(1, 2, 1, {"MASTER_ADDR": "h"})


def test_force_inprocess_overrides_and_drops_a_frozen_env_cache(clean_env: pytest.MonkeyPatch) -> None:
    frozen = ModuleType("vllm.envs")  # shaped like vllm.envs after enable_envs_cache() froze "1"
    frozen.VLLM_ENABLE_V1_MULTIPROCESSING = True  # type: ignore[attr-defined]
    frozen.disable_envs_cache = lambda: setattr(frozen, MULTIPROCESSING_ENV, False)  # type: ignore[attr-defined]
    clean_env.setitem(sys.modules, "vllm.envs", frozen)
    force_inprocess_engine_core()
    assert os.environ[MULTIPROCESSING_ENV] == "0" and frozen.VLLM_ENABLE_V1_MULTIPROCESSING is False


def test_require_inprocess() -> None:
    require_inprocess(SimpleNamespace(llm_engine=SimpleNamespace(model_executor=object())))
    with pytest.raises(RuntimeError, match="separate process .*VLLM_ENABLE_V1_MULTIPROCESSING must be 0"):
        require_inprocess(SimpleNamespace(llm_engine=SimpleNamespace()))  # multiprocess mode: no executor


def test_setup_forces_inprocess_sets_local_rank_and_keeps_rng(clean_env, tiny_tokenizer) -> None:
    engine = ShapedEngine(ShapedLLM(echo_respond), enable_sleep_mode=True)
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    engine.setup(tied_model(), tiny_tokenizer)
    assert engine.env_at_build == "0" and os.environ["LOCAL_RANK"] == "0"
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == python_state
    assert (engine.engine_dtype, engine.engine_max_model_len, engine.eos_id) == (torch.bfloat16, 16, EOS)
    assert engine.shaped.calls == [("sleep", 1)]  # asleep until the first sync

    not_inprocess = ShapedEngine(ShapedLLM(echo_respond))
    del not_inprocess.shaped.llm_engine.model_executor
    with pytest.raises(RuntimeError, match="separate process"):
        not_inprocess.setup(tied_model(), tiny_tokenizer)


def test_load_weights_streams_engine_dtype_once_per_tensor(clean_env, tiny_tokenizer) -> None:
    policy = tied_model()
    engine = ShapedEngine(ShapedLLM(echo_respond), enable_sleep_mode=True)
    engine.setup(policy, tiny_tokenizer)
    engine.load_weights(policy)
    engine.load_weights(policy)  # again with unchanged weights: same values, no wake (already awake)
    llm = engine.shaped
    assert llm.calls[1:] == [("wake_up", ("weights",))] + [("apply_model",), ("reset_prefix_cache",)] * 2
    state = policy.state_dict()
    assert list(llm.loaded) == [key for key in state if key != TIED_KEY]  # tied head: loaded once
    for name, tensor in llm.loaded.items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, state[name].bfloat16())

    llm.reset_ok = False
    with pytest.raises(RuntimeError, match="could not reset its prefix cache"):
        engine.load_weights(policy)
    llm.reset_ok = True
    llm.load_weights = lambda weights: next(iter(weights))  # type: ignore[method-assign]  # stops after one
    with pytest.raises(RuntimeError, match=r"stopped before 'model.layers.0.self_attn.q_proj.weight'"):
        engine.load_weights(policy)


def test_generate_requests_seeds_and_sleep(clean_env, tiny_tokenizer) -> None:
    engine = ShapedEngine(ShapedLLM(echo_respond), enable_sleep_mode=True)
    engine.setup(tied_model(), tiny_tokenizer)
    sampling = SamplingConfig(n=2, max_new_tokens=4, temperature=0.7, seed=derive_seed(0, 3, 1, 2))
    out = engine.generate([[1, 2], [3]], sampling)
    assert out == [[Completion([1, EOS], False)] * 2, [Completion([3, EOS], False)] * 2]
    call = engine.shaped.calls[2]
    assert engine.shaped.calls[1] == ("wake_up", ("weights", "kv_cache")) and engine.shaped.calls[3] == (
        "sleep",
        1,
    )
    assert call[1] == [[1, 2], [1, 2], [3], [3]]  # one request per sample, prompt-major
    seeds = [params.seed for params in call[2]]
    p0, p1 = derive_seed(sampling.seed, 0), derive_seed(sampling.seed, 1)
    assert seeds == [derive_seed(p0, 0), derive_seed(p0, 1), derive_seed(p1, 0), derive_seed(p1, 1)]
    assert all(params.ignore_eos and params.stop_token_ids == [EOS] and params.n == 1 for params in call[2])

    engine.generate([[3]], sampling, prompt_seeds=[77])
    assert [params.seed for params in engine.shaped.calls[-2][2]] == [derive_seed(77, 0), derive_seed(77, 1)]

    greedy = engine.generate([[4], [5]], SamplingConfig(n=3, max_new_tokens=4, temperature=0.0))
    assert engine.shaped.calls[-2][1] == [[4], [5]]  # one greedy request per prompt, answer repeated n times
    assert greedy == [[Completion([4, EOS], False)] * 3, [Completion([5, EOS], False)] * 3]


def test_generate_guards_and_sleeps_on_failure(clean_env, tiny_tokenizer) -> None:
    def fail(prompt: list[int], params: Any) -> tuple[list[int], str]:
        raise RuntimeError("CUDA error: out of memory")

    engine = ShapedEngine(ShapedLLM(fail, max_model_len=10), enable_sleep_mode=True)
    with pytest.raises(RuntimeError, match="setup"):
        engine.generate([[1]], SamplingConfig())
    engine.setup(tied_model(), tiny_tokenizer)
    calls = engine.shaped.calls
    assert engine.generate([], SamplingConfig()) == []
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        engine.generate([[]], SamplingConfig())
    with pytest.raises(ValueError, match=r"prompt 1 has 7 tokens: 7 \+ max_new_tokens 4 = 11 exceeds .* 10"):
        engine.generate([[1], [2] * 7], SamplingConfig(max_new_tokens=4))
    assert calls == [("sleep", 1)]  # refused before waking the engine
    with pytest.raises(RuntimeError, match="out of memory"):
        engine.generate([[1]], SamplingConfig(max_new_tokens=4))
    assert calls[-1] == ("sleep", 1) and engine.shaped.asleep == {"weights", "kv_cache"}  # finally: asleep


def test_validation_without_vllm(tiny_random_model, tiny_tokenizer) -> None:
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        VLLMEngine(gpu_memory_utilization=0.0)
    with pytest.raises(ValueError, match="name_or_path"):  # random-init policy: no checkpoint to build from
        VLLMEngine().setup(tiny_random_model, tiny_tokenizer)


def engine_prompt_logprobs(llm: Any, token_ids: list[int]) -> torch.Tensor:
    """vLLM's log-prob of each token of ``token_ids`` after the first, given the ones before [L - 1]."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
    (output,) = llm.generate([{"prompt_token_ids": token_ids}], params, use_tqdm=False)
    return torch.tensor([output.prompt_logprobs[k][token_ids[k]].logprob for k in range(1, len(token_ids))])


def policy_logprobs(model: torch.nn.Module, token_ids: list[int]) -> torch.Tensor:
    """The HF model's log-prob of each token after the first [L - 1], in fp32."""
    with torch.no_grad():
        ids = torch.tensor([token_ids], device=next(model.parameters()).device)
        logp = model(input_ids=ids).logits.float().log_softmax(-1)[0, :-1]  # [L - 1, V]
        return logp.gather(-1, ids[0, 1:, None])[:, 0].cpu()


@pytest.mark.vllm
def test_vllm_engine_end_to_end(tmp_path, tiny_tokenizer) -> None:
    pytest.importorskip(
        "vllm", reason="vLLM is not installed (optional GPU dependency: pip install '.[vllm]')"
    )
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA GPU")
    import json

    from transformers import Qwen2Config, Qwen2ForCausalLM

    # head_dim 64 (supported by every vLLM attention backend); tied embeddings; the checkpoint's
    # generation_config lists a second EOS id, 0, which the engine must not stop on
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
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [EOS, 0]}))
    checkpoint = Qwen2ForCausalLM.from_pretrained(tmp_path).cuda().eval()
    policy = Qwen2ForCausalLM.from_pretrained(tmp_path).cuda().eval()
    # "training" moved the policy far from the checkpoint the engine is built from
    with torch.no_grad(), torch.random.fork_rng(devices=[torch.cuda.current_device()]):
        torch.manual_seed(1)
        for param in policy.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    assert policy.lm_head.weight is policy.model.embed_tokens.weight

    utilization = 0.2
    engine = VLLMEngine(
        gpu_memory_utilization=utilization, max_model_len=128, enforce_eager=True, enable_sleep_mode=True
    )
    engine.setup(policy, tiny_tokenizer)
    assert os.environ[MULTIPROCESSING_ENV] == "0" and engine.llm.llm_engine.model_executor is not None
    prompts = [[1, 2, 3], [4], [5, 6]]
    sampling = SamplingConfig(n=4, max_new_tokens=8, seed=derive_seed(0, 0, 0, 0))
    first = None
    for _ in range(3):  # sync + generate, each call waking and putting the engine back to sleep
        engine.load_weights(policy)
        out = engine.generate(prompts, sampling)
        first = first or out
        assert out == first  # seeded: reproducible across sleep/wake cycles
    assert [len(samples) for samples in first] == [4, 4, 4]
    for completion in (completion for samples in first for completion in samples):
        ids = completion.token_ids
        if completion.truncated:
            assert len(ids) == 8 and EOS not in ids
        else:
            assert len(ids) <= 8 and ids.count(EOS) == 1 and ids[-1] == EOS

    # weights after sync: both tied matrices equal the policy's in bf16 (vLLM pads the vocabulary)
    engine.load_weights(policy)  # wakes the weights so they can be read
    vocab = len(tiny_tokenizer)
    embed, head = engine.llm.apply_model(
        lambda model: (
            model.model.embed_tokens.weight[:vocab].float().cpu(),
            model.lm_head.weight[:vocab].float().cpu(),
        )
    )[0]
    expected = policy.model.embed_tokens.weight.detach().bfloat16().float().cpu()
    assert torch.equal(embed, expected) and torch.equal(head, expected)

    # memory: sleeping releases the KV cache (most of the engine's share of the GPU) and the weights
    engine._wake(["weights", "kv_cache"])
    torch.cuda.synchronize()
    free_awake, total = torch.cuda.mem_get_info()
    tokens = prompts[0] + first[0][0].token_ids
    engine_logp = engine_prompt_logprobs(engine.llm, tokens)
    engine._sleep()
    free_asleep, _ = torch.cuda.mem_get_info()
    assert free_asleep - free_awake > 0.5 * utilization * total

    # log-prob parity on the same tokens after the sleep/wake cycles: the engine samples from the policy
    synced_err = (engine_logp - policy_logprobs(policy, tokens)).abs()
    stale_err = (policy_logprobs(checkpoint, tokens) - policy_logprobs(policy, tokens)).abs()
    assert synced_err.max() < 0.1 and synced_err.mean() < 0.1 * stale_err.mean()

    # greedy on a zero head: every logit is 0, argmax is token 0, which the checkpoint lists as an EOS id;
    # the engine stops on the trainer's EOS only, so all 8 tokens are 0 and the completion is truncated
    with torch.no_grad():
        policy.lm_head.weight.zero_()
    engine.load_weights(policy)
    greedy = engine.generate(prompts, SamplingConfig(n=2, max_new_tokens=8, temperature=0.0))
    assert greedy == [[Completion([0] * 8, True)] * 2] * 3
    with pytest.raises(ValueError, match="prompt 0 has 121 tokens: 121 \\+ max_new_tokens 8 = 129 exceeds"):
        engine.generate([[1] * 121], sampling)
