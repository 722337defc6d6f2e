"""Keeping the rollout engine on the policy's current weights: set up once, synced when the weights changed.

:class:`EngineSync` wraps the module's engine. Both the rollout pipeline (each epoch) and sampled evaluation ask
it for the engine with :meth:`EngineSync.engine_for`, naming the version of the weights they need (the
optimizer step count); the weights are streamed only when that version differs from the one the engine holds.
A LoRA policy is streamed merged, one layer at a time, to engines that hold their own weights; the HF engine
samples from the policy itself (adapters applied unmerged).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from echorl_lightning.rollout.hf_engine import HFGenerateEngine
from echorl_lightning.rollout.types import RolloutEngine
from echorl_lightning.training.lora import is_lora
from echorl_lightning.training.lora_merge import merged_weights


class EngineSync:
    """The engine and the version of the weights it holds.

    Args:
        engine: the rollout engine (set up on first use).
    """

    def __init__(self, engine: RolloutEngine) -> None:
        self.engine = engine
        self.ready = False
        self.version: int | None = None  # the optimizer step of the weights the engine holds

    def engine_for(self, policy: nn.Module, tokenizer: Any, version: int) -> RolloutEngine:
        """The engine, set up on first use and holding ``policy``'s weights of ``version``."""
        if not self.ready:
            self.engine.setup(policy, tokenizer)
            self.ready = True
        if self.version != version:
            if is_lora(policy) and not isinstance(self.engine, HFGenerateEngine):
                with merged_weights(policy) as merged:  # one merged layer at a time, base untouched
                    self.engine.load_weights(merged)
            else:
                self.engine.load_weights(policy)
            self.version = version
        return self.engine

    def invalidate(self) -> None:
        """The policy's weights were replaced (a checkpoint was restored): sync again before the next use."""
        self.version = None
