"""avg@k, pass@k and maj@k: hand-computed values, a slow ``math.comb`` reference, and a real 2-process DDP run."""

from __future__ import annotations

import json
import math
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from echorl_lightning.eval import AvgAtK, MajAtK, PassAtK, majority_correct, pass_at_k, sampled_eval_metrics


# ---- pass_at_k -----------------------------------------------------------------------------------------
def test_pass_at_k_hand_computed() -> None:
    n = torch.tensor([4, 4, 4, 4, 5, 3])
    c = torch.tensor([1, 0, 4, 3, 2, 1])
    expected = torch.tensor(
        [
            0.5,  # n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5
            0.0,  # n=4, c=0: no correct sample, 1 - C(4,2)/C(4,2) = 0
            1.0,  # c=n: 1 - C(0,2)/C(4,2) = 1 - 0 = 1
            1.0,  # n-c = 1 < k = 2: every pair holds a correct sample
            0.7,  # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7
            2 / 3,  # n=3, c=1, k=2: 1 - C(2,2)/C(3,2) = 1 - 1/3 = 2/3
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(pass_at_k(n, c, 2), expected, rtol=0, atol=1e-12)
    # k=1 is the plain accuracy c/n: 1/4, 0/4, 4/4, 3/4, 2/5, 1/3
    torch.testing.assert_close(
        pass_at_k(n, c, 1),
        torch.tensor([0.25, 0.0, 1.0, 0.75, 0.4, 1 / 3], dtype=torch.float64),
        rtol=0,
        atol=1e-12,
    )


def _pass_at_k_reference(n: int, c: int, k: int) -> float:
    """Definition: one minus the chance that k samples drawn without replacement are all wrong."""
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)  # math.comb(m, k) is 0 for m < k


def test_pass_at_k_matches_comb_loop() -> None:
    generator = torch.Generator().manual_seed(0)
    for k in [1, 2, 3, 5, 8, 16]:
        n = torch.randint(k, 120, (64,), generator=generator)
        c = (torch.rand(64, generator=generator, dtype=torch.float64) * (n + 1)).floor().long().clamp(max=n)
        got = pass_at_k(n, c, k)
        for row in range(64):
            want = _pass_at_k_reference(int(n[row]), int(c[row]), k)
            assert abs(float(got[row]) - want) <= 1e-9, (k, int(n[row]), int(c[row]), float(got[row]), want)


def test_pass_at_k_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"prompt 1 has n=2, c=0 for k=3"):
        pass_at_k(torch.tensor([4, 2]), torch.tensor([1, 0]), 3)
    with pytest.raises(ValueError, match=r"prompt 0 has n=4, c=5"):
        pass_at_k(torch.tensor([4]), torch.tensor([5]), 1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        pass_at_k(torch.tensor([4]), torch.tensor([1]), 0)
    with pytest.raises(ValueError, match="integer tensors"):
        pass_at_k(torch.tensor([4.0]), torch.tensor([1.0]), 1)
    assert pass_at_k(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 2).shape == (0,)


# ---- majority_correct ----------------------------------------------------------------------------------
def test_majority_correct() -> None:
    assert majority_correct(["7", "7", "8", None], [1, 1, 0, 0]) == 1.0  # "7" twice beats "8" once
    assert majority_correct(["8", "7", "7", None], [1, 0, 0, 0]) == 0.0  # the majority is wrong
    assert majority_correct(["5", "3", "3", "5"], [0, 1, 1, 0]) == 0.0  # 2-2 tie: "5" was seen first
    assert majority_correct(["3", "5", "3", "5"], [1, 0, 1, 0]) == 1.0  # 2-2 tie: "3" was seen first
    assert majority_correct([None, None, None, "2"], [0, 0, 0, 1]) == 1.0  # None never wins, even 3 of 4
    assert majority_correct([None, None], [0, 0]) == 0.0  # no answer at all
    assert majority_correct(["4", "4"], [0, 1]) == 0.0  # the FIRST sample with the answer gives the score
    with pytest.raises(ValueError, match="2 answers but 1 scores"):
        majority_correct(["1", "2"], [1])


# ---- the metrics ---------------------------------------------------------------------------------------
SCORES = torch.tensor(
    [
        [1.0, 0.0, 1.0, 1.0],
        [0.0, 0.0, 0.0, 1.0],
        [0.0, 1.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 0.0],
        [1.0, 1.0, 1.0, 1.0],
    ]
)
ANSWERS: list[list[str | None]] = [
    ["7", "8", "7", "7"],  # "7" x3 wins, first "7" scored 1 -> 1
    ["3", "3", None, "5"],  # "3" x2 wins, scored 0 -> 0
    ["1", "2", "2", "1"],  # 2-2 tie, "1" seen first, scored 0 -> 0
    [None, None, None, None],  # nothing to vote on -> 0
    ["9", "9", "9", "9"],  # -> 1
]


def test_avg_at_k() -> None:
    metric = AvgAtK()
    metric.update(SCORES[:2])
    assert float(metric.compute()) == pytest.approx(4 / 8, abs=1e-12)  # (3 + 1) correct of 8
    metric.update(SCORES[2:])
    assert float(metric.compute()) == pytest.approx(10 / 20, abs=1e-12)  # (3 + 1 + 2 + 0 + 4) of 20


def test_pass_at_k_metric() -> None:
    metric = PassAtK(2)
    metric.update(SCORES)
    # c = 3, 1, 2, 0, 4 of n = 4, k = 2: 1 (n-c=1<2), 1 - 3/6, 1 - 1/6, 0, 1 -> (1 + 0.5 + 5/6 + 0 + 1) / 5
    assert float(metric.compute()) == pytest.approx((1 + 0.5 + 5 / 6 + 0 + 1) / 5, abs=1e-12)
    at_one = PassAtK(1)
    at_one.update(SCORES)
    assert float(at_one.compute()) == pytest.approx(10 / 20, abs=1e-12)  # pass@1 = mean of c/n = avg@k
    with pytest.raises(ValueError, match=r"PassAtK\(k=5\): needs k <= samples per prompt, got 4"):
        PassAtK(5).update(SCORES)
    with pytest.raises(ValueError, match="k must be >= 1"):
        PassAtK(0)


def test_maj_at_k_metric() -> None:
    metric = MajAtK()
    metric.update(SCORES, ANSWERS)
    assert float(metric.compute()) == pytest.approx(2 / 5, abs=1e-12)  # rows 0 and 4 (see ANSWERS)
    with pytest.raises(ValueError, match="needs the normalised answers"):
        MajAtK().update(SCORES)
    with pytest.raises(ValueError, match="answer row 1 has 3 answers, expected 4"):
        MajAtK().update(SCORES[:2], [["1"] * 4, ["1"] * 3])
    with pytest.raises(ValueError, match="5 score rows but 2 answer rows"):
        MajAtK().update(SCORES, ANSWERS[:2])


@pytest.mark.parametrize("metric", [AvgAtK(), PassAtK(1), MajAtK()])
def test_scores_are_checked(metric: AvgAtK | PassAtK | MajAtK) -> None:
    answers = [["1", "1"], ["1", "1"]]
    with pytest.raises(ValueError, match=r"prompt row 1 has \[0.5, 1.0\]"):
        metric.update(torch.tensor([[1.0, 0.0], [0.5, 1.0]]), answers)
    with pytest.raises(ValueError, match="prompt row 0"):
        metric.update(torch.tensor([[float("nan"), 0.0], [0.0, 1.0]]), answers)
    with pytest.raises(ValueError, match="float tensor"):
        metric.update(torch.tensor([[1, 0], [0, 1]]), answers)
    with pytest.raises(ValueError, match=r"must be \[P, k\]"):
        metric.update(torch.tensor([1.0, 0.0]), answers)


def test_collection_keeps_metrics_apart() -> None:
    # The first update is all-correct, so maj@4, pass@1 and pass@2 have equal states (total 2, count 2);
    # torchmetrics' compute groups would merge them here and report pass@1 for maj@4 afterwards.
    metrics = sampled_eval_metrics(4, pass_ks=(1, 2))
    metrics.update(SCORES[4:].repeat(2, 1), [ANSWERS[4]] * 2)
    metrics.update(SCORES[:4], ANSWERS[:4])
    values = {name: float(value) for name, value in metrics.compute().items()}
    assert sorted(values) == ["avg@4", "maj@4", "pass@1", "pass@2"]
    assert values["avg@4"] == pytest.approx((8 + 6) / 24, abs=1e-12)  # 8 correct + (3+1+2+0) of 24
    assert values["maj@4"] == pytest.approx(3 / 6, abs=1e-12)  # 2 + 1 (row 0) of 6 prompts
    assert values["pass@1"] == pytest.approx((2 + 0.75 + 0.25 + 0.5 + 0) / 6, abs=1e-12)  # mean c/n
    assert values["pass@2"] == pytest.approx((2 + 1 + 0.5 + 5 / 6 + 0) / 6, abs=1e-12)
    with pytest.raises(ValueError, match="pass_ks entry 5 is outside 1..4"):
        sampled_eval_metrics(4, pass_ks=(5,))


# ---- DDP: two gloo processes on CPU --------------------------------------------------------------------
RANK_ROWS = [[0, 1, 2], [3, 4]]  # uneven on purpose: rank 0 updates three prompts (in two calls), rank 1 two


def _compute_all(rows: list[int], split_first: bool = False) -> dict[str, float]:
    metrics = sampled_eval_metrics(4, pass_ks=(1, 2))
    chunks = [rows[:2], rows[2:]] if split_first else [rows]
    for chunk in chunks:
        metrics.update(SCORES[chunk], [ANSWERS[row] for row in chunk])
    return {name: float(value) for name, value in metrics.compute().items()}


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=60),
    )
    try:
        values = _compute_all(RANK_ROWS[rank], split_first=rank == 0)  # compute() all-reduces the sums
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(values))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_ddp_matches_single_process(tmp_path: Path) -> None:
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    whole = _compute_all(list(range(5)))
    # avg@4 = 10/20, maj@4 = 2/5, pass@1 = 10/20, pass@2 = (1 + 0.5 + 5/6 + 0 + 1)/5 over the whole dataset
    expected = {"avg@4": 0.5, "maj@4": 0.4, "pass@1": 0.5, "pass@2": (1 + 0.5 + 5 / 6 + 0 + 1) / 5}
    assert whole == pytest.approx(expected, abs=1e-12)
    local = _compute_all(RANK_ROWS[0])
    assert local["maj@4"] != pytest.approx(whole["maj@4"])  # rank 0 alone differs: the sync is what fixes it
    for rank in range(2):
        values = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert values == pytest.approx(whole, abs=1e-12), rank
