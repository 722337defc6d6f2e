"""What the rollout callback needs from the LightningModule: the :class:`RolloutPolicy` protocol.

The callback (``callbacks/rollout.py``) is typed against this protocol, not against
:class:`~echorl_lightning.module.EchoRLModule`, so any module that offers these members can be trained by it.
Data crosses the other way as :class:`~echorl_lightning.rollout.batch.RolloutBatch` micro-batches; rollout
settings the update must agree with (temperature, response limit) cross once, as a
:class:`~echorl_lightning.rollout.batch.RolloutSpec`, through :meth:`RolloutPolicy.configure_rollout`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from echorl_lightning.algorithms.presets import MethodConfig
from echorl_lightning.rollout.batch import RolloutSpec, TokenBatch
from echorl_lightning.rollout.types import RolloutEngine
from echorl_lightning.training.config import EchoConfig


@runtime_checkable
class RolloutPolicy(Protocol):
    """The module as the rollout callback sees it.

    Attributes:
        tokenizer: the policy's tokenizer (decoding, EOS/pad ids, step delimiters).
        method_cfg: the resolved RLVR method (advantages, DAPO filtering, LUFFY expert rows, KL).
        echo_cfg: the EchoRL settings (clip selection; the module applies ``echo_cfg.coef``).
    """

    tokenizer: Any
    method_cfg: MethodConfig
    echo_cfg: EchoConfig

    @property
    def device(self) -> torch.device: ...

    def configure_rollout(self, spec: RolloutSpec) -> None:
        """Receive the rollout settings the update must agree with (once per ``fit``, before any rollout)."""
        ...

    def rollout_engine(self) -> RolloutEngine:
        """The rollout engine, holding the policy's current weights."""
        ...

    def encode_prompts(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids of prompt texts (no special tokens added); raises on a prompt that encodes to nothing."""
        ...

    def score_rollouts(
        self, batch: TokenBatch, *, batch_size: int, reference: bool = False
    ) -> tuple[Tensor, Tensor]:
        """The no-grad pass over rollouts: ``(logp, entropy)``, each [N, T] float32 on the CPU, under the
        policy (or the frozen reference model when ``reference``), at the rollout temperature, in the same
        precision context as the update, ``batch_size`` rows per forward."""
        ...
