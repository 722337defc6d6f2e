"""The rollout pipeline's steps on their own: prompt draws per rank, the scored rows assembled into one batch,
DAPO's row keeping, and the whole pipeline on the embedded tiny model with the real HF engine."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from echorl_lightning.algorithms.presets import resolve_method
from echorl_lightning.echo import delimiter_token_ids
from echorl_lightning.pipeline import steps
from echorl_lightning.pipeline.engine_sync import EngineSync
from echorl_lightning.rollout import collect
from echorl_lightning.rollout.hf_engine import HFGenerateEngine
from echorl_lightning.rollout.progress import NullObserver
from echorl_lightning.rollout.settings import RolloutSettings
from echorl_lightning.rollout.types import Completion
from echorl_lightning.tasks.arithmetic import ArithmeticTask
from echorl_lightning.tiny import TINY_MODEL_PATH
from echorl_lightning.training.config import EchoConfig
from echorl_lightning.training.passes import ForwardConfig


def test_draw_gives_each_rank_its_slice_of_one_order() -> None:
    settings = RolloutSettings(prompts_per_epoch=8, group_size=2, seed=3)
    whole = steps.draw(settings, 100, epoch=5, round_idx=0, rank=0, world=1)
    halves = [steps.draw(settings, 100, epoch=5, round_idx=0, rank=r, world=2) for r in (0, 1)]
    assert len(whole) == 8 and len(set(whole)) == 8  # distinct prompts
    assert halves[0] + halves[1] == whole  # rank r takes the r-th slice of the same order: groups never split
    assert steps.draw(settings, 100, epoch=6, round_idx=0, rank=0, world=1) != whole  # a new order each epoch
    assert steps.draw(settings, 100, epoch=5, round_idx=1, rank=0, world=1) != whole  # and each DAPO round
    with pytest.raises(ValueError, match=r"rollout\.prompts_per_epoch=8 exceeds the 7 training prompts"):
        steps.draw(settings, 7, epoch=0, round_idx=0, rank=0, world=1)


def test_assemble_pads_the_rows_and_keeps_what_every_row_has() -> None:
    # two prompts (ids [5] and [6, 7]), G = 2 sampled rows each plus LUFFY's expert row last
    groups = [
        [
            Completion([1, 2], False, [0.5, 0.4], [-0.1, -0.2]),
            Completion([3], True, [0.3], [-0.3]),
            Completion([9, 0], False, off_policy=True),
        ],
        [
            Completion([4, 0], False, [0.2, 0.1], [-0.4, -0.5]),
            Completion([1, 1, 1], True, [0.1] * 3, [-0.6] * 3),
            Completion([8, 0], False, off_policy=True),
        ],
    ]
    scores = collect.Scores([1.0, 0.0, 1.0, 1.0, 1.0, 1.0], 0, [True, None, True, False, True, True])
    batch = collect.assemble([[5], [6, 7]], groups, scores, pad_id=99, temperature=0.7, max_response_len=3)
    # P = 2 (longest prompt, left-padded), T = 3 (longest response, right-padded with the pad id)
    assert batch.input_ids[0].tolist() == [99, 5, 1, 2, 99] and batch.input_ids[4].tolist() == [6, 7, 1, 1, 1]
    assert batch.response_mask[1].tolist() == [1.0, 0.0, 0.0]
    assert (batch.group_size, batch.temperature, batch.max_response_len) == (3, 0.7, 3)
    assert batch.off_policy.tolist() == [False, False, True] * 2
    assert batch.truncated.tolist() == [False, True, False, False, True, False]
    assert batch.entropy is None  # expert rows have no entropy: the old-log-prob pass must give it
    # the engine's log-probs of its own samples, 0 on the expert rows and on padding
    assert batch.sampler_logp[0].tolist() == pytest.approx([-0.1, -0.2, 0.0])
    assert batch.sampler_logp[2].tolist() == [0.0, 0.0, 0.0]
    assert (
        batch.step_valid[:2].tolist()[0] == 1.0
        and math.isnan(batch.step_valid[1])
        and batch.step_valid[3] == 0
    )
    assert batch.off_policy_mask[2].tolist() == [1.0, 1.0, 0.0]  # the expert's two tokens


def bare_inputs(method: str = "grpo", echo: EchoConfig | None = None, tokenizer=None) -> steps.RolloutInputs:
    """Inputs for the steps that read only settings and the batch (no policy, engine or prompts)."""
    return steps.RolloutInputs(
        settings=RolloutSettings(prompts_per_epoch=1, group_size=2),
        method=resolve_method(method),
        echo=echo or EchoConfig(),
        policy=None,
        ref_policy=None,
        tokenizer=tokenizer,
        engine=None,
        forward=ForwardConfig(),
        precision=nullcontext,
        prompts=[],
        verifier=None,
        step_checker=None,
        delimiters=[],
        epoch=0,
        version=0,
        rank=0,
        world=1,
        accumulate=1,
        device=torch.device("cpu"),
        reduce_sum=lambda t: t,
        observer=NullObserver(),
    )


def test_keep_filters_groups_only_under_dynamic_sampling() -> None:
    groups = [[Completion([1], False, [0.1]) for _ in range(2)] for _ in range(3)]
    scores = collect.Scores([1.0, 1.0, 0.0, 1.0, 0.0, 0.0], 0, None)  # groups: all-success, mixed, all-fail
    batch = collect.assemble([[5]] * 3, groups, scores, pad_id=0, temperature=1.0, max_response_len=1)
    batch = replace(batch, clip_mask=torch.zeros(6, 1, dtype=torch.bool))

    grpo, kept = steps.keep(bare_inputs("grpo"), batch)
    assert grpo.pg_mask.tolist() == [1.0] * 6 and kept.all()
    dapo, kept = steps.keep(bare_inputs("dapo"), batch)
    # DAPO keeps the one mixed-reward group for the policy gradient (1 group asked for)
    assert dapo.pg_mask.tolist() == [0.0, 0.0, 1.0, 1.0, 0.0, 0.0] and kept.tolist() == [False, False] + [
        True
    ] * 2 + [False, False]


def tiny_inputs(settings: RolloutSettings, echo: EchoConfig, prompts: int = 16) -> steps.RolloutInputs:
    """The pipeline's inputs on the embedded tiny model with the real HF engine, one rank."""
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_PATH)
    task = ArithmeticTask()
    return replace(
        bare_inputs(echo=echo, tokenizer=tokenizer),
        settings=settings,
        policy=AutoModelForCausalLM.from_pretrained(TINY_MODEL_PATH, dtype=torch.float32),
        engine=EngineSync(HFGenerateEngine()),
        prompts=task.prompts("train", prompts),
        verifier=task.verifier(),
        step_checker=task.step_checker(),
        delimiters=delimiter_token_ids(tokenizer, echo.step_delimiter),
    )


def test_run_on_the_tiny_model_fills_every_step_of_the_batch() -> None:
    settings = RolloutSettings(prompts_per_epoch=4, group_size=4, max_new_tokens=24, num_minibatches=2)
    x = tiny_inputs(settings, EchoConfig())
    result = steps.run(x)
    batch = result.batch
    assert len(batch) == 16 and batch.group_size == 4  # 4 prompts x G = 4
    # two optimizer steps (num_minibatches = 2): the old-log-prob pass ran, so pi_old and entropies are there
    assert batch.old_logp is not None and batch.entropy.shape == batch.responses.shape
    assert batch.advantages.shape == (16,) and batch.clip_mask.shape == batch.responses.shape
    assert len(result.micro) == 2 and sum(len(m) for m in result.micro) == 16
    assert float(result.micro[0].num_seqs) == 8.0  # the counts of each step's 8 rows
    # GRPO's advantages are zero-mean in every group
    assert batch.advantages.view(4, 4).sum(-1).abs().max() < 1e-5
    assert {"reward/mean", "rollout/frac_all_success", "echo/num_clips", "rollout/step_valid_frac"} <= set(
        result.metrics
    )
    assert isinstance(batch.scores, torch.Tensor) and set(batch.scores.tolist()) <= {0.0, 1.0}


def test_on_policy_without_engine_entropies_scores_only_the_rows_that_need_them() -> None:
    # an engine that reports its log-probs but no entropies (as vLLM): on-policy, the pass scores only the
    # EchoClip candidates and the first group; every figure it gives equals the full pass's on those rows
    settings = RolloutSettings(prompts_per_epoch=8, group_size=4, max_new_tokens=24, logprob_batch_size=5)
    x = tiny_inputs(settings, EchoConfig(), prompts=32)
    sampled, _ = steps.sample(x, steps.sync(x))
    full_x = replace(x, settings=replace(settings, on_policy_shortcut=False))
    logp, _ = steps.score_rollouts(
        x.policy,
        sampled,
        temperature=1.0,
        batch_size=32,
        forward=x.forward,
        device=x.device,
        context=nullcontext,
    )
    batch = replace(sampled, entropy=None, sampler_logp=logp)  # what an exact engine reports
    full, full_metrics = steps.logprobs(full_x, batch)
    cut, cut_metrics = steps.logprobs(x, batch)

    # candidates by hand: successful, untruncated rows of all-success groups, then the first group added
    success = (batch.scores == 1.0).view(8, 4)
    expected = (success & success.all(-1, keepdim=True)).flatten() & ~batch.truncated
    assert expected[4:].any(), "the seed must give an all-success group after the first"
    expected[:4] = True
    scored = ~cut.entropy.isnan().all(-1)
    assert scored.tolist() == expected.tolist() == steps.entropy_rows(x, batch).tolist()
    assert cut.entropy[~scored].isnan().all()
    torch.testing.assert_close(cut.entropy[scored], full.entropy[scored], rtol=0, atol=1e-5)
    assert cut.old_logp is None and full.old_logp is not None  # on-policy: the update's own forward is pi_old
    # the engine check ran on the scored rows: an exact engine differs by float noise only
    assert float(cut_metrics["rollout/engine_logprob_diff_max"]) < 1e-4
    assert set(cut_metrics) == set(full_metrics)
    # the same EchoClips and the same clip statistics as from the full pass
    cut_clips = steps.clips(x, steps.advantages(x, cut))
    full_clips = steps.clips(x, steps.advantages(x, full))
    assert cut_clips.clip_mask.any() and torch.equal(cut_clips.clip_mask, full_clips.clip_mask)
    cut_echo = steps.echo_metrics(cut.entropy, cut_clips.step_mask, cut_clips.step_end, cut_clips.clip_mask)
    full_echo = steps.echo_metrics(
        full.entropy, full_clips.step_mask, full_clips.step_end, full_clips.clip_mask
    )
    for name in ("echo/num_clips", "echo/clip_tokens", "echo/peak_step_entropy", "echo/peak_step_pos"):
        torch.testing.assert_close(cut_echo[name], full_echo[name], rtol=0, atol=1e-5)
    assert math.isfinite(float(cut_echo["entropy/token_mean"]))

    # an engine that is not sampling from the policy is still caught: its first group is always compared
    broken = replace(batch, sampler_logp=batch.sampler_logp - 2.0 * batch.response_mask)
    with pytest.raises(RuntimeError, match="not sampling from the policy"):
        steps.logprobs(x, broken)


def test_valid_steps_only_takes_clips_from_rollouts_whose_steps_all_pass() -> None:
    # one all-success group of G = 2: row 0 holds the higher entropy (the peak selector's pick) but the step
    # checker rejected one of its steps; row 1 passed every step
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_PATH)
    groups = [[Completion([5, 6, 7], False, [2.0, 2.0, 2.0]), Completion([5, 6, 7], False, [1.0, 1.0, 1.0])]]
    for verdicts, expected_row in (([False, True], 1), ([None, True], 1), ([True, True], 0)):
        scores = collect.Scores([1.0, 1.0], 0, verdicts)
        batch = collect.assemble([[3]], groups, scores, pad_id=0, temperature=1.0, max_response_len=3)
        paper = steps.clips(bare_inputs(tokenizer=tokenizer), batch).clip_mask.any(-1)
        valid = steps.clips(bare_inputs(echo=EchoConfig(valid_steps_only=True), tokenizer=tokenizer), batch)
        assert paper.tolist() == [True, False]  # the paper's rule reads the answer only
        assert valid.clip_mask.any(-1).tolist() == [r == expected_row for r in range(2)], verdicts

    no_checker = collect.assemble(
        [[3]], groups, collect.Scores([1.0, 1.0], 0, None), pad_id=0, temperature=1.0, max_response_len=3
    )
    with pytest.raises(ValueError, match="echo.valid_steps_only .* no step checker"):
        steps.clips(bare_inputs(echo=EchoConfig(valid_steps_only=True), tokenizer=tokenizer), no_checker)
