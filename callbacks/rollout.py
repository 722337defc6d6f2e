"""The rollout callback: refreshes the training buffer from the rollout engine at every epoch start.

Per epoch it gathers what the rollout pipeline reads (``echorl_lightning.pipeline.steps``: sync, draw,
generate, score, log-probs, advantages, EchoClips, row keeping, micro-batches) from the trainer, the
datamodule (prompts, verifier, step checker) and the module (the policy and its reference, the tokenizer, the
engine, the method, echo and forward configs), runs it, and hands the micro-batches to the datamodule's
rollout buffer, which the training dataloader serves.

The buffer is filled when the training loop asks for an epoch's first batch (``RolloutBuffer``'s refill
hook), once per epoch: Lightning requests the first batch of a run before ``on_train_epoch_start`` and, on
resume, after it has restored the epoch counter, so each epoch's rollouts are generated exactly once, for the
right epoch. The last rollout batch stays readable as :attr:`RolloutCallback.last_rollout` (for observers
such as the EchoClip pictures); a :class:`~echorl_lightning.rollout.progress.RolloutObserver` among the
trainer's callbacks hears each phase's progress. ``perf/train_s`` ends with the epoch's last training batch
(validation excluded).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning.pytorch as L
import torch

import echorl_lightning.rollout.progress as progress
from echorl_lightning.bounds import SettingError
from echorl_lightning.data.base import PromptDataModule
from echorl_lightning.echo import delimiter_token_ids
from echorl_lightning.pipeline import steps
from echorl_lightning.rollout.batch import RolloutBatch
from echorl_lightning.rollout.buffer import RolloutBuffer
from echorl_lightning.rollout.settings import RolloutSettings
from echorl_lightning.rollout.verifier_counts import VerifierCounts

log = logging.getLogger(__name__)

_COUNTS = ("echo/num_clips", "rollout/unjudged", "rollout/groups_kept", "rollout/num_groups")

# what the callback reads of the module: the policy, its tokenizer, its engine and its configs
_MODULE_MEMBERS = (
    "policy",
    "ref_policy",
    "tokenizer",
    "engine_sync",
    "method_cfg",
    "echo_cfg",
    "forward_cfg",
)


class RolloutCallback(L.Callback):
    """Fills the rollout buffer at each epoch start.

    Args: the fields of :class:`~echorl_lightning.rollout.settings.RolloutSettings`, which checks them.
    """

    def __init__(
        self,
        prompts_per_epoch: int = 32,
        group_size: int = 8,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        ppo_epochs: int = 1,
        num_minibatches: int = 1,
        logprob_batch_size: int = 64,
        seed: int = 0,
        on_policy_shortcut: bool = True,
        engine_logprob_tolerance: float | None = 0.5,
        engine_is_cap: float | None = None,
    ) -> None:
        try:
            self.settings = RolloutSettings(
                prompts_per_epoch=prompts_per_epoch,
                group_size=group_size,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                ppo_epochs=ppo_epochs,
                num_minibatches=num_minibatches,
                logprob_batch_size=logprob_batch_size,
                seed=seed,
                on_policy_shortcut=on_policy_shortcut,
                engine_logprob_tolerance=engine_logprob_tolerance,
                engine_is_cap=engine_is_cap,
            )
        except SettingError as err:
            raise err.under("rollout") from None
        self._pending_metrics: dict[str, torch.Tensor] = {}
        self.last_rollout: RolloutBatch | None = None
        self.last_rollout_epoch: int | None = None
        self._verifier_counts = VerifierCounts()
        self._delimiters: list[int] | None = None
        self._train_t0: float | None = None
        self._train_s, self._train_tokens = 0.0, 0.0

    # ---- Lightning hooks ----------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        dm = trainer.datamodule
        if not isinstance(dm, PromptDataModule):
            raise TypeError(f"RolloutCallback needs a PromptDataModule as data, got {type(dm).__name__}")
        missing = [m for m in _MODULE_MEMBERS if not hasattr(pl_module, m)]
        if missing:
            raise TypeError(f"RolloutCallback cannot train {type(pl_module).__name__}: it lacks {missing}")
        problems = self.settings.run_problems(
            trainer.world_size, trainer.accumulate_grad_batches, pl_module.method_cfg
        )
        if problems:
            raise SettingError(problems).under("rollout")
        s = self.settings
        n_batches = s.ppo_epochs * s.num_minibatches * trainer.accumulate_grad_batches
        dm.rollout_buffer = RolloutBuffer(n_batches, refill=lambda: self._ensure_filled(trainer, pl_module))

    def _ensure_filled(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Generate this epoch's rollouts unless the buffer already holds them."""
        if trainer.datamodule.rollout_buffer.epoch != trainer.current_epoch:
            self._fill(trainer, pl_module)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int
    ) -> None:
        if batch_idx == 0:
            self._train_t0, self._train_tokens = time.perf_counter(), 0.0
            if self._pending_metrics:
                metrics = {k: v.to(pl_module.device) for k, v in self._pending_metrics.items()}
                counts = {
                    k: metrics.pop(k)
                    for k in sorted(metrics)
                    if k in _COUNTS or k.startswith("rollout/verifier_")
                }
                pl_module.log_dict(metrics, on_step=True, on_epoch=False, sync_dist=True, batch_size=1)
                pl_module.log_dict(  # counts are global totals, not means over ranks
                    counts, on_step=True, on_epoch=False, sync_dist=True, reduce_fx="sum", batch_size=1
                )
                self._pending_metrics = {}
        self._train_tokens += float(batch.response_mask.sum())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._train_t0 is not None:  # the clock stops at the end of the last batch: validation excluded
            self._train_s = time.perf_counter() - self._train_t0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._train_t0 is None:
            return
        train_s = self._train_s
        metrics = {
            "perf/train_s": torch.tensor(train_s),
            "perf/train_tokens_per_s": torch.tensor(self._train_tokens / max(train_s, 1e-9)),
        }
        pl_module.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=True, batch_size=1)
        self._train_t0 = None

    # ---- the rollout ----------------------------------------------------------------------------------
    def _fill(self, trainer: L.Trainer, pl_module: Any) -> None:
        """Run the rollout pipeline for this epoch and fill the buffer with its micro-batches."""
        dm: PromptDataModule = trainer.datamodule
        if self._delimiters is None:
            self._delimiters = delimiter_token_ids(pl_module.tokenizer, pl_module.echo_cfg.step_delimiter)
        observer = progress.find_observer(trainer.callbacks)
        result = steps.run(
            steps.RolloutInputs(
                settings=self.settings,
                method=pl_module.method_cfg,
                echo=pl_module.echo_cfg,
                policy=pl_module.policy,
                ref_policy=pl_module.ref_policy,
                tokenizer=pl_module.tokenizer,
                engine=pl_module.engine_sync,
                forward=pl_module.forward_cfg,
                precision=trainer.precision_plugin.forward_context,
                prompts=dm.train_prompts,
                verifier=dm.verifier,
                step_checker=dm.default_step_checker(),
                delimiters=self._delimiters,
                epoch=trainer.current_epoch,
                version=trainer.global_step,
                rank=trainer.global_rank,
                world=trainer.world_size,
                accumulate=trainer.accumulate_grad_batches,
                device=pl_module.device,
                reduce_sum=lambda t: trainer.strategy.reduce(t, reduce_op="sum"),
                observer=observer,
            )
        )
        metrics = result.metrics
        metrics.update(self._verifier_counts.deltas(dm.verifier))
        dm.rollout_buffer.fill(result.micro, trainer.current_epoch)
        self.last_rollout, self.last_rollout_epoch = result.batch, trainer.current_epoch
        self._pending_metrics = metrics
        observer.rollout_end(metrics)
        log.info(
            "epoch %d rollout: %s", trainer.current_epoch, {k: round(float(v), 4) for k, v in metrics.items()}
        )
