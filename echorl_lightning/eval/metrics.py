"""Sampling-based evaluation metrics: avg@k, the unbiased pass@k, and maj@k, as ``torchmetrics`` metrics.

Evaluation samples k completions per prompt (at temperature 0.6 by default); per prompt the caller hands over
the k verifier scores (0/1) and, for maj@k, the k verifier-normalised answers. Notation: ``P`` prompts in one
``update`` call, ``k`` samples per prompt.

- avg@k: mean score over all P*k samples.
- pass@k: the unbiased estimator of the Codex paper (Chen et al. 2021, arXiv 2107.03374) per prompt,
  ``1 - C(n-c, k) / C(n, k)`` with n samples of which c are correct, in its numerically stable product form
  ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``, averaged over prompts. ``k`` may be smaller than the number of samples n.
- maj@k: majority vote over each prompt's normalised answers (ties: the answer seen first; ``None`` never
  wins); the prompt counts as correct when the first sample giving the majority answer scored 1.

Every metric keeps only tensor sums (``dist_reduce_fx="sum"``, float64), so ``compute`` reduces correctly
across DDP ranks; maj@k resolves the string answers inside ``update`` into one float per prompt. All three
share ``update(scores, answers=None)`` so they fit in one ``torchmetrics.MetricCollection``.

Left out: per-prompt sample counts that differ within one ``update`` call (call ``update`` once per k), and
non-binary (partial-credit) scores, which are rejected.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection


# ---- pure functions ------------------------------------------------------------------------------------
def pass_at_k(n: Tensor, c: Tensor, k: int) -> Tensor:
    """Unbiased pass@k per prompt: ``1 - C(n-c, k) / C(n, k)``, via ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``.

    Args:
        n: [P] integer samples drawn per prompt (each >= k).
        c: [P] integer correct samples per prompt (0 <= c <= n).
        k: the k of pass@k, >= 1.

    Returns:
        [P] float64 pass@k per prompt; exactly 1.0 where ``n - c < k`` (every k-subset holds a correct one).

    Raises ``ValueError`` on bad shapes or values (the value checks read the tensors on the host: this is
    evaluation code, not part of the training step).
    """
    if k < 1:
        raise ValueError(f"pass_at_k: k must be >= 1, got {k}")
    if n.dim() != 1 or n.shape != c.shape:
        raise ValueError(f"pass_at_k: n and c must both be [P], got {tuple(n.shape)} and {tuple(c.shape)}")
    if n.is_floating_point() or c.is_floating_point():
        raise ValueError(f"pass_at_k: n and c must be integer tensors, got {n.dtype} and {c.dtype}")
    if n.numel() == 0:
        return torch.zeros(0, dtype=torch.float64, device=n.device)
    bad = ((n < k) | (c < 0) | (c > n)).nonzero()
    if bad.numel() > 0:
        row = int(bad[0, 0])
        raise ValueError(
            f"pass_at_k: prompt {row} has n={int(n[row])}, c={int(c[row])} for k={k}; need k <= n and 0 <= c <= n"
        )
    i = torch.arange(1, int(n.max()) + 1, device=n.device, dtype=torch.float64)  # [M]
    in_range = (i[None, :] > (n - c)[:, None]) & (i[None, :] <= n[:, None])  # [P, M]
    factors = torch.where(in_range, 1.0 - k / i[None, :], torch.ones_like(i[None, :]))  # [P, M]
    estimate = 1.0 - factors.prod(dim=1)  # [P]
    # Where n - c < k the product contains the factor at i = k, which is exactly 0; say so explicitly.
    return torch.where(n - c < k, torch.ones_like(estimate), estimate)


def majority_correct(answers: Sequence[str | None], scores: Sequence[float]) -> float:
    """Majority-vote correctness of one prompt's samples.

    The winning answer is the most frequent non-``None`` answer (ties: the one seen first); the result is the
    score of the first sample that gave it. 0.0 when every answer is ``None``.

    Args:
        answers: k verifier-normalised answers, ``None`` where none could be extracted.
        scores: k correctness scores of the same samples.
    """
    if len(answers) != len(scores):
        raise ValueError(f"majority_correct: {len(answers)} answers but {len(scores)} scores")
    counts: dict[str, int] = {}
    first_index: dict[str, int] = {}
    for index, answer in enumerate(answers):
        if answer is None:
            continue
        counts[answer] = counts.get(answer, 0) + 1
        first_index.setdefault(answer, index)
    if not counts:
        return 0.0
    # dicts keep insertion order and max() returns the first maximum: ties go to the answer seen first.
    winner = max(counts, key=counts.__getitem__)
    return float(scores[first_index[winner]])


def _check_scores(scores: Tensor, owner: str) -> None:
    """Raise ``ValueError`` unless ``scores`` is a [P, k] float tensor of 0/1 values, naming the first bad row."""
    if scores.dim() != 2 or scores.shape[1] == 0:
        raise ValueError(f"{owner}: scores must be [P, k] with k >= 1, got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise ValueError(f"{owner}: scores must be a float tensor of 0/1 values, got {scores.dtype}")
    bad_rows = ((scores != 0) & (scores != 1)).any(dim=1).nonzero()  # NaN counts as bad
    if bad_rows.numel() > 0:
        row = int(bad_rows[0, 0])
        raise ValueError(f"{owner}: scores must be 0 or 1; prompt row {row} has {scores[row].tolist()}")


# ---- torchmetrics --------------------------------------------------------------------------------------
class _SampledAccuracy(Metric):
    """Shared state: a float64 sum of per-item values and a count of items, both summed across ranks."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    total: Tensor
    count: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def compute(self) -> Tensor:
        """The mean over everything seen on all ranks (float64 scalar; NaN before any update)."""
        return self.total / self.count


class AvgAtK(_SampledAccuracy):
    """avg@k: the mean score over all samples of all prompts."""

    def update(self, scores: Tensor, answers: Sequence[Sequence[str | None]] | None = None) -> None:
        """Add one batch.

        Args:
            scores: [P, k] 0/1 correctness of the k samples of each of P prompts.
            answers: ignored (accepted so that every metric of a ``MetricCollection`` takes the same call).
        """
        _check_scores(scores, "AvgAtK")
        self.total += scores.detach().sum(dtype=torch.float64)
        self.count += scores.numel()


class PassAtK(_SampledAccuracy):
    """pass@k: the unbiased per-prompt estimator (see :func:`pass_at_k`) averaged over prompts.

    Args:
        k: the k of pass@k; every ``update`` must bring at least k samples per prompt.
    """

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"PassAtK: k must be >= 1, got {k}")
        super().__init__()
        self.k = k

    def update(self, scores: Tensor, answers: Sequence[Sequence[str | None]] | None = None) -> None:
        """Add one batch.

        Args:
            scores: [P, n] 0/1 correctness of the n samples of each of P prompts (n >= k).
            answers: ignored (accepted so that every metric of a ``MetricCollection`` takes the same call).
        """
        _check_scores(scores, f"PassAtK(k={self.k})")
        num_prompts, num_samples = scores.shape
        if self.k > num_samples:
            raise ValueError(f"PassAtK(k={self.k}): needs k <= samples per prompt, got {num_samples} samples")
        n = torch.full((num_prompts,), num_samples, dtype=torch.long, device=scores.device)  # [P]
        c = scores.detach().sum(dim=1).round().long()  # [P]
        self.total += pass_at_k(n, c, self.k).sum()
        self.count += num_prompts


class MajAtK(_SampledAccuracy):
    """maj@k: per prompt, the correctness of the majority-vote answer (see :func:`majority_correct`),
    averaged over prompts."""

    def update(self, scores: Tensor, answers: Sequence[Sequence[str | None]] | None = None) -> None:
        """Add one batch.

        Args:
            scores: [P, k] 0/1 correctness of the k samples of each of P prompts.
            answers: P lists of k verifier-normalised answers (``None`` where none was extracted), in the
                same order as ``scores``. Required.
        """
        _check_scores(scores, "MajAtK")
        if answers is None:
            raise ValueError("MajAtK: update needs the normalised answers (answers=None given)")
        num_prompts, num_samples = scores.shape
        if len(answers) != num_prompts:
            raise ValueError(f"MajAtK: {num_prompts} score rows but {len(answers)} answer rows")
        for row, row_answers in enumerate(answers):
            if len(row_answers) != num_samples:
                raise ValueError(
                    f"MajAtK: answer row {row} has {len(row_answers)} answers, expected {num_samples}"
                )
        rows = scores.detach().cpu().tolist()
        correct = sum(
            majority_correct(row_answers, row) for row_answers, row in zip(answers, rows, strict=True)
        )
        self.total += correct
        self.count += num_prompts


def sampled_eval_metrics(k: int, pass_ks: Sequence[int] = (1,)) -> MetricCollection:
    """One collection of ``avg@{k}``, ``maj@{k}`` and ``pass@{j}`` for every j in ``pass_ks`` (each <= k);
    call it as ``metrics.update(scores [P, k], answers)``.

    Compute groups are off: torchmetrics would otherwise merge metrics whose states happen to be equal after
    the first update (e.g. maj@k and pass@1 when every sample is correct) and report one for the other.
    """
    if k < 1:
        raise ValueError(f"sampled_eval_metrics: k must be >= 1, got {k}")
    for j in pass_ks:
        if not 1 <= j <= k:
            raise ValueError(f"sampled_eval_metrics: pass_ks entry {j} is outside 1..{k}")
    metrics: dict[str, Metric] = {f"avg@{k}": AvgAtK(), f"maj@{k}": MajAtK()}
    metrics.update({f"pass@{j}": PassAtK(j) for j in pass_ks})
    return MetricCollection(metrics, compute_groups=False)
