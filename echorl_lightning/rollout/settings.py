"""The rollout settings (the ``rollout:`` config group), each checked here and nowhere else.

:class:`RolloutSettings` holds what the rollout callback was configured with. Its own bounds are checked when it
is built; the checks that need other groups (the number of ranks, micro-batches per optimizer step, the method)
are :meth:`RolloutSettings.run_problems`, which the callback's ``setup`` and the early config check both call.
Messages name each key without a prefix (``group_size=1: ...``); callers put them under theirs
(``rollout.group_size=1: ...``, :meth:`~echorl_lightning.bounds.SettingError.under`).
"""

from __future__ import annotations

from dataclasses import dataclass

from echorl_lightning.algorithms.advantages import group_size_problem
from echorl_lightning.algorithms.presets import MethodConfig
from echorl_lightning.bounds import integer_problem, number_problem, raise_problems

# settings that count something (besides prompts and G): each must be an integer >= 1
_COUNTS = ("max_new_tokens", "ppo_epochs", "num_minibatches", "logprob_batch_size")


@dataclass(frozen=True)
class RolloutSettings:
    """How each epoch's rollouts are made.

    Attributes:
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
            KL reference, no expert rows), take pi_old from the update's own forward, detached (ratio 1): the
            no-grad old-log-prob pass is skipped when the engine returns token entropies (the HF engine does),
            and otherwise (vLLM) runs on the rows whose entropies EchoClip selection reads and on the first
            group, which the engine check compares (all rows with ``engine_is_cap`` or a sharded policy).
        engine_logprob_tolerance: an engine that reports its log-probs (vLLM) is checked every epoch against the
            old-log-prob pass (``rollout/engine_logprob_diff_{mean,max}``); a mean difference above this many
            nats stops the run (its weight sync did not happen). None: log only.
        engine_is_cap: truncated importance sampling for the engine/trainer mismatch (TRL's
            ``vllm_importance_sampling_correction``): each token's policy-gradient loss is weighted by
            ``min(exp(logp_trainer - logp_engine), cap)``. None: off. Needs such an engine.
    """

    prompts_per_epoch: int = 32
    group_size: int = 8
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    ppo_epochs: int = 1
    num_minibatches: int = 1
    logprob_batch_size: int = 64
    seed: int = 0
    on_policy_shortcut: bool = True
    engine_logprob_tolerance: float | None = 0.5
    engine_is_cap: float | None = None

    def __post_init__(self) -> None:
        raise_problems(
            integer_problem("prompts_per_epoch", self.prompts_per_epoch, 1),
            group_size_problem("group_size", self.group_size),
            *(integer_problem(key, getattr(self, key), 1) for key in _COUNTS),
            number_problem("temperature", self.temperature, low=0, low_open=True),
            number_problem("top_p", self.top_p, low=0, low_open=True, high=1),
            number_problem(
                "engine_logprob_tolerance", self.engine_logprob_tolerance, low=0, low_open=True, optional=True
            ),
            number_problem("engine_is_cap", self.engine_is_cap, low=0, low_open=True, optional=True),
        )

    def run_problems(self, world: int | None, accumulate: int, method: MethodConfig | None) -> list[str]:
        """What these settings cannot do with ``world`` ranks (None: not known yet), ``accumulate`` micro-batches
        per optimizer step and ``method`` (None: not known); one message per problem, keys without a prefix."""
        out = []
        if world and self.prompts_per_epoch % world:
            out.append(
                f"prompts_per_epoch={self.prompts_per_epoch}: must be divisible by the number of ranks "
                f"(trainer.devices x trainer.num_nodes = {world}): each rank takes whole groups"
            )
        elif world and method is not None:
            group = self.group_rows(method)
            rows, chunks = self.prompts_per_epoch // world * group, self.num_minibatches * accumulate
            if (method.dynamic_sampling and rows < chunks) or (not method.dynamic_sampling and rows % chunks):
                out.append(
                    f"num_minibatches={self.num_minibatches} x trainer.accumulate_grad_batches={accumulate} = "
                    f"{chunks} micro-batches must divide the {rows} rollout rows per rank per epoch "
                    f"({self.prompts_per_epoch} prompts / {world} ranks x {group} rows per group)"
                )
        if method is not None and method.overlong_shaping and method.overlong_buffer > self.max_new_tokens:
            out.append(
                f"max_new_tokens={self.max_new_tokens}: must be >= model.init_args.algorithm.overlong_buffer="
                f"{method.overlong_buffer} (DAPO's overlong buffer lies within the response limit)"
            )
        return out

    def on_policy(self, method: MethodConfig) -> bool:
        """Whether the update is exactly on-policy (one optimizer step per rollout batch, no reference model,
        no expert rows), so the update's own forward gives pi_old (``on_policy_shortcut``)."""
        single_step = self.ppo_epochs == 1 and self.num_minibatches == 1
        return self.on_policy_shortcut and single_step and method.kl_coef == 0 and not method.off_policy

    def group_rows(self, method: MethodConfig) -> int:
        """G', the rows of one group: G rollouts, plus LUFFY's expert row."""
        return self.group_size + (1 if method.off_policy else 0)
