"""The one registry type of the package.

Every swappable axis of the algorithm (advantage estimator, policy loss, aggregation mode, KL estimator,
EchoClip selector) is a :class:`Registry`: a name -> callable map filled with a decorator. Every entry of
one registry has the same signature, so no caller special-cases a name. Unknown names and duplicates raise
``ValueError`` naming the axis and the known names. Tests build fresh registries instead of mutating the
global ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named map from strings to entries of one kind (``axis`` names the kind in error messages)."""

    def __init__(self, axis: str) -> None:
        self.axis = axis
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REG.register("grpo")`` adds the decorated object under ``name``."""

        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.axis} {name!r} is already registered")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        """The entry called ``name``; raises ``ValueError`` listing the known names otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"unknown {self.axis} {name!r}; known: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
