"""The rollout callback: refreshes the training buffer from the rollout engine at every epoch start.

Per epoch (EchoRL, arXiv 2605.31228; ECHORL.md): (a) sync the policy weights into the engine, (b) draw the
epoch's prompts from the datamodule (seeded by epoch, each rank its own slice: groups are never split
across ranks), (c) generate G rollouts per prompt, (d) score them with the datamodule's verifier, (e) run the
no-grad old-log-prob pass that also yields token entropy, (f) compute advantages, DAPO dynamic sampling and
overlong shaping when the method asks, and the EchoClips, (g) hand the micro-batches to the datamodule's
rollout buffer, which the training dataloader serves. LUFFY adds the datamodule's expert solution to each
group as an off-policy member.

The buffer is filled when the training loop asks for an epoch's first batch (``RolloutBuffer``'s refill
hook), once per epoch: Lightning requests the first batch of a run before ``on_train_epoch_start`` and, on
resume, after it has restored the epoch counter, so each epoch's rollouts are generated exactly once, for the
right epoch. The last rollout batch stays readable as :attr:`RolloutCallback.last_rollout` (for observers
such as the EchoClip pictures); a ``rollout.progress.RolloutObserver`` among the trainer's callbacks hears
each phase's progress. ``perf/train_s`` ends with the epoch's last training batch (validation excluded).
"""

from __future__ import annotations

import logging
import time
from dataclasses import fields, replace
from typing import Any

import lightning.pytorch as L
import torch
from torch import Tensor

import echorl_lightning.rollout.progress as progress
from echorl_lightning.algorithms.dapo import dynamic_sampling_keep, dynamic_sampling_rows, overlong_penalty
from echorl_lightning.algorithms.presets import MethodConfig
from echorl_lightning.data.base import PromptDataModule
from echorl_lightning.data.types import PromptExample, StepChecker, Verifier
from echorl_lightning.echo import (
    delimiter_token_ids,
    echo_metrics,
)
from echorl_lightning.rollout.batch import (
    RolloutBatch,
    RolloutRecord,
    RolloutSpec,
    pad_rollouts,
)
from echorl_lightning.rollout.buffer import RolloutBuffer, make_microbatches
from echorl_lightning.rollout.collect import ScoredRows, generate_and_score, pad_per_token
from echorl_lightning.rollout.seeds import derive_seed
from echorl_lightning.rollout.stats import rollout_metrics
from echorl_lightning.rollout.sync_check import check_engine_settings, engine_check
from echorl_lightning.rollout.types import SamplingConfig
from echorl_lightning.rollout.verifier_counts import VerifierCounts
from echorl_lightning.training.contract import RolloutPolicy
from echorl_lightning.training.distributed import all_ranks_min, global_advantages
from echorl_lightning.training.echo_rows import echo_clip_rows

log = logging.getLogger(__name__)

# what each derived seed is for: derive_seed(seed, purpose, epoch, ...) never collides across them
_DRAW, _SAMPLE, _CLIPS, _SHUFFLE = range(4)

_COUNTS = ("echo/num_clips", "rollout/unjudged", "rollout/groups_kept", "rollout/num_groups")

_POLICY_MEMBERS = ("tokenizer", "method_cfg", "echo_cfg", "device", "configure_rollout", "rollout_engine",
                   "encode_prompts", "score_rollouts")  # fmt: skip


class RolloutCallback(L.Callback):
    """Fills the rollout buffer at each epoch start.

    Args:
        prompts_per_epoch: prompts per epoch over all ranks (B x world size); must divide by the world size.
        group_size: G, rollouts per prompt.
        max_new_tokens: response length limit.
        temperature: rollout temperature tau (also used for the old/new log-probs and token entropy).
        top_p: nucleus mass.
        ppo_epochs: passes over the buffer per epoch.
        num_minibatches: optimizer steps per pass (each of ``trainer.accumulate_grad_batches`` micro-batches).
        logprob_batch_size: rows per forward in the no-grad old-log-prob pass.
        seed: seeds prompt draws, sampling and shuffles (offset by epoch and rank).
        on_policy_shortcut: when the update is exactly on-policy (``ppo_epochs`` = ``num_minibatches`` = 1, no
            KL reference, no expert rows) and the engine returns token entropies (the HF engine does), skip the
            no-grad old-log-prob pass: pi_old is the update's own forward, detached (ratio 1), and EchoClips are
            chosen from the engine's entropies. Still zero extra forwards for EchoRL.
        engine_logprob_tolerance: an engine that reports its log-probs (vLLM) is checked every epoch against the
            old-log-prob pass (``rollout/engine_logprob_diff_{mean,max}``); a mean difference above this many nats
            stops the run (its weight sync did not happen). None: log only.
        engine_is_cap: truncated importance sampling for the engine/trainer mismatch (TRL's
            ``vllm_importance_sampling_correction``, cap 2.0 there): each token's policy-gradient loss is
            weighted by ``min(exp(logp_trainer - logp_engine), cap)``. None (default): off. Needs such an engine.
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
        for key, value in dict(
            prompts_per_epoch=prompts_per_epoch,
            group_size=group_size,
            max_new_tokens=max_new_tokens,
            ppo_epochs=ppo_epochs,
            num_minibatches=num_minibatches,
            logprob_batch_size=logprob_batch_size,
        ).items():
            if value < 1:
                raise ValueError(f"RolloutCallback.{key} must be >= 1, got {value}")
        if temperature <= 0:
            raise ValueError(f"RolloutCallback.temperature must be > 0 for RL rollouts, got {temperature}")
        check_engine_settings(engine_logprob_tolerance, engine_is_cap)
        self.prompts_per_epoch = prompts_per_epoch
        self.group_size = group_size
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.ppo_epochs = ppo_epochs
        self.num_minibatches = num_minibatches
        self.logprob_batch_size = logprob_batch_size
        self.seed = seed
        self.on_policy_shortcut = on_policy_shortcut
        self.engine_logprob_tolerance = engine_logprob_tolerance
        self.engine_is_cap = engine_is_cap
        self._pending_metrics: dict[str, torch.Tensor] = {}
        self.last_rollout: RolloutRecord | None = None
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
        if self.prompts_per_epoch % trainer.world_size:
            raise ValueError(
                f"RolloutCallback.prompts_per_epoch={self.prompts_per_epoch} must be divisible by the "
                f"world size {trainer.world_size} (groups are never split across ranks)"
            )
        if not isinstance(pl_module, RolloutPolicy):
            missing = [m for m in _POLICY_MEMBERS if not hasattr(pl_module, m)]
            raise TypeError(
                f"RolloutCallback needs a module implementing RolloutPolicy; {type(pl_module).__name__} "
                f"lacks {missing}"
            )
        pl_module.configure_rollout(RolloutSpec(self.temperature, self.max_new_tokens))
        method = pl_module.method_cfg
        if method.overlong_shaping and method.overlong_buffer > self.max_new_tokens:
            raise ValueError(
                f"model.init_args.algorithm.overlong_buffer={method.overlong_buffer} exceeds "
                f"RolloutCallback.max_new_tokens={self.max_new_tokens}: set a shorter overlong buffer"
            )
        n_batches = self.ppo_epochs * self.num_minibatches * trainer.accumulate_grad_batches
        dm.rollout_buffer = RolloutBuffer(n_batches, refill=lambda: self._ensure_filled(trainer, pl_module))

    def _ensure_filled(self, trainer: L.Trainer, policy: RolloutPolicy) -> None:
        """Generate this epoch's rollouts unless the buffer already holds them."""
        if trainer.datamodule.rollout_buffer.epoch != trainer.current_epoch:
            self._fill(trainer, policy)

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
    def _draw(self, pool_size: int, epoch: int, round_idx: int, rank: int, world: int) -> list[int]:
        """(b) This rank's prompt indices for one generation round (seeded by epoch and round)."""
        if pool_size < self.prompts_per_epoch:
            raise ValueError(
                f"RolloutCallback.prompts_per_epoch={self.prompts_per_epoch} exceeds the {pool_size} training prompts"
            )
        g = torch.Generator().manual_seed(
            derive_seed(self.seed, _DRAW, epoch, round_idx)
        )  # rank-free: one order
        order = torch.randperm(pool_size, generator=g)[: self.prompts_per_epoch]
        per_rank = self.prompts_per_epoch // world
        return order[rank * per_rank : (rank + 1) * per_rank].tolist()

    def _generate(
        self, policy: RolloutPolicy, examples: list[PromptExample], verifier: Verifier, seed: int,
        observer: progress.RolloutObserver | None = None, step_checker: StepChecker | None = None,
    ) -> ScoredRows:  # fmt: skip
        """(a), (c), (d) for one round: sync the engine, generate G rollouts per prompt (plus LUFFY's expert
        row), and score them."""
        sampling = SamplingConfig(
            n=self.group_size,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=seed,
            return_entropy=self._on_policy(policy.method_cfg),
            return_logprobs=True,  # an engine with its own weights (vLLM) reports them: checked in _fill
        )
        prompt_ids = policy.encode_prompts([ex.prompt for ex in examples])
        observer = observer or progress.NullObserver()
        return generate_and_score(
            progress.ObservedEngine(policy.rollout_engine(), observer),
            policy.tokenizer,
            examples,
            prompt_ids,
            sampling,
            progress.observed_verifier(verifier, observer),
            with_expert=policy.method_cfg.off_policy,
            step_checker=step_checker,
        )

    def _sample(self, trainer: L.Trainer, policy: RolloutPolicy, dm: PromptDataModule) -> ScoredRows:
        """(a)-(d), with DAPO's extra rounds until this rank has ``b_local`` mixed-reward groups."""
        method = policy.method_cfg
        epoch, rank, world = trainer.current_epoch, trainer.global_rank, trainer.world_size
        rounds = 1 + (method.max_resample_rounds if method.dynamic_sampling else 0)
        pool = dm.train_prompts
        rows = ScoredRows()
        for r in range(rounds):
            idx = self._draw(len(pool), epoch, r, rank, world)
            seed = derive_seed(self.seed, _SAMPLE, epoch, r, rank)
            observer = progress.find_observer(trainer.callbacks)
            batch = [pool[i] for i in idx]
            rows.extend(self._generate(policy, batch, dm.verifier, seed, observer, dm.default_step_checker()))
            if not method.dynamic_sampling:
                break
            scores = torch.tensor(rows.scores).view(-1, self._group_rows(method))  # [B', G']
            done = torch.tensor(float(dynamic_sampling_keep(scores).sum() >= self.prompts_per_epoch // world))
            if all_ranks_min(done, policy.device) > 0:  # every rank runs the same rounds (FSDP2 collectives)
                break
        return rows

    def _fill(self, trainer: L.Trainer, policy: RolloutPolicy) -> None:
        """One epoch's rollout batch, steps (a)-(g) of the module docstring."""
        t0 = time.perf_counter()
        dm: PromptDataModule = trainer.datamodule
        method = policy.method_cfg
        epoch, rank, world = trainer.current_epoch, trainer.global_rank, trainer.world_size
        gsize = self._group_rows(method)
        observer = progress.find_observer(trainer.callbacks)
        observer.rollout_start(epoch, self.prompts_per_epoch // world * gsize)
        rows = self._sample(trainer, policy, dm)  # (a)-(d)
        gen_s = time.perf_counter() - t0

        tokens = pad_rollouts(rows.prompts, rows.responses, pad_id=_pad_id(policy.tokenizer))
        n = len(tokens)
        scores = torch.tensor(rows.scores)  # [N]
        truncated = torch.tensor(rows.truncated)  # [N]
        off_policy = torch.tensor(rows.off_policy)  # [N]
        lengths = tokens.response_mask.sum(-1).long()  # [N]

        t1 = time.perf_counter()  # (e) old log-probs and token entropy (and reference log-probs), no grad
        old_logp: Tensor | None
        if self._on_policy(method) and rows.entropy is not None:
            # exactly on-policy: pi_old is the update's own forward (detached), and the engine already gave the
            # token entropies from its logits: no separate pass
            old_logp, entropy = None, pad_per_token(rows.entropy, tokens.responses.shape[1])
        else:
            with progress.observed_phase(observer, "old log-probs", n, int(lengths.sum())):
                old_logp, entropy = policy.score_rollouts(tokens, batch_size=self.logprob_batch_size)
        ref_logp = None
        if method.kl_coef > 0:
            with progress.observed_phase(observer, "ref log-probs", n, int(lengths.sum())):
                ref_logp, _ = policy.score_rollouts(
                    tokens, batch_size=self.logprob_batch_size, reference=True
                )
        logp_s = time.perf_counter() - t1
        engine_metrics, is_weight = engine_check(  # the engine's own log-probs (vLLM) against the pass above
            old_logp, rows.sampler_logp, tokens.response_mask, off_policy,
            tolerance=self.engine_logprob_tolerance, is_cap=self.engine_is_cap,
        )  # fmt: skip

        rewards = scores.clone()  # (f) rewards -> advantages, EchoClips, DAPO's row filter
        if method.overlong_shaping:
            rewards = rewards + overlong_penalty(lengths, self.max_new_tokens, method.overlong_buffer)
        advantages = global_advantages(
            method.adv_estimator, rewards.view(-1, gsize), trainer.global_rank, trainer.world_size
        ).reshape(n)  # [N]
        if self._delimiters is None:
            self._delimiters = delimiter_token_ids(policy.tokenizer, policy.echo_cfg.step_delimiter)
        clip_mask, step_mask, step_end = echo_clip_rows(
            policy.echo_cfg, tokens, entropy, scores, truncated | off_policy, gsize, policy.tokenizer.eos_token_id,
            self._delimiters, torch.Generator().manual_seed(derive_seed(self.seed, _CLIPS, epoch, rank)),
        )  # fmt: skip
        pg_mask, keep_rows = torch.ones(n), torch.ones(n, dtype=torch.bool)
        if method.dynamic_sampling:
            pg_mask, keep_rows = dynamic_sampling_rows(
                scores.view(-1, gsize),
                clip_mask.any(-1),
                num_groups=self.prompts_per_epoch // world,
                min_rows=self.num_minibatches * trainer.accumulate_grad_batches,
            )

        metrics = rollout_metrics(
            scores,
            rewards,
            truncated,
            lengths,
            off_policy,
            gsize,
            policy.echo_cfg.success_reward,
            rows.step_valid,
        )
        metrics.update(
            {k: v.detach().float() for k, v in echo_metrics(entropy, step_mask, step_end, clip_mask).items()}
        )
        metrics.update(self._verifier_counts.deltas(dm.verifier))
        metrics.update(engine_metrics)
        metrics.update({
            "rollout/unjudged": torch.tensor(float(rows.num_unjudged)),
            "rollout/groups_kept": pg_mask.view(-1, gsize)[:, 0].sum(),
            "rollout/num_groups": torch.tensor(float(n // gsize)),
            "perf/rollout_s": torch.tensor(gen_s),
            "perf/old_logprob_s": torch.tensor(logp_s),
            "perf/rollout_tokens_per_s": lengths.sum().float() / max(gen_s, 1e-9),
        })  # fmt: skip

        batch = RolloutBatch(  # (g) micro-batches with global counts
            **{f.name: getattr(tokens, f.name) for f in fields(tokens)},
            old_logp=old_logp, advantages=advantages, pg_mask=pg_mask, clip_mask=clip_mask,
            off_policy_mask=tokens.response_mask * off_policy[:, None].float(), ref_logp=ref_logp,
            num_tokens=torch.zeros(()), num_seqs=torch.zeros(()), num_clips=torch.zeros(()), is_weight=is_weight,
        )  # fmt: skip
        micro = make_microbatches(
            batch.rows(keep_rows.nonzero().flatten()),
            ppo_epochs=self.ppo_epochs,
            num_minibatches=self.num_minibatches,
            accumulate=trainer.accumulate_grad_batches,
            generator=torch.Generator().manual_seed(derive_seed(self.seed, _SHUFFLE, epoch, rank)),
        )
        counts = torch.stack([torch.stack([m.num_tokens, m.num_seqs, m.num_clips]) for m in micro])  # [M, 3]
        counts = trainer.strategy.reduce(counts.to(policy.device), reduce_op="sum").cpu()  # [M, 3] global
        micro = [
            replace(m, num_tokens=c[0], num_seqs=c[1], num_clips=c[2])
            for m, c in zip(micro, counts, strict=True)
        ]
        metrics["perf/pad_frac"] = torch.tensor(  # positions the update spends on padding, after trimming
            1.0
            - sum(float(m.attention_mask.sum()) for m in micro) / sum(m.attention_mask.numel() for m in micro)
        )
        metrics["perf/pad_frac_batch"] = torch.tensor(tokens.pad_fraction())  # the one padded rollout batch
        dm.rollout_buffer.fill(micro, epoch)
        self.last_rollout = RolloutRecord(
            epoch, tokens, scores, entropy, step_mask, step_end, clip_mask, off_policy, gsize
        )
        self._pending_metrics = metrics
        observer.rollout_end(metrics)
        log.info("epoch %d rollout: %s", epoch, {k: round(float(v), 4) for k, v in metrics.items()})

    def _on_policy(self, method: MethodConfig) -> bool:
        """Whether the update is exactly on-policy (one optimizer step per rollout batch, no reference model),
        so the no-grad old-log-prob pass can be skipped (``on_policy_shortcut``)."""
        single_step = self.ppo_epochs == 1 and self.num_minibatches == 1
        return self.on_policy_shortcut and single_step and method.kl_coef == 0 and not method.off_policy

    def _group_rows(self, method: MethodConfig) -> int:
        """G', the rows of one group: G rollouts, plus LUFFY's expert row."""
        return self.group_size + (1 if method.off_policy else 0)


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.eos_token_id)
