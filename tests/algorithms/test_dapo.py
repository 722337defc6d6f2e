"""DAPO helpers: the overlong penalty and the dynamic-sampling group filter."""

from __future__ import annotations

import pytest
import torch

from echorl_lightning.algorithms import dynamic_sampling_keep, dynamic_sampling_rows, overlong_penalty

TOL = 1e-5


def _loop_penalty(length: int, max_len: int, buffer_len: int) -> float:
    """ECHORL.md's piecewise formula, one response at a time."""
    threshold = max_len - buffer_len
    if length <= threshold:
        return 0.0
    if length <= max_len:
        return (threshold - length) / buffer_len
    return -1.0


def test_overlong_penalty_hand_computed() -> None:
    # L_max = 10, L_cache = 4 -> ramp from 6: |y| = 5 -> 0; 6 -> 0; 7 -> (6 - 7) / 4 = -0.25;
    # 9 -> (6 - 9) / 4 = -0.75; 10 -> (6 - 10) / 4 = -1; 11 -> -1 (beyond L_max)
    lengths = torch.tensor([5, 6, 7, 9, 10, 11])
    expected = torch.tensor([0.0, 0.0, -0.25, -0.75, -1.0, -1.0])
    torch.testing.assert_close(overlong_penalty(lengths, 10, 4), expected, atol=TOL, rtol=0)


@pytest.mark.parametrize(("max_len", "buffer_len"), [(20, 5), (16, 16), (7, 1)])
def test_overlong_penalty_matches_loop(max_len: int, buffer_len: int) -> None:
    gen = torch.Generator().manual_seed(max_len)
    lengths = torch.randint(0, max_len + 4, (50,), generator=gen)
    expected = torch.tensor([_loop_penalty(int(n), max_len, buffer_len) for n in lengths])
    got = overlong_penalty(lengths, max_len, buffer_len)
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)
    assert got.dtype == torch.get_default_dtype()


def test_overlong_penalty_zero_buffer_is_a_hard_cut() -> None:
    # L_cache = 0: 0 up to L_max = 4, -1 beyond
    got = overlong_penalty(torch.tensor([3, 4, 5]), 4, 0)
    assert torch.equal(got, torch.tensor([0.0, 0.0, -1.0]))


def test_overlong_penalty_errors() -> None:
    with pytest.raises(ValueError, match="buffer_len"):
        overlong_penalty(torch.tensor([3]), 4, 5)
    with pytest.raises(ValueError, match="max_len"):
        overlong_penalty(torch.tensor([3]), 0, 0)
    with pytest.raises(ValueError, match="integer"):
        overlong_penalty(torch.tensor([3.0]), 4, 1)
    with pytest.raises(ValueError, match=r"\[N\]"):
        overlong_penalty(torch.tensor([[3]]), 4, 1)


def test_dynamic_sampling_keep_hand_computed() -> None:
    # all-success -> drop; mixed -> keep; all-fail -> drop; equal non-binary -> drop; spread non-binary -> keep
    rewards = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0], [0.5, 0.5], [0.5, -0.25]])
    expected = torch.tensor([False, True, False, False, True])
    assert torch.equal(dynamic_sampling_keep(rewards), expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dynamic_sampling_keep_matches_loop(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    rewards = (torch.rand(20, 4, generator=gen) > 0.7).float()  # many all-fail groups, some all-success
    rewards[0] = 1.0
    expected = torch.tensor([0 < sum(row) < len(row) for row in rewards.tolist()])
    assert torch.equal(dynamic_sampling_keep(rewards), expected)
    assert expected.any() and not expected.all()


def test_dynamic_sampling_single_rollout_groups_are_dropped() -> None:
    assert torch.equal(dynamic_sampling_keep(torch.tensor([[1.0], [0.0]])), torch.tensor([False, False]))


def test_dynamic_sampling_keep_needs_2d() -> None:
    with pytest.raises(ValueError, match=r"\[B, G\]"):
        dynamic_sampling_keep(torch.tensor([1.0, 0.0]))


def test_dynamic_sampling_rows_keeps_mixed_groups_clip_rows_and_pads() -> None:
    # 4 groups of 2: [1, 0] mixed, [1, 1] all-success, [0, 1] mixed, [0, 0] all-fail; take 1 group
    scores = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    has_clip = torch.tensor([False, False, True, False, False, False, False, False])  # the all-success clip
    pg_mask, keep = dynamic_sampling_rows(scores, has_clip, num_groups=1, min_rows=3)
    # first kept group only (rows 0, 1); the second mixed group (rows 4, 5) is beyond num_groups
    assert pg_mask.tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    # rows 0, 1 (pg) + row 2 (clip) = 3 = min_rows: no padding
    assert keep.tolist() == [True, True, True, False, False, False, False, False]
    # min_rows 5: two padding rows, the first rows not yet kept (3, 4), with no policy gradient
    pg_mask, keep = dynamic_sampling_rows(scores, has_clip, num_groups=2, min_rows=5)
    assert pg_mask.tolist() == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    assert keep.tolist() == [True, True, True, False, True, True, False, False]  # 5 rows already
    pg_mask, keep = dynamic_sampling_rows(scores, has_clip, num_groups=2, min_rows=7)
    assert keep.tolist() == [True, True, True, True, True, True, True, False]  # rows 3 and 6 pad


def test_dynamic_sampling_rows_checks_shapes() -> None:
    with pytest.raises(ValueError, match="has_clip"):
        dynamic_sampling_rows(torch.zeros(2, 2), torch.zeros(3, dtype=torch.bool), 1, 1)
