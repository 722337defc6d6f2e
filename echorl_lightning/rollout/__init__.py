"""Rollout engines: the :class:`RolloutEngine` protocol, its request/response types, and two engines.

:class:`HFGenerateEngine` samples with the policy's own ``generate`` (CPU or GPU); :class:`VLLMEngine` drives a
colocated vLLM ``LLM`` (GPU, vLLM imported lazily).
"""

from echorl_lightning.rollout.hf_engine import HFGenerateEngine
from echorl_lightning.rollout.types import Completion, RolloutEngine, SamplingConfig
from echorl_lightning.rollout.vllm_engine import VLLMEngine

__all__ = ["Completion", "HFGenerateEngine", "RolloutEngine", "SamplingConfig", "VLLMEngine"]
