"""The interface every procedural task implements, and :class:`EvalSpec`, one named evaluation set of one.

A :class:`Task` is one verifiable task at one difficulty (its constructor takes the difficulty). It makes
problem ``(split, index, seed)`` from an RNG seeded by those three alone (random access, no stream state: the
same arguments always give the same problem), and it names its verifier, its step checker and the answer
that maj@k votes on. A problem (:class:`TaskProblem`) has a prompt, a reference for the verifier and an
expert solution (the warm-start's target and LUFFY's off-policy response). :meth:`Task.prompts` turns
problems into :class:`~echorl_lightning.data.types.PromptExample` items, optionally skipping repeated
problems.

The generic datamodule (:class:`~echorl_lightning.tasks.datamodule.ProceduralDataModule`) takes a task and
nothing task-specific. Leaves out tasks read from files or the hub (those are
:mod:`echorl_lightning.data.hub`'s).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

from echorl_lightning.data.types import PromptExample, StepChecker, Verifier

DISTINCT_DRAWS_PER_PROMPT = 20  # with ``distinct``: draws allowed per prompt asked for before giving up


class TaskProblem(Protocol):
    """What the generic code reads of a generated problem."""

    @property
    def prompt(self) -> str:
        """The policy's input, e.g. ``"Q: 47+8*3-12\\n"``."""
        ...

    @property
    def reference(self) -> str:
        """What the verifier and step checker read (a final answer, ``"25 5 3 7 -> 27"``)."""
        ...

    @property
    def solution(self) -> str:
        """An expert solution: the response text, ending with the ``Answer`` line, without EOS."""
        ...


class Task(ABC):
    """One procedural task at one difficulty.

    Class attributes:
        uid_prefix: the start of every prompt's uid, ``<uid_prefix><split>-<seed>-<index>``.
        eval_splits: the held-out splits an evaluation set may draw from.
        distinct_eval: whether evaluation sets skip repeated problems unless the datamodule says otherwise
            (a task with small held-out buckets repeats problems often); such a task's datamodule also warns
            when a set holds fewer distinct problems than prompts asked for.
    """

    uid_prefix: ClassVar[str] = ""
    eval_splits: ClassVar[tuple[str, ...]] = ("val", "test")
    distinct_eval: ClassVar[bool] = False

    @abstractmethod
    def make_problem(self, split: str, index: int, seed: int) -> TaskProblem:
        """Problem number ``index`` of ``split`` for ``seed``, drawn from an RNG seeded by these three."""

    @abstractmethod
    def verifier(self) -> Verifier:
        """The strict verifier of this task's completions (1.0 right, 0.0 wrong)."""

    @abstractmethod
    def step_checker(self) -> StepChecker | None:
        """The checker of every reasoning step of a completion (None: the steps cannot be checked)."""

    @abstractmethod
    def answer(self, completion: str) -> str | None:
        """The normalised answer of one completion that maj@k votes on (None where none can be read)."""

    @abstractmethod
    def problem_key(self, example: PromptExample) -> Hashable | None:
        """What makes two prompts the same problem (None when the example is not one of this task's)."""

    @abstractmethod
    def default_eval_specs(self) -> list[EvalSpec]:
        """The evaluation sets of a datamodule that configures none."""

    def prompts(self, split: str, num: int, seed: int = 0, distinct: bool = False) -> list[PromptExample]:
        """``num`` problems of ``split`` as prompt examples (expert = the problem's solution).

        With ``distinct``, a draw that repeats a problem already taken (:meth:`problem_key`) is skipped and the
        next index drawn, until ``num`` distinct problems or ``DISTINCT_DRAWS_PER_PROMPT x num`` draws; the
        list is then shorter than ``num`` (the split's bucket holds no more problems at this difficulty).
        """
        examples: list[PromptExample] = []
        seen: set[Hashable | None] = set()
        index = 0
        while len(examples) < num and (not distinct or index < DISTINCT_DRAWS_PER_PROMPT * num):
            problem = self.make_problem(split, index, seed)
            example = PromptExample(
                prompt=problem.prompt,
                reference=problem.reference,
                expert=problem.solution,
                uid=f"{self.uid_prefix}{split}-{seed}-{index}",
            )
            key = self.problem_key(example) if distinct else None
            if not distinct or key not in seen:
                seen.add(key)
                examples.append(example)
            index += 1
        return examples

    def distinct_problems(self, examples: Sequence[PromptExample]) -> int:
        """How many different problems ``examples`` hold (see :meth:`problem_key`)."""
        return len({key for example in examples if (key := self.problem_key(example)) is not None})


@dataclass
class EvalSpec:
    """One named evaluation set of a procedural task (``data.init_args.eval_sets`` in YAML).

    Attributes:
        name: the set's name in metric keys (``val/<name>/avg@k``).
        split: the held-out split it draws from (one of the task's ``eval_splits``).
        task: the task at this set's difficulty (``class_path`` / ``init_args`` in YAML); None = the
            datamodule's training task. The set is scored by the datamodule's verifier and step checker.
        group: ``id`` / ``ood`` (averaged into ``val/id_avg`` / ``val/ood_avg``) or None.
        num: number of prompts; None = the datamodule's ``num_val``.
    """

    name: str
    split: str = "val"
    task: Task | None = None
    group: Literal["id", "ood"] | None = "id"
    num: int | None = None
