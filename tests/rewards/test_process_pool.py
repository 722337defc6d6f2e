"""Memory limits of the verifier's worker pool, for real: real worker processes, real allocations.

The pool is exercised with standard-library functions as the item function (``operator.mul`` on bytes
allocates, ``time.sleep`` sleeps, ``os.abort`` crashes), so nothing here is a stand-in; the math verifier
is exercised with a real hostile completion. Limits are tens of MiB, so no test can take the machine's
memory: the largest allocation attempted is refused by the address-space cap before any page is touched.
"""

from __future__ import annotations

import operator
import os
import time

import pytest

from echorl_lightning.rewards.math_verify import MathVerifier
from echorl_lightning.rewards.process_pool import ProcessPool

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/self/statm"), reason="the memory watchdog reads /proc (Linux only)"
)

MIB = 2**20
LIMIT_MB = 32  # RSS watchdog at start-up RSS + 32 MiB; address space capped at start-up size + 64 MiB


def _address_space_limit(pid: int) -> str:
    """The soft "Max address space" limit of process ``pid`` as /proc prints it ("unlimited" or bytes)."""
    with open(f"/proc/{pid}/limits") as limits:
        line = next(line for line in limits if line.startswith("Max address space"))
    return line.split()[3]


@pytest.fixture(scope="module")
def pool() -> ProcessPool:
    p = ProcessPool(operator.mul, num_workers=2, timeout_s=10.0, memory_limit_mb=LIMIT_MB, name="TestPool")
    yield p
    p.close()


def test_items_run_and_workers_carry_the_caps(pool: ProcessPool) -> None:
    result = pool.run([(6, 7), (b"ab", 3)])
    assert result.values == [42, b"ababab"]
    assert result.status == ["ok", "ok"]
    ready = [worker for worker in pool._workers if worker.ready]  # one may have done both items
    assert ready
    for worker in ready:
        cap = int(_address_space_limit(worker.process.pid))
        size = int(open(f"/proc/{worker.process.pid}/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        # the cap is the size at start-up + 2 * 32 MiB; the size has not grown since (no item allocated much)
        assert size < cap <= size + 2 * LIMIT_MB * MIB
        assert worker.rss_limit is not None and worker.rss_limit > LIMIT_MB * MIB


def test_allocation_past_the_cap_is_a_memory_kill(pool: ProcessPool) -> None:
    # b"x" * 256 MiB needs 4x the 64 MiB of address space left: MemoryError in the worker, which exits with
    # its memory code; the item is a memory kill, the worker is replaced, the other item is untouched.
    before = (pool.num_memory_kills, pool.num_errors, pool.num_timeouts)
    old_pids = {w.process.pid for w in pool._workers}
    start = time.monotonic()
    result = pool.run([(b"x", 256 * MIB), (2, 3)])
    assert time.monotonic() - start < 5.0
    assert result.status == ["memory", "ok"] and result.values == [None, 6]
    assert (pool.num_memory_kills, pool.num_errors, pool.num_timeouts) == (
        before[0] + 1,
        before[1],
        before[2],
    )
    assert len(pool._workers) == 2 and {w.process.pid for w in pool._workers} != old_pids
    assert pool.run([(5, 5)]).values == [25]  # the replacement works


def test_timeout_error_and_crash_are_told_apart() -> None:
    with_sleep = ProcessPool(time.sleep, num_workers=1, timeout_s=0.3, memory_limit_mb=LIMIT_MB)
    with_div = ProcessPool(operator.truediv, num_workers=1, timeout_s=10.0, memory_limit_mb=LIMIT_MB)
    with_abort = ProcessPool(os.abort, num_workers=1, timeout_s=10.0, memory_limit_mb=LIMIT_MB)
    try:
        assert with_sleep.run([(0.0,), (30.0,)]).status == ["ok", "timeout"]
        divided = with_div.run([(1, 0), (1, 4)])
        assert divided.status == ["error", "ok"] and divided.values == [None, 0.25]
        assert divided.errors[0].startswith("ZeroDivisionError")
        aborted = with_abort.run([()])  # SIGABRT: a crash, not a memory kill
        assert aborted.status == ["error"] and "exit code -6" in aborted.errors[0]
        counts = [
            (p.num_timeouts, p.num_memory_kills, p.num_errors) for p in (with_sleep, with_div, with_abort)
        ]
        assert counts == [(1, 0, 0), (0, 0, 1), (0, 0, 1)]
    finally:
        for p in (with_sleep, with_div, with_abort):
            p.close()


def test_no_limit_leaves_the_address_space_alone() -> None:
    unlimited = ProcessPool(operator.add, num_workers=1, timeout_s=10.0, memory_limit_mb=None)
    try:
        assert unlimited.run([(1, 2)]).values == [3]
        worker = unlimited._workers[0]
        assert _address_space_limit(worker.process.pid) == _address_space_limit(os.getpid())
        assert worker.rss_limit is None
    finally:
        unlimited.close()


def test_hostile_math_grows_past_the_limit_and_the_whole_pool_is_rebuilt() -> None:
    # 4^(2^32) makes sympy/math-verify grow by about 50 MB/s (measured: 398 MB after 8 s, never finishing);
    # the RSS watchdog kills each worker 32 MiB above its start-up footprint, about 2 s in, long before
    # the 60 s deadline. Both workers die at once; the next call runs on a rebuilt pool.
    with MathVerifier(timeout_s=60.0, num_workers=2, memory_limit_mb=LIMIT_MB) as v:
        v(["\\boxed{1}"], ["1"])
        old_pids = {w.process.pid for w in v._pool._workers}
        start = time.monotonic()
        scores = v(["\\boxed{4^{2^{32}}}", "\\boxed{2^{2^{32}}}"], ["1", "1"])
        elapsed = time.monotonic() - start
        assert scores == [None, None]
        assert elapsed < 30.0, elapsed
        assert (v.num_memory_kills, v.num_timeouts, v.num_errors) == (2, 0, 0)
        assert v.stats() == {"verifier_timeouts": 0, "verifier_oom": 2, "verifier_errors": 0}
        assert not old_pids & {w.process.pid for w in v._pool._workers}
        assert v(["\\boxed{\\frac{1}{2}}", "\\boxed{3}"], ["0.5", "4"]) == [1.0, 0.0]


def test_workers_that_die_at_start_up_raise_instead_of_hanging() -> None:
    # os.abort as the initializer: every worker dies before it is ready. The call must fail at once with
    # a message, not wait for a worker that will never come.
    broken = ProcessPool(
        operator.add, num_workers=2, timeout_s=10.0, memory_limit_mb=LIMIT_MB, initializer=os.abort
    )
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="died during start-up"):
        broken.run([(1, 2)])
    assert time.monotonic() - start < 10.0
    assert broken._workers == []  # every worker was stopped
