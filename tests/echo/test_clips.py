"""EchoClip selection: hand-computed cases per selector and eligibility mode, and a per-group loop reference."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from echorl_lightning.echo import ECHO_SELECTORS, select_echo_clips

# One group, G = 2, T = 4 (every token a response token):
#   row 0: entropy [1, 3, 2, 2], ends after t=1   -> steps {0,1} = (1+3)/2 = 2.0, {2,3} = (2+2)/2 = 2.0
#   row 1: entropy [4, 0, 1, 1], ends after t=0,2 -> steps {0} = 4.0, {1,2} = (0+1)/2 = 0.5, {3} = 1.0
ENTROPY = torch.tensor([[1.0, 3.0, 2.0, 2.0], [4.0, 0.0, 1.0, 1.0]])
MASK = torch.ones(2, 4, dtype=torch.long)
ENDS = torch.tensor([[0, 1, 0, 0], [1, 0, 1, 0]]).bool()
ALL_SUCCESS = torch.tensor([1.0, 1.0])


def clips(selector: str = "peak", rewards: torch.Tensor = ALL_SUCCESS, **kwargs) -> list[list[int]]:
    out = select_echo_clips(ENTROPY, MASK, ENDS, rewards, 2, selector=selector, **kwargs)
    assert out.dtype == torch.bool
    return out.int().tolist()


def test_selectors_hand_computed():
    assert clips("peak") == [[0, 0, 0, 0], [1, 0, 0, 0]]  # peak = row 1 step {0} (4.0)
    assert clips("lowest") == [[0, 0, 0, 0], [1, 1, 1, 0]]  # lowest = row 1 step {1,2} (0.5)
    assert clips("full") == [[0, 0, 0, 0], [1, 1, 1, 1]]  # the whole rollout holding the peak


def test_min_step_tokens_and_step_ties():
    # min_step_tokens = 2 leaves row 0 {0,1} = 2.0, row 0 {2,3} = 2.0, row 1 {1,2} = 0.5
    # peak: tie 2.0 / 2.0 on row 0 -> the earlier step {0,1}
    assert clips("peak", min_step_tokens=2) == [[1, 1, 0, 0], [0, 0, 0, 0]]
    assert clips("lowest", min_step_tokens=2) == [[0, 0, 0, 0], [1, 1, 1, 0]]
    assert clips("full", min_step_tokens=2) == [[1, 1, 1, 1], [0, 0, 0, 0]]
    # min_step_tokens = 4: no step is long enough -> no clip
    assert clips("peak", min_step_tokens=4) == [[0] * 4, [0] * 4]


def test_tie_across_rollouts_goes_to_the_earliest_rollout():
    entropy = torch.tensor([[5.0, 5.0, 0.0], [5.0, 1.0, 0.0]])
    ends = torch.tensor([[1, 0, 0], [1, 0, 0]]).bool()
    # row 0 steps: {0} = 5.0, {1,2} = (5+0)/2 = 2.5; row 1: {0} = 5.0, {1,2} = (1+0)/2 = 0.5
    # peak: 5.0 on row 0 ties 5.0 on row 1 -> row 0 (earliest rollout) wins
    out = select_echo_clips(entropy, torch.ones(2, 3), ends, torch.ones(2), 2)
    assert out.int().tolist() == [[1, 0, 0], [0, 0, 0]]
    # ties on both rows' second steps too: lowest over {5.0, 2.5, 5.0, 2.5} -> row 0 step {1,2}
    entropy[1, 1] = 5.0
    out = select_echo_clips(entropy, torch.ones(2, 3), ends, torch.ones(2), 2, selector="lowest")
    assert out.int().tolist() == [[1, 1, 1], [0, 0, 0]]


def test_truncated_members():
    # row 1 truncated: V = {row 0}; peak over row 0: tie 2.0 / 2.0 -> step {0,1}
    assert clips("peak", truncated=torch.tensor([False, True])) == [[1, 1, 0, 0], [0, 0, 0, 0]]
    # both truncated: the group is all-success by reward but V is empty -> no clip
    assert clips("peak", truncated=torch.tensor([True, True])) == [[0] * 4, [0] * 4]


def test_apply_to_modes_and_no_success():
    mixed = torch.tensor([1.0, 0.0])
    assert clips("peak", mixed, apply_to="degenerate") == [[0] * 4, [0] * 4]
    assert clips("peak", mixed, apply_to="success") == [[1, 1, 0, 0], [0, 0, 0, 0]]  # V = {row 0}
    assert clips("peak", torch.tensor([0.0, 1.0]), apply_to="success") == [[0] * 4, [1, 0, 0, 0]]
    for mode in ("degenerate", "success"):
        assert clips("peak", torch.tensor([0.0, 0.0]), apply_to=mode) == [[0] * 4, [0] * 4]
    # success_reward other than 1.0: 0.5 == 0.5 for both rows -> all-success
    assert clips("peak", torch.tensor([0.5, 0.5]), success_reward=0.5) == [[0, 0, 0, 0], [1, 0, 0, 0]]


def test_padding_is_ignored():
    # row 0 has 2 response tokens; padding carries a huge entropy and a step end that must be ignored
    entropy = torch.tensor([[1.0, 2.0, 100.0, 100.0], [1.5, 1.5, 1.5, 0.0]])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])
    ends = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 1]]).bool()
    # row 0: {0} = 1.0, {1} = 2.0; row 1: {0,1,2} = 1.5 -> peak row 0 step {1}; full stops at the padding
    out = select_echo_clips(entropy, mask, ends, torch.ones(2), 2)
    assert out.int().tolist() == [[1, 1, 0, 0], [0, 0, 0, 0]]
    out = select_echo_clips(entropy, mask, ends, torch.ones(2), 2, selector="full")
    assert out.int().tolist() == [[1, 1, 0, 0], [0, 0, 0, 0]]


def test_group_size_one_and_multiple_groups():
    entropy = torch.tensor([[1.0, 2.0], [3.0, 0.0], [0.5, 0.25]])
    ends = torch.tensor([[1, 0], [1, 0], [1, 0]]).bool()
    # G = 1: each row is its own group; row 1 failed. row 0: {0}=1, {1}=2 -> [1,1]; row 2: 0.5 > 0.25 -> [1,0]
    out = select_echo_clips(entropy, torch.ones(3, 2), ends, torch.tensor([1.0, 0.0, 1.0]), 1)
    assert out.int().tolist() == [[1, 1], [0, 0], [1, 0]]
    # two groups of G = 2 over rows (0,1), (2,3): group 0 all-success, group 1 not
    entropy4 = torch.tensor([[1.0, 2.0], [3.0, 0.0], [9.0, 9.0], [0.5, 0.25]])
    ends4 = torch.ones(4, 2, dtype=torch.bool)
    out = select_echo_clips(entropy4, torch.ones(4, 2), ends4, torch.tensor([1.0, 1.0, 0.0, 1.0]), 2)
    assert out.int().tolist() == [[0, 0], [1, 0], [0, 0], [0, 0]]  # 3.0 is the peak of group 0


def test_random_selector_hand_cases():
    # min_step_tokens = 2 and row 1 truncated: the candidates are row 0 {0,1} and row 0 {2,3}
    seen = set()
    for seed in range(64):
        gen = torch.Generator().manual_seed(seed)
        out = clips("random", min_step_tokens=2, truncated=torch.tensor([False, True]), generator=gen)
        assert out in ([[1, 1, 0, 0], [0] * 4], [[1, 1, 1, 1], [0] * 4])
        seen.add(str(out))
    assert len(seen) == 2  # both candidates drawn (each missed with probability 2^-64)
    a = clips("random", generator=torch.Generator().manual_seed(7))
    b = clips("random", generator=torch.Generator().manual_seed(7))
    assert a == b


def test_bad_inputs_raise_with_names():
    with pytest.raises(ValueError, match="unknown echo selector 'best'.*full, lowest, peak, random"):
        clips("best")
    with pytest.raises(ValueError, match="echo.apply_to"):
        clips("peak", apply_to="all")
    with pytest.raises(ValueError, match="group_size=3"):
        select_echo_clips(ENTROPY, MASK, ENDS, ALL_SUCCESS, 3)
    with pytest.raises(ValueError, match="rewards has shape"):
        select_echo_clips(ENTROPY, MASK, ENDS, torch.ones(3), 1)
    with pytest.raises(ValueError, match="truncated has shape"):
        clips("peak", truncated=torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="min_step_tokens"):
        clips("peak", min_step_tokens=0)
    with pytest.raises(ValueError, match="response_mask has shape"):
        select_echo_clips(ENTROPY, MASK[:, :3], ENDS, ALL_SUCCESS, 2)


# ---- loop reference -------------------------------------------------------------------------------------


def reference_clips(
    entropy, mask, ends, rewards, group_size, apply_to, selector, success_reward, min_tokens, truncated
):
    """Per group, per rollout, per step; step means as exact fractions of the float32 entropies."""
    n, t = entropy.shape
    clip = [[False] * t for _ in range(n)]
    candidates: dict[int, list[tuple[int, int]]] = {}
    for g in range(n // group_size):
        rows = list(range(g * group_size, (g + 1) * group_size))
        success = [rewards[r].item() == success_reward for r in rows]
        if (apply_to == "degenerate" and not all(success)) or (apply_to == "success" and not any(success)):
            continue
        best = None  # (score, row, step index, steps of that row)
        for r, ok in zip(rows, success, strict=True):
            if not ok or (truncated is not None and truncated[r]):
                continue
            steps, current = [], []
            for col in range(t):
                if mask[r, col]:
                    current.append(col)
                    if ends[r, col]:
                        steps.append(current)
                        current = []
            if current:
                steps.append(current)
            for k, cols in enumerate(steps):
                if len(cols) < min_tokens:
                    continue
                candidates.setdefault(g, []).append((r, k))
                mean = sum(Fraction(entropy[r, c].item()) for c in cols) / len(cols)
                score = -mean if selector == "lowest" else mean
                if best is None or score > best[0]:  # strict: ties keep the earlier rollout / step
                    best = (score, r, k, steps)
        if best is not None:
            _, r, k, steps = best
            last = steps[-1][-1] if selector == "full" else steps[k][-1]
            for col in range(last + 1):
                clip[r][col] = bool(mask[r, col])
    return clip, candidates


def random_batch(gen: torch.Generator, b: int, g: int, t: int, discrete: bool):
    n = b * g
    if discrete:  # small integers: many exact ties between step means
        entropy = torch.randint(0, 4, (n, t), generator=gen).float()
    else:
        entropy = torch.rand(n, t, generator=gen) * 3
    lengths = torch.randint(0, t + 1, (n,), generator=gen)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()  # [N, T], right padding
    ends = torch.rand(n, t, generator=gen) < 0.3
    kind = torch.randint(0, 3, (b,), generator=gen)  # 0 all-success, 1 all-fail, 2 mixed
    mixed = (torch.rand(b, g, generator=gen) < 0.5).float()
    rewards = torch.where(kind[:, None] == 0, 1.0, torch.where(kind[:, None] == 1, 0.0, mixed)).reshape(n)
    truncated = torch.rand(n, generator=gen) < 0.2
    return entropy, mask, ends, rewards, truncated


@pytest.mark.parametrize("selector", ["peak", "lowest", "full"])
@pytest.mark.parametrize("apply_to", ["degenerate", "success"])
def test_matches_loop_reference(selector, apply_to):
    gen = torch.Generator().manual_seed(1234)
    for trial in range(40):
        discrete = trial % 2 == 0
        entropy, mask, ends, rewards, truncated = random_batch(gen, b=6, g=4, t=9, discrete=discrete)
        min_tokens = 1 + trial % 3
        use_truncated = truncated if trial % 4 != 1 else None
        got = select_echo_clips(
            entropy,
            mask,
            ends,
            rewards,
            4,
            apply_to=apply_to,
            selector=selector,
            min_step_tokens=min_tokens,
            truncated=use_truncated,
        )
        want, _ = reference_clips(
            entropy, mask, ends, rewards, 4, apply_to, selector, 1.0, min_tokens, use_truncated
        )
        assert got.tolist() == want, f"trial {trial}"
        assert not (got & ~mask.bool()).any()
        assert ((got.any(dim=1).view(6, 4)).sum(dim=1) <= 1).all()


def test_random_selector_draws_an_eligible_step_reproducibly():
    gen = torch.Generator().manual_seed(99)
    for trial in range(40):
        entropy, mask, ends, rewards, truncated = random_batch(gen, b=6, g=4, t=9, discrete=False)
        kwargs = dict(
            apply_to="success", selector="random", min_step_tokens=1 + trial % 2, truncated=truncated
        )
        got = select_echo_clips(
            entropy, mask, ends, rewards, 4, generator=torch.Generator().manual_seed(trial), **kwargs
        )
        again = select_echo_clips(
            entropy, mask, ends, rewards, 4, generator=torch.Generator().manual_seed(trial), **kwargs
        )
        assert torch.equal(got, again)
        _, candidates = reference_clips(
            entropy, mask, ends, rewards, 4, "success", "peak", 1.0, 1 + trial % 2, truncated
        )
        for g in range(6):
            rows = [r for r in range(g * 4, g * 4 + 4) if got[r].any()]
            if g not in candidates:
                assert rows == []
                continue
            assert len(rows) == 1
            r = rows[0]
            # the clip must end exactly at the last token of a candidate step of row r
            last = int(got[r].nonzero().max())
            steps_end = {k for rr, k in candidates[g] if rr == r}
            step_of_last = int((ends[r, :last] & mask[r, :last].bool()).sum())
            assert step_of_last in steps_end
            assert bool(ends[r, last]) or last == int(mask[r].sum()) - 1
            assert got[r, : last + 1].all() and not got[r, last + 1 :].any()


def test_selector_registry_entries_share_one_signature():
    import inspect

    signatures = {str(inspect.signature(ECHO_SELECTORS.get(name))) for name in ECHO_SELECTORS}
    assert len(signatures) == 1
