"""How a setting states its bounds: one wording for every check, made where the setting is defined.

A dataclass's ``__post_init__`` (or a constructor) builds its messages with :func:`number_problem` and
:func:`integer_problem`, each naming the key as the user writes it (``model.init_args.echo.coef=nan: must be a
finite number >= 0``), and raises them together with :func:`raise_problems`. The check before any model loads
(:mod:`echorl_lightning.config_checks`) builds the same objects from the parsed config and reports what they
raise; it states no bound of its own.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

from echorl_lightning.registry import Registry


def number_problem(
    key: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> str | None:
    """A message when ``value`` is not a finite number in the interval, else None.

    ``low_open``/``high_open`` exclude the bound: ``low=0, low_open=True`` means ``> 0``.
    Example: ``number_problem("model.init_args.lr", -1.0, low=0, low_open=True)`` ->
    ``"model.init_args.lr=-1.0: must be a finite number > 0"``.
    """
    if value is None and optional:
        return None
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    accepted = "must be a finite number" + (" " + " and ".join(parts) if parts else "")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return f"{key}={value!r}: {accepted}"
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    return f"{key}={value!r}: {accepted}" if too_low or too_high else None


def name_problem(key: str, value: Any, registry: Registry) -> str | None:
    """A message when ``value`` is not a name in ``registry``, listing the known names (and the nearest one),
    else None."""
    if value in registry:
        return None
    near = difflib.get_close_matches(str(value), registry.names(), n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return f"{key}={value!r}: unknown {registry.axis}; known: {', '.join(registry.names())}{hint}"


def integer_problem(key: str, value: Any, low: int, *, optional: bool = False) -> str | None:
    """A message when ``value`` is not an integer ``>= low`` (``True`` is not an integer here), else None."""
    if value is None and optional:
        return None
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    return None if ok else f"{key}={value!r}: must be an integer >= {low}"


class SettingError(ValueError):
    """Values a dataclass or constructor refuses; ``problems`` holds one message per setting."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems

    def under(self, prefix: str) -> SettingError:
        """The same problems with each key put under ``prefix`` (``clip_low=...`` -> ``<prefix>.clip_low=...``)."""
        return SettingError([f"{prefix}.{problem}" for problem in self.problems])


def raise_problems(*problems: str | None) -> None:
    """Raise one :class:`SettingError` listing every problem that is not None."""
    found = [p for p in problems if p]
    if found:
        raise SettingError(found)
