"""The task-trained byte-level BPE tokenizer (recipes.tiny.bpe): fixed special ids, exact round
trips, the same ids after a reload through ``AutoTokenizer``, and step delimiters EchoRL can find."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer, LlamaConfig

from echorl_lightning.echo.steps import delimiter_token_ids
from echorl_lightning.tasks.countdown.problems import make_problems
from recipes.tiny.bpe import train_bpe_tokenizer
from recipes.tiny.model import tiny_qwen2_config
from recipes.tiny.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def texts() -> tuple[list[str], list[str]]:
    """Countdown prompts + solver traces: 300 to train on, 60 held out (another split)."""
    train = [p.prompt + p.solution for p in make_problems("train", 300)]
    held_out = [p.prompt + p.solution for p in make_problems("val", 60)]
    return train, held_out


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("kind", ["qwen2", "gpt2"])
def test_ids_round_trip_and_compression(kind: str, texts) -> None:
    train, held_out = texts
    tok = train_bpe_tokenizer(train, vocab_size=400, pre_tokenization=kind)
    assert (tok.eos_token_id, tok.pad_token_id, tok.bos_token_id) == (256, 257, None)
    assert 258 < len(tok) <= 400
    byte = build_tokenizer()
    for b in (0, 10, 65, 255):  # ids 0..255 are still the bytes
        assert tok.convert_ids_to_tokens(b) == byte.convert_ids_to_tokens(b)
    n_bpe = n_byte = 0
    for text in held_out:
        ids = _ids(tok, text)
        assert tok.decode(ids) == text
        n_bpe += len(ids)
        n_byte += len(_ids(byte, text))
    assert n_bpe < n_byte  # merges were learned and are used on texts they were not trained on
    # EOS stays one special token inside a text
    assert _ids(tok, "1+2<|endoftext|>")[-1] == 256


def test_qwen2_kind_survives_a_qwen2_reload(tmp_path: Path, texts) -> None:
    """A tiny Qwen2 folder is loaded as Qwen2Tokenizer, which rebuilds Qwen2's pre-tokenizer: the qwen2 kind
    is trained with that pre-tokenizer, so the reloaded tokenizer gives the same ids."""
    train, held_out = texts
    tok = train_bpe_tokenizer(train, vocab_size=400, pre_tokenization="qwen2")
    tok.save_pretrained(tmp_path)
    tiny_qwen2_config(
        hidden_size=8, num_hidden_layers=1, intermediate_size=8, vocab_size=len(tok)
    ).save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "Qwen2Tokenizer"
    assert (loaded.eos_token_id, loaded.pad_token_id, len(loaded)) == (256, 257, len(tok))
    for text in held_out:
        assert _ids(loaded, text) == _ids(tok, text)
        assert loaded.decode(_ids(loaded, text)) == text


def test_gpt2_kind_merges_numbers_and_needs_a_generic_folder(tmp_path: Path, texts) -> None:
    """GPT-2's regex keeps " 17" whole, so numbers merge; a Llama-typed folder keeps that pre-tokenizer."""
    train, held_out = texts
    tok = train_bpe_tokenizer(train, vocab_size=400, pre_tokenization="gpt2")
    qwen = train_bpe_tokenizer(train, vocab_size=400, pre_tokenization="qwen2")
    tokens = tok.convert_ids_to_tokens(list(range(258, len(tok))))
    assert any(t.lstrip("Ġ").isdigit() and len(t.lstrip("Ġ")) >= 2 for t in tokens)  # a multi-digit number
    qwen_tokens = qwen.convert_ids_to_tokens(list(range(258, len(qwen))))
    assert not any(any(c.isdigit() for c in t) and len(t) > 1 for t in qwen_tokens)  # Qwen2: digits alone
    tok.save_pretrained(tmp_path)
    LlamaConfig(
        vocab_size=len(tok),
        hidden_size=8,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=1,
        bos_token_id=256,
        eos_token_id=256,
        pad_token_id=257,
    ).save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in held_out:
        assert _ids(loaded, text) == _ids(tok, text)


@pytest.mark.parametrize("kind", ["qwen2", "gpt2"])
def test_every_newline_ends_a_step(kind: str, texts) -> None:
    """EchoRL's step splitter finds each line end: the traces have no blank lines, so every newline lands in
    its own delimiter token (alone or merged, as in "]\\n"), one per line break."""
    train, held_out = texts
    tok = train_bpe_tokenizer(train, vocab_size=400, pre_tokenization=kind)
    delimiters = set(delimiter_token_ids(tok))
    assert 10 in delimiters  # the newline byte itself (id == byte value)
    if kind == "qwen2":  # Qwen2's regex keeps "]" and the newline after it in one pre-token: they merge
        assert tok.convert_tokens_to_ids("]Ċ") in delimiters
    for text in held_out:
        assert sum(i in delimiters for i in _ids(tok, text)) == text.count("\n")


def test_bad_arguments_name_themselves(texts) -> None:
    with pytest.raises(ValueError, match="vocab_size must be >= 258"):
        train_bpe_tokenizer(texts[0], vocab_size=200)
    with pytest.raises(ValueError, match="pre_tokenization must be one of qwen2, gpt2; got 'bert'"):
        train_bpe_tokenizer(texts[0], vocab_size=300, pre_tokenization="bert")


def test_cli_writes_a_tokenizer_the_sft_module_builds_a_llama_around(tmp_path: Path) -> None:
    """`python -m recipes.tiny.bpe` writes a folder; SFTModule(tokenizer_path=..., architecture=llama)
    builds a from-scratch model of that vocabulary, learns on Countdown rows, and its export reloads with the
    same encodings (GPT-2's number merges survive a Llama folder)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from recipes.tiny.bpe import main
    from recipes.tiny.sft import SFTModule, response_nll
    from recipes.tiny.sft_data import sft_collate

    folder = tmp_path / "tok"
    main(["--task", "countdown", "--out", str(folder), "--texts", "200", "--vocab-size", "320"])
    tok = AutoTokenizer.from_pretrained(folder)
    assert len(tok) == 320 and (tok.eos_token_id, tok.pad_token_id) == (256, 257)
    module = SFTModule(
        architecture="llama",
        tokenizer_path=str(folder),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    assert isinstance(module.policy, LlamaForCausalLM)
    assert module.policy.get_input_embeddings().weight.shape == (320, 32)
    problems = make_problems("train", 16)
    batch = sft_collate(
        [_ids(tok, p.prompt) for p in problems], [_ids(tok, p.solution) for p in problems], 256, 257
    )
    optimizer = torch.optim.AdamW(module.policy.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):  # SFTModule.training_step logs through a trainer: the same loss, called directly
        logits = module.policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss, _ = response_nll(logits, batch["input_ids"], batch["loss_mask"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # from about ln(320) = 5.77 at random init, memorising 16 rows within 30 steps
    assert losses[0] > 5.0 and losses[-1] < losses[0] - 2.0
    module.policy.save_pretrained(tmp_path / "hf")
    module.tokenizer.save_pretrained(tmp_path / "hf")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = problems[0].prompt + problems[0].solution
    assert _ids(reloaded, text) == _ids(tok, text) and len(_ids(tok, " 17 ")) < 4
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert isinstance(model, LlamaForCausalLM) and model.config.eos_token_id == 256


def test_sft_module_refuses_a_tokenizer_with_other_special_ids(tmp_path: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    from recipes.tiny.sft import SFTModule

    tok = build_tokenizer()
    backend = tok.backend_tokenizer
    backend.add_special_tokens(["<|other|>"])
    other = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|other|>", pad_token="<|pad|>")
    other.save_pretrained(tmp_path / "tok")
    with pytest.raises(ValueError, match="EOS/pad ids"):
        SFTModule(architecture="llama", tokenizer_path=str(tmp_path / "tok"))
