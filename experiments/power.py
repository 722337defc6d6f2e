"""Power of the EchoRL-vs-base comparison: how many evaluation samples (prompts x samples per prompt) make a
2-point difference of held-out accuracy stand out of the paired seed spread (issue 14, item 3).

Implements a normal approximation with a binomial per-sample variance (:func:`power_estimate`) and the
report's section built from it (:func:`power_lines`). Leaves out a per-prompt variance measured from
per-prompt results (the harness's TensorBoard scalars hold set averages only; ``experiments/
countdown_regime.py`` measures it from per-prompt sample counts) and any multiple-comparison correction.
"""

from __future__ import annotations

import math


def power_estimate(
    accuracy: float, paired_sd: float | None, evals: int, seeds: int, delta: float = 0.02
) -> dict[str, float]:
    """How many evaluation samples (prompts x samples per prompt) make a ``delta`` difference stand out.

    Model of one arm-vs-arm paired difference of held-out accuracy, both arms scored on the same ``evals``
    = P x k samples: its variance is ``s_t^2 + 2 w / (P k)``, with ``w`` the per-sample variance of one
    prompt's success, here its binomial bound ``accuracy (1 - accuracy)`` (exact when every prompt is equally
    hard, an upper bound otherwise; the prompt-difficulty part is shared by both arms and cancels in the
    pair) and ``s_t^2`` the training (seed) part, ``paired_sd^2 - 2 w / evals`` floored at 0, from the
    measured spread of the paired differences over seeds (None with fewer than two seeds: then taken as 0,
    the evaluation-only bound). Over ``seeds`` pairs the mean difference has standard error
    ``sqrt(var / seeds)``; ``delta`` stands out when it is at least twice that (about 95%).

    Returns ``w``, ``eval_sd`` (the evaluation part of one pair's sd at ``evals``), ``train_sd``,
    ``se`` (standard error of the mean difference now) and ``needed`` = the smallest P x k for which
    ``2 se <= delta`` (``inf`` when the training part alone is too large)."""
    w = accuracy * (1.0 - accuracy)
    eval_var = 2.0 * w / evals
    train_var = max(paired_sd**2 - eval_var, 0.0) if paired_sd is not None else 0.0
    budget = seeds * (delta / 2.0) ** 2 - train_var  # the variance left for evaluation noise
    needed = math.ceil(2.0 * w / budget) if budget > 0 else math.inf
    return {
        "w": w,
        "eval_sd": math.sqrt(eval_var),
        "train_sd": math.sqrt(train_var),
        "se": math.sqrt((train_var + eval_var) / seeds),
        "needed": needed,
    }


def power_lines(accuracy: float, paired_sd: float | None, prompts: int, k: int, seeds: int) -> list[str]:
    """The report's power section (see :func:`power_estimate`), for the 5-seed sweep and the run's seeds."""
    lines = ["## Power: how many evaluation samples make a 2-point difference visible", ""]
    spread = "not measured (one seed: taken as 0)" if paired_sd is None else f"{paired_sd:.4f}"
    lines.append(
        f"Per-sample variance bound w = acc (1 - acc) = {accuracy:.3f} x {1 - accuracy:.3f} = "
        f"{accuracy * (1 - accuracy):.4f} (ID accuracy of the base arm, final); paired seed spread of "
        f"`grpo+echo` − `grpo` on ID: {spread}; evaluation now {prompts} prompts x {k} samples."
    )
    lines += [
        "",
        "| seeds | eval sd of one pair now | training sd | SE of mean Δ now | P x k needed for 2·SE <= 0.02 |",
        "|---|---|---|---|---|",
    ]
    for n in sorted({seeds, 5}):
        est = power_estimate(accuracy, paired_sd, prompts * k, n)
        needed = (
            "none suffices (training spread alone)" if math.isinf(est["needed"]) else f"{est['needed']:,}"
        )
        lines.append(f"| {n} | {est['eval_sd']:.4f} | {est['train_sd']:.4f} | {est['se']:.4f} | {needed} |")
    lines.append("")
    return lines
