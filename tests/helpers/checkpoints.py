"""A booby-trapped pickle for the checkpoint-safety tests: :class:`Trap` runs code when unpickled."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any, Literal

How = Literal["system", "touch"]


class Trap:
    """Unpickling it creates ``marker``: ``os.system("touch marker")`` or ``pathlib.Path.touch(marker)``."""

    def __init__(self, marker: Path, how: How = "system") -> None:
        self.marker, self.how = marker, how

    def __reduce__(self) -> tuple[Any, ...]:
        if self.how == "system":
            return os.system, (f"touch {shlex.quote(str(self.marker))}",)
        return Path.touch, (self.marker,)
