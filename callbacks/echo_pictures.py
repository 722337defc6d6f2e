"""EchoClip pictures in TensorBoard what the clips look like.

Every ``every_n_epochs`` epochs (epochs 0, N, 2N, ... and the first epoch of each ``fit``, so a resumed run
also starts with one), at the end of the epoch, the callback reads the epoch's rollout batch
(:attr:`echorl_lightning.callbacks.rollout.RolloutCallback.last_rollout`) and writes through the TensorBoard logger's
``SummaryWriter``, at the trainer's ``global_step``:

* ``echo/clips`` (text): for the first ``max_groups`` advantage-degenerated groups that hold an EchoClip,
  the clip's rollout step by step: each step's mean token entropy beside it, the clip in bold, the peak step
  marked (:func:`~echorl_lightning.echo.render.clip_markdown`); a one-line note when no such group exists;
* ``echo/step_entropy`` (image): step entropy along those rollouts, peak steps and clip ends marked
  (:func:`~echorl_lightning.echo.render.step_entropy_figure`);
* ``entropy/token_hist`` (histogram): token entropy over the step tokens of every row (EOS excluded, as for
  ``entropy/token_mean``; rows whose entropy was not computed, NaN, left out);
* ``echo/peak_step_pos_hist`` (histogram): the peak step's relative position of every clip of the batch
  (its mean is ``echo/peak_step_pos``); not written when the batch has no clip.

Steps, peak and clip end come from :mod:`echorl_lightning.echo.clip_view`, on the same tensors the clip
selector used. Rank 0 only, from rank 0's rows (under DDP the other ranks' groups are not shown). It only
reads: no RNG draw, no change to the module, so training is the same with and without it. Without a
TensorBoard logger it warns once at setup and writes nothing. Left out: other loggers (W&B, MLflow) and
pictures of validation samples.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as L
import torch
from echorl_lightning.callbacks.rollout import RolloutCallback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from tensorboard.plugins.text.summary_v2 import text_pb
from torch.utils.tensorboard import SummaryWriter

from echorl_lightning.echo.clip_view import clip_view, degenerate_clip_rows
from echorl_lightning.echo.render import clip_markdown, escape_markdown, step_entropy_figure
from echorl_lightning.rollout.batch import RolloutBatch

TAGS = ("echo/clips", "echo/step_entropy", "entropy/token_hist", "echo/peak_step_pos_hist")
"""What the callback writes (text, image, histogram, histogram)."""


def log_echo_pictures(
    writer: SummaryWriter,
    record: RolloutBatch,
    epoch: int,
    decode: Callable[[list[int]], str],
    step: int,
    max_groups: int = 3,
    max_step_chars: int = 200,
) -> list[int]:
    """Write the four pictures of one rollout batch (see the module docstring).

    Args:
        writer: the TensorBoard writer.
        record: the epoch's rollout batch.
        epoch: the epoch it was generated for.
        decode: token ids -> text.
        step: the TensorBoard step (the trainer's ``global_step``).
        max_groups: how many degenerate groups to show in the text and the figure.
        max_step_chars: the most characters of text shown per step.

    Returns:
        The rows shown (one per group, in group order).
    """
    view = clip_view(record.entropy, record.step_mask, record.step_end, record.clip_mask)
    rows = degenerate_clip_rows(record.scores, record.clip_mask, record.group_size, max_groups).tolist()
    g = record.group_size
    if rows:
        titles = [
            f"epoch {epoch} · group {r // g} · rollout {r % g} of {g} · score "
            f"{float(record.scores[r]):g} · prompt: {escape_markdown(_prompt_text(record, r, decode))}"
            for r in rows
        ]
        text = clip_markdown(view, record.responses, record.clip_mask, rows, decode, titles, max_step_chars)
        labels = [f"group {r // g}, rollout {r % g}" for r in rows]
        title = f"epoch {epoch}: step entropy of EchoClip rollouts"
        image = step_entropy_figure(view, rows, labels, title)
        writer.add_image("echo/step_entropy", image, step, dataformats="HWC")
    else:
        text = f"epoch {epoch}: no advantage-degenerated group with an EchoClip in this rollout batch."
    # TensorBoard's own text summary, so the panel's tag is exactly "echo/clips" (``add_text`` appends
    # "/text_summary")
    writer.file_writer.add_summary(text_pb("echo/clips", text), step)
    tokens = record.entropy[record.step_mask.bool()].float()  # [number of step tokens]
    tokens = tokens[~tokens.isnan()]  # an engine without entropies: only the scored rows have them
    if tokens.numel():
        writer.add_histogram("entropy/token_hist", tokens, step)
    if bool(view.has_clip.any()):
        writer.add_histogram("echo/peak_step_pos_hist", view.peak_pos[view.has_clip], step)
    writer.flush()
    return rows


def logs_at(epoch: int, first_epoch: int, every_n_epochs: int) -> bool:
    """Whether pictures are written at ``epoch``: epochs 0, N, 2N, ... and the first epoch of the fit."""
    return epoch % every_n_epochs == 0 or epoch == first_epoch


def _prompt_text(record: RolloutBatch, row: int, decode: Callable[[list[int]], str]) -> str:
    """The row's prompt (its real, left-padded tokens), surrounding whitespace stripped, cut to 120
    characters."""
    p = record.prompt_len
    ids = record.input_ids[row, :p][record.attention_mask[row, :p].bool()].tolist()
    text = decode(ids).strip()
    return text if len(text) <= 120 else text[:119] + "…"


@runtime_checkable
class Decoding(Protocol):
    """What the callback needs of the module: a tokenizer with ``decode`` (for the clip text)."""

    tokenizer: Any


class EchoPictures(L.Callback):
    """Logs EchoClip text, a step-entropy figure and entropy histograms to TensorBoard.

    Args:
        every_n_epochs: log at epochs 0, N, 2N, ... (and at the first epoch of each fit); >= 1.
        max_groups: degenerate groups shown in the text panel and the figure; >= 1.
        max_step_chars: the most characters of decoded text shown per step; >= 1.
    """

    def __init__(self, every_n_epochs: int = 5, max_groups: int = 3, max_step_chars: int = 200) -> None:
        for key, value in dict(
            every_n_epochs=every_n_epochs, max_groups=max_groups, max_step_chars=max_step_chars
        ).items():
            if value < 1:
                raise ValueError(f"EchoPictures.{key} must be >= 1, got {value}")
        self.every_n_epochs = every_n_epochs
        self.max_groups = max_groups
        self.max_step_chars = max_step_chars
        self._rollout: RolloutCallback | None = None
        self._logger: TensorBoardLogger | None = None
        self._first_epoch: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        rollouts = [cb for cb in trainer.callbacks if isinstance(cb, RolloutCallback)]
        if not rollouts:
            raise ValueError(
                "EchoPictures draws the rollout batches of a RolloutCallback: add "
                "echorl_lightning.callbacks.rollout.RolloutCallback to trainer.callbacks"
            )
        if not isinstance(pl_module, Decoding):
            raise TypeError(
                f"EchoPictures needs a module with a tokenizer; {type(pl_module).__name__} has none"
            )
        self._rollout = rollouts[0]
        tb = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        self._logger = tb[0] if tb else None
        if not tb:
            rank_zero_warn(
                "EchoPictures writes to TensorBoard only and the trainer has no TensorBoardLogger "
                f"(loggers: {[type(lg).__name__ for lg in trainer.loggers]}): no EchoClip pictures"
            )
        self._first_epoch = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self._first_epoch is None:
            self._first_epoch = epoch
        if self._logger is None or self._rollout is None or not trainer.is_global_zero:
            return
        if not logs_at(epoch, self._first_epoch, self.every_n_epochs):
            return
        record = self._rollout.last_rollout
        if record is None or self._rollout.last_rollout_epoch != epoch:
            return
        tokenizer = pl_module.tokenizer  # checked at setup (Decoding)
        with torch.no_grad():
            log_echo_pictures(
                self._logger.experiment,  # the SummaryWriter (rank 0)
                record,
                epoch,
                lambda ids: tokenizer.decode(ids, skip_special_tokens=False),
                trainer.global_step,
                self.max_groups,
                self.max_step_chars,
            )
