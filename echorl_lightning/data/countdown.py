"""The Countdown task: reach a target from 3-5 given numbers with ``+ - * /`` (pure Python, no torch).

The rule: each given number is used at most once (any subset may be used), two available numbers combine
into a new available number, and every intermediate result must be a positive integer: subtraction only
when the result is positive, division only when it is exact; no negatives, fractions, zero or other
operators. A problem and its worked solution::

    prompt:    "Q: 25 5 3 7 -> 27\\n"
    solution:  "25-5=20 [20 3 7 -> 27]\\n20*3=60 [60 7 -> 27]\\n60+7=67 (no) [60 7 -> 27]\\n"
               "back [20 3 7 -> 27]\\n...\\n20+7=27 [27 3 -> 27]\\nAnswer: 25-5+7"

The solution is a randomised search trace (:func:`~echorl_lightning.data.countdown_solver.search_trace`):
one move per line, ``(no)`` for a last move that misses, ``back`` to undo a move, each of these lines ending
with the pool of numbers it leaves, then ``Answer:`` and the expression; 6-20 lines, so EchoRL's step
splitter (one step per ``"\\n"``; EchoRL, arXiv 2605.31228) sees real decision points. The reference
handed to the verifier is ``"25 5 3 7 -> 27"``.

Implements the generator: problem ``(split, seed, index)`` is drawn from its own seeded RNG (random access):
``k`` numbers uniform in ``[min_number, max_number]``, a target uniform among the values they reach within
``[min_target, max_target]`` (not one of the numbers), kept when the sorted numbers and target hash into the
split's bucket (16 buckets: ``val`` owns 0, ``test`` 1, ``train`` the other 14, so held-out problems are
never trained on), when the target has at least ``min_solutions`` distinct solutions, and when the solver
finds a trace of the allowed length. Difficulty knobs give the in-distribution setting and two
out-of-distribution ones (:func:`more_numbers`, :func:`larger_numbers`). Leaves out the TV show's fixed
number cards and its closest-answer scoring (here only the exact target scores).

A :class:`CountdownMixture` draws each problem from one of several difficulties (its component chosen by the
problem's own seeded RNG, by weight): a task whose prompts range from easy to hard, so a policy's groups
include both all-success ones (EchoRL's) and ones with a learning signal (GRPO's).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import yaml

from echorl_lightning.data.countdown_solver import count_solutions, reachable, search_trace

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
_NUM_BUCKETS = 16
_EVAL_BUCKET: dict[Split, int] = {"val": 0, "test": 1}
_MAX_DRAWS = 10_000
PROMPT_PREFIX = "Q: "
ARROW = " -> "


@dataclass(frozen=True)
class CountdownDifficulty:
    """How hard the generated problems are. The defaults are the in-distribution setting of the shipped
    model (3 numbers in 1..20, targets 10..99: about 4,000 distinct problems, about 250 of them in the ``val``
    bucket; numbers in 1..10 give about 500, 22 in ``val``); :func:`more_numbers` and :func:`larger_numbers` derive the
    out-of-distribution ones (4 numbers; numbers up to 50 and targets up to 199).

    Attributes:
        min_numbers: fewest given numbers (>= 3).
        max_numbers: most given numbers (<= 6).
        min_number: smallest given number (>= 1).
        max_number: largest given number.
        min_target: smallest target.
        max_target: largest target.
        max_intermediate: the solver never makes a number above this (a search heuristic, not a rule: the
            verifier accepts any positive integer).
        min_solutions: a target needs at least this many distinct solution expressions.
        inner_tries: moves a search node with three or more numbers tries before backtracking.
        min_steps: fewest lines of a solution trace (``Answer`` included).
        max_steps: most lines of a solution trace.
    """

    min_numbers: int = 3
    max_numbers: int = 3
    min_number: int = 1
    max_number: int = 20
    min_target: int = 10
    max_target: int = 99
    max_intermediate: int = 200
    min_solutions: int = 2
    inner_tries: int = 3
    min_steps: int = 6
    max_steps: int = 20

    def __post_init__(self) -> None:
        if not 3 <= self.min_numbers <= self.max_numbers <= 6:
            raise ValueError(f"CountdownDifficulty: need 3 <= min_numbers <= max_numbers <= 6, got {self}")
        if not 1 <= self.min_number <= self.max_number:
            raise ValueError(f"CountdownDifficulty: need 1 <= min_number <= max_number, got {self}")
        if not 1 <= self.min_target <= self.max_target <= self.max_intermediate:
            raise ValueError(
                f"CountdownDifficulty: need 1 <= min_target <= max_target <= max_intermediate, got {self}"
            )
        if self.min_solutions < 1 or self.inner_tries < 1:
            raise ValueError(f"CountdownDifficulty: min_solutions and inner_tries must be >= 1, got {self}")
        if not 3 <= self.min_steps <= self.max_steps:
            raise ValueError(f"CountdownDifficulty: need 3 <= min_steps <= max_steps, got {self}")


DEFAULT_DIFFICULTY = CountdownDifficulty()


@dataclass(frozen=True)
class CountdownMixture:
    """A weighted mix of difficulties (YAML: ``difficulty: {components: [{...}, {...}], weights: [1, 2]}``).

    Problem ``(split, seed, index)`` picks its component from its own seeded RNG with probability
    proportional to ``weights``, then is that component's problem ``(split, seed, index)``; random access and
    determinism are kept. An evaluation set of distinct problems
    (:func:`~echorl_lightning.data.countdown_dm.countdown_prompts` with ``distinct``) skips repeats, so a
    component with few problems in the held-out bucket holds fewer prompts than its weight asks.

    Attributes:
        components: the difficulties mixed (at least one).
        weights: one positive weight per component (they need not sum to 1).
        names: one name per component for per-component statistics; empty = ``c0, c1, ...``.
    """

    components: tuple[CountdownDifficulty, ...]
    weights: tuple[float, ...]
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # YAML hands lists and dicts: store tuples of difficulties so the mixture stays hashable and frozen
        components = tuple(
            c if isinstance(c, CountdownDifficulty) else CountdownDifficulty(**c) for c in self.components
        )
        object.__setattr__(self, "components", components)
        object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
        object.__setattr__(self, "names", tuple(self.names) or tuple(f"c{i}" for i in range(len(components))))
        if not components:
            raise ValueError("CountdownMixture: components must not be empty")
        if len(self.weights) != len(components) or len(self.names) != len(components):
            raise ValueError(
                f"CountdownMixture: {len(components)} components need as many weights and names; got "
                f"weights {list(self.weights)} and names {list(self.names)}"
            )
        if any(not w > 0 for w in self.weights):
            raise ValueError(f"CountdownMixture: weights must be > 0, got {list(self.weights)}")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"CountdownMixture: names must differ, got {list(self.names)}")

    def component_index(self, split: str, index: int, seed: int = 0) -> int:
        """Which component problem ``(split, seed, index)`` is drawn from."""
        rng = random.Random(f"countdown-mix:{split}:{seed}:{index}")
        return rng.choices(range(len(self.components)), weights=self.weights)[0]


AnyDifficulty = CountdownDifficulty | CountdownMixture


def parse_difficulty(value: dict | None) -> AnyDifficulty:
    """A difficulty from its YAML mapping (a config's ``data.init_args.difficulty``): a mixture when it has
    ``components``, else a plain difficulty; None = the default."""
    if value is None:
        return DEFAULT_DIFFICULTY
    if "components" in value:
        return CountdownMixture(**value)
    return CountdownDifficulty(**value)


def config_difficulty(path: str | Path) -> AnyDifficulty:
    """The task difficulty of a LightningCLI config file (its ``data.init_args.difficulty``; none = the
    default)."""
    return parse_difficulty(yaml.safe_load(Path(path).read_text())["data"]["init_args"].get("difficulty"))


def _map_components(base: AnyDifficulty, change) -> AnyDifficulty:
    if isinstance(base, CountdownMixture):
        return replace(base, components=tuple(change(c) for c in base.components))
    return change(base)


def more_numbers(base: AnyDifficulty) -> AnyDifficulty:
    """Out of distribution by count: one more number than ``base`` allows (and 4 more trace lines); a
    mixture's every component."""

    def change(d: CountdownDifficulty) -> CountdownDifficulty:
        count = min(d.max_numbers + 1, 6)
        return replace(d, min_numbers=count, max_numbers=count, max_steps=d.max_steps + 4)

    return _map_components(base, change)


def larger_numbers(base: AnyDifficulty) -> AnyDifficulty:
    """Out of distribution by size: numbers up to 2.5x larger, targets and intermediates up to 2x; a
    mixture's every component."""

    def change(d: CountdownDifficulty) -> CountdownDifficulty:
        return replace(
            d,
            max_number=int(d.max_number * 2.5),
            max_target=d.max_target * 2 + 1,
            max_intermediate=d.max_intermediate * 2,
        )

    return _map_components(base, change)


def component_name(split: Split, index: int, seed: int, difficulty: AnyDifficulty) -> str:
    """The name of the mixture component problem ``(split, seed, index)`` comes from (``""`` for a plain
    difficulty)."""
    if isinstance(difficulty, CountdownMixture):
        return difficulty.names[difficulty.component_index(split, index, seed)]
    return ""


def problem_difficulty(split: Split, index: int, seed: int, difficulty: AnyDifficulty) -> CountdownDifficulty:
    """The plain difficulty problem ``(split, seed, index)`` is drawn at: its mixture component, or
    ``difficulty`` itself."""
    if isinstance(difficulty, CountdownMixture):
        return difficulty.components[difficulty.component_index(split, index, seed)]
    return difficulty


@dataclass(frozen=True)
class CountdownProblem:
    """One Countdown problem.

    Attributes:
        numbers: the given numbers, in prompt order.
        target: the value to reach.
        prompt: the policy's input, ``"Q: 25 5 3 7 -> 27\\n"``.
        reference: what the verifier and step checker read, ``"25 5 3 7 -> 27"``.
        solution: a solver trace (lines joined by ``"\\n"``, ending with ``Answer: ...``; no EOS).
    """

    numbers: tuple[int, ...]
    target: int
    prompt: str
    reference: str
    solution: str


def format_reference(numbers: tuple[int, ...] | list[int], target: int) -> str:
    """``"25 5 3 7 -> 27"``."""
    return " ".join(str(n) for n in numbers) + f"{ARROW}{target}"


def parse_reference(reference: str) -> tuple[list[int], int] | None:
    """``(numbers, target)`` of ``"25 5 3 7 -> 27"`` (a prompt's ``Q: `` and newline allowed), or None
    when the text is not of that form."""
    text = reference.strip()
    if text.startswith(PROMPT_PREFIX):
        text = text[len(PROMPT_PREFIX) :]
    left, sep, right = text.partition(ARROW)
    items = left.split(" ")
    if not sep or not right.isdigit() or not all(item.isdigit() for item in items):
        return None
    return [int(item) for item in items], int(right)


def problem_bucket(numbers: tuple[int, ...] | list[int], target: int) -> int:
    """The split bucket (0..15) of a problem: a stable hash of its sorted numbers and target (independent
    of ``PYTHONHASHSEED`` and of the numbers' order)."""
    key = format_reference(tuple(sorted(numbers)), target)
    return hashlib.sha256(key.encode()).digest()[0] % _NUM_BUCKETS


def _in_split(bucket: int, split: Split) -> bool:
    if split == "train":
        return bucket not in _EVAL_BUCKET.values()
    return bucket == _EVAL_BUCKET[split]


def make_problem(
    split: Split, index: int, seed: int = 0, difficulty: AnyDifficulty = DEFAULT_DIFFICULTY
) -> CountdownProblem:
    """Problem number ``index`` of ``split`` for ``seed``: the same arguments always give the same problem
    (with the same solution trace)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    if index < 0:
        raise ValueError(f"make_problem: index must be >= 0, got {index}")
    d = problem_difficulty(split, index, seed, difficulty)
    rng = random.Random(f"countdown:{split}:{seed}:{index}")
    for _ in range(_MAX_DRAWS):
        k = rng.randint(d.min_numbers, d.max_numbers)
        numbers = tuple(rng.randint(d.min_number, d.max_number) for _ in range(k))
        candidates = sorted(
            v
            for v in reachable(numbers, d.max_intermediate)
            if d.min_target <= v <= d.max_target and v not in numbers
        )
        if not candidates:
            continue
        target = rng.choice(candidates)
        if not _in_split(problem_bucket(numbers, target), split):
            continue
        if count_solutions(numbers, target, d.max_intermediate, limit=d.min_solutions) < d.min_solutions:
            continue
        lines = search_trace(
            numbers,
            target,
            rng,
            d.max_intermediate,
            inner_tries=d.inner_tries,
            min_steps=d.min_steps,
            max_steps=d.max_steps,
        )
        if lines is None:
            continue
        reference = format_reference(numbers, target)
        return CountdownProblem(
            numbers=numbers,
            target=target,
            prompt=f"{PROMPT_PREFIX}{reference}\n",
            reference=reference,
            solution="\n".join(lines),
        )
    raise RuntimeError(f"make_problem: no {split} problem in {_MAX_DRAWS} draws for {difficulty}")


def make_problems(
    split: Split,
    num: int,
    seed: int = 0,
    difficulty: AnyDifficulty = DEFAULT_DIFFICULTY,
    start: int = 0,
) -> list[CountdownProblem]:
    """Problems ``start .. start+num-1`` of ``split`` (see :func:`make_problem`)."""
    return [make_problem(split, i, seed, difficulty) for i in range(start, start + num)]
