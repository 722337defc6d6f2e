"""MathVerifier: real math-verify in real worker processes (no mocks).

Time bounds are derived from the verifier's own timeout: a batch of n items on w workers must return
within ceil(n / w) * (timeout_s + MARGIN_S), where MARGIN_S covers IPC and restarting a killed worker
(a fork from the preloaded forkserver plus one warm-up parse). Worker start-up of a fresh pool is excluded
by warming the pool before timing.
"""

from __future__ import annotations

import copy
import math
import os
import signal
import threading
import time

import pytest

from echorl_lightning.data.types import Verifier
from echorl_lightning.rewards.math_verify import MathVerifier

MARGIN_S = 2.5

EASY_BATCH = (
    # completion, reference, expected score
    ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("So the answer is $0.5$.", "\\frac{1}{2}", 1.0),
    ("Therefore $x = \\boxed{1/2}$.", "\\frac{1}{2}", 1.0),
    ("The final answer is 3", "3", 1.0),
    ("\\boxed{x^2 + 1}", "1 + x^2", 1.0),
    ("\\boxed{4}", "3", 0.0),
    ("The final answer is 7", "\\frac{1}{2}", 0.0),
    # math-verify reads every box ("boxed='all'"): two different boxed answers form the set {2, 3}, which
    # is not 3, so hedging scores 0.
    ("\\boxed{2} at first, but on reflection \\boxed{3}", "3", 0.0),
)


def _nested_fraction(depth: int) -> str:
    # 1/(1/(...(1/2))): an even depth equals 2, an odd one 1/2; never the reference "1" below
    text = "2"
    for _ in range(depth):
        text = "\\frac{1}{" + text + "}"
    return text


HOSTILE = [
    "\\boxed{9^{9^{9^{9}}}}",  # exact evaluation would not finish
    "\\boxed{10^{10^{10}}}",
    "\\boxed{" + _nested_fraction(301) + "}",  # = 1/2 when it finishes
    "\\boxed{" + "7" * 100_000 + "}",  # 100 kB of digits
    "7" * 100_000,
    "\\boxed{\\frac{1}{2",  # unbalanced braces
    "}}}{{{\\boxed}}}\\frac{",
    bytes(range(256)).decode("latin-1") * 4,  # binary garbage, NUL included
]


def _bound(verifier: MathVerifier, n_items: int) -> float:
    return math.ceil(n_items / verifier.num_workers) * (verifier.timeout_s + MARGIN_S)


@pytest.fixture(scope="module")
def verifier() -> MathVerifier:
    with MathVerifier(timeout_s=3.0, num_workers=2) as v:
        v(["\\boxed{1}"], ["1"])  # start the workers outside any timed section
        yield v


def _check_easy(verifier: MathVerifier) -> None:
    completions = [c for c, _, _ in EASY_BATCH]
    references = [r for _, r, _ in EASY_BATCH]
    assert verifier(completions, references) == [s for _, _, s in EASY_BATCH]


def test_is_a_verifier() -> None:
    assert isinstance(MathVerifier(), Verifier)


def test_equivalent_and_wrong_answers(verifier: MathVerifier) -> None:
    _check_easy(verifier)


def test_empty_completion_and_length_mismatch(verifier: MathVerifier) -> None:
    assert verifier(["", "   ", "\\boxed{5}"], ["5", "5", "5"]) == [0.0, 0.0, 1.0]
    assert verifier([], []) == []
    with pytest.raises(ValueError, match="2 completions but 1 references"):
        verifier(["1", "2"], ["1"])


def test_hostile_outputs_return_in_time_and_pool_survives(verifier: MathVerifier) -> None:
    references = ["1"] * len(HOSTILE)
    start = time.monotonic()
    scores = verifier(HOSTILE, references)
    elapsed = time.monotonic() - start
    assert elapsed < _bound(verifier, len(HOSTILE)), elapsed
    assert scores == [0.0] * len(HOSTILE)  # none of them states 1
    assert verifier.num_timeouts >= 1  # the tower of exponents at least cannot finish in 3 s
    _check_easy(verifier)  # the replaced workers answer correctly


def test_hostile_one_at_a_time(verifier: MathVerifier) -> None:
    for text in HOSTILE[:2]:
        before = verifier.num_timeouts
        start = time.monotonic()
        assert verifier([text, "\\boxed{1}"], ["1", "1"]) == [0.0, 1.0]
        assert time.monotonic() - start < _bound(verifier, 2)
        assert verifier.num_timeouts == before + 1


def test_forced_timeout_is_counted() -> None:
    with MathVerifier(timeout_s=0.05, num_workers=1) as v:
        v(["\\boxed{1}"], ["1"])  # start-up is not part of any deadline
        assert v.num_timeouts == 0
        start = time.monotonic()
        assert v(["\\boxed{9^{9^{9^{9}}}}"], ["1"]) == [0.0]
        assert time.monotonic() - start < _bound(v, 1)
        assert v.num_timeouts == 1
        assert v(["\\boxed{9^{9^{9^{9}}}}"], ["1"]) == [0.0]
        assert v.num_timeouts == 2
        assert v.num_errors == 0


def test_worker_killed_while_idle_is_replaced(verifier: MathVerifier) -> None:
    # Kill a worker from outside between calls (an OOM kill, say): the next call must notice and go on.
    errors_before, memory_before = verifier.num_errors, verifier.num_memory_kills
    victim = verifier._pool._workers[0].process
    victim.kill()
    victim.join(timeout=5)
    _check_easy(verifier)
    assert all(w.process.is_alive() for w in verifier._pool._workers)
    assert verifier.num_errors == errors_before  # no item was lost, so nothing is counted
    assert verifier.num_memory_kills == memory_before


def test_worker_dying_mid_item_is_counted() -> None:
    # A worker SIGKILLed from outside while verifying (the kernel's OOM killer sends SIGKILL) cannot judge
    # its item: None, counted as a memory kill; the call returns at once instead of waiting for the deadline.
    with MathVerifier(timeout_s=60.0, num_workers=1) as v:
        v(["\\boxed{1}"], ["1"])
        victim = v._pool._workers[0].process
        killer = threading.Timer(0.5, victim.kill)
        killer.start()
        start = time.monotonic()
        assert v(["\\boxed{9^{9^{9^{9}}}}"], ["1"]) == [None]
        assert time.monotonic() - start < v.timeout_s / 2
        killer.join()
        assert (v.num_memory_kills, v.num_errors, v.num_timeouts) == (1, 0, 0)
        assert v.stats() == {"verifier_timeouts": 0, "verifier_oom": 1, "verifier_errors": 0}
        assert v(["\\boxed{2}"], ["2"]) == [1.0]


def test_worker_crashing_mid_item_is_an_error() -> None:
    # Any other death (here SIGSEGV, as a crash in C code) is an error, not a memory kill; also None.
    with MathVerifier(timeout_s=60.0, num_workers=1) as v:
        v(["\\boxed{1}"], ["1"])
        victim = v._pool._workers[0].process
        killer = threading.Timer(0.5, os.kill, args=(victim.pid, signal.SIGSEGV))
        killer.start()
        assert v(["\\boxed{9^{9^{9^{9}}}}"], ["1"]) == [None]
        killer.join()
        assert (v.num_memory_kills, v.num_errors, v.num_timeouts) == (0, 1, 0)
        assert v(["\\boxed{2}"], ["2"]) == [1.0]


def test_from_a_thread_and_repeated_use() -> None:
    results: list[list[float | None]] = []
    errors: list[BaseException] = []
    v = MathVerifier(timeout_s=3.0, num_workers=2)

    def work() -> None:
        try:
            for _ in range(2):  # workers start in this thread and are reused
                results.append(v(["\\boxed{\\frac{2}{4}}", "\\boxed{2}"], ["0.5", "3"]))
            results.append(v(["\\boxed{9^{9^{9^{9}}}}", "\\boxed{6}"], ["1", "6"]))
        except BaseException as error:  # re-raised on the main thread below
            errors.append(error)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert not errors, errors
    assert results == [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
    assert v.num_timeouts == 1
    v.close()
    assert v._pool._workers == []
    v.start()  # starts the workers without waiting for them
    assert len(v._pool._workers) == 2
    assert v(["\\boxed{6}"], ["6"]) == [1.0]  # usable again after close
    v.close()


def test_copies_get_their_own_pool(verifier: MathVerifier) -> None:
    clone = copy.deepcopy(verifier)
    assert clone._pool._workers == [] and clone.timeout_s == verifier.timeout_s
    assert clone(["\\boxed{3}"], ["3"]) == [1.0]
    clone.close()


def test_spawn_start_method() -> None:
    with MathVerifier(timeout_s=3.0, num_workers=1, start_method="spawn") as v:
        assert v(["\\boxed{0.25}", "\\boxed{5}"], ["\\frac{1}{4}", "6"]) == [1.0, 0.0]
        assert v._pool._workers[0].process._start_method == "spawn"


REQUIRE_BOXED = (
    # completion, reference, score by default, score with require_boxed
    ("I like trains. My favourite is number 7.", "7", 1.0, 0.0),  # a stray trailing number in off-topic text
    ("The final answer is 7", "7", 1.0, 0.0),  # an unboxed answer
    ("so \\boxed{7", "7", 0.0, 0.0),  # a box that never closes is no answer either way
    ("Therefore $x = \\boxed{7}$.", "7", 1.0, 1.0),
    ("\\boxed{\\frac{14}{2}} and 3 more", "7", 1.0, 1.0),  # boxes first either way
    ("\\boxed{7} or maybe \\boxed{8}", "7", 0.0, 0.0),  # a hedge stays wrong: all boxes are read together
)


def test_require_boxed(verifier: MathVerifier) -> None:
    completions = [c for c, _, _, _ in REQUIRE_BOXED]
    references = [r for _, r, _, _ in REQUIRE_BOXED]
    assert verifier(completions, references) == [s for _, _, s, _ in REQUIRE_BOXED]
    with MathVerifier(timeout_s=3.0, num_workers=1, require_boxed=True) as boxed:
        assert boxed(completions, references) == [s for _, _, _, s in REQUIRE_BOXED]
        assert copy.deepcopy(boxed).require_boxed


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"timeout_s": 0}, "timeout_s"),
        ({"num_workers": 0}, "num_workers"),
        ({"start_method": "fork"}, "fork"),
        ({"memory_limit_mb": 0}, "memory_limit_mb"),
        ({"timeout_s": float("nan")}, "timeout_s"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MathVerifier(**kwargs)
