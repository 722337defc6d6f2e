"""The LightningCLI subclass behind ``cli.py``.

After the classes are instantiated, objects that need the tokenizer are bound to it
(``datamodule.connect(model.tokenizer)``), as litgpt does: the YAML never repeats the model path.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


class EchoRLCLI(LightningCLI):
    """LightningCLI with subclass mode for model and data, and tokenizer binding before each subcommand."""

    def _connect(self) -> None:
        tokenizer = getattr(self.model, "tokenizer", None)
        connect = getattr(self.datamodule, "connect", None)
        if tokenizer is not None and callable(connect):
            connect(tokenizer)

    def before_fit(self) -> None:
        self._connect()

    def before_validate(self) -> None:
        self._connect()

    def before_test(self) -> None:
        self._connect()


def main(args: list[str] | None = None, run: bool = True) -> EchoRLCLI:
    """Build (and by default run) the CLI; ``args`` as on the command line."""
    kwargs: dict[str, Any] = dict(
        model_class=LightningModule,
        datamodule_class=LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=args,
        run=run,
    )
    return EchoRLCLI(**kwargs)
