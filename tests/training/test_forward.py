"""Tests of echorl_lightning.training.forward: response log-probs from the decoder's hidden states.

The hidden path (decoder only, LM head chunked) must equal the full-logits path (``model(...).logits``) in
values and parameter gradients for every claimed architecture, built as tiny random models (2 layers,
hidden 32, V = 300, float32) from transformers' config classes; the head transforms (Gemma 2/3 soft-cap,
Cohere / Granite logit scale) are checked by hand on 2-token vocabularies.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from transformers import (
    CohereConfig,
    CohereForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GemmaConfig,
    GemmaForCausalLM,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from echorl_lightning.ops import logprobs_and_entropy_from_hidden
from echorl_lightning.training.forward import LM_HEADS, lm_head_parts, policy_response_logprobs

V = 300
TINY = {
    "vocab_size": V,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "max_position_embeddings": 64,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    # logits of std ~1 (0.3 under Cohere's / Granite's scale), so the entropy is far from ln V and a
    # soft-cap of 1.0 changes the distribution
    "initializer_range": 0.2,
}
# name -> (config class, model class, extra config): untied (Qwen2 with qkv bias, Qwen3, Llama, Mistral,
# Granite) and tied (Gemma, Gemma 2, Gemma 3, Cohere) heads, soft-capped (Gemma 2/3) and scaled (Cohere,
# Granite) logits.
ARCHS: dict[str, tuple[type, type[PreTrainedModel], dict]] = {
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {}),
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "mistral": (MistralConfig, MistralForCausalLM, {}),
    "gemma": (GemmaConfig, GemmaForCausalLM, {}),
    "gemma2": (Gemma2Config, Gemma2ForCausalLM, {"final_logit_softcapping": 1.0}),
    "gemma3_text": (Gemma3TextConfig, Gemma3ForCausalLM, {"final_logit_softcapping": 1.0}),
    "cohere": (CohereConfig, CohereForCausalLM, {"logit_scale": 0.25}),
    "granite": (GraniteConfig, GraniteForCausalLM, {"logits_scaling": 4.0}),
}


def build(name: str, seed: int = 0) -> PreTrainedModel:
    """A tiny random model of architecture ``name`` (see ARCHS), float32, eval mode (no dropout)."""
    config_cls, model_cls, extra = ARCHS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_cls(config_cls(**TINY, **extra)).eval()


def rollout_batch() -> dict:
    """3 rows: prompts of 4, 2, 3 tokens left-padded to P = 4, responses of 5, 3, 1 tokens right-padded to
    T = 5 (the layout of echorl_lightning.rollout: position_ids 0 at each row's first real token)."""
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, V, (k,), generator=gen) for k in (4, 2, 3)]
    responses = [torch.randint(3, V, (k,), generator=gen) for k in (5, 3, 1)]
    p_len, t_len = 4, 5
    input_ids = torch.zeros(3, p_len + t_len, dtype=torch.long)
    attention_mask = torch.zeros(3, p_len + t_len, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        input_ids[i, p_len - len(p) : p_len] = p
        input_ids[i, p_len : p_len + len(r)] = r
        attention_mask[i, p_len - len(p) : p_len + len(r)] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "prompt_len": p_len,
        "responses": input_ids[:, p_len:],
    }


def run(
    model: nn.Module, batch: dict, *, full_logits: bool, temperature: float = 0.7, chunk_size: int | None = 4
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(logp, entropy, {param name: grad}) of one forward + backward of sum(logp * w), w fixed in [-1, 1]."""
    model.zero_grad(set_to_none=True)
    logp, entropy = policy_response_logprobs(
        model,
        batch["input_ids"],
        batch["attention_mask"],
        batch["position_ids"],
        batch["prompt_len"],
        batch["responses"],
        temperature,
        chunk_size=chunk_size,
        full_logits=full_logits,
    )
    w = torch.linspace(-1.0, 1.0, logp.numel()).view_as(logp)
    (logp * w).sum().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return logp.detach(), entropy, grads


def assert_grads_close(got: dict, want: dict, atol: float, rtol: float) -> None:
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=atol, rtol=rtol, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("name", list(ARCHS))
def test_hidden_path_equals_full_logits(name: str) -> None:
    model = build(name)
    assert model.config.model_type == name
    batch = rollout_batch()
    want_logp, want_entropy, want_grads = run(model, batch, full_logits=True)
    logp, entropy, grads = run(model, batch, full_logits=False)
    assert logp.dtype == entropy.dtype == torch.float32 and logp.shape == (3, 5)
    torch.testing.assert_close(logp, want_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy, want_entropy, atol=1e-5, rtol=0)
    # every parameter (embeddings, every layer, the head) gets the same gradient; at most 1e-5 apart
    # relative to gradients of size up to ~10
    assert len(grads) == len(list(model.parameters()))
    assert_grads_close(grads, want_grads, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["gemma2", "gemma3_text", "cohere", "granite"])
def test_head_transform_is_applied(name: str) -> None:
    """The soft-cap / scale matters here, so the equality above would fail without it."""
    model = build(name)
    batch = rollout_batch()
    decoder, weight, bias, logit_scale, softcap = lm_head_parts(model)
    assert (logit_scale, softcap) != (1.0, None)
    with torch.no_grad():
        want, _ = policy_response_logprobs(
            model,
            batch["input_ids"],
            batch["attention_mask"],
            batch["position_ids"],
            4,
            batch["responses"],
            0.7,
        )
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
        hidden = decoder(**inputs).last_hidden_state  # [3, 9, 32]
        plain, _ = logprobs_and_entropy_from_hidden(hidden[:, 3:8], weight, batch["responses"], 0.7, bias)
    assert (plain - want).abs().max() > 0.1


def test_refuses_unknown_model_type_but_full_logits_runs() -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Phi3ForCausalLM(Phi3Config(**{k: v for k, v in TINY.items() if k != "head_dim"})).eval()
    batch = rollout_batch()
    with pytest.raises(ValueError, match="model type 'phi3'.*full_logits=True"):
        run(model, batch, full_logits=False)
    logp, _, _ = run(model, batch, full_logits=True)
    assert logp.shape == (3, 5)
    assert "phi3" not in LM_HEADS


def test_chunk_size_and_no_grad() -> None:
    """Any chunk size gives the same values; under no_grad logp has no graph; entropy never has one."""
    model = build("qwen2")
    batch = rollout_batch()
    ref_logp, ref_entropy, _ = run(model, batch, full_logits=True)
    args = (batch["input_ids"], batch["attention_mask"], batch["position_ids"], 4, batch["responses"], 0.7)
    for chunk_size in (1, 3, None):
        with torch.no_grad():
            logp, entropy = policy_response_logprobs(model, *args, chunk_size=chunk_size)
        assert not logp.requires_grad and not entropy.requires_grad
        torch.testing.assert_close(logp, ref_logp, atol=1e-5, rtol=0)
        torch.testing.assert_close(entropy, ref_entropy, atol=1e-5, rtol=0)
    logp, entropy = policy_response_logprobs(model, *args)
    assert logp.requires_grad and not entropy.requires_grad


def test_gradient_checkpointing_same_gradient() -> None:
    model = build("qwen2").train()  # checkpointing is active in train mode only; dropout is 0
    batch = rollout_batch()
    want_logp, _, want_grads = run(model, batch, full_logits=True)
    model.gradient_checkpointing_enable()
    assert model.model.gradient_checkpointing
    logp, _, grads = run(model, batch, full_logits=False)
    torch.testing.assert_close(logp, want_logp, atol=1e-5, rtol=0)
    assert_grads_close(grads, want_grads, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["qwen2", "gemma2"])
def test_bf16_autocast_close_to_full_logits(name: str) -> None:
    """Both paths under CPU bf16 autocast (fp32 weights): the head matmul runs in bf16 in both (measured:
    identical for qwen2; gemma2 differs by 3e-3 as the hidden path soft-caps in float32, not bf16). bf16
    keeps 8 significant bits (relative rounding 2^-9 ~ 2e-3): logits of size ~3 are off by ~6e-3, log-probs
    of ~ -5 by ~1e-2 each, so 1e-2 bounds the two paths' gap and 0.1 the gap to float32 (measured 0.04)."""
    model = build(name)
    batch = rollout_batch()
    fp32_logp, _, _ = run(model, batch, full_logits=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want_logp, want_entropy, want_grads = run(model, batch, full_logits=True)
        logp, entropy, grads = run(model, batch, full_logits=False)
    assert logp.dtype == torch.float32
    torch.testing.assert_close(logp, want_logp, atol=1e-2, rtol=0)
    torch.testing.assert_close(entropy, want_entropy, atol=1e-2, rtol=0)
    torch.testing.assert_close(logp, fp32_logp, atol=1e-1, rtol=0)
    for k, want in want_grads.items():  # each parameter's gradient within 5% of its norm (measured: 1.3%)
        assert (grads[k] - want).norm() <= 0.05 * want.norm() + 1e-6, k


def test_peft_lora_through_the_wrapper() -> None:
    peft = pytest.importorskip("peft")
    base = build("qwen2")
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = peft.get_peft_model(copy.deepcopy(base), lora)
    batch = rollout_batch()
    want_logp, _, want_grads = run(model, batch, full_logits=True)
    logp, _, grads = run(model, batch, full_logits=False)
    assert grads.keys() == want_grads.keys() and all("lora_" in k for k in grads)  # only the adapters train
    torch.testing.assert_close(logp, want_logp, atol=1e-5, rtol=0)
    assert_grads_close(grads, want_grads, atol=1e-5, rtol=1e-5)
    plain, _, _ = run(base, batch, full_logits=False)
    assert (plain - logp).abs().max() > 1e-3  # the (non-zero) adapters are applied

    on_head = peft.LoraConfig(r=4, target_modules=["q_proj", "lm_head"])
    with pytest.raises(ValueError, match="model type 'qwen2'.*not a plain nn.Linear"):
        run(peft.get_peft_model(copy.deepcopy(base), on_head), batch, full_logits=False)


# Hand-computed head transforms, V = 2: hidden h = [1, 0], weight rows [2, 0] and [0, 0], so the raw
# logits are x = [2, 0]; token 0, tau = 1.
#   soft-cap c = 2: y = 2 tanh(x / 2) = [2 tanh 1, 0] = [1.523188, 0]
#     logp = y0 - ln(e^y0 + 1) = -ln(1 + e^-1.523188) = -ln(1.218061) = -0.197223
#     d logp / d y = [1 - p0, -p1] with p1 = sigmoid(-y0) = 0.178993; dy/dx = 1 - tanh^2(x / c) = [0.419974, 1]
#     d logp / d h = sum_v (d logp / d y_v)(dy_v / dx_v) weight_v = 0.178993 * 0.419974 * [2, 0] = [0.150345, 0]
#   scale s = 0.5: y = [1, 0], logp = -ln(1 + e^-1) = -0.313262; d logp / d h = sigmoid(-1) * 0.5 * [2, 0]
#     = [0.268941, 0]
def test_head_transforms_hand_computed() -> None:
    weight = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    tokens = torch.tensor([[0]])
    p1_cap = 1 / (1 + math.exp(2 * math.tanh(1.0)))
    cases = {
        (1.0, 2.0): (-math.log1p(math.exp(-2 * math.tanh(1.0))), p1_cap * (1 - math.tanh(1.0) ** 2) * 2),
        (0.5, None): (-math.log1p(math.exp(-1.0)), 1 / (1 + math.e) * 0.5 * 2),
    }
    for (scale, cap), (want_logp, want_grad) in cases.items():
        hidden = torch.tensor([[[1.0, 0.0]]], requires_grad=True)
        logp, entropy = logprobs_and_entropy_from_hidden(
            hidden, weight, tokens, 1.0, logit_scale=scale, softcap=cap
        )
        torch.testing.assert_close(logp, torch.tensor([[want_logp]]), atol=1e-6, rtol=0)
        p0 = math.exp(want_logp)
        want_entropy = -(p0 * math.log(p0) + (1 - p0) * math.log(1 - p0))
        torch.testing.assert_close(entropy, torch.tensor([[want_entropy]]), atol=1e-6, rtol=0)
        logp.sum().backward()
        torch.testing.assert_close(hidden.grad, torch.tensor([[[want_grad, 0.0]]]), atol=1e-6, rtol=0)
    assert abs(cases[(1.0, 2.0)][0] - -0.197223) < 1e-6 and abs(cases[(1.0, 2.0)][1] - 0.150345) < 1e-6


@pytest.mark.parametrize(("scale", "cap"), [(0.5, None), (1.0, 1.5), (0.7, 1.5)])
def test_head_transform_gradcheck_float64(scale: float, cap: float | None) -> None:
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(7, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    bias = torch.randn(7, dtype=torch.float64, generator=gen, requires_grad=True)
    tokens = torch.randint(0, 7, (2, 3), generator=gen)

    def logp(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return logprobs_and_entropy_from_hidden(
            h, w, tokens, 1.3, b, chunk_size=2, logit_scale=scale, softcap=cap
        )[0]

    assert torch.autograd.gradcheck(logp, (hidden, weight, bias))


def test_bad_head_transform_raises() -> None:
    hidden, weight, tokens = torch.zeros(1, 1, 2), torch.zeros(3, 2), torch.zeros(1, 1, dtype=torch.long)
    with pytest.raises(ValueError, match="softcap"):
        logprobs_and_entropy_from_hidden(hidden, weight, tokens, softcap=0.0)
    with pytest.raises(ValueError, match="logit_scale"):
        logprobs_and_entropy_from_hidden(hidden, weight, tokens, logit_scale=float("nan"))
