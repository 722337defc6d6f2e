"""Sampled evaluation of a policy on named evaluation sets, as used by validation and test.

Per batch of one :class:`~echorl_lightning.data.base.EvalSet` (k samples per prompt, at temperature 0.6 by
default): :func:`sample_and_score` draws k completions per prompt through the rollout engine and scores them
with the set's verifier (and, where the set has one, its step checker); :class:`SampledEvaluation` keeps the
torchmetrics state per stage and set and turns it into the logged values:

* ``<stage>/<set>/avg@k``, ``pass@1``, ``pass@k`` (unbiased), ``maj@k`` (a vote over the verifier's own parsed
  answers, ``verifier.answer``, where the verifier has one, else the set's ``answer_fn``) and
  ``response_length``;
* ``<stage>/<set>/step_valid_frac`` where the set has a step checker: the share of correct samples whose every
  step is valid (samples whose steps cannot be judged are left out);
* ``<stage>/id_avg`` / ``<stage>/ood_avg``: the mean avg@k of the sets of each group;
* ``<stage>/accuracy`` and ``<stage>/response_length``: over every sample of every set.

All state is torchmetrics sums, so ``compute`` reduces across DDP ranks. Left out: how prompts are spread
over ranks (the dataloader's job).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from echorl_lightning.data.base import EvalSet
from echorl_lightning.data.types import PromptExample
from echorl_lightning.eval.metrics import sampled_eval_metrics
from echorl_lightning.rollout.types import RolloutEngine, SamplingConfig

EvalStage = Literal["val", "test"]


@dataclass
class ScoredSamples:
    """k scored completions for each of P prompts, prompt-major.

    Attributes:
        scores: [P * k] float verifier scores (unjudged items score 0).
        lengths: [P * k] float response lengths in tokens.
        answers: P lists of k normalised answers (maj@k votes on them).
        step_valid: [P * k] float, 1 where every step is valid, 0 where one is not, NaN where the steps cannot
            be judged; None when the set has no step checker.
    """

    scores: Tensor
    lengths: Tensor
    answers: list[list[str | None]]
    step_valid: Tensor | None

    @classmethod
    def empty(cls, has_step_checker: bool) -> ScoredSamples:
        """No samples: what a rank's padding batch adds, so every rank's metrics take part in ``compute``."""
        return cls(torch.zeros(0), torch.zeros(0), [], torch.zeros(0) if has_step_checker else None)


def sample_and_score(
    engine: RolloutEngine,
    tokenizer: Any,
    prompt_ids: Sequence[Sequence[int]],
    examples: Sequence[PromptExample],
    eval_set: EvalSet,
    sampling: SamplingConfig,
) -> ScoredSamples:
    """Generate ``sampling.n`` completions per prompt and score them with ``eval_set``'s verifier.

    Args:
        engine: the rollout engine, holding the weights to evaluate.
        tokenizer: decodes completions (special tokens skipped).
        prompt_ids: P token-id prompts.
        examples: the P prompts' examples (references, uids).
        eval_set: the set the prompts belong to.
        sampling: k = ``sampling.n`` and the sampling settings.

    Returns:
        The scored samples, on the CPU.
    """
    k = sampling.n
    groups = engine.generate(prompt_ids, sampling)
    flat = [c for group in groups for c in group]
    texts = tokenizer.batch_decode([c.token_ids for c in flat], skip_special_tokens=True)
    refs = [ex.reference for ex in examples for _ in range(k)]
    scores = torch.tensor([float(s or 0.0) for s in eval_set.verifier(texts, refs)])  # [P * k]
    lengths = torch.tensor([float(len(c.token_ids)) for c in flat])  # [P * k]
    # maj@k votes on the answer the verifier itself judges, where it says (``answer``); else the set's rule
    answer_fn = getattr(eval_set.verifier, "answer", None) or eval_set.answer_fn
    answers = [answer_fn(text) for text in texts]
    step_valid = None
    if eval_set.step_checker is not None:
        judged = eval_set.step_checker(texts, [ex for ex in examples for _ in range(k)])
        step_valid = torch.tensor([float("nan") if v is None else float(v) for v in judged])  # [P * k]
    return ScoredSamples(
        scores=scores,
        lengths=lengths,
        answers=[answers[i * k : (i + 1) * k] for i in range(len(examples))],
        step_valid=step_valid,
    )


class SampledEvaluation(nn.Module):
    """Metric state of validation and test over named evaluation sets.

    Args:
        k: samples per prompt (avg@k, pass@k, maj@k).
    """

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.per_set = nn.ModuleDict()  # "<stage>_<set>" -> avg@k, pass@k, maj@k
        self.lengths = nn.ModuleDict()  # "<stage>_<set>" -> mean response length
        self.step_valid = nn.ModuleDict()  # "<stage>_<set>" -> share of correct samples with valid steps
        self.accuracy = nn.ModuleDict({"val": MeanMetric(), "test": MeanMetric()})
        self.length = nn.ModuleDict({"val": MeanMetric(), "test": MeanMetric()})

    def prepare(self, stage: EvalStage, eval_sets: Sequence[EvalSet], device: torch.device) -> None:
        """Create the metrics of every set for ``stage`` (once per key)."""
        for eval_set in eval_sets:
            key = f"{stage}_{eval_set.name}"
            if key not in self.per_set:
                self.per_set[key] = sampled_eval_metrics(self.k, pass_ks=sorted({1, self.k})).to(device)
                self.lengths[key] = MeanMetric().to(device)
                self.step_valid[key] = MeanMetric().to(device)

    def update(
        self, stage: EvalStage, eval_set: EvalSet, samples: ScoredSamples, device: torch.device
    ) -> None:
        """Add one batch of ``eval_set``'s scored samples."""
        key = f"{stage}_{eval_set.name}"
        scores = samples.scores.to(device)  # [P * k]
        lengths = samples.lengths.to(device)  # [P * k]
        self.per_set[key].update(scores.view(-1, self.k), samples.answers)  # [P, k]
        self.lengths[key].update(lengths)
        if samples.step_valid is not None:  # every rank updates (compute is a collective under DDP)
            valid = samples.step_valid.to(device)  # [P * k]
            counted = (scores == 1.0) & ~valid.isnan()  # [P * k] correct and judged
            self.step_valid[key].update(valid.nan_to_num(0.0), weight=counted.float())
        self.accuracy[stage].update(scores)
        self.length[stage].update(lengths)

    def compute(self, stage: EvalStage, eval_sets: Sequence[EvalSet]) -> dict[str, Tensor]:
        """The logged values of ``stage`` (reduced over ranks); resets the stage's state."""
        results: dict[str, Tensor] = {}
        group_avgs: dict[str, list[Tensor]] = {"id": [], "ood": []}
        for eval_set in eval_sets:
            key = f"{stage}_{eval_set.name}"
            if key not in self.lengths or not self.lengths[key].update_called:
                continue
            prefix = f"{stage}/{eval_set.name}"
            for name, value in self.per_set[key].compute().items():
                results[f"{prefix}/{name}"] = value.float()
            results[f"{prefix}/response_length"] = self.lengths[key].compute()
            if self.step_valid[key].update_called:
                step_valid = self.step_valid[key].compute().float()
                if not step_valid.isnan():  # NaN: no correct sample had judgeable steps
                    results[f"{prefix}/step_valid_frac"] = step_valid
            if eval_set.group is not None:
                group_avgs[eval_set.group].append(results[f"{prefix}/avg@{self.k}"])
            for metric in (self.per_set[key], self.lengths[key], self.step_valid[key]):
                metric.reset()
        for group, values in group_avgs.items():
            if values:
                results[f"{stage}/{group}_avg"] = torch.stack(values).mean()
        if self.accuracy[stage].update_called:
            results[f"{stage}/accuracy"] = self.accuracy[stage].compute().float()
            results[f"{stage}/response_length"] = self.length[stage].compute().float()
        self.accuracy[stage].reset()
        self.length[stage].reset()
        return results
