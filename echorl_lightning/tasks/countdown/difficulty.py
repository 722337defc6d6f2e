"""How hard Countdown problems are: :class:`CountdownDifficulty`, a weighted :class:`CountdownMixture` of
several, and the out-of-distribution variants :func:`more_numbers` and :func:`larger_numbers`.

A :class:`CountdownMixture` draws each problem from one of several difficulties (its component chosen by the
problem's own seeded RNG, by weight): a task whose prompts range from easy to hard, so a policy's groups
include both all-success ones and ones with a learning signal. Leaves out difficulty schedules (a
difficulty is fixed for a run).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace


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
    (:meth:`~echorl_lightning.tasks.base.Task.prompts` with ``distinct``) skips repeats, so a
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
    """A difficulty from its YAML mapping (a config's ``task.init_args.difficulty``): a mixture when it has
    ``components``, else a plain difficulty; None = the default."""
    if value is None:
        return DEFAULT_DIFFICULTY
    if "components" in value:
        return CountdownMixture(**value)
    return CountdownDifficulty(**value)


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


def problem_difficulty(split: str, index: int, seed: int, difficulty: AnyDifficulty) -> CountdownDifficulty:
    """The plain difficulty problem ``(split, seed, index)`` is drawn at: its mixture component, or
    ``difficulty`` itself."""
    if isinstance(difficulty, CountdownMixture):
        return difficulty.components[difficulty.component_index(split, index, seed)]
    return difficulty
