"""The task difficulty a LightningCLI config file trains on, read without building the config.

Implements :func:`config_difficulty`, used by the rejection-sampling fine-tuning recipe and the experiments
that sample the shipped Countdown model at its training difficulty. Leaves out every other key.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from echorl_lightning.tasks.countdown.difficulty import AnyDifficulty, parse_difficulty


def config_difficulty(path: str | Path) -> AnyDifficulty:
    """The Countdown difficulty of a config file's task (``data.init_args.task.init_args.difficulty``; none =
    the default)."""
    data = yaml.safe_load(Path(path).read_text())["data"]["init_args"]
    return parse_difficulty((data.get("task") or {}).get("init_args", {}).get("difficulty"))
