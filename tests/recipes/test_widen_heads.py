"""recipes.tiny.widen_heads: head size 24 -> 32 keeps the function of real tiny Qwen2 / Llama models,
the shipped assets are the widened Llamas, and the sources it cannot convert exactly are refused."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
)

from echorl_lightning.tasks.arithmetic.problems import make_problems
from echorl_lightning.tiny import TINY_COUNTDOWN_PATH, TINY_MODEL_PATH
from recipes.tiny.model import build_tiny_model, tiny_config
from recipes.tiny.widen_heads import main, widen_heads, widen_state_dict, widened_config

# hidden 96 with 4 query / 2 KV heads: head size 96 / 4 = 24, the shipped models' shape before the widening
SIZES = dict(
    vocab_size=258,
    hidden_size=96,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    bos_token_id=256,
    eos_token_id=256,
    pad_token_id=257,
)
# 10000 ** (32 / 24) = 10 ** (4 * 4 / 3) = 10 ** 5.333... = 215443.469...: new pair i turns at
# 215443.469 ** (-2i / 32) = 10000 ** (-2i / 24), the old frequency of pair i
NEW_THETA = 215443.46900318822


def _randomised(model: PreTrainedModel, seed: int) -> PreTrainedModel:
    """``model`` with every parameter redrawn (norm weights 1 + 0.1 N(0, 1), the rest 0.2 N(0, 1), biases too:
    HF initialises them to zero, which would hide a misplaced bias; logits of a few units, attention far from
    uniform), in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.1 * noise if "norm" in name else 0.2 * noise)
    return model.eval()


def _save(model: PreTrainedModel, folder: Path) -> Path:
    model.save_pretrained(folder)
    return folder


def _logits(model: PreTrainedModel) -> torch.Tensor:
    """Logits [3, 40, V] of a fixed batch: 3 rows of random ids, the last right-padded after 25 tokens."""
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(0, 256, (3, 40), generator=gen)
    mask = torch.ones_like(ids)
    mask[2, 25:] = 0
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).logits
    return out * mask[..., None]  # the padded positions' logits are meaningless


def _build(kind: str, seed: int) -> PreTrainedModel:
    if kind == "qwen2":
        return _randomised(Qwen2ForCausalLM(Qwen2Config(**SIZES)), seed)
    bias = kind == "llama-bias"
    return _randomised(LlamaForCausalLM(LlamaConfig(**SIZES, attention_bias=bias, head_dim=24)), seed)


@pytest.mark.parametrize("kind", ["qwen2", "llama", "llama-bias"])
def test_widening_keeps_the_logits(kind: str, tmp_path: Path) -> None:
    old = _build(kind, seed=0)
    src = _save(old, tmp_path / "src")
    config = widen_heads(src, tmp_path / "dst", 32)
    new = AutoModelForCausalLM.from_pretrained(tmp_path / "dst", dtype=torch.float32).eval()
    assert type(new) is LlamaForCausalLM and config.head_dim == 32
    attn = new.model.layers[0].self_attn
    # 4 query heads x 32 = 128 rows, 2 KV heads x 32 = 64 rows, o_proj 128 columns
    assert attn.q_proj.weight.shape == (128, 96) and attn.k_proj.weight.shape == (64, 96)
    assert attn.v_proj.weight.shape == (64, 96) and attn.o_proj.weight.shape == (96, 128)
    assert config.rope_parameters["rope_theta"] == pytest.approx(NEW_THETA, rel=1e-12)
    assert config.attention_bias == (kind != "llama")
    before, after = _logits(old), _logits(new)
    assert before.abs().max() > 5.0  # a real signal, not near-zero logits
    # float32: HF computes RoPE's inverse frequencies in float32, where 10000 ** (-i / 12) and
    # 215443.469 ** (-i / 16) round apart by up to 2e-7 (relative); with the float32 forward's own rounding
    # that moves these logits (up to ~9) by up to ~4e-5. The exact map: test_widening_is_exact_in_float64
    torch.testing.assert_close(after, before, rtol=0, atol=1e-4)
    assert torch.equal(after.argmax(-1), before.argmax(-1))


@pytest.mark.parametrize("kind", ["qwen2", "llama-bias"])
def test_widening_is_exact_in_float64(kind: str) -> None:
    """The same map in float64 (weights widened in float64, RoPE's cos/sin in float64): equal to 1e-10."""
    old = _build(kind, seed=0).double()
    new_config = widened_config(old.config, 32)
    new = LlamaForCausalLM(new_config).double().eval()
    new.load_state_dict(widen_state_dict(old.state_dict(), old.config, 32))
    _float64_rope(old, 10000.0, 24)
    _float64_rope(new, new_config.rope_parameters["rope_theta"], 32)
    torch.testing.assert_close(_logits(new), _logits(old), rtol=0, atol=1e-10)


def _float64_rope(model: PreTrainedModel, theta: float, dim: int) -> None:
    """Make ``model``'s rotary embedding compute its cos/sin in float64 (HF's always uses float32)."""
    rotary = model.model.rotary_emb
    inv_freq = 1.0 / (torch.tensor(theta, dtype=torch.float64) ** (torch.arange(0, dim, 2).double() / dim))

    def forward(x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].double() * inv_freq  # [B, T, dim/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [B, T, dim]
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    rotary.forward = forward


def test_weight_layout_by_hand(tmp_path: Path) -> None:
    """Where each old head dim lands, on the Qwen2 source (q/k/v biases, no o_proj bias)."""
    old = _build("qwen2", seed=1)
    state = {k: v.clone() for k, v in old.state_dict().items()}
    new = widen_state_dict(state, old.config, 32)
    p = "model.layers.1.self_attn."
    scale = math.sqrt(32 / 24)  # = 1.1547005...: the softmax scale 24 ** -0.5 becomes 32 ** -0.5
    q_old, q_new = state[p + "q_proj.weight"], new[p + "q_proj.weight"]  # [96, 96] -> [128, 96]
    # query head 2, old dim 5 (first RoPE half) -> row 2*32 + 5 = 69 (old row 2*24 + 5 = 53)
    torch.testing.assert_close(q_new[69], (q_old[53].double() * scale).float(), rtol=0, atol=0)
    # query head 2, old dim 12 + 3 (second half, pairs with dim 3) -> row 2*32 + 16 + 3 = 83 (old 2*24 + 15 = 63)
    torch.testing.assert_close(q_new[83], (q_old[63].double() * scale).float(), rtol=0, atol=0)
    # new dims 12..15 and 28..31 of head 2 (rows 76..79, 92..95) are padding
    assert not q_new[76:80].any() and not q_new[92:96].any()
    assert not new[p + "q_proj.bias"][76:80].any()
    # k is not scaled: KV head 1, old dim 20 (= 12 + 8) -> row 32 + 16 + 8 = 56 (old row 24 + 20 = 44)
    assert torch.equal(new[p + "k_proj.weight"][56], state[p + "k_proj.weight"][44])
    assert torch.equal(new[p + "k_proj.bias"][56], state[p + "k_proj.bias"][44])
    # v keeps its order: KV head 1, old dim 20 -> row 32 + 20 = 52; rows 56..63 pad head 1
    assert torch.equal(new[p + "v_proj.weight"][52], state[p + "v_proj.weight"][44])
    assert not new[p + "v_proj.weight"][56:64].any()
    # o_proj input columns follow v: query head 3, dim 23 -> column 3*32 + 23 = 119 (old 3*24 + 23 = 95)
    assert torch.equal(new[p + "o_proj.weight"][:, 119], state[p + "o_proj.weight"][:, 95])
    assert not new[p + "o_proj.weight"][:, 120:128].any()
    # Qwen2 has no o_proj bias; the Llama target's attention_bias gives it one, zero
    assert torch.equal(new[p + "o_proj.bias"], torch.zeros(96))
    assert torch.equal(new["model.layers.1.mlp.up_proj.weight"], state["model.layers.1.mlp.up_proj.weight"])


def test_padding_gets_no_gradient(tmp_path: Path) -> None:
    """The padded dims stay zero under training: their gradients are exactly zero."""
    widen_heads(_save(_build("qwen2", seed=2), tmp_path / "src"), tmp_path / "dst", 32)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "dst", dtype=torch.float32).train()
    ids = torch.randint(0, 256, (2, 30), generator=torch.Generator().manual_seed(3))
    model(input_ids=ids, labels=ids).loss.backward()
    pad_rows = torch.tensor([h * 32 + j for h in range(4) for j in (*range(12, 16), *range(28, 32))])
    v_pad = torch.tensor([h * 32 + j for h in range(4) for j in range(24, 32)])
    for layer in model.model.layers:
        a = layer.self_attn
        assert a.q_proj.weight.grad.abs().sum() > 0
        assert not a.q_proj.weight.grad[pad_rows].any() and not a.q_proj.bias.grad[pad_rows].any()
        assert not a.k_proj.weight.grad[pad_rows[pad_rows < 64]].any()
        assert not a.v_proj.weight.grad[v_pad[v_pad < 64]].any()
        assert not a.o_proj.weight.grad[:, v_pad].any()


def test_cli_converts_in_place(tmp_path: Path) -> None:
    old = _build("llama", seed=4)
    folder = _save(old, tmp_path / "m")
    build_tiny_model(tiny_config()).generation_config.save_pretrained(folder)
    generation = (folder / "generation_config.json").read_bytes()
    main([str(folder), str(folder), "--head-dim", "32"])
    assert (folder / "generation_config.json").read_bytes() == generation
    assert json.loads((folder / "config.json").read_text())["head_dim"] == 32
    new = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    torch.testing.assert_close(_logits(new), _logits(old), rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    ("head_dim", "match"),
    [(24, "must be larger than the source's 24"), (16, "must be larger"), (33, "is odd")],
)
def test_refuses_a_head_size_it_cannot_reach(head_dim: int, match: str, tmp_path: Path) -> None:
    src = _save(_build("llama", seed=5), tmp_path / "src")
    with pytest.raises(ValueError, match=match):
        widen_heads(src, tmp_path / "dst", head_dim)
    assert not (tmp_path / "dst").exists()


def test_refuses_what_has_no_exact_llama_form(tmp_path: Path) -> None:
    qwen3 = tmp_path / "qwen3"  # q/k norms over the head dims: not a Llama
    Qwen3Config(**SIZES, head_dim=24).save_pretrained(qwen3)
    with pytest.raises(ValueError, match="model type 'qwen3' is not supported"):
        widen_heads(qwen3, tmp_path / "dst", 32)
    sliding = tmp_path / "sliding"
    Qwen2Config(**SIZES, use_sliding_window=True, sliding_window=16, max_window_layers=0).save_pretrained(
        sliding
    )
    with pytest.raises(ValueError, match="sliding-window"):
        widen_heads(sliding, tmp_path / "dst", 32)
    scaled = tmp_path / "scaled"
    LlamaConfig(
        **SIZES, rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}
    ).save_pretrained(scaled)
    with pytest.raises(ValueError, match="RoPE type 'linear'"):
        widen_heads(scaled, tmp_path / "dst", 32)
    no_weights = tmp_path / "no_weights"
    LlamaConfig(**SIZES).save_pretrained(no_weights)
    with pytest.raises(ValueError, match="no single model.safetensors"):
        widen_heads(no_weights, tmp_path / "dst", 32)


def test_tiny_config_head_dim() -> None:
    model = build_tiny_model(tiny_config("llama", head_dim=32))
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (128, 96) and attn.o_proj.weight.shape == (96, 128)
    # 431,136 (head 24, no biases) + 4 layers x (q 32*96 + k 16*96 + v 16*96 + o 96*32 = 9,216) = 468,000
    assert sum(p.numel() for p in model.parameters()) == 468_000
    with pytest.raises(ValueError, match="head_dim=32 needs architecture='llama'"):
        tiny_config("qwen2", head_dim=32)
    with pytest.raises(ValueError, match="positive even"):
        tiny_config("llama", head_dim=31)


@pytest.mark.parametrize(
    ("path", "bias", "params"),
    [
        # 431,904 (the Qwen2) + 4 x (q 32*96 + 32 + k 16*96 + 16 + v 16*96 + 16 + o 96*32 + o bias 96 = 9,376)
        (TINY_MODEL_PATH, True, 469_408),
        # 455,520 (the head-24 Llama) + 4 x (32*96 + 16*96 + 16*96 + 96*32 = 9,216)
        (TINY_COUNTDOWN_PATH, False, 492_384),
    ],
)
def test_shipped_models_are_head_32_llamas(path: str, bias: bool, params: int) -> None:
    config = json.loads((Path(path) / "config.json").read_text())
    assert (config["model_type"], config["architectures"]) == ("llama", ["LlamaForCausalLM"])
    assert (config["head_dim"], config["hidden_size"]) == (32, 96)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)
    assert config["attention_bias"] is bias and config["tie_word_embeddings"] is True
    assert config["rope_parameters"]["rope_theta"] == pytest.approx(NEW_THETA, rel=1e-12)
    state = load_file(str(Path(path) / "model.safetensors"))
    assert sum(t.numel() for t in state.values()) == params  # tied: the file holds no lm_head
    pad_rows = [h * 32 + j for h in range(4) for j in (*range(12, 16), *range(28, 32))]
    for i in range(4):
        p = f"model.layers.{i}.self_attn."
        assert not state[p + "q_proj.weight"][pad_rows].any()
        assert not state[p + "o_proj.weight"][:, [h * 32 + j for h in range(4) for j in range(24, 32)]].any()
        if bias:
            assert not state[p + "o_proj.bias"].any()


def test_arith_tokenizer_ids_unchanged_as_a_llama_folder(tmp_path: Path) -> None:
    """tiny-arith was a qwen2 folder (loaded as Qwen2Tokenizer: its regex and NFC); as a llama folder the same
    tokenizer.json is used as is. Both give the same ids: one per byte."""
    as_qwen2 = tmp_path / "qwen2"
    as_qwen2.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(TINY_MODEL_PATH) / name, as_qwen2 / name)
    Qwen2Config(**SIZES).save_pretrained(as_qwen2)
    before, after = AutoTokenizer.from_pretrained(as_qwen2), AutoTokenizer.from_pretrained(TINY_MODEL_PATH)
    assert type(before).__name__ == "Qwen2Tokenizer"
    texts = [t for p in make_problems("val", 100) for t in (p.prompt, p.solution, p.prompt + p.solution)]
    texts += ["  12 -3\n\nAnswer: 7", "héllo ½"]
    for text in texts:
        ids = after(text, add_special_tokens=False)["input_ids"]
        assert ids == before(text, add_special_tokens=False)["input_ids"]
        assert ids == list(text.encode())  # token id == byte value
    assert after("Q: 1+2\n", add_special_tokens=False)["input_ids"] == [81, 58, 32, 49, 43, 50, 10]
    assert (after.eos_token_id, after.pad_token_id, len(after)) == (256, 257, 258)
