"""A failure report: when a run stops on an exception, say what broke, where, and how to resume.

:class:`FailureReport` implements Lightning's ``on_exception`` hook. It writes the error (type, message, the
last frames of the traceback), the last global step and epoch, and the checkpoint to resume from (the newest
``*.ckpt`` in the folders of the trainer's checkpoint callbacks, or "none") to the log (``logging.error``)
and to ``<run dir>/FAILED.txt``; the run dir is the logger's ``log_dir``, else ``trainer.default_root_dir``.
On ranks other than 0 the file is ``FAILED-rank<r>.txt``, so ranks do not overwrite each other's reports.

``cli.py`` adds it to every run (config group ``failure_report``). Left out: errors raised before the
trainer starts (config and data checks fail before any model is loaded, with their own messages), and
``kill -9`` or out-of-memory kills, which give a process no chance to write anything.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

import lightning.pytorch as L
from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)


def newest_checkpoint(dirs: list[Path]) -> Path | None:
    """The most recently written ``*.ckpt`` file under ``dirs`` (a ``last.ckpt`` link counts as its target's
    time), or None."""
    found = [p for d in dirs if d.is_dir() for p in d.glob("*.ckpt") if p.exists()]
    return max(found, key=lambda p: (p.stat().st_mtime, p.name == "last.ckpt"), default=None)


def format_report(
    error: BaseException, step: int, epoch: int, checkpoint: Path | None, frames: int = 8
) -> str:
    """The report's text: error, short traceback, last step and epoch, and what to resume from."""
    tb = "".join(traceback.format_exception(type(error), error, error.__traceback__, limit=-frames))
    resume = (
        f"{checkpoint}\nresume with: python cli.py fit --config <the run's config> --ckpt_path {checkpoint}"
        if checkpoint is not None
        else "none (no checkpoint was written before the failure)"
    )
    return (
        f"run failed: {type(error).__name__}: {error}\n"
        f"last global step: {step}\nepoch: {epoch}\n"
        f"checkpoint to resume from: {resume}\n\n"
        f"traceback (last {frames} frames):\n{tb}"
    )


class FailureReport(L.Callback):
    """Writes ``FAILED.txt`` and logs the report when the trainer stops on an exception.

    Args:
        filename: the report's file name in the run dir.
    """

    def __init__(self, filename: str = "FAILED.txt") -> None:
        self.filename = filename
        self.path: Path | None = None  # where the last report went

    def run_dir(self, trainer: L.Trainer) -> Path:
        """The logger's ``log_dir``, else ``trainer.default_root_dir``."""
        log_dir = trainer.logger.log_dir if trainer.logger is not None else None
        return Path(log_dir or trainer.default_root_dir)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        dirs = [
            Path(cb.dirpath)
            for cb in trainer.checkpoint_callbacks
            if isinstance(cb, ModelCheckpoint) and cb.dirpath
        ]
        report = format_report(exception, trainer.global_step, trainer.current_epoch, newest_checkpoint(dirs))
        name = (
            self.filename
            if trainer.global_rank == 0
            else f"{Path(self.filename).stem}-rank{trainer.global_rank}.txt"
        )
        self.path = self.run_dir(trainer) / name
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(report)
        except OSError as err:  # the report must never hide the original error
            log.error("could not write %s: %s", self.path, err)
        log.error("%s\n(report written to %s)", report, self.path)
