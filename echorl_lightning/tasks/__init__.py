"""Procedural verifiable tasks, one folder each (:mod:`.arithmetic`, :mod:`.countdown`), behind one interface
(:class:`~echorl_lightning.tasks.base.Task`), and the one datamodule that serves any of them
(:class:`~echorl_lightning.tasks.datamodule.ProceduralDataModule`)."""

from echorl_lightning.tasks.base import EvalSpec, Task
from echorl_lightning.tasks.datamodule import ProceduralDataModule

__all__ = ["EvalSpec", "ProceduralDataModule", "Task"]
