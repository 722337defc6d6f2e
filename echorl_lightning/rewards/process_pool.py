"""A pool of worker processes that runs one function on untrusted items under a hard per-item deadline and a
per-worker memory limit: the isolation that :class:`~echorl_lightning.rewards.math_verify.MathVerifier` needs
to parse model output (every rollout is scored by a verifier; a hostile rollout must neither stall nor take
down the training process).

Implements, per item: the owner hands ``args`` to an idle worker, which answers ``fn(*args)``. An item ends
in one of four states (:data:`ItemStatus`):

* ``ok``: the worker answered in time; its value is returned.
* ``timeout``: no answer within ``timeout_s``; the worker is SIGKILLed and replaced.
* ``memory``: the worker's resident memory (RSS, read from ``/proc/<pid>/statm`` every
  ``_MEMORY_POLL_S`` while the item runs) grew more than ``memory_limit_mb`` above its footprint at start-up,
  so the owner SIGKILLed it; or the worker raised ``MemoryError`` outside ``fn``'s own error handling (it
  exits with ``_EXIT_MEMORY``); or it was SIGKILLed by someone else (the kernel's OOM killer's signal). The
  worker is replaced.
* ``error``: ``fn`` raised, or the worker died another way (a segfault); a dead worker is replaced.

Two layers bound memory: the owner's RSS watchdog above (counted), and an address-space cap
(``RLIMIT_AS``) that each worker sets on itself after start-up at its start-up size plus twice the limit,
so that one allocation too large and too fast for a 50 ms poll fails at once with ``MemoryError`` instead of
taking the machine's memory. Libraries that catch ``Exception`` (math-verify, sympy) may swallow that
``MemoryError`` and return normally: such an item is protected but ends ``ok``, not ``memory``.

Workers start lazily (``forkserver`` with ``preload`` imported in the server, so a replacement is a cheap
fork; or ``spawn``), run ``initializer()`` and one ``fn(*warmup)``, report ready, and are reused across
calls; start-up never counts against an item's deadline. They exit when the owning process is gone, and are
stopped by :meth:`ProcessPool.close`, garbage collection or interpreter exit.

Left out: retries of failed items, a memory watchdog where ``/proc`` is missing (non-Linux: only the
address-space cap, where the OS enforces it), CPU-time limits (the wall-clock deadline bounds them).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import signal
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Literal

logger = logging.getLogger(__name__)

ItemStatus = Literal["ok", "timeout", "memory", "error"]

_STARTUP_TIMEOUT_S = 120.0  # a worker that has not reported ready by then is broken, not slow
_MEMORY_POLL_S = 0.05  # how often the owner reads the RSS of busy workers
_EXIT_MEMORY = 86  # exit code of a worker that hit MemoryError outside fn's own error handling
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def _statm_bytes(pid: int | str, field: int) -> int | None:
    """Field ``field`` of ``/proc/<pid>/statm`` in bytes (0: address space, 1: resident), None without
    ``/proc`` or once the process is gone."""
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[field]) * _PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return None


# ---- worker side ----------------------------------------------------------------------------------------
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


def _cap_address_space(headroom_bytes: int) -> None:
    """Cap this process's address space at its current size plus ``headroom_bytes`` (never raising an
    existing lower hard limit); a no-op where the size cannot be read."""
    size = _statm_bytes("self", 0)
    if size is None:
        return
    cap = size + headroom_bytes
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    except (ValueError, OSError) as error:  # a sandbox that forbids it: the RSS watchdog still applies
        logger.warning("could not cap a worker's address space at %d bytes: %s", cap, error)


def _worker_main(
    conn: Connection,
    parent_pid: int,
    fn: Callable[..., Any],
    initializer: Callable[[], None] | None,
    warmup: tuple[Any, ...] | None,
    memory_limit_bytes: int | None,
) -> None:
    """Worker loop: receive ``(index, args)``, answer ``(index, fn(*args), None)`` or ``(index, None,
    error)``; ``None`` stops it. Reports ``("ready", rss_bytes, None)`` after start-up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the owner's to handle
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    if initializer is not None:
        initializer()
    if warmup is not None:
        fn(*warmup)
    if memory_limit_bytes is not None:
        _cap_address_space(2 * memory_limit_bytes)
    conn.send(("ready", _statm_bytes("self", 1), None))
    while True:
        try:
            message = conn.recv()
            if message is None:
                return
            index, args = message
            try:
                reply = (index, fn(*args), None)
            except MemoryError:
                raise
            except Exception as error:  # any other failure of one item is reported, not fatal
                reply = (index, None, f"{type(error).__name__}: {str(error)[:200]}")
            conn.send(reply)
        except MemoryError:
            os._exit(_EXIT_MEMORY)  # the owner sees the exit code; nothing is sent from a starved process
        except (EOFError, OSError):
            return


# ---- owner side -----------------------------------------------------------------------------------------
@dataclass
class _Worker:
    process: Any  # multiprocessing.process.BaseProcess
    conn: Connection
    started_at: float
    ready: bool = False
    rss_limit: int | None = None  # bytes; set when the worker reports its start-up RSS
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


@dataclass
class PoolResult:
    """What :meth:`ProcessPool.run` returns: per item its value (None unless ``ok``), its status, and the
    error text of ``error`` items (empty otherwise)."""

    values: list[Any]
    status: list[ItemStatus]
    errors: list[str]


class ProcessPool:
    """``fn`` applied to items in worker processes with a hard deadline and a memory limit per item.

    Args:
        fn: a module-level function (pickled by reference); called as ``fn(*args)`` for each item.
        num_workers: worker processes; items of one call run in parallel.
        timeout_s: wall-clock limit per item, enforced by killing the worker.
        memory_limit_mb: the most resident memory (MiB) a worker may add to its start-up footprint while it
            runs an item; None: no limit.
        start_method: ``forkserver`` or ``spawn`` (never ``fork``: forking a process that holds CUDA or
            threads is unsafe).
        initializer: called once in each worker before the warm-up (module-level, pickled by reference).
        warmup: arguments of one ``fn`` call each worker makes before it reports ready; None: none.
        preload: modules the forkserver imports once, so that a worker start is a fork.
        name: the workers' process name, used in messages.

    Attributes:
        num_timeouts, num_memory_kills, num_errors: items that ended ``timeout``, ``memory``, ``error``
        since construction.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        num_workers: int,
        timeout_s: float,
        memory_limit_mb: float | None,
        start_method: Literal["forkserver", "spawn"] = "forkserver",
        initializer: Callable[[], None] | None = None,
        warmup: tuple[Any, ...] | None = None,
        preload: Sequence[str] = (),
        name: str = "ProcessPool",
    ) -> None:
        self.fn = fn
        self.num_workers = num_workers
        self.timeout_s = float(timeout_s)
        self.memory_limit_bytes = None if memory_limit_mb is None else int(memory_limit_mb * 2**20)
        self.start_method = start_method
        self.initializer = initializer
        self.warmup = warmup
        self.preload = list(preload)
        self.name = name
        self.num_timeouts = 0
        self.num_memory_kills = 0
        self.num_errors = 0
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._finalizer = weakref.finalize(self, _stop_workers, self._workers)

    def run(self, items: Sequence[tuple[Any, ...]]) -> PoolResult:
        """Run ``fn(*args)`` for every ``args`` in ``items``; returns when each has an outcome."""
        result = PoolResult([None] * len(items), ["ok"] * len(items), [""] * len(items))
        if not items:
            return result
        with self._lock:
            try:
                self._run(items, result)
            except BaseException:  # e.g. KeyboardInterrupt: busy workers would answer into the next call
                _stop_workers(self._workers)
                raise
        return result

    def start(self) -> None:
        """Start the workers now without waiting for them; otherwise the first call starts them."""
        with self._lock:
            self._ensure_workers()

    def close(self) -> None:
        """Stop all workers; a later call starts new ones."""
        with self._lock:
            _stop_workers(self._workers)

    # ---- internals --------------------------------------------------------------------------------------
    def _start_worker(self) -> _Worker:
        ctx = multiprocessing.get_context(self.start_method)
        if self.start_method == "forkserver" and self.preload:
            ctx.set_forkserver_preload(self.preload)  # no effect once the server runs
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        process = ctx.Process(
            target=_worker_main,
            args=(child_conn, os.getpid(), self.fn, self.initializer, self.warmup, self.memory_limit_bytes),
            daemon=True,
            name=f"{self.name}-worker",
        )
        process.start()
        child_conn.close()  # the worker holds the other end; its death now reads as EOF here
        return _Worker(process=process, conn=parent_conn, started_at=time.monotonic())

    def _ensure_workers(self) -> None:
        while len(self._workers) < self.num_workers:
            self._workers.append(self._start_worker())

    def _replace(self, worker: _Worker, exiting: bool = False) -> int | None:
        """Kill ``worker`` (if still alive), start its replacement; returns the dead one's exit code.
        ``exiting``: its pipe closed, so it is exiting on its own; wait briefly to keep its exit code."""
        if exiting:
            worker.process.join(timeout=1.0)
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=2.0)
        worker.conn.close()
        self._workers[self._workers.index(worker)] = self._start_worker()
        return worker.process.exitcode

    def _end(self, worker: _Worker, result: PoolResult, status: ItemStatus, error: str = "") -> None:
        """Record the end of ``worker``'s item as ``status`` and count it."""
        assert worker.item is not None
        result.status[worker.item] = status
        result.errors[worker.item] = error
        if status == "timeout":
            self.num_timeouts += 1
        elif status == "memory":
            self.num_memory_kills += 1
        elif status == "error":
            self.num_errors += 1
        worker.item = None

    def _run(self, items: Sequence[tuple[Any, ...]], result: PoolResult) -> None:
        """Dispatch every item over the workers until each has an outcome in ``result``."""
        self._ensure_workers()
        todo = deque(range(len(items)))
        while True:
            # 1. hand an item to every idle, ready worker
            for worker in list(self._workers):
                if worker.ready and worker.item is None and todo:
                    index = todo.popleft()
                    try:
                        worker.conn.send((index, items[index]))
                    except (OSError, ValueError):  # died while idle: the item goes back, not counted
                        todo.appendleft(index)
                        self._replace(worker)
                        continue
                    worker.item = index
                    worker.deadline = time.monotonic() + self.timeout_s
            busy = [w for w in self._workers if w.item is not None]
            if not todo and not busy:
                return
            # 2. wait for a reply, a death, the nearest deadline, or the next memory poll
            wake = [w.deadline for w in busy]
            wake += [w.started_at + _STARTUP_TIMEOUT_S for w in self._workers if not w.ready]
            if self.memory_limit_bytes is not None and busy:
                wake.append(time.monotonic() + _MEMORY_POLL_S)
            waiting = [w for w in self._workers if w.item is not None or not w.ready]
            ready_conns = wait([w.conn for w in waiting], timeout=max(0.0, min(wake) - time.monotonic()))
            for worker in waiting:
                if worker.conn in ready_conns:
                    self._receive(worker, result)
            # 3. kill what ran past its deadline or its memory limit
            now = time.monotonic()
            for worker in list(self._workers):
                if worker.item is not None and now >= worker.deadline:
                    self._end(worker, result, "timeout")
                    self._replace(worker)
                elif worker.item is not None and worker.rss_limit is not None:
                    rss = _statm_bytes(worker.process.pid, 1)
                    if rss is not None and rss > worker.rss_limit:
                        self._end(worker, result, "memory")
                        self._replace(worker)
                elif not worker.ready and now >= worker.started_at + _STARTUP_TIMEOUT_S:
                    _stop_workers(self._workers)
                    raise RuntimeError(
                        f"{self.name}: a worker process did not start within {_STARTUP_TIMEOUT_S:.0f} s"
                    )

    def _receive(self, worker: _Worker, result: PoolResult) -> None:
        """Read one message from ``worker`` (a reply, its ready report, or its death) into ``result``."""
        try:
            index, value, error = worker.conn.recv()
        except (EOFError, OSError):  # the worker died
            if not worker.ready:
                _stop_workers(self._workers)
                raise RuntimeError(
                    f"{self.name}: a worker process ({self.start_method}) died during start-up; "
                    "are its modules importable in a fresh interpreter?"
                ) from None
            had_item = worker.item is not None
            exit_code = self._replace(worker, exiting=True)
            if had_item:
                if exit_code in (_EXIT_MEMORY, -signal.SIGKILL):
                    self._end(worker, result, "memory")
                else:
                    self._end(worker, result, "error", f"worker died with exit code {exit_code}")
            return
        if index == "ready":
            worker.ready = True
            if self.memory_limit_bytes is not None and value is not None:
                worker.rss_limit = value + self.memory_limit_bytes
            return
        if error is not None:
            self._end(worker, result, "error", error)
        else:
            result.values[index] = value
            worker.item = None
