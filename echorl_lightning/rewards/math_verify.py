"""Math answer verifier: ``math-verify`` run in a pool of worker processes with a hard per-item timeout and a
per-worker memory limit.

Implements the binary RLVR reward (1 or 0): a completion scores 1.0 when the answer it states is
mathematically equivalent to the reference according to HuggingFace's ``math-verify``: ``parse`` the reference
(boxed first if bare) and the completion with ``LatexExtractionConfig`` (boxed answers first) and
``ExprExtractionConfig`` ("final answer is 3", a trailing number), then ``verify(gold, prediction)``; 0.0
otherwise. math-verify reads every box of a completion together, so two different boxed answers (hedging)
never match a single reference. With ``require_boxed=True`` a completion without a complete ``\\boxed{}``
scores 0.0 without being parsed, and only its boxes are parsed (a stray number in the text around them counts
for nothing).

Why worker processes: ``math-verify`` bounds its own work with ``signal.alarm``, which only works on the main
thread of the main interpreter, and a hostile completion (``\\boxed{9^{9^{9^{9}}}}``) can spin inside a
C-level big-integer operation that no in-process timer can interrupt, while ``\\boxed{4^{2^{32}}}`` also keeps
growing its memory. So every item runs in a :class:`~echorl_lightning.rewards.process_pool.ProcessPool` worker
with math-verify's internal timeouts switched off (``parsing_timeout=None``, ``timeout_seconds=None``): an
item past ``timeout_s`` scores 0.0 (math-verify's own verdict on a timeout); an item whose worker grows more
than ``memory_limit_mb`` above its start-up size, raises ``MemoryError``, dies, or raises anything else cannot
be judged and scores None. Either way the worker is replaced, and the counters
:attr:`MathVerifier.num_timeouts`, :attr:`~MathVerifier.num_memory_kills` and :attr:`~MathVerifier.num_errors`
(cumulative; :meth:`MathVerifier.stats` gives them under the names ``verifier_timeouts``, ``verifier_oom``,
``verifier_errors``) say how often.

Start-up cost: a spawned or forkserver child re-imports the parent's ``__main__`` script (Python's own rule;
CPython 3.11's forkserver cannot preload it), so under ``python cli.py`` each worker start imports the
training stack once, far slower and larger than math-verify alone; launching as ``python -m <package>`` (a
``__main__.py``) avoids it. Item deadlines never include start-up, the memory limit is measured from the
footprint after it, and :meth:`MathVerifier.start` lets it overlap model loading.

:meth:`MathVerifier.answer` gives the normalised answer for maj@k by string rules in the calling process
(:func:`~echorl_lightning.rewards.math_answer.extract_math_answer`), never sympy.

Left out: no retry of an item whose worker died, no multiple-choice (letter) answers
(``StringExtractionConfig``), no count of a ``MemoryError`` that math-verify catches itself (the item is
still bounded by the address-space cap and scores what math-verify returns).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

from echorl_lightning.rewards.math_answer import boxed_contents, extract_math_answer
from echorl_lightning.rewards.process_pool import ProcessPool

logger = logging.getLogger(__name__)

_PRELOAD = ["math_verify", __name__]  # imported once by the forkserver: a worker start is a fork
_WARMUP = ("\\boxed{\\frac{1}{2}}", "0.5", True)  # builds the LaTeX parser before the worker reports ready
_CONFIG_KEYS = ("timeout_s", "num_workers", "start_method", "strict", "memory_limit_mb", "require_boxed")


# ---- worker side ----------------------------------------------------------------------------------------
def _init_worker() -> None:
    """Silence math-verify's "timeout disabled" warnings in a worker: the pool times every item."""
    logging.getLogger("math_verify").setLevel(logging.ERROR)


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


# ---- owner side -----------------------------------------------------------------------------------------
class MathVerifier:
    """Batch verifier (the ``Verifier`` protocol) backed by ``math-verify`` in worker processes.

    Args:
        timeout_s: hard wall-clock limit per item, enforced by killing the worker; the item scores 0.0.
        num_workers: worker processes (items of one batch are verified in parallel).
        start_method: ``forkserver`` (default; workers fork from a server with math-verify imported) or
            ``spawn``. ``fork`` is not offered: forking a process that holds CUDA or threads is unsafe.
        strict: math-verify's ``strict`` mode (variables must match by name, sets are not tuples).
        memory_limit_mb: the most resident memory (MiB) a worker may add to its start-up footprint while it
            verifies one item (its address space is capped at twice that); past it the worker is killed and
            the item scores None. None: no limit. The default 2048 is far above what any hostile
            input tried so far reached within the default timeout.
        require_boxed: a completion without a complete ``\\boxed{}`` scores 0.0, and only its boxes are
            parsed.

    Attributes:
        num_timeouts: items killed at their deadline since construction.
        num_memory_kills: items whose worker went past the memory limit, raised ``MemoryError`` or was
            SIGKILLed from outside (the OOM killer) since construction.
        num_errors: items whose worker raised or died otherwise since construction.
    """

    def __init__(
        self,
        timeout_s: float = 3.0,
        num_workers: int = 2,
        start_method: Literal["forkserver", "spawn"] = "forkserver",
        strict: bool = True,
        memory_limit_mb: float | None = 2048.0,
        require_boxed: bool = False,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"MathVerifier: timeout_s must be > 0, got {timeout_s}")
        if num_workers < 1:
            raise ValueError(f"MathVerifier: num_workers must be >= 1, got {num_workers}")
        if start_method not in ("forkserver", "spawn"):
            raise ValueError(
                f"MathVerifier: start_method must be 'forkserver' or 'spawn', got {start_method!r}"
            )
        if memory_limit_mb is not None and not memory_limit_mb > 0:
            raise ValueError(f"MathVerifier: memory_limit_mb must be > 0 or None, got {memory_limit_mb}")
        self.timeout_s = float(timeout_s)
        self.num_workers = num_workers
        self.start_method = start_method
        self.strict = strict
        self.memory_limit_mb = memory_limit_mb
        self.require_boxed = require_boxed
        self._pool = ProcessPool(
            _score,
            num_workers=num_workers,
            timeout_s=self.timeout_s,
            memory_limit_mb=memory_limit_mb,
            start_method=start_method,
            initializer=_init_worker,
            warmup=_WARMUP,
            preload=_PRELOAD,
            name="MathVerifier",
        )

    # ---- counters ---------------------------------------------------------------------------------------
    @property
    def num_timeouts(self) -> int:
        return self._pool.num_timeouts

    @property
    def num_memory_kills(self) -> int:
        return self._pool.num_memory_kills

    @property
    def num_errors(self) -> int:
        return self._pool.num_errors

    def stats(self) -> dict[str, int]:
        """The cumulative counters under the names a caller logs them as (``rollout/<name>``)."""
        return {
            "verifier_timeouts": self.num_timeouts,
            "verifier_oom": self.num_memory_kills,
            "verifier_errors": self.num_errors,
        }

    # ---- public API -------------------------------------------------------------------------------------
    def __call__(self, completions: Sequence[str], references: Sequence[str]) -> list[float | None]:
        """Score each completion against its reference: 1.0 equivalent, 0.0 otherwise (timeouts included),
        None when it could not be judged (memory limit, worker death, error)."""
        if len(completions) != len(references):
            raise ValueError(f"MathVerifier: {len(completions)} completions but {len(references)} references")
        scores: list[float | None] = [0.0] * len(completions)
        indices: list[int] = []
        items: list[tuple[str, str, bool]] = []
        for i, (completion, reference) in enumerate(zip(completions, references, strict=True)):
            text = self._judged_text(completion)
            if text and reference.strip():
                indices.append(i)
                items.append((text, reference, self.strict))
        result = self._pool.run(items)
        failed: dict[str, list[int]] = {"timeout": [], "memory": [], "error": []}
        for i, value, status, error in zip(indices, result.values, result.status, result.errors, strict=True):
            if status == "ok":
                scores[i] = value
                continue
            scores[i] = 0.0 if status == "timeout" else None
            failed[status].append(i)
            if error:
                logger.debug("MathVerifier: item %d raised %s", i, error)
        if any(failed.values()):
            logger.warning(
                "MathVerifier: of %d items %d timed out after %.2f s (items %s; score 0.0), %d went past the "
                "memory limit of %s MiB (items %s) and %d failed (items %s; both score None); their workers "
                "were replaced",
                len(completions),
                len(failed["timeout"]),
                self.timeout_s,
                failed["timeout"][:8],
                len(failed["memory"]),
                self.memory_limit_mb,
                failed["memory"][:8],
                len(failed["error"]),
                failed["error"][:8],
            )
        return scores

    def answer(self, completion: str) -> str | None:
        """The normalised answer ``completion`` states, for maj@k votes: its boxes, or with
        ``require_boxed=False`` also an unboxed final answer (see
        :func:`~echorl_lightning.rewards.math_answer.extract_math_answer`); None when it states none.
        String rules only: nothing runs in a worker and no sympy runs here."""
        return extract_math_answer(completion, require_boxed=self.require_boxed)

    def start(self) -> None:
        """Start the workers now without waiting for them (e.g. in ``setup``, so that their imports overlap
        model loading); otherwise the first call starts them."""
        self._pool.start()

    def close(self) -> None:
        """Stop all workers; a later call starts new ones."""
        self._pool.close()

    def __enter__(self) -> MathVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # Copies (deepcopy, pickling into a checkpoint or a dataloader worker) get their own, lazily started pool.
        return {key: getattr(self, key) for key in _CONFIG_KEYS}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    # ---- internals --------------------------------------------------------------------------------------
    def _judged_text(self, completion: str) -> str:
        """What a worker parses: the completion, or with ``require_boxed`` only its boxes ("" when none)."""
        if not self.require_boxed:
            return completion if completion.strip() else ""
        return " ".join("\\boxed{" + box + "}" for box in boxed_contents(completion) if box.strip())
