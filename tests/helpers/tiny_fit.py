"""Helpers of the tests that fit the embedded tiny model for real on CPU and read what the run printed
(``tests/rollout/test_progress.py``, ``tests/callbacks/test_run_summary.py``; they also use the ``one_thread``
fixture of ``tests/conftest.py``).

:func:`tiny_policy_and_data` builds the seeded policy and arithmetic prompts whose every completion
:class:`Always` scores 1.0; :func:`cpu_trainer` is a quiet CPU Trainer without sanity validation, so a run's
console output is only what its callbacks print.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import lightning.pytorch as L

if TYPE_CHECKING:
    from echorl_lightning.module import EchoRLModule
    from echorl_lightning.tasks import ProceduralDataModule


class Always:
    """A verifier that scores every completion 1.0 (every group all-success)."""

    def __call__(self, completions: Sequence[str], references: Sequence[str]) -> list[float | None]:
        return [1.0] * len(completions)


def tiny_policy_and_data(
    num_train: int, num_val: int, **module_args: Any
) -> tuple[EchoRLModule, ProceduralDataModule]:
    """After ``seed_everything(0)``: the embedded tiny policy (``lr=1e-4`` and ``module_args``) and
    :class:`ProceduralDataModule` prompts of the arithmetic task scored by :class:`Always`, bound to the policy's tokenizer."""
    from echorl_lightning.module import EchoRLModule
    from echorl_lightning.tasks import ProceduralDataModule
    from echorl_lightning.tasks.arithmetic import ArithmeticTask
    from echorl_lightning.tiny import TINY_MODEL_PATH

    L.seed_everything(0)
    module = EchoRLModule(model=TINY_MODEL_PATH, lr=1e-4, **module_args)
    data = ProceduralDataModule(ArithmeticTask(), num_train=num_train, num_val=num_val, verifier=Always())
    data.connect(module.tokenizer)
    return module, data


def cpu_trainer(**trainer_args: Any) -> L.Trainer:
    """A CPU Trainer with no sanity validation, progress bar or model summary, plus ``trainer_args``."""
    return L.Trainer(
        accelerator="cpu",
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_args,
    )
