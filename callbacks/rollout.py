"""The rollout callback: refreshes the training buffer from the rollout engine at every epoch start.

Per epoch (EchoRL, arXiv 2605.31228; ECHORL.md): (a) sync the policy weights into the engine, (b) draw the
epoch's prompts from the datamodule (seeded by epoch, each rank its own slice: groups are never split
across ranks), (c) generate G rollouts per prompt, (d) score them with the datamodule's verifier, (e) run the
no-grad old-log-prob pass that also yields token entropy, (f) compute advantages, DAPO dynamic sampling and
overlong shaping when the method asks, and the EchoClips, (g) hand the micro-batches to the datamodule's
rollout buffer, which the training dataloader serves. LUFFY adds the datamodule's expert solution to each
group as an off-policy member.

The first epoch of a run (and a resumed run) is filled in ``on_fit_start`` because Lightning creates the
first epoch's data iterator before ``on_train_epoch_start``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import lightning.pytorch as L
import torch

from echorl_lightning.algorithms import compute_advantages
from echorl_lightning.algorithms.dapo import dynamic_sampling_keep, overlong_penalty
from echorl_lightning.data.base import PromptDataModule
from echorl_lightning.data.types import PromptExample
from echorl_lightning.echo import (
    delimiter_token_ids,
    echo_metrics,
    select_echo_clips,
    step_end_mask_from_tokens,
)
from echorl_lightning.rollout.buffer import RolloutBuffer, make_microbatches, pad_rollouts
from echorl_lightning.rollout.types import SamplingConfig

log = logging.getLogger(__name__)


@dataclass
class _Round:
    """Rows of one generation round, G' rows per prompt, contiguous (G' = G, or G + 1 with an expert)."""

    prompts: list[list[int]]
    responses: list[list[int]]
    truncated: list[bool]
    off_policy: list[bool]
    scores: list[float]
    num_unjudged: int


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
        self.prompts_per_epoch = prompts_per_epoch
        self.group_size = group_size
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.ppo_epochs = ppo_epochs
        self.num_minibatches = num_minibatches
        self.logprob_batch_size = logprob_batch_size
        self.seed = seed
        self._pending_metrics: dict[str, torch.Tensor] = {}
        self._delimiters: list[int] | None = None
        self._train_t0: float | None = None
        self._train_tokens = 0.0

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
        method = pl_module.method_cfg
        if method.overlong_shaping and method.overlong_buffer > self.max_new_tokens:
            raise ValueError(
                f"model.init_args.algorithm.overlong_buffer={method.overlong_buffer} exceeds "
                f"RolloutCallback.max_new_tokens={self.max_new_tokens}: set a shorter overlong buffer"
            )
        n_batches = self.ppo_epochs * self.num_minibatches * trainer.accumulate_grad_batches
        dm.rollout_buffer = RolloutBuffer(n_batches)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fill(trainer, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.datamodule.rollout_buffer.epoch != trainer.current_epoch:
            self._fill(trainer, pl_module)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int
    ) -> None:
        if batch_idx == 0:
            self._train_t0, self._train_tokens = time.perf_counter(), 0.0
            if self._pending_metrics:
                metrics = {k: v.to(pl_module.device) for k, v in self._pending_metrics.items()}
                pl_module.log_dict(metrics, on_step=True, on_epoch=False, sync_dist=True, batch_size=1)
                self._pending_metrics = {}
        self._train_tokens += float(batch["response_mask"].sum())

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._train_t0 is None:
            return
        train_s = time.perf_counter() - self._train_t0
        metrics = {
            "perf/train_s": torch.tensor(train_s),
            "perf/train_tokens_per_s": torch.tensor(self._train_tokens / max(train_s, 1e-9)),
        }
        pl_module.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=True, batch_size=1)
        self._train_t0 = None

    # ---- the rollout ----------------------------------------------------------------------------------
    def _draw(self, pool_size: int, epoch: int, round_idx: int, rank: int, world: int) -> list[int]:
        if pool_size < self.prompts_per_epoch:
            raise ValueError(
                f"RolloutCallback.prompts_per_epoch={self.prompts_per_epoch} exceeds the {pool_size} training prompts"
            )
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 1_009 + round_idx)
        order = torch.randperm(pool_size, generator=g)[: self.prompts_per_epoch]
        per_rank = self.prompts_per_epoch // world
        return order[rank * per_rank : (rank + 1) * per_rank].tolist()

    def _generate(
        self, pl_module, examples: list[PromptExample], verifier, off_policy: bool, seed: int
    ) -> _Round:
        engine = pl_module.rollout_engine()
        tok = pl_module.tokenizer
        prompt_ids = pl_module.encode_prompts([ex.prompt for ex in examples])
        sampling = SamplingConfig(
            n=self.group_size,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=seed,
        )
        groups = engine.generate(prompt_ids, sampling)
        rnd = _Round([], [], [], [], [], 0)
        for ex, p_ids, group in zip(examples, prompt_ids, groups, strict=True):
            members = [(c.token_ids, c.truncated, False) for c in group]
            if off_policy:
                if not ex.expert:
                    raise ValueError(
                        f"LUFFY needs an expert solution for every prompt; prompt {ex.uid!r} has none"
                    )
                expert = tok(ex.expert, add_special_tokens=False)["input_ids"][: self.max_new_tokens - 1]
                members.append((expert + [tok.eos_token_id], False, True))
            for ids, trunc, off in members:
                rnd.prompts.append(p_ids)
                rnd.responses.append(list(ids))
                rnd.truncated.append(trunc)
                rnd.off_policy.append(off)
        texts = tok.batch_decode(rnd.responses, skip_special_tokens=True)
        refs = [ex.reference for ex in examples for _ in range(len(rnd.responses) // len(examples))]
        raw = verifier(texts, refs)
        rnd.num_unjudged = sum(s is None for s in raw)
        rnd.scores = [float(s) if s is not None else 0.0 for s in raw]
        return rnd

    @torch.no_grad()
    def _logprobs(
        self, pl_module, batch: dict[str, torch.Tensor], model=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        net = pl_module.policy if model is None else model
        was_training = net.training
        net.eval()
        logps, ents = [], []
        n = batch["input_ids"].shape[0]
        for start in range(0, n, self.logprob_batch_size):
            part = {
                k: (v[start : start + self.logprob_batch_size] if v.dim() else v).to(pl_module.device)
                for k, v in batch.items()
                if k in ("input_ids", "attention_mask", "position_ids", "responses", "prompt_len")
            }
            lp, ent = pl_module.response_logprobs(part, self.temperature, model=model)
            logps.append(lp.cpu())
            ents.append(ent.cpu())
        net.train(was_training)
        return torch.cat(logps), torch.cat(ents)

    def _fill(self, trainer: L.Trainer, pl_module) -> None:
        t0 = time.perf_counter()
        dm: PromptDataModule = trainer.datamodule
        method = pl_module.method_cfg
        echo = pl_module.echo_cfg
        epoch, rank, world = trainer.current_epoch, trainer.global_rank, trainer.world_size
        pool = dm.train_prompts
        tok = pl_module.tokenizer
        gsize = self.group_size + (1 if method.off_policy else 0)
        b_local = self.prompts_per_epoch // world
        rounds = 1 + (method.max_resample_rounds if method.dynamic_sampling else 0)

        # (a)-(d), with DAPO's extra rounds until b_local mixed-reward groups are found.
        cols: dict[str, list] = {k: [] for k in ("prompts", "responses", "truncated", "off_policy", "scores")}
        unjudged = 0
        for r in range(rounds):
            idx = self._draw(len(pool), epoch, r, rank, world)
            rnd = self._generate(
                pl_module,
                [pool[i] for i in idx],
                dm.verifier,
                method.off_policy,
                seed=self.seed * 7919 + epoch * 104_729 + r * 31 + rank,
            )
            for k in cols:
                cols[k].extend(getattr(rnd, k))
            unjudged += rnd.num_unjudged
            if not method.dynamic_sampling:
                break
            scores = torch.tensor(cols["scores"]).view(-1, gsize)  # [B', G']
            if int(dynamic_sampling_keep(scores).sum()) >= b_local:
                break
        gen_s = time.perf_counter() - t0

        batch = pad_rollouts(cols["prompts"], cols["responses"], pad_id=_pad_id(tok))
        n, t_len = batch["responses"].shape
        scores = torch.tensor(cols["scores"])  # [N]
        truncated = torch.tensor(cols["truncated"])  # [N]
        off_policy = torch.tensor(cols["off_policy"])  # [N]
        lengths = batch["response_mask"].sum(-1).long()  # [N]

        # (e) old log-probs and token entropy (and reference log-probs for KL), no grad.
        t1 = time.perf_counter()
        old_logp, entropy = self._logprobs(pl_module, batch)
        if method.kl_coef > 0:
            batch["ref_logp"], _ = self._logprobs(pl_module, batch, model=pl_module.ref_policy)
        logp_s = time.perf_counter() - t1

        # (f) rewards -> advantages; EchoClips from verifier successes.
        rewards = scores.clone()
        if method.overlong_shaping:
            rewards = rewards + overlong_penalty(lengths, self.max_new_tokens, method.overlong_buffer)
        advantages = compute_advantages(method.adv_estimator, rewards.view(-1, gsize)).reshape(n)  # [N]
        eos = tok.eos_token_id
        step_mask = batch["response_mask"] * (batch["responses"] != eos).float()  # [N, T] EOS excluded
        if self._delimiters is None:
            self._delimiters = delimiter_token_ids(tok, echo.step_delimiter)
        step_end = step_end_mask_from_tokens(batch["responses"], self._delimiters)
        if echo.enabled:
            clip_mask = select_echo_clips(
                entropy, step_mask, step_end, scores, gsize,
                apply_to=echo.apply_to, selector=echo.selector, success_reward=echo.success_reward,
                min_step_tokens=echo.min_step_tokens, truncated=truncated | off_policy,
                generator=torch.Generator().manual_seed(self.seed + epoch * 13 + rank),
            )  # fmt: skip
        else:
            clip_mask = torch.zeros(n, t_len, dtype=torch.bool)

        pg_mask = torch.ones(n)
        keep_rows = torch.ones(n, dtype=torch.bool)
        if method.dynamic_sampling:
            keep_group = dynamic_sampling_keep(scores.view(-1, gsize))  # [B']
            kept_idx = keep_group.nonzero().flatten()[:b_local]
            chosen = torch.zeros_like(keep_group)
            chosen[kept_idx] = True
            pg_mask = chosen.repeat_interleave(gsize).float()  # [N]
            # dropped groups stay only through their EchoClip row (mined before the filter)
            keep_rows = pg_mask.bool() | clip_mask.any(-1)
            need = self.num_minibatches * trainer.accumulate_grad_batches - int(keep_rows.sum())
            if need > 0:  # too few rows to fill the micro-batches: pad with dropped rows (no gradient)
                spare = (~keep_rows).nonzero().flatten()[:need]
                keep_rows[spare] = True

        step_metrics = self._metrics(
            scores, rewards, truncated, lengths, entropy, step_mask, step_end, clip_mask, gsize, off_policy
        )
        step_metrics.update({
            "rollout/unjudged": torch.tensor(float(unjudged)),
            "rollout/groups_kept": pg_mask.view(-1, gsize)[:, 0].sum(),
            "rollout/num_groups": torch.tensor(float(n // gsize)),
            "perf/rollout_s": torch.tensor(gen_s),
            "perf/old_logprob_s": torch.tensor(logp_s),
            "perf/rollout_tokens_per_s": lengths.sum().float() / max(gen_s, 1e-9),
        })  # fmt: skip

        # (g) micro-batches with global counts.
        batch.update(
            old_logp=old_logp, advantages=advantages, clip_mask=clip_mask, pg_mask=pg_mask,
            off_policy_mask=batch["response_mask"] * off_policy[:, None].float(),
        )  # fmt: skip
        rows = keep_rows.nonzero().flatten()
        batch = {k: (v[rows] if v.dim() and v.shape[0] == n else v) for k, v in batch.items()}
        micro = make_microbatches(
            batch,
            ppo_epochs=self.ppo_epochs,
            num_minibatches=self.num_minibatches,
            accumulate=trainer.accumulate_grad_batches,
            generator=torch.Generator().manual_seed(self.seed + epoch * 17 + rank),
        )
        counts = torch.stack([torch.stack([m["num_tokens"], m["num_seqs"], m["num_clips"]]) for m in micro])
        counts = trainer.strategy.reduce(counts.to(pl_module.device), reduce_op="sum").cpu()  # [M, 3] global
        for m, c in zip(micro, counts, strict=True):
            m["num_tokens"], m["num_seqs"], m["num_clips"] = c[0], c[1], c[2]
            m["temperature"] = torch.tensor(self.temperature)
            m["max_len"] = torch.tensor(self.max_new_tokens)
        dm.rollout_buffer.fill(micro, epoch)
        self._pending_metrics = step_metrics
        log.info("epoch %d rollout: %s", epoch, {k: round(float(v), 4) for k, v in step_metrics.items()})

    @staticmethod
    def _metrics(
        scores, rewards, truncated, lengths, entropy, step_mask, step_end, clip_mask, gsize, off_policy
    ):
        on = ~off_policy
        grouped = scores.view(-1, gsize)  # [B', G']
        on_grouped = on.view(-1, gsize)
        succ = ((grouped == 1.0) | ~on_grouped).all(-1)
        fail = ((grouped != 1.0) | ~on_grouped).all(-1)
        m = {
            "reward/mean": scores[on].mean(),
            "reward/shaped_mean": rewards[on].mean(),
            "rollout/frac_all_success": succ.float().mean(),
            "rollout/frac_all_fail": fail.float().mean(),
            "rollout/response_length": lengths[on].float().mean(),
            "rollout/truncated_frac": truncated[on].float().mean(),
        }
        m.update(
            {k: v.detach().float() for k, v in echo_metrics(entropy, step_mask, step_end, clip_mask).items()}
        )
        return m


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.eos_token_id)
