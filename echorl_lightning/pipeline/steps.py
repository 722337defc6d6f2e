"""One epoch's rollouts, as a pipeline of named steps: sync, draw, generate, score, log-probs, advantages,
EchoClips, row keeping, micro-batches.

:func:`run` calls the steps in that order on one :class:`RolloutInputs` and returns the epoch's
:class:`~echorl_lightning.rollout.batch.RolloutBatch` (every row, for observers), its micro-batches (for the
training buffer) and its metrics. Each step is a plain function of plain inputs; the math lives in
``algorithms`` (advantages, DAPO), ``echo`` (EchoClips) and ``training.forward`` (log-probs), the engine-side
steps in ``rollout.collect``. The rollout callback (:mod:`echorl_lightning.callbacks.rollout`) only gathers
the inputs from the trainer and the module and hands the outputs on; nothing here reads the training loop's
state.

1. **sync**: the engine holds the policy's weights of this optimizer step (``EngineSync``).
2. **draw**: this rank's prompts for the epoch (seeded by epoch and round; each rank its own slice, groups are
   never split across ranks).
3. **generate** / **score**: G rollouts per prompt (plus LUFFY's expert row), scored by the verifier and the
   task's step checker; DAPO's dynamic sampling repeats draw-generate-score until every rank has enough
   mixed-reward groups or the extra rounds run out; the rounds are padded into one batch.
4. **logprobs**: the no-grad old-log-prob pass (token entropy with it) unless the update is exactly on-policy
   and the engine gave the entropies; the reference pass for a KL term; the engine's own log-probs checked
   against the policy's (and TIS weights when asked for).
5. **advantages**: rewards (DAPO's overlong shaping), then the method's group-relative advantages over all
   ranks.
6. **clips**: the EchoClips of the all-success groups (``echo_clip_rows``).
7. **keep**: DAPO's row filter (mixed-reward groups for the policy gradient, clip rows kept for the echo term).
8. **microbatches**: shuffled, cut into the optimizer steps' micro-batches, stamped with the global counts of
   their optimizer step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

import echorl_lightning.rollout.progress as progress
from echorl_lightning.algorithms.dapo import dynamic_sampling_keep, dynamic_sampling_rows, overlong_penalty
from echorl_lightning.algorithms.presets import MethodConfig
from echorl_lightning.data.types import PromptExample, StepChecker, Verifier
from echorl_lightning.echo import echo_metrics
from echorl_lightning.echo.clips import eligible_rollouts
from echorl_lightning.pipeline.engine_sync import EngineSync
from echorl_lightning.rollout import collect
from echorl_lightning.rollout.batch import RolloutBatch
from echorl_lightning.rollout.buffer import make_microbatches
from echorl_lightning.rollout.seeds import derive_seed
from echorl_lightning.rollout.settings import RolloutSettings
from echorl_lightning.rollout.stats import rollout_metrics
from echorl_lightning.rollout.sync_check import engine_check
from echorl_lightning.rollout.types import RolloutEngine, SamplingConfig
from echorl_lightning.training.config import EchoConfig
from echorl_lightning.training.distributed import all_ranks_min, global_advantages
from echorl_lightning.training.echo_rows import echo_clip_rows
from echorl_lightning.training.lora import is_lora, reference_model
from echorl_lightning.training.passes import ForwardConfig, score_rollouts
from echorl_lightning.training.sharding import is_fsdp2

# what each derived seed is for: derive_seed(seed, purpose, epoch, ...) never collides across them
DRAW, SAMPLE, CLIPS, SHUFFLE = range(4)


@dataclass
class RolloutInputs:
    """What one epoch's rollout reads.

    Attributes:
        settings: the ``rollout:`` group.
        method: the resolved RLVR method.
        echo: the EchoRL settings.
        policy: the policy network; ``ref_policy`` the frozen reference (None: none, or LoRA's base).
        tokenizer: the policy's tokenizer.
        engine: the rollout engine and the version of the weights it holds.
        forward: how the no-grad passes compute log-probs.
        precision: the trainer's precision context (the update's own).
        prompts: the training prompts to draw from.
        verifier: scores decoded responses against references.
        step_checker: judges each response's steps, or None.
        delimiters: token ids whose text holds the step delimiter.
        epoch, version, rank, world, accumulate, device: the epoch, the optimizer step of the policy's
            weights, this rank, the number of ranks, micro-batches per optimizer step, the policy's device.
        reduce_sum: sums a tensor over ranks.
        observer: hears each phase's progress.
    """

    settings: RolloutSettings
    method: MethodConfig
    echo: EchoConfig
    policy: nn.Module
    ref_policy: nn.Module | None
    tokenizer: Any
    engine: EngineSync
    forward: ForwardConfig
    precision: Callable[[], AbstractContextManager[object]]
    prompts: Sequence[PromptExample]
    verifier: Verifier
    step_checker: StepChecker | None
    delimiters: list[int]
    epoch: int
    version: int
    rank: int
    world: int
    accumulate: int
    device: torch.device
    reduce_sum: Callable[[Tensor], Tensor]
    observer: progress.RolloutObserver


@dataclass
class RolloutResult:
    """One epoch's rollouts: ``batch`` (every row), ``micro`` (the buffer's micro-batches), ``metrics``."""

    batch: RolloutBatch
    micro: list[RolloutBatch]
    metrics: dict[str, Tensor]


def sync(x: RolloutInputs) -> RolloutEngine:
    """Step 1: the engine, holding the policy's weights of this optimizer step."""
    return x.engine.engine_for(x.policy, x.tokenizer, x.version)


def draw(
    settings: RolloutSettings, pool_size: int, epoch: int, round_idx: int, rank: int, world: int
) -> list[int]:
    """Step 2: this rank's prompt indices for one generation round (one order for all ranks, seeded by epoch
    and round; rank r takes the r-th slice)."""
    if pool_size < settings.prompts_per_epoch:
        raise ValueError(
            f"rollout.prompts_per_epoch={settings.prompts_per_epoch} exceeds the {pool_size} training prompts"
        )
    g = torch.Generator().manual_seed(derive_seed(settings.seed, DRAW, epoch, round_idx))
    order = torch.randperm(pool_size, generator=g)[: settings.prompts_per_epoch]
    per_rank = settings.prompts_per_epoch // world
    return order[rank * per_rank : (rank + 1) * per_rank].tolist()


def sample(x: RolloutInputs, engine: RolloutEngine) -> tuple[RolloutBatch, int]:
    """Steps 2-3, with DAPO's extra rounds: the scored rows of this rank as one batch, and how many of them the
    verifier could not judge."""
    s, method = x.settings, x.method
    rounds = 1 + (method.max_resample_rounds if method.dynamic_sampling else 0)
    observed = progress.ObservedEngine(engine, x.observer)
    verifier = progress.observed_verifier(x.verifier, x.observer)
    prompt_ids: list[list[int]] = []
    groups: list = []
    scores = collect.Scores([], 0, None if x.step_checker is None else [])
    for r in range(rounds):
        examples = [x.prompts[i] for i in draw(s, len(x.prompts), x.epoch, r, x.rank, x.world)]
        ids = collect.encode_prompts(x.tokenizer, [ex.prompt for ex in examples])
        sampling = SamplingConfig(
            n=s.group_size,
            max_new_tokens=s.max_new_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            seed=derive_seed(s.seed, SAMPLE, x.epoch, r, x.rank),
            return_entropy=s.on_policy(method),
            return_logprobs=True,  # an engine with its own weights (vLLM) reports them: checked in logprobs()
        )
        new = collect.generate(observed, x.tokenizer, examples, ids, sampling, with_expert=method.off_policy)
        judged = collect.score(x.tokenizer, examples, new, verifier, x.step_checker)
        prompt_ids += ids
        groups += new
        scores.scores += judged.scores
        scores.num_unjudged += judged.num_unjudged
        if scores.step_valid is not None:
            scores.step_valid += judged.step_valid
        if not method.dynamic_sampling:
            break
        grouped = torch.tensor(scores.scores).view(-1, s.group_rows(method))  # [B', G']
        done = torch.tensor(float(dynamic_sampling_keep(grouped).sum() >= s.prompts_per_epoch // x.world))
        if all_ranks_min(done, x.device) > 0:  # every rank runs the same rounds (FSDP2 collectives)
            break
    pad = x.tokenizer.pad_token_id
    batch = collect.assemble(
        prompt_ids,
        groups,
        scores,
        pad_id=int(pad if pad is not None else x.tokenizer.eos_token_id),
        temperature=s.temperature,
        max_response_len=s.max_new_tokens,
    )
    return batch, scores.num_unjudged


def entropy_rows(x: RolloutInputs, batch: RolloutBatch) -> Tensor:
    """The rows an on-policy step must score when the engine reports no token entropies: the rollouts whose
    entropies the EchoClip selection reads (the rows V of :func:`~echorl_lightning.echo.clips.eligible_rollouts`,
    with the same rewards and exclusions as :func:`clips`), and the first group, so the engine check compares
    the engine with the policy every step.

    Returns:
        ``[N]`` bool.
    """
    rows = torch.zeros(len(batch), dtype=torch.bool)  # [N]
    if x.echo.enabled:
        rows |= eligible_rollouts(
            batch.scores,
            batch.group_size,
            apply_to=x.echo.apply_to,
            success_reward=x.echo.success_reward,
            truncated=clip_ineligible(x.echo, batch),
        )
    rows[: batch.group_size] = True
    return rows


def logprobs(x: RolloutInputs, batch: RolloutBatch) -> tuple[RolloutBatch, dict[str, Tensor]]:
    """Step 4: old log-probs and token entropy, reference log-probs for a KL term, and the engine check (its
    metrics, and TIS weights when asked for).

    Exactly on-policy (``RolloutSettings.on_policy``) the update takes its old log-probs from its own forward,
    so the no-grad pass is needed only for entropies the engine did not report: none with the HF engine, and
    with an engine that reports none (vLLM) only on :func:`entropy_rows` (the other rows' entropies are NaN)
    unless TIS weights are asked for or the policy is sharded (every rank then runs the same forwards).
    """
    s = x.settings
    n, tokens = len(batch), int(batch.lengths.sum())

    def scored(net: nn.Module, part: RolloutBatch = batch) -> tuple[Tensor, Tensor]:
        return score_rollouts(
            net,
            part,
            temperature=s.temperature,
            batch_size=s.logprob_batch_size,
            forward=x.forward,
            device=x.device,
            context=x.precision,
        )

    old_logp, entropy, checked = None, batch.entropy, torch.ones(n, dtype=torch.bool)
    on_policy = s.on_policy(x.method)
    if on_policy and entropy is None and s.engine_is_cap is None and not is_fsdp2(x.policy):
        checked = entropy_rows(x, batch)  # [N]
        index = checked.nonzero().flatten()
        part = batch.rows(index)
        with progress.observed_phase(x.observer, "old log-probs", len(part), int(part.lengths.sum())):
            part_logp, part_entropy = scored(x.policy, part)  # [n', T] each
        entropy = torch.full(batch.responses.shape, float("nan"))  # [N, T]
        entropy[index] = part_entropy
        check_logp = part_logp
    elif not (on_policy and entropy is not None):
        with progress.observed_phase(x.observer, "old log-probs", n, tokens):
            old_logp, entropy = scored(x.policy)
        check_logp = old_logp
    else:
        check_logp = None
    ref_logp = None
    if x.method.kl_coef > 0:
        with progress.observed_phase(x.observer, "ref log-probs", n, tokens):
            if x.ref_policy is None and is_lora(x.policy):  # the reference is the base: adapters disabled
                with reference_model(x.policy):
                    ref_logp, _ = scored(x.policy)
            elif x.ref_policy is None:
                raise ValueError("a KL term needs a reference model (kl_coef > 0)")
            else:
                ref_logp, _ = scored(x.ref_policy)
    metrics, is_weight = engine_check(
        check_logp,
        None if batch.sampler_logp is None else batch.sampler_logp[checked],
        batch.response_mask[checked],
        batch.off_policy[checked],
        tolerance=s.engine_logprob_tolerance,
        is_cap=s.engine_is_cap,
    )
    return replace(batch, old_logp=old_logp, entropy=entropy, ref_logp=ref_logp, is_weight=is_weight), metrics


def advantages(x: RolloutInputs, batch: RolloutBatch) -> RolloutBatch:
    """Step 5: rewards after shaping, and the method's advantages (groups normalised over all ranks)."""
    rewards = batch.scores.clone()  # [N]
    if x.method.overlong_shaping:
        rewards = rewards + overlong_penalty(
            batch.lengths, x.settings.max_new_tokens, x.method.overlong_buffer
        )
    grouped = rewards.view(-1, batch.group_size)  # [B', G']
    adv = global_advantages(x.method.adv_estimator, grouped, x.rank, x.world).reshape(len(batch))  # [N]
    return replace(batch, rewards=rewards, advantages=adv)


def clip_ineligible(echo: EchoConfig, batch: RolloutBatch) -> Tensor:
    """The rows that may never hold an EchoClip: truncated and expert rows, and with ``echo.valid_steps_only``
    every row whose steps the task's checker did not all accept (or could not judge).

    Returns:
        ``[N]`` bool.
    """
    ineligible = batch.truncated | batch.off_policy  # [N]
    if echo.enabled and echo.valid_steps_only:
        if batch.step_valid is None:
            raise ValueError(
                "echo.valid_steps_only takes EchoClips only from rollouts whose steps the task's step checker "
                "accepts, but this task has no step checker (the datamodule's step_checker is None): set "
                "echo.valid_steps_only to false or use a task with one"
            )
        ineligible = ineligible | ~(batch.step_valid == 1.0)  # NaN (unjudged) is not accepted
    return ineligible


def clips(x: RolloutInputs, batch: RolloutBatch) -> RolloutBatch:
    """Step 6: the EchoClips (truncated and expert rows are never eligible; see :func:`clip_ineligible`)."""
    clip_mask, step_mask, step_end = echo_clip_rows(
        x.echo,
        batch,
        batch.entropy,
        batch.scores,
        clip_ineligible(x.echo, batch),
        batch.group_size,
        x.tokenizer.eos_token_id,
        x.delimiters,
        torch.Generator().manual_seed(derive_seed(x.settings.seed, CLIPS, x.epoch, x.rank)),
    )
    return replace(batch, clip_mask=clip_mask, step_mask=step_mask, step_end=step_end)


def keep(x: RolloutInputs, batch: RolloutBatch) -> tuple[RolloutBatch, Tensor]:
    """Step 7: ``pg_mask`` and the rows kept for the update (all of them, except under DAPO's filter)."""
    n = len(batch)
    pg_mask, kept = torch.ones(n), torch.ones(n, dtype=torch.bool)
    if x.method.dynamic_sampling:
        pg_mask, kept = dynamic_sampling_rows(
            batch.scores.view(-1, batch.group_size),
            batch.clip_mask.any(-1),
            num_groups=x.settings.prompts_per_epoch // x.world,
            min_rows=x.settings.num_minibatches * x.accumulate,
        )
    return replace(batch, pg_mask=pg_mask), kept


def microbatches(x: RolloutInputs, batch: RolloutBatch, kept: Tensor) -> list[RolloutBatch]:
    """Step 8: the kept rows cut into the micro-batches of the epoch, stamped with global counts."""
    micro = make_microbatches(
        batch.rows(kept.nonzero().flatten()),
        ppo_epochs=x.settings.ppo_epochs,
        num_minibatches=x.settings.num_minibatches,
        accumulate=x.accumulate,
        generator=torch.Generator().manual_seed(derive_seed(x.settings.seed, SHUFFLE, x.epoch, x.rank)),
    )
    counts = torch.stack([torch.stack([m.num_tokens, m.num_seqs, m.num_clips]) for m in micro])  # [M, 3]
    counts = x.reduce_sum(counts.to(x.device)).cpu()  # [M, 3] over all ranks
    return [
        replace(m, num_tokens=c[0], num_seqs=c[1], num_clips=c[2]) for m, c in zip(micro, counts, strict=True)
    ]


def run(x: RolloutInputs) -> RolloutResult:
    """Steps 1-8 for one epoch, and the epoch's metrics."""
    t0 = time.perf_counter()
    x.observer.rollout_start(
        x.epoch, x.settings.prompts_per_epoch // x.world * x.settings.group_rows(x.method)
    )
    batch, num_unjudged = sample(x, sync(x))
    gen_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    batch, engine_metrics = logprobs(x, batch)
    logp_s = time.perf_counter() - t1
    batch = clips(x, advantages(x, batch))
    batch, kept = keep(x, batch)
    micro = microbatches(x, batch, kept)
    metrics = rollout_metrics(
        batch.scores,
        batch.rewards,
        batch.truncated,
        batch.lengths,
        batch.off_policy,
        batch.group_size,
        x.echo.success_reward,
        batch.step_valid,
    )
    echo = echo_metrics(batch.entropy, batch.step_mask, batch.step_end, batch.clip_mask)
    metrics.update({k: v.detach().float() for k, v in echo.items()})
    metrics.update(engine_metrics)
    lengths = batch.lengths
    metrics.update(
        {
            "rollout/unjudged": torch.tensor(float(num_unjudged)),
            "rollout/groups_kept": batch.pg_mask.view(-1, batch.group_size)[:, 0].sum(),
            "rollout/num_groups": torch.tensor(float(len(batch) // batch.group_size)),
            "perf/rollout_s": torch.tensor(gen_s),
            "perf/old_logprob_s": torch.tensor(logp_s),
            "perf/rollout_tokens_per_s": lengths.sum().float() / max(gen_s, 1e-9),
            "perf/pad_frac": torch.tensor(  # positions the update spends on padding, after trimming
                1.0
                - sum(float(m.attention_mask.sum()) for m in micro)
                / sum(m.attention_mask.numel() for m in micro)
            ),
            "perf/pad_frac_batch": torch.tensor(batch.pad_fraction()),  # the one padded rollout batch
        }
    )
    return RolloutResult(batch, micro, metrics)
