"""LoRA pieces on a tiny random Qwen2: the settings, the wrapper, the merged-weight stream (hand-computed; bit
equal to peft's merge; the base restored exactly where peft's merge/unmerge round trip drifts; engine dtype and
checkpoint names for vLLM, no adapter names), the reference model as the base with adapters disabled,
adapter-only state dicts, the merged export, and the HF engine on the adapted policy. The end-to-end run is in
``tests/training/test_lora_training.py``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from echorl_lightning.rollout.batch import TokenBatch, pad_rollouts
from echorl_lightning.rollout.hf_engine import HFGenerateEngine
from echorl_lightning.rollout.types import SamplingConfig
from echorl_lightning.rollout.weight_stream import require_streamable, streamed_weights
from echorl_lightning.training.forward import policy_response_logprobs
from echorl_lightning.training.lora import (
    LoraConfig,
    is_lora,
    reference_model,
    trainable_state_dict,
    with_frozen_weights,
    wrap_lora,
)
from echorl_lightning.training.lora_merge import (
    checkpoint_name,
    is_adapter_name,
    merged_named_weights,
    merged_weights,
    save_merged_pretrained,
)
from tests.helpers.logprobs import logprobs


def lora_policy(model: PreTrainedModel, seed: int = 0, r: int = 4) -> peft.PeftModel:
    """``model`` (a copy) wrapped with LoRA on every projection, B drawn at random so the adapters matter."""
    policy = wrap_lora(copy.deepcopy(model), LoraConfig(r=r, alpha=2.0 * r))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=gen))
    return policy


def sample_batch() -> TokenBatch:
    """Two rows of fixed byte tokens: prompts of 3 and 5 tokens, responses of 4 and 2."""
    return pad_rollouts([[81, 58, 32], [49, 43, 50, 42, 51]], [[49, 10, 65, 256], [55, 256]], pad_id=257)


# ---- settings ----------------------------------------------------------------------------------------------
def test_config_checks_and_peft_settings() -> None:
    cfg = LoraConfig(r=8, alpha=16.0, dropout=0.1, target_modules=["q_proj", "v_proj"]).to_peft()
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout, cfg.bias) == (8, 16.0, 0.1, "none")
    assert set(cfg.target_modules) == {"q_proj", "v_proj"}
    with pytest.raises(ValueError, match="lora.r"):
        LoraConfig(r=0)
    with pytest.raises(ValueError, match="lora.dropout"):
        LoraConfig(dropout=1.0)
    with pytest.raises(ValueError, match="lm_head"):
        LoraConfig(target_modules=["q_proj", "lm_head"])
    with pytest.raises(ValueError, match="at least one"):
        LoraConfig(target_modules=[])


def test_wrap_trains_adapters_only_and_starts_as_the_base(tiny_random_model: PreTrainedModel) -> None:
    policy = wrap_lora(copy.deepcopy(tiny_random_model), LoraConfig(r=2, alpha=4.0))
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    # 2 layers x 7 projections x (A, B)
    assert len(trainable) == 28 and all("lora_A" in n or "lora_B" in n for n in trainable)
    batch = sample_batch()
    # B = 0 at the start: the wrapped policy computes the base model's function exactly
    assert torch.equal(logprobs(policy, batch), logprobs(tiny_random_model, batch))
    with pytest.raises(ValueError, match="already"):
        wrap_lora(policy, LoraConfig())


def test_gradient_checkpointing_still_reaches_the_adapters(tiny_random_model: PreTrainedModel) -> None:
    model = copy.deepcopy(tiny_random_model)
    model.gradient_checkpointing_enable()
    policy = lora_policy(model).train()
    batch = sample_batch()
    logp, _ = policy_response_logprobs(
        policy,
        batch.input_ids,
        batch.attention_mask,
        batch.position_ids,
        batch.prompt_len,
        batch.responses,
        1.0,
    )
    (logp * batch.response_mask).sum().backward()
    grads = {n: p.grad for n, p in policy.named_parameters() if p.requires_grad}
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_A" in n)


# ---- the merged stream --------------------------------------------------------------------------------------
class OneLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(2, 2)


def test_merged_weight_hand_computed_then_released() -> None:
    net = OneLinear()
    with torch.no_grad():
        net.proj.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        net.proj.bias.copy_(torch.tensor([0.5, -0.5]))
    policy = peft.get_peft_model(net, peft.LoraConfig(r=1, lora_alpha=2, target_modules=["proj"]))
    layer = policy.base_model.model.proj
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(torch.tensor([[1.0, -1.0]]))  # A [r=1, in=2]
        layer.lora_B["default"].weight.copy_(torch.tensor([[0.5], [2.0]]))  # B [out=2, r=1]
    # scaling alpha / r = 2; B @ A = [[0.5, -0.5], [2, -2]]; W + 2 * B @ A = [[1+1, 2-1], [3+4, 4-4]]
    stream = merged_named_weights(policy)
    name, merged = next(stream)
    assert name == "proj.weight"
    assert torch.equal(merged, torch.tensor([[2.0, 1.0], [7.0, 0.0]]))
    assert torch.equal(layer.base_layer.weight, torch.tensor([[1.0, 2.0], [3.0, 4.0]]))  # W only read
    name, bias = next(stream)  # taking the next item empties the merged copy: a late reader gets no stale W
    assert name == "proj.bias" and bias is layer.base_layer.bias
    assert merged.shape == (0,)
    assert list(stream) == []


def test_stream_is_exact_where_peft_round_trip_drifts(tiny_random_model: PreTrainedModel) -> None:
    policy = lora_policy(tiny_random_model)
    start = {k: v.clone() for k, v in policy.state_dict().items()}
    want = copy.deepcopy(policy).merge_and_unload().state_dict()  # peft's merged model
    for _ in range(3):
        got = {name: t.clone() for name, t in merged_named_weights(policy)}
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want)  # same float ops as peft's merge: bit equal
    assert all(torch.equal(v, start[k]) for k, v in policy.state_dict().items())  # base untouched
    drifting = copy.deepcopy(policy)
    for _ in range(3):
        drifting.merge_adapter()
        drifting.unmerge_adapter()
    changed = sum(int((v != start[k]).sum()) for k, v in drifting.state_dict().items())
    assert changed > 0  # (W + D) - D != W in float32: what the stream avoids


def test_streamed_weights_for_vllm_are_merged_in_engine_dtype_without_adapter_names(
    tiny_random_model: PreTrainedModel,
) -> None:
    policy = lora_policy(tiny_random_model)
    want = copy.deepcopy(policy).merge_and_unload().state_dict()
    with merged_weights(policy) as view:
        require_streamable(view)
        got = {name: t.clone() for name, t in streamed_weights(view, torch.bfloat16)}
    assert got.keys() == tiny_random_model.state_dict().keys()  # the base checkpoint's names, nothing else
    assert not any("lora" in n or "base_layer" in n or n.startswith("base_model") for n in got)
    assert all(t.dtype == torch.bfloat16 and torch.equal(t, want[n].bfloat16()) for n, t in got.items())


def test_bf16_base_with_fp32_adapters_matches_peft_merge_bit_for_bit(
    tiny_random_model: PreTrainedModel,
) -> None:
    policy = lora_policy(copy.deepcopy(tiny_random_model).bfloat16())  # peft keeps adapters in fp32
    assert (
        policy.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight.dtype
        == torch.float32
    )
    want = copy.deepcopy(policy).merge_and_unload().state_dict()  # W += delta: fp32 sum, rounded once to bf16
    got = {name: t.clone() for name, t in merged_named_weights(policy)}
    assert all(got[k].dtype == torch.bfloat16 and torch.equal(got[k], want[k]) for k in want)
    layer = policy.base_model.model.model.layers[0].self_attn.q_proj
    naive = layer.base_layer.weight + layer.get_delta_weight("default").bfloat16()  # rounds twice
    assert not torch.equal(naive, want["model.layers.0.self_attn.q_proj.weight"])


def test_names_and_an_abandoned_stream(tiny_random_model: PreTrainedModel) -> None:
    policy = lora_policy(tiny_random_model)
    start = {k: v.clone() for k, v in policy.state_dict().items()}
    with pytest.raises(RuntimeError, match="engine failed"), merged_weights(policy) as view:
        for index, (name, _) in enumerate(streamed_weights(view, torch.float32)):
            if name.endswith("q_proj.weight"):  # stop while a merged copy is out
                raise RuntimeError(f"engine failed at item {index}")
    assert all(torch.equal(v, start[k]) for k, v in policy.state_dict().items())
    assert is_adapter_name("model.layers.0.self_attn.q_proj.lora_B.default.weight")
    assert not is_adapter_name("model.layers.0.self_attn.q_proj.base_layer.weight")
    assert (
        checkpoint_name("model.layers.0.mlp.up_proj.base_layer.weight") == "model.layers.0.mlp.up_proj.weight"
    )


# ---- reference, checkpoints, export, HF engine --------------------------------------------------------------
def test_reference_is_the_base_with_adapters_disabled(tiny_random_model: PreTrainedModel) -> None:
    policy = lora_policy(tiny_random_model)
    batch = sample_batch()
    base_logp = logprobs(tiny_random_model, batch)
    adapted = logprobs(policy, batch)
    with reference_model(policy) as ref:
        assert ref is policy  # no second copy
        assert torch.equal(logprobs(ref, batch), base_logp)
    assert torch.equal(logprobs(policy, batch), adapted) and not torch.equal(adapted, base_logp)
    with pytest.raises(TypeError, match="peft"):
        with reference_model(tiny_random_model):
            pass


def test_adapter_only_state_dict_restores_exactly(tiny_random_model: PreTrainedModel) -> None:
    trained = lora_policy(tiny_random_model, seed=1)
    sd = trainable_state_dict(
        {"other.x": torch.ones(1), **trained.state_dict(prefix="policy.")}, trained, "policy."
    )
    assert len(sd) == 1 + 28 and all("lora_" in k for k in sd if k != "other.x")  # 2 layers x 7 x (A, B)
    fresh = lora_policy(tiny_random_model, seed=2)
    full = with_frozen_weights({k[len("policy.") :]: v for k, v in sd.items() if k != "other.x"}, fresh)
    fresh.load_state_dict(full, strict=True)
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in fresh.state_dict().items())


def test_export_loads_as_a_plain_model_with_the_merged_weights(
    tiny_random_model: PreTrainedModel, tmp_path: Path
) -> None:
    policy = lora_policy(tiny_random_model)
    want = copy.deepcopy(policy).merge_and_unload().state_dict()
    for folder, shard_bytes in (("one", 2**30), ("sharded", 20_000)):
        save_merged_pretrained(policy, tmp_path / folder, max_shard_bytes=shard_bytes)
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / folder)
        assert not is_lora(loaded)
        assert all(torch.equal(v, want[k]) for k, v in loaded.state_dict().items())
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    assert not (tmp_path / "one" / "model.safetensors.index.json").exists()


def test_hf_engine_samples_from_the_adapted_policy(
    tiny_random_model: PreTrainedModel, tiny_tokenizer: Any
) -> None:
    policy = lora_policy(tiny_random_model)
    engine = HFGenerateEngine(batch_size=8)
    engine.setup(policy, tiny_tokenizer)
    engine.load_weights(policy)  # colocated: the policy itself, adapters applied unmerged
    prompts = [[81, 58, 32], [49, 43, 50]]
    out = engine.generate(prompts, SamplingConfig(n=2, max_new_tokens=6, seed=3))
    batch = pad_rollouts([p for p in prompts for _ in range(2)], [c.token_ids for g in out for c in g], 257)
    merged = copy.deepcopy(policy).merge_and_unload()
    torch.testing.assert_close(logprobs(engine.model, batch), logprobs(merged, batch), rtol=0, atol=1e-5)
