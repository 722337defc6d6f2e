"""Validation and test hooks of an RLVR LightningModule: sampled evaluation on every set of the datamodule.

:class:`SampledEvalHooks` is a mixin for a LightningModule that has ``eval_cfg`` (an
:class:`~echorl_lightning.training.config.EvalConfig`), ``evaluation`` (a
:class:`~echorl_lightning.eval.sampled.SampledEvaluation`), ``tokenizer``, ``policy`` and ``engine_sync`` (an
:class:`~echorl_lightning.pipeline.engine_sync.EngineSync`): per batch it samples k completions per prompt
through the rollout engine (:func:`~echorl_lightning.eval.sampled.sample_and_score`), and at the end of the
stage it logs the values of ``SampledEvaluation.compute`` (k samples per prompt, at temperature 0.6 by
default), prints the accuracy, and records the sanity pass before training as the accuracy at step 0.

Left out: the evaluation of a model other than the module's policy.
"""

from __future__ import annotations

from typing import Any

from echorl_lightning.data.eval_batches import EvalBatch
from echorl_lightning.eval.sampled import EvalStage, ScoredSamples, sample_and_score
from echorl_lightning.rollout.collect import encode_prompts
from echorl_lightning.rollout.seeds import derive_seed
from echorl_lightning.rollout.types import SamplingConfig


class SampledEvalHooks:
    """``setup``, ``validation_step``, ``test_step`` and their epoch ends for a LightningModule."""

    trainer: Any
    eval_cfg: Any
    evaluation: Any
    tokenizer: Any
    policy: Any
    engine_sync: Any
    device: Any
    global_step: int
    logger: Any

    def setup(self, stage: str) -> None:
        """Create the metrics of every evaluation set of the datamodule for this stage."""
        if stage == "predict" or not hasattr(self.trainer.datamodule, "eval_sets"):
            return
        prefix: EvalStage = "test" if stage == "test" else "val"
        self.evaluation.prepare(prefix, self.trainer.datamodule.eval_sets(), self.device)

    def _evaluate(self, batch: EvalBatch, stage: EvalStage, dataloader_idx: int) -> None:
        """Sample k completions per prompt of one batch of evaluation set ``dataloader_idx`` and score them.

        Sampling is seeded by the set's and the batch's global index, so a prompt gets the same samples on any
        number of ranks (the datamodule spreads whole batches over ranks; see ``data/eval_batches.py``)."""
        eval_set = self.trainer.datamodule.eval_sets()[dataloader_idx]
        cfg = self.eval_cfg
        sampling = SamplingConfig(
            n=cfg.n,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            seed=derive_seed(cfg.seed, batch.set_index, batch.batch_index),
        )
        examples = list(batch)
        engine = self.engine_sync.engine_for(
            self.policy, self.tokenizer, self.global_step
        )  # on every rank: a weight sync may be a collective (FSDP2)
        if not examples:  # a rank's padding batch: the engine still joins a sharded model's collectives
            engine.generate([], sampling)
            # and the metrics count as updated, so every rank joins the reductions of ``compute``
            self.evaluation.update(
                stage, eval_set, ScoredSamples.empty(eval_set.step_checker is not None), self.device
            )
            return
        prompt_ids = encode_prompts(self.tokenizer, [ex.prompt for ex in examples])
        samples = sample_and_score(engine, self.tokenizer, prompt_ids, examples, eval_set, sampling)
        self.evaluation.update(stage, eval_set, samples, self.device)

    def _log_eval(self, stage: EvalStage) -> None:
        results = self.evaluation.compute(stage, self.trainer.datamodule.eval_sets())
        if f"{stage}/accuracy" not in results:
            return
        accuracy = results.pop(f"{stage}/accuracy")
        self.log(
            f"{stage}/accuracy", accuracy, prog_bar=stage == "val", sync_dist=True
        )  # equal on every rank
        self.log_dict(results, sync_dist=True)  # already reduced by torchmetrics: the mean of equal values
        # x = optimizer steps taken before this evaluation (0 = before training, N after N steps): without it
        # Lightning logs a mid-fit evaluation at N - 1, where the one after the first step lands on the step-0
        # point and overwrites it
        self.log("step", float(self.global_step))
        self.print(f"[{stage}] step {self.global_step}: accuracy {float(accuracy):.4f}")
        k = self.eval_cfg.n
        per_set = [
            f"{name.split('/')[1]} {float(value):.4f}"
            for name, value in results.items()
            if name.endswith(f"/avg@{k}")
        ]
        if len(per_set) > 1:
            self.print(f"[{stage}] step {self.global_step}: avg@{k} " + ", ".join(per_set))
        if (
            stage == "val"
            and self.trainer.sanity_checking
            and self.global_step == 0
            and self.logger is not None
        ):
            # the sanity pass is not logged by Lightning: record it as the accuracy before training (a resumed
            # run has no sanity pass: on_fit_start)
            results["val/accuracy"] = accuracy
            self.logger.log_metrics({name: float(v) for name, v in results.items()}, step=self.global_step)

    def on_fit_start(self) -> None:
        """A resumed fit skips Lightning's sanity validation: an uninterrupted run does not validate at the step
        it resumes from, so neither does the resumed one (no extra pass, no extra console line)."""
        if self.trainer.ckpt_path is not None:
            self.trainer.num_sanity_val_steps = 0

    def validation_step(self, batch: EvalBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, "val", dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def test_step(self, batch: EvalBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, "test", dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")
