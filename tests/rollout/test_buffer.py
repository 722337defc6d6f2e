"""Padding and micro-batching of the rollout buffer, against hand-built tensors."""

from dataclasses import fields

import pytest
import torch

from echorl_lightning.rollout.batch import RolloutBatch, pad_rollouts
from echorl_lightning.rollout.buffer import RolloutBuffer, make_microbatches


def test_pad_rollouts_left_pads_prompts_and_right_pads_responses():
    # prompts [5, 6] and [7]; responses [8, 9, 2] and [3]; pad id 0 -> P = 2, T = 3
    out = pad_rollouts([[5, 6], [7]], [[8, 9, 2], [3]], pad_id=0)
    assert out.input_ids.tolist() == [[5, 6, 8, 9, 2], [0, 7, 3, 0, 0]]
    assert out.attention_mask.tolist() == [[1, 1, 1, 1, 1], [0, 1, 1, 0, 0]]
    # positions count real tokens only: row 2 starts at 0 on its first real token (column 1)
    assert out.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 0, 1, 1, 1]]
    assert out.responses.tolist() == [[8, 9, 2], [3, 0, 0]]
    assert out.response_mask.tolist() == [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]
    assert out.prompt_len == 2


def test_pad_rollouts_keeps_eos_even_when_eos_is_the_pad_id():
    # EOS = pad = 2: the mask comes from lengths, so the EOS of row 0 still counts
    out = pad_rollouts([[5], [5]], [[8, 2], [8]], pad_id=2)
    assert out.response_mask.tolist() == [[1.0, 1.0], [1.0, 0.0]]


def test_pad_rollouts_rejects_empty_prompt():
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        pad_rollouts([[1], []], [[2], [3]], pad_id=0)


def _toy_batch(n: int = 6, t: int = 4) -> RolloutBatch:
    lengths = torch.tensor([4, 3, 2, 1, 4, 2])[:n]
    resp_mask = (torch.arange(t)[None] < lengths[:, None]).float()
    tokens = pad_rollouts([[1]] * n, [[7] * int(L) for L in lengths], pad_id=0)
    batch = RolloutBatch(
        **{f.name: getattr(tokens, f.name) for f in fields(tokens)},
        temperature=1.0,
        max_response_len=t,
        group_size=2,
        pg_mask=torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])[:n],
        old_logp=torch.zeros(n, t),
        advantages=torch.arange(n).float(),
        clip_mask=torch.zeros(n, t, dtype=torch.bool),
        off_policy=torch.zeros(n, dtype=torch.bool),
        num_tokens=torch.zeros(()),
        num_seqs=torch.zeros(()),
        num_clips=torch.zeros(()),
    )
    batch.clip_mask[2, :1] = True
    assert torch.equal(batch.response_mask, resp_mask)
    return batch


def test_make_microbatches_counts_are_those_of_the_optimizer_step():
    batch = _toy_batch()
    micro = make_microbatches(
        batch, ppo_epochs=2, num_minibatches=1, accumulate=2, generator=torch.Generator().manual_seed(0)
    )
    assert len(micro) == 4  # 2 ppo epochs x 1 mini-batch x 2 micro-batches
    for m in micro:
        # pg tokens: rows 0,1,3,4,5 -> 4 + 3 + 1 + 4 + 2 = 14 (row 2 has pg_mask 0); pg rows 5; clips 1
        assert float(m.num_tokens) == 14.0
        assert float(m.num_seqs) == 5.0
        assert float(m.num_clips) == 1.0
    # every row appears exactly once per ppo epoch
    seen = torch.cat([m.advantages for m in micro[:2]]).sort().values
    assert seen.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    # micro-batches are trimmed to their longest response
    for m in micro:
        assert m.responses.shape[1] == int(m.response_mask.sum(-1).max())
        assert m.input_ids.shape[1] == 1 + m.responses.shape[1]


def test_make_microbatches_two_minibatches_have_their_own_counts():
    batch = _toy_batch()
    micro = make_microbatches(
        batch, ppo_epochs=1, num_minibatches=2, accumulate=1, generator=torch.Generator().manual_seed(3)
    )
    total = sum(float(m.num_tokens) for m in micro)
    assert total == 14.0
    for m in micro:
        expect = float((m.response_mask * m.pg_mask[:, None]).sum())
        assert float(m.num_tokens) == expect


def test_make_microbatches_rejects_too_few_rows():
    with pytest.raises(ValueError, match="cannot fill"):
        make_microbatches(
            _toy_batch(), ppo_epochs=1, num_minibatches=4, accumulate=2, generator=torch.Generator()
        )


def test_rollout_buffer_serves_a_fixed_number_of_batches():
    buf = RolloutBuffer(2)
    assert len(buf) == 2
    with pytest.raises(RuntimeError, match="before the rollout callback"):
        next(iter(buf))
    with pytest.raises(ValueError, match="expected 2"):
        buf.fill([{}], epoch=0)
    buf.fill([{"a": torch.tensor(1)}, {"a": torch.tensor(2)}], epoch=3)
    assert [int(b["a"]) for b in buf] == [1, 2]
    assert buf.epoch == 3


def test_trimmed_micro_batch_keeps_its_rows_and_recomputes_positions():
    # rows with responses of 4 and 2 tokens after a 1-token prompt, cut to 2 response columns
    batch = _toy_batch().rows(torch.tensor([0, 5]))
    cut = batch.trimmed(2)
    assert cut.responses.tolist() == [[7, 7], [7, 7]]
    assert cut.input_ids.shape == (2, 3)  # P + T' = 1 + 2
    assert cut.position_ids.tolist() == [[0, 1, 2], [0, 1, 2]]
    assert cut.old_logp.shape == (2, 2) and cut.clip_mask.shape == (2, 2)
    assert cut.advantages.tolist() == [0.0, 5.0]  # per-row tensors untouched
    assert cut.prompt_len == 1


def test_batch_to_device_moves_tensors_and_keeps_ints():
    batch = _toy_batch()
    moved = batch.to("cpu")
    assert moved is not batch and moved.prompt_len == batch.prompt_len and moved.ref_logp is None
    assert torch.equal(moved.input_ids, batch.input_ids)


def test_compact_drops_prompt_columns_no_row_uses() -> None:
    # prompts [5, 6, 7] and [8]; responses [1] and [2, 3]: P = 3, T = 2
    tokens = pad_rollouts([[5, 6, 7], [8]], [[1], [2, 3]], pad_id=0)
    short = tokens.rows(torch.tensor([1]))  # only the 1-token prompt: 2 left pad columns unused
    cut = short.compact()
    assert cut.prompt_len == 1
    assert cut.input_ids.tolist() == [[8, 2, 3]]
    assert cut.position_ids.tolist() == [[0, 1, 2]]
    assert tokens.compact().input_ids.shape == (2, 5)  # both rows together use every column
    # padding: 10 positions, 3 + 1 + 1 + 2 = 7 real -> 0.3; the compacted single row has none
    assert tokens.pad_fraction() == pytest.approx(0.3)
    assert cut.pad_fraction() == 0.0


def test_micro_batches_of_a_step_are_grouped_by_length() -> None:
    # 6 rows, lengths 1 + [4, 3, 2, 1, 4, 2]; 1 step of 3 micro-batches: sorted groups {1,2}, {2,3}, {4,4}
    micro = make_microbatches(
        _toy_batch(),
        ppo_epochs=1,
        num_minibatches=1,
        accumulate=3,
        generator=torch.Generator().manual_seed(0),
    )
    widths = sorted(m.response_mask.shape[1] for m in micro)
    assert widths == [2, 3, 4]
    ungrouped = make_microbatches(
        _toy_batch(),
        ppo_epochs=1,
        num_minibatches=1,
        accumulate=3,
        generator=torch.Generator().manual_seed(0),
        group_by_length=False,
    )
    assert sum(m.attention_mask.numel() for m in micro) < sum(m.attention_mask.numel() for m in ungrouped)
    assert sorted(sum((m.advantages.tolist() for m in micro), [])) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
