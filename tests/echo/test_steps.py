"""Step splitting: delimiter ids from a real (locally built) tokenizer, step ends, per-step statistics."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from echorl_lightning.echo import (  # noqa: E402
    delimiter_token_ids,
    select_echo_clips,
    split_steps,
    step_end_mask_from_tokens,
)


def tiny_byte_bpe_tokenizer():
    """A byte-level BPE: 256 byte symbols, merges "\\n\\n", ".\\n", ".\\n\\n", "ab"; two special tokens,
    one of which ("<sep>\\n") contains the delimiter and must still be excluded."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # the 256 byte symbols; "Ċ" is the byte "\n"
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    merges = [("Ċ", "Ċ"), (".", "Ċ"), (".Ċ", "Ċ"), ("a", "b")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", additional_special_tokens=["<sep>\n"]
    )
    return fast, vocab


def test_delimiter_token_ids_real_tokenizer():
    tokenizer, vocab = tiny_byte_bpe_tokenizer()
    ids = delimiter_token_ids(tokenizer, "\n")
    # independent of decode: the byte-level symbols that contain "Ċ" (the newline byte)
    expected = sorted(i for symbol, i in vocab.items() if "Ċ" in symbol)
    assert ids == expected
    assert ids == sorted(vocab[s] for s in ["Ċ", "ĊĊ", ".Ċ", ".ĊĊ"])
    special = tokenizer.convert_tokens_to_ids("<sep>\n")
    assert "\n" in tokenizer.decode([special]) and special not in ids
    assert delimiter_token_ids(tokenizer, ".") == sorted(vocab[s] for s in [".", ".Ċ", ".ĊĊ"])
    with pytest.raises(ValueError, match="step_delimiter"):
        delimiter_token_ids(tokenizer, "")


def test_step_end_mask_from_tokens_accepts_list_set_tensor():
    tokens = torch.tensor([[5, 10, 7, 300], [10, 10, 0, 0]])
    expected = torch.tensor([[False, True, False, True], [True, True, False, False]])
    for ids in ([10, 300], {300, 10}, torch.tensor([300, 10]), (10, 300, 10)):
        assert torch.equal(step_end_mask_from_tokens(tokens, ids), expected)
    assert not step_end_mask_from_tokens(tokens, []).any()
    with pytest.raises(TypeError):
        step_end_mask_from_tokens(tokens.float(), [10])


def test_split_steps_hand_computed():
    nan = float("nan")
    entropy = torch.tensor(
        [
            [1.0, 2.0, 3.0, 4.0, 9.0],
            [0.5, 1.0, 2.0, 6.0, 0.0],
            [nan, nan, nan, nan, nan],
        ]
    )
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    ends = torch.tensor([[0, 1, 0, 0, 1], [1, 0, 0, 1, 1], [1, 1, 0, 0, 0]]).bool()
    steps = split_steps(entropy, mask, ends)
    # row 0: end at t=1 (the end at t=4 is padding) -> steps {0,1}, {2,3}; row 1: ends at 0, 3, 4 -> steps
    # {0}, {1,2,3}, {4} (the last token ends a step, so no empty step follows); row 2: no response.
    assert steps.step_id.tolist() == [[0, 0, 1, 1, -1], [0, 1, 1, 1, 2], [-1, -1, -1, -1, -1]]
    assert steps.num_steps.tolist() == [2, 3, 0]
    assert steps.length.tolist() == [[2, 2, 0, 0, 0], [1, 3, 1, 0, 0], [0, 0, 0, 0, 0]]
    # row 0: (1+2)/2 = 1.5, (3+4)/2 = 3.5; row 1: 0.5, (1+2+6)/3 = 3.0, 0.0; NaN padding never read
    expected = torch.tensor([[1.5, 3.5, 0, 0, 0], [0.5, 3.0, 0.0, 0, 0], [0, 0, 0, 0, 0]])
    torch.testing.assert_close(steps.entropy, expected, rtol=0, atol=1e-6)


def test_split_steps_matches_loop_reference():
    gen = torch.Generator().manual_seed(0)
    n, t = 16, 10
    for _ in range(20):
        entropy = torch.rand(n, t, generator=gen)
        lengths = torch.randint(0, t + 1, (n,), generator=gen)
        mask = torch.arange(t)[None, :] < lengths[:, None]
        ends = torch.rand(n, t, generator=gen) < 0.3
        steps = split_steps(entropy, mask, ends)
        for row in range(n):
            groups: list[list[int]] = []
            current: list[int] = []
            for col in range(t):
                if not mask[row, col]:
                    continue
                current.append(col)
                if ends[row, col]:
                    groups.append(current)
                    current = []
            if current:
                groups.append(current)
            assert steps.num_steps[row].item() == len(groups)
            for k, cols in enumerate(groups):
                assert steps.length[row, k].item() == len(cols)
                assert steps.step_id[row, cols].tolist() == [k] * len(cols)
                mean = sum(entropy[row, c].item() for c in cols) / len(cols)
                assert abs(steps.entropy[row, k].item() - mean) < 1e-6
            assert steps.length[row, len(groups) :].sum().item() == 0


def test_split_steps_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="step_end_mask"):
        split_steps(torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 4, dtype=torch.bool))


def test_tokenizer_to_clip_with_merged_delimiters():
    tokenizer, vocab = tiny_byte_bpe_tokenizer()
    ids = delimiter_token_ids(tokenizer)
    # "ab.\nxy\n\nab": ".\n" and "\n\n" are merged tokens, each ends a step
    tokens = tokenizer.encode("ab.\nxy\n\nab")
    assert tokens == [vocab["ab"], vocab[".Ċ"], vocab["x"], vocab["y"], vocab["ĊĊ"], vocab["ab"]]
    response = torch.tensor([tokens, tokens])  # [2, 6], one group of G = 2
    ends = step_end_mask_from_tokens(response, ids)
    assert ends.tolist()[0] == [False, True, False, False, True, False]
    mask = torch.ones(2, 6, dtype=torch.long)
    entropy = torch.tensor([[1.0, 1.0, 2.0, 4.0, 3.0, 0.5], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    # row 0 steps: {ab, .\n} = 1.0, {x, y, \n\n} = (2+4+3)/3 = 3.0, {ab} = 0.5; row 1: all 1.0
    # peak = row 0, step 1 -> clip = row 0 tokens 0..4
    clip = select_echo_clips(entropy, mask, ends, torch.tensor([1.0, 1.0]), 2)
    assert clip.tolist() == [[True, True, True, True, True, False], [False] * 6]
