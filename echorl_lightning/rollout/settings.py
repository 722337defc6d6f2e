"""The rollout settings (the ``rollout:`` config group), each checked here and nowhere else.

:class:`RolloutSettings` holds what the rollout callback was configured with; its checks run when it is built,
and the ones that need another group (the world size, the method's DAPO buffer) are methods the callback's
``setup`` and the early config check both call.
"""

from __future__ import annotations

from dataclasses import dataclass

from echorl_lightning.algorithms.presets import MethodConfig

# settings that count something: each must be >= 1
_COUNTS = (
    "prompts_per_epoch",
    "group_size",
    "max_new_tokens",
    "ppo_epochs",
    "num_minibatches",
    "logprob_batch_size",
)


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
            KL reference, no expert rows) and the engine returns token entropies (the HF engine does), skip the
            no-grad old-log-prob pass: pi_old is the update's own forward, detached (ratio 1), and EchoClips are
            chosen from the engine's entropies.
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
        for key in _COUNTS:
            if getattr(self, key) < 1:
                raise ValueError(f"RolloutCallback.{key} must be >= 1, got {getattr(self, key)}")
        if self.temperature <= 0:
            raise ValueError(
                f"RolloutCallback.temperature must be > 0 for RL rollouts, got {self.temperature}"
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"RolloutCallback.top_p must be in (0, 1], got {self.top_p}")
        for key in ("engine_logprob_tolerance", "engine_is_cap"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ValueError(f"RolloutCallback.{key} must be > 0 or None, got {value}")

    def check_world(self, world_size: int) -> None:
        """Raise when the prompts of an epoch cannot be split evenly over ``world_size`` ranks."""
        if self.prompts_per_epoch % world_size:
            raise ValueError(
                f"RolloutCallback.prompts_per_epoch={self.prompts_per_epoch} must be divisible by the "
                f"world size {world_size} (groups are never split across ranks)"
            )

    def check_method(self, method: MethodConfig) -> None:
        """Raise when the method asks for something these settings cannot give (DAPO's overlong buffer)."""
        if method.overlong_shaping and method.overlong_buffer > self.max_new_tokens:
            raise ValueError(
                f"model.init_args.algorithm.overlong_buffer={method.overlong_buffer} exceeds "
                f"RolloutCallback.max_new_tokens={self.max_new_tokens}: set a shorter overlong buffer"
            )

    def on_policy(self, method: MethodConfig) -> bool:
        """Whether the update is exactly on-policy (one optimizer step per rollout batch, no reference model,
        no expert rows), so the no-grad old-log-prob pass can be skipped (``on_policy_shortcut``)."""
        single_step = self.ppo_epochs == 1 and self.num_minibatches == 1
        return self.on_policy_shortcut and single_step and method.kl_coef == 0 and not method.off_policy

    def group_rows(self, method: MethodConfig) -> int:
        """G', the rows of one group: G rollouts, plus LUFFY's expert row."""
        return self.group_size + (1 if method.off_policy else 0)
