"""Math answer verifier: ``math-verify`` run in a pool of worker processes with a hard per-item timeout.

Implements the binary RLVR reward of EchoRL (arXiv 2605.31228, "reward 1/0"): a completion scores 1.0 when
the answer it states is mathematically equivalent to the reference according to HuggingFace's
``math-verify``: ``parse`` the reference (boxed first if bare) and the completion with ``LatexExtractionConfig``
(boxed answers first) and ``ExprExtractionConfig`` ("final answer is 3", a trailing number), then
``verify(gold, prediction)``; 0.0 otherwise. math-verify reads every box of a completion together, so two
different boxed answers (hedging) never match a single reference.

Why a process pool: ``math-verify`` bounds its own work with ``signal.alarm``, which only works on the main
thread of the main interpreter, and a hostile completion (``\\boxed{9^{9^{9^{9}}}}``) can spin inside a
C-level big-integer operation that no in-process timer can interrupt. So every item runs in a worker
process with math-verify's internal timeouts switched off (``parsing_timeout=None``,
``timeout_seconds=None``); the pool enforces ``timeout_s`` per item itself, SIGKILLs a worker that runs past
its deadline and starts a replacement. Workers are started lazily (``forkserver`` with ``math_verify``
preloaded, so a replacement is a cheap fork; ``spawn`` also works), reused across calls, stopped by
:meth:`MathVerifier.close`, the context manager, garbage collection, or interpreter exit.

Start-up cost: a spawned or forkserver child re-imports the parent's ``__main__`` script (Python's own rule;
CPython 3.11's forkserver cannot preload it), so under ``python cli.py`` each worker start imports the
training stack once (about 12 s and 375 MB on a loaded 2-core CPU box) instead of about 1 s for math-verify
alone; launching as ``python -m <package>`` (a ``__main__.py``) avoids it. Item deadlines never include
start-up, and :meth:`MathVerifier.start` lets it overlap model loading.

Left out: no memory cap on workers (a hostile item can allocate until its deadline), no retry of an item
whose worker died, no multiple-choice (letter) answers (``StringExtractionConfig``).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Literal

logger = logging.getLogger(__name__)

_STARTUP_TIMEOUT_S = 120.0  # a worker that has not reported ready by then is broken, not slow
_PRELOAD = ["math_verify", __name__]  # imported once by the forkserver: a worker start is a fork


# ---- worker side ----------------------------------------------------------------------------------------
def _score(completion: str, reference: str, strict: bool) -> float:
    """1.0 when ``completion`` states an answer equivalent to ``reference``, else 0.0 (runs in a worker)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    # A bare reference ("\frac{1}{2}", "0.5") is not in a LaTeX environment; boxing it makes the LaTeX
    # extractor read it exactly, with the plain-expression extractor as a fallback.
    gold_text = reference if "\\boxed" in reference else "\\boxed{" + reference + "}"
    gold = parse(
        gold_text,
        extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
        parsing_timeout=None,
    )
    if not gold:
        return 0.0
    prediction = parse(
        completion,
        extraction_config=[LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()],
        parsing_timeout=None,
    )
    if not prediction:
        return 0.0
    return 1.0 if verify(gold, prediction, strict=strict, timeout_seconds=None) else 0.0


def _watch_parent(parent_pid: int) -> None:
    """Exit the worker when the process that owns the pool is gone (no orphans after a hard crash)."""
    while True:
        time.sleep(1.0)
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:  # the pid was reused by another user's process: the owner is gone
            os._exit(0)


def _worker_main(conn: Connection, parent_pid: int, strict: bool) -> None:
    """Worker loop: receive ``(index, completion, reference)``, answer ``(index, score, error)``; ``None``
    stops it. Reports ``("ready", None, None)`` after a warm-up item so start-up never eats a deadline."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the owner's to handle
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled" warnings: we time items
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    _score("\\boxed{\\frac{1}{2}}", "0.5", strict)  # builds the LaTeX parser once
    conn.send(("ready", None, None))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        index, completion, reference = message
        try:
            conn.send((index, _score(completion, reference, strict), None))
        except Exception as error:  # any failure of one item is reported, not fatal
            conn.send((index, None, f"{type(error).__name__}: {str(error)[:200]}"))


# ---- owner side -----------------------------------------------------------------------------------------
@dataclass
class _Worker:
    process: Any  # multiprocessing.process.BaseProcess
    conn: Connection
    started_at: float
    ready: bool = False
    item: int | None = None
    deadline: float = 0.0


def _stop_workers(workers: list[_Worker]) -> None:
    """Ask every worker to stop, then kill whatever is still alive (used by close, GC and exit)."""
    for worker in workers:
        try:
            if worker.item is None and worker.ready:
                worker.conn.send(None)
        except (OSError, ValueError):
            pass
    for worker in workers:
        worker.process.join(timeout=0.5)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(timeout=2.0)
        worker.conn.close()
    workers.clear()


class MathVerifier:
    """Batch verifier (the ``Verifier`` protocol) backed by ``math-verify`` in worker processes.

    Args:
        timeout_s: hard wall-clock limit per item, enforced by killing the worker; the item scores 0.0.
        num_workers: worker processes (items of one batch are verified in parallel).
        start_method: ``forkserver`` (default; workers fork from a server with math-verify imported) or
            ``spawn``. ``fork`` is not offered: forking a process that holds CUDA or threads is unsafe.
        strict: math-verify's ``strict`` mode (variables must match by name, sets are not tuples).

    Attributes:
        num_timeouts: items killed at their deadline since construction.
        num_errors: items whose worker raised or died since construction.
    """

    def __init__(
        self,
        timeout_s: float = 3.0,
        num_workers: int = 2,
        start_method: Literal["forkserver", "spawn"] = "forkserver",
        strict: bool = True,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"MathVerifier: timeout_s must be > 0, got {timeout_s}")
        if num_workers < 1:
            raise ValueError(f"MathVerifier: num_workers must be >= 1, got {num_workers}")
        if start_method not in ("forkserver", "spawn"):
            raise ValueError(
                f"MathVerifier: start_method must be 'forkserver' or 'spawn', got {start_method!r}"
            )
        self.timeout_s = float(timeout_s)
        self.num_workers = num_workers
        self.start_method = start_method
        self.strict = strict
        self.num_timeouts = 0
        self.num_errors = 0
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._finalizer = weakref.finalize(self, _stop_workers, self._workers)

    # ---- public API -------------------------------------------------------------------------------------
    def __call__(self, completions: Sequence[str], references: Sequence[str]) -> list[float | None]:
        """Score each completion against its reference: 1.0 equivalent, 0.0 otherwise (timeouts included)."""
        if len(completions) != len(references):
            raise ValueError(f"MathVerifier: {len(completions)} completions but {len(references)} references")
        scores: list[float | None] = [0.0] * len(completions)
        todo = deque(
            i
            for i, (completion, reference) in enumerate(zip(completions, references, strict=True))
            if completion.strip() and reference.strip()
        )
        if not todo:
            return scores
        with self._lock:
            try:
                timed_out, failed = self._run(todo, completions, references, scores)
            except BaseException:  # e.g. KeyboardInterrupt: busy workers would answer into the next call
                _stop_workers(self._workers)
                raise
        if timed_out or failed:
            logger.warning(
                "MathVerifier: %d of %d items timed out after %.2f s (items %s), %d failed (items %s); "
                "they score 0.0 and their workers were replaced",
                len(timed_out),
                len(completions),
                self.timeout_s,
                timed_out[:8],
                len(failed),
                failed[:8],
            )
        return scores

    def start(self) -> None:
        """Start the workers now without waiting for them (e.g. in ``setup``, so that their imports overlap
        model loading); otherwise the first call starts them."""
        with self._lock:
            self._ensure_workers()

    def close(self) -> None:
        """Stop all workers; a later call starts new ones."""
        with self._lock:
            _stop_workers(self._workers)

    def __enter__(self) -> MathVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # Copies (deepcopy, pickling into a checkpoint or a dataloader worker) get their own, lazily started pool.
        return {k: getattr(self, k) for k in ("timeout_s", "num_workers", "start_method", "strict")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    # ---- pool -------------------------------------------------------------------------------------------
    def _start_worker(self) -> _Worker:
        ctx = multiprocessing.get_context(self.start_method)
        if self.start_method == "forkserver":
            ctx.set_forkserver_preload(_PRELOAD)  # no effect once the server runs; then workers import lazily
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        process = ctx.Process(
            target=_worker_main,
            args=(child_conn, os.getpid(), self.strict),
            daemon=True,
            name="MathVerifier-worker",
        )
        process.start()
        child_conn.close()  # the worker holds the other end; its death now reads as EOF here
        return _Worker(process=process, conn=parent_conn, started_at=time.monotonic())

    def _ensure_workers(self) -> None:
        while len(self._workers) < self.num_workers:
            self._workers.append(self._start_worker())

    def _replace(self, worker: _Worker) -> None:
        worker.process.kill()
        worker.process.join(timeout=2.0)
        worker.conn.close()
        self._workers[self._workers.index(worker)] = self._start_worker()

    def _run(
        self,
        todo: deque[int],
        completions: Sequence[str],
        references: Sequence[str],
        scores: list[float | None],
    ) -> tuple[list[int], list[int]]:
        """Dispatch ``todo`` over the workers until every item is scored; returns (timed out, failed)."""
        self._ensure_workers()
        timed_out: list[int] = []
        failed: list[int] = []
        while True:
            # 1. hand an item to every idle, ready worker
            for worker in list(self._workers):
                if worker.ready and worker.item is None and todo:
                    index = todo.popleft()
                    try:
                        worker.conn.send((index, completions[index], references[index]))
                    except (OSError, ValueError):  # died while idle: the item goes back, not counted
                        todo.appendleft(index)
                        self._replace(worker)
                        continue
                    worker.item = index
                    worker.deadline = time.monotonic() + self.timeout_s
            busy = [w for w in self._workers if w.item is not None]
            if not todo and not busy:
                return timed_out, failed
            # 2. wait for a reply, a death, or the nearest deadline
            deadlines = [w.deadline for w in busy]
            deadlines += [w.started_at + _STARTUP_TIMEOUT_S for w in self._workers if not w.ready]
            waiting = [w for w in self._workers if w.item is not None or not w.ready]
            ready_conns = wait([w.conn for w in waiting], timeout=max(0.0, min(deadlines) - time.monotonic()))
            for worker in waiting:
                if worker.conn not in ready_conns:
                    continue
                try:
                    index, score, error = worker.conn.recv()
                except (EOFError, OSError):  # the worker died (segfault, OOM kill, ...)
                    if worker.item is not None:
                        failed.append(worker.item)
                        self.num_errors += 1
                    elif not worker.ready:
                        _stop_workers(self._workers)
                        raise RuntimeError(
                            f"MathVerifier: a worker process ({self.start_method}) died during start-up; "
                            "is math-verify importable in a fresh interpreter?"
                        ) from None
                    self._replace(worker)
                    continue
                if index == "ready":
                    worker.ready = True
                    continue
                if error is not None:
                    failed.append(index)
                    self.num_errors += 1
                    logger.debug("MathVerifier: item %d raised %s", index, error)
                else:
                    scores[index] = score
                worker.item = None
            # 3. kill what ran past its deadline
            now = time.monotonic()
            for worker in list(self._workers):
                if worker.item is not None and now >= worker.deadline:
                    timed_out.append(worker.item)
                    self.num_timeouts += 1
                    self._replace(worker)
                elif not worker.ready and now >= worker.started_at + _STARTUP_TIMEOUT_S:
                    _stop_workers(self._workers)
                    raise RuntimeError(
                        f"MathVerifier: a worker process did not start within {_STARTUP_TIMEOUT_S:.0f} s"
                    )
