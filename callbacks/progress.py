"""Rollout progress on the console: what a user sees while an epoch's rollout runs, and after.

``RolloutProgress`` is a :class:`~echorl_lightning.rollout.progress.RolloutObserver`: the rollout callback
finds it among the trainer's callbacks and the rollout pipeline reports each phase of the epoch's rollout to
it (generation, verification, the no-grad old-log-prob and reference passes). On rank 0 it shows:

* in a terminal, a live rich progress bar per phase (rows done of the epoch's rows, response tokens/s, ETA of
  the epoch's rollout, elapsed), removed when the rollout ends;
* otherwise (CI, a log file), plain lines: one when a phase ends, and one every ``plain_interval_s`` seconds
  while a long phase runs;
* after each epoch's rollout, one line from the rollout callback's metrics: epoch, ``reward/mean``,
  ``rollout/frac_all_success``, ``echo/num_clips``, ``rollout/response_length``, ``perf/rollout_tokens_per_s``
  and ``perf/rollout_s`` (validation prints its own ``[val]`` line: :mod:`echorl_lightning.eval.hooks`).

The ETA is the current phase's remaining rows at its rate so far plus the previous epoch's durations of the
phases still to come. The HF engine reports per generated chunk; engines that report nothing while they run
(vLLM) show their phase at 0 until it ends. Under DDP the lines show rank 0's rows (TensorBoard has the global
values). Left out: progress inside one generated chunk and inside the log-prob pass; other ranks' progress.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as L
from torch import Tensor

from echorl_lightning.rollout.progress import rate_and_eta

EPOCH_FIELDS = (
    ("reward/mean", "reward {:.3f}"),
    ("rollout/frac_all_success", "all-success {:.3f}"),
    ("echo/num_clips", "clips {:.0f}"),
    ("rollout/response_length", "response {:.1f} tok"),
    ("perf/rollout_tokens_per_s", "rollout {:,.0f} tok/s"),
    ("perf/rollout_s", "in {:.1f} s"),
)
"""The per-epoch line: metric key and its format, in order."""


def clock(seconds: float | None) -> str:
    """``m:ss`` (``h:mm:ss`` from an hour), ``?`` for None."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def metrics_line(
    prefix: str, metrics: Mapping[str, Tensor | float], fields: tuple[tuple[str, str], ...]
) -> str:
    """``prefix`` then each present field formatted, joined by `` · ``."""
    parts = [fmt.format(float(metrics[key])) for key, fmt in fields if key in metrics]
    return " · ".join([prefix, *parts])


@dataclass
class _Phase:
    name: str
    total: int
    t0: float
    done: int = 0
    tokens: int = 0
    last_line: float = 0.0
    task: Any = None


class RolloutProgress(L.Callback):
    """Live rollout progress and a one-line summary per epoch (see the module docstring).

    Args:
        plain: None: rich live bars when stdout is a terminal, plain lines otherwise; True: always plain
            lines; False: always rich.
        plain_interval_s: in plain mode, the least time between two lines of one running phase.
        epoch_line: print the per-epoch rollout line.
    """

    def __init__(
        self, plain: bool | None = None, plain_interval_s: float = 30.0, epoch_line: bool = True
    ) -> None:
        if plain_interval_s <= 0:
            raise ValueError(f"RolloutProgress.plain_interval_s must be > 0, got {plain_interval_s}")
        self.plain = plain
        self.plain_interval_s = plain_interval_s
        self.epoch_line = epoch_line
        self._active = True
        self._epoch = 0
        self._phase: _Phase | None = None
        self._live: Any = None
        self._durations: dict[str, float] = {}  # this epoch's phases so far, seconds
        self._previous: dict[str, float] = {}  # the previous epoch's

    # ---- Lightning hooks ----------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._active = trainer.is_global_zero

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._stop_live()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._stop_live()

    # ---- the observer -------------------------------------------------------------------------------
    def rollout_start(self, epoch: int, rows: int) -> None:
        if not self._active:
            return
        self._epoch, self._durations = epoch, {}
        if self._use_rich():
            from rich import get_console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._live = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TextColumn("ETA {task.fields[eta]}"),
                TimeElapsedColumn(),
                console=get_console(),
                transient=True,
            )
            self._live.start()

    def phase_start(self, name: str, total: int) -> None:
        if not self._active:
            return
        now = time.perf_counter()
        self._phase = _Phase(name, total, now, last_line=now)
        if self._live is not None:
            desc = f"epoch {self._epoch} {name}"
            self._phase.task = self._live.add_task(desc, total=total, rate="", eta="?")  # no rate yet

    def phase_advance(self, rows: int, tokens: int) -> None:
        phase = self._phase
        if not self._active or phase is None:
            return
        phase.done += rows
        phase.tokens += tokens
        now = time.perf_counter()
        if self._live is not None:
            rate = rate_and_eta(
                phase.done, phase.total, phase.tokens, now - phase.t0, self._rest_s(phase.name)
            )
            self._live.update(
                phase.task,
                completed=phase.done,
                rate=self._rate(rate.tokens_per_s, rate.rows_per_s),
                eta=clock(rate.eta_s),
            )
        elif phase.done < phase.total and now - phase.last_line >= self.plain_interval_s:
            phase.last_line = now
            self._print(self._phase_line(phase, now))

    def phase_end(self) -> None:
        phase = self._phase
        if not self._active or phase is None:
            return
        now = time.perf_counter()
        self._durations[phase.name] = self._durations.get(phase.name, 0.0) + now - phase.t0
        if self._live is None:
            self._print(self._phase_line(phase, now))
        self._phase = None

    def rollout_end(self, metrics: Mapping[str, Tensor]) -> None:
        if not self._active:
            return
        self._stop_live()
        self._previous = self._durations
        if self.epoch_line:
            self._print(metrics_line(f"epoch {self._epoch}", metrics, EPOCH_FIELDS))

    # ---- display ------------------------------------------------------------------------------------
    def _rest_s(self, name: str) -> float:
        """The previous epoch's time of the phases not yet started in this one (the ETA's tail)."""
        return sum(s for n, s in self._previous.items() if n != name and n not in self._durations)

    def _phase_line(self, phase: _Phase, now: float) -> str:
        rate = rate_and_eta(phase.done, phase.total, phase.tokens, now - phase.t0, self._rest_s(phase.name))
        line = f"epoch {self._epoch} rollout · {phase.name} {phase.done:,}/{phase.total:,} rows"
        if phase.tokens:
            line += f" · {phase.tokens:,} tokens"
        line += f" · {now - phase.t0:.2f} s · {self._rate(rate.tokens_per_s, rate.rows_per_s)}"
        return line + ("" if phase.done >= phase.total else f" · ETA {clock(rate.eta_s)}")

    @staticmethod
    def _rate(tokens_per_s: float, rows_per_s: float) -> str:
        return f"{tokens_per_s:,.0f} tok/s" if tokens_per_s > 0 else f"{rows_per_s:,.0f} rows/s"

    def _use_rich(self) -> bool:
        if self.plain:
            return False
        try:
            from rich import get_console
        except ImportError:  # rich comes with transformers; without it, plain lines
            return False
        return self.plain is False or get_console().is_terminal

    def _print(self, text: str) -> None:
        if self._live is not None:
            self._live.console.print(text, markup=False, highlight=False)
        elif self._use_rich():
            from rich import get_console

            get_console().print(text, markup=False, highlight=False)
        else:
            print(text, flush=True)

    def _stop_live(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
