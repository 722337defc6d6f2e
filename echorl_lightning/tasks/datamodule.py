"""The RLVR datamodule of every procedural task: :class:`ProceduralDataModule`.

Takes a :class:`~echorl_lightning.tasks.base.Task` (``class_path`` / ``init_args`` in YAML, the task's
difficulty among its ``init_args``) and serves a pool of ``num_train`` training prompts (problems
``0..num_train-1`` of the ``train`` split), the task's evaluation sets (named
:class:`~echorl_lightning.tasks.base.EvalSpec` items: held-out split, task at that set's difficulty, id/ood
group, size) and the task's verifier, step checker and maj@k answer. Every prompt carries the problem's
solution as ``expert`` (for LUFFY). The validation prompts are the first evaluation set's. Leaves out chat
templates (the tiny models read raw ``Q: ...`` prompts) and curricula (the training pool is fixed).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from echorl_lightning.data.base import EvalSet, PromptDataModule
from echorl_lightning.data.types import PromptExample, StepChecker, Verifier, VerifierFn
from echorl_lightning.tasks.base import EvalSpec, Task

logger = logging.getLogger(__name__)


class ProceduralDataModule(PromptDataModule):
    """RLVR prompts of a procedural task.

    Args:
        task: the task at its training difficulty, e.g.
            :class:`~echorl_lightning.tasks.arithmetic.ArithmeticTask` or
            :class:`~echorl_lightning.tasks.countdown.CountdownTask`.
        num_train: size of the training prompt pool (problems 0..num_train-1 of the ``train`` split).
        num_val: number of prompts of an evaluation set without its own ``num``; 0 turns evaluation off.
        seed: the generator seed shared by all splits (a problem is fixed by split, seed and index).
        verifier: None uses the task's.
        val_batch_size: prompts per validation batch.
        eval_sets: named evaluation sets; None = the task's
            :meth:`~echorl_lightning.tasks.base.Task.default_eval_specs`.
        distinct_eval: every evaluation prompt a different problem (a draw that repeats one is skipped, see
            :meth:`~echorl_lightning.tasks.base.Task.prompts`), so a set's accuracy rests on as many problems as
            it has prompts; False keeps the generator's draws, repeats included; None = the task's default.
    """

    def __init__(
        self,
        task: Task,
        num_train: int = 4096,
        num_val: int = 256,
        seed: int = 0,
        verifier: VerifierFn | None = None,
        val_batch_size: int = 64,
        eval_sets: list[EvalSpec] | None = None,
        distinct_eval: bool | None = None,
    ) -> None:
        super().__init__(verifier=verifier, val_batch_size=val_batch_size)
        name = type(self).__name__
        if num_train < 1 or num_val < 0:
            raise ValueError(f"{name}: need num_train >= 1 and num_val >= 0, got {num_train}, {num_val}")
        for spec in eval_sets or []:
            if spec.num is not None and spec.num < 1:
                raise ValueError(f"{name}: eval_sets[{spec.name!r}].num must be >= 1, got {spec.num}")
            if spec.split not in task.eval_splits:
                raise ValueError(
                    f"{name}: eval_sets[{spec.name!r}].split must be one of {list(task.eval_splits)}, "
                    f"got {spec.split!r}"
                )
        self.task = task
        self.num_train = num_train
        self.num_val = num_val
        self.seed = seed
        self.eval_specs = list(eval_sets) if eval_sets is not None else task.default_eval_specs()
        self.distinct_eval = task.distinct_eval if distinct_eval is None else distinct_eval

    def _set_size(self, spec: EvalSpec) -> int:
        """Prompts asked for in ``spec``: its own ``num``, else the datamodule's ``num_val``."""
        return self.num_val if spec.num is None else spec.num

    def _eval_prompts(self, spec: EvalSpec) -> list[PromptExample]:
        task = self.task if spec.task is None else spec.task
        return task.prompts(spec.split, self._set_size(spec), self.seed, distinct=self.distinct_eval)

    def load_train_prompts(self) -> Sequence[PromptExample]:
        return self.task.prompts("train", self.num_train, self.seed)

    def load_val_prompts(self) -> Sequence[PromptExample]:
        """The prompts of the first evaluation set (none without evaluation sets or with ``num_val=0``)."""
        if not self.eval_specs or self.num_val == 0:
            return []
        return self._eval_prompts(self.eval_specs[0])

    def load_eval_sets(self) -> Sequence[EvalSet]:
        """The configured evaluation sets, each scored by the datamodule's verifier and step checker. For a
        task whose sets are meant to be distinct (``Task.distinct_eval``), a set with fewer distinct problems
        than prompts asked for is logged as a warning naming it: its accuracy rests on those problems."""
        if self.num_val == 0:
            return []
        checker = self.default_step_checker()
        sets = []
        for spec in self.eval_specs:
            examples = self._eval_prompts(spec)
            asked = self._set_size(spec)
            distinct = self.task.distinct_problems(examples) if self.task.distinct_eval else asked
            if distinct < asked:
                logger.warning(
                    "%s: eval set %r has %d distinct problems for the %d prompts asked for (%s); widen its "
                    "difficulty for more",
                    type(self).__name__,
                    spec.name,
                    distinct,
                    asked,
                    "its held-out bucket holds no more"
                    if self.distinct_eval
                    else f"{len(examples)} prompts, repeats included",
                )
            sets.append(
                EvalSet(spec.name, examples, self.verifier, spec.group, self.default_answer_fn, checker)
            )
        return sets

    def default_verifier(self) -> Verifier:
        return self.task.verifier()

    def default_step_checker(self) -> StepChecker | None:
        return self.task.step_checker()

    def default_answer_fn(self, completion: str) -> str | None:
        """maj@k votes on the task's answer (:meth:`~echorl_lightning.tasks.base.Task.answer`)."""
        return self.task.answer(completion)
