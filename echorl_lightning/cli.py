"""The LightningCLI subclass behind ``cli.py``: config groups, checks before loading, and resumable runs.

Config groups beside ``trainer``/``model``/``data``: ``rollout`` (the :class:`~echorl_lightning.callbacks.rollout.RolloutCallback`
settings, e.g. ``--rollout.prompts_per_epoch=8``; added to the trainer's callbacks for models that take
rollouts, and acting in ``fit`` only), ``failure_report`` (:class:`~echorl_lightning.callbacks.failure_report.FailureReport`,
on every run), ``progress`` (:class:`~echorl_lightning.callbacks.progress.RolloutProgress`: rollout progress and one line per
epoch) and ``run_summary`` (:class:`~echorl_lightning.callbacks.run_summary.RunSummary`: the table ``fit`` starts with).
``trainer.callbacks`` keeps the other callbacks (checkpoints, export).

``imports`` (a top-level key, or ``--imports``): the user's own modules, as module names or paths to ``.py``
files, imported before the config is checked, so the methods, advantage estimators, policy losses,
aggregation modes, KL estimators and EchoClip selectors they register are known by name to the check and to
the objects built from it (:func:`import_user_code`).

Order of a run: (1) parse (Lightning reads a ``--ckpt_path`` file's hyperparameters here: weights-only, under
``checkpoint_safety``'s allowlist); (2) the ``imports`` are imported, then
:func:`~echorl_lightning.config_checks.check_config` on the parsed values,
before anything is instantiated (each problem names its full key); with ``--ckpt_path``, the logger is
pointed at the version folder of the run the checkpoint came from (read from ``run.json``, which this CLI
writes next to the checkpoints, or from a ``version_N`` folder in the checkpoint's path), so a resumed run
continues one TensorBoard run; (3) the classes are built (the module loads its tokenizer only), and the
trainer's strategy reads checkpoints weights-only (:func:`use_safe_checkpoint_loads`; ``--ckpt_path`` with a
strategy that cannot is refused); (4) before
each subcommand: ``datamodule.connect(model.tokenizer)`` (as litgpt does: the YAML never repeats the model
path), then ``datamodule.check_data(max_prompt_tokens)`` with the model's context minus the response limit,
its counts logged once at step 0 (``data/skipped_rows``, ...); (5) the trainer loads the weights
(``configure_model``) and runs.

Left out: loggers other than one ``class_path`` logger with a ``version`` argument are not re-pointed on
resume; the data counts are not logged again on resume (they were logged at the start of the run).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Literal

from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.strategies import Strategy

from echorl_lightning.callbacks.failure_report import FailureReport
from echorl_lightning.callbacks.progress import RolloutProgress
from echorl_lightning.callbacks.rollout import RolloutCallback
from echorl_lightning.callbacks.run_summary import RunSummary
from echorl_lightning.config_checks import ConfigError, check_config
from echorl_lightning.data.tables import DataSourceError
from echorl_lightning.files.config_file import config_file_problem, config_paths, locate, parse_error_line
from echorl_lightning.module import EchoRLModule
from echorl_lightning.training.checkpoint_files import check_checkpoint_path
from echorl_lightning.training.checkpoint_safety import SafeCheckpointIO, reading_checkpoint
from echorl_lightning.training.sharding import FSDP2Strategy

log = logging.getLogger(__name__)
RUN_RECORD = "run.json"
_ROLLOUT_CLASS = f"{RolloutCallback.__module__}.{RolloutCallback.__qualname__}"


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def import_user_code(entries: list[str]) -> None:
    """Import each entry of ``imports``: a module name (``my_pkg.methods``, importable from the working folder or
    the environment) or a path to a ``.py`` file (relative to the working folder). A file already imported under
    its name is not imported again, so its registrations do not run twice.

    Raises:
        ConfigError: naming ``imports[i]``, for a missing file or a module that fails to import.
    """
    for i, entry in enumerate(entries):
        try:
            if not entry.endswith(".py"):
                importlib.import_module(entry)
                continue
            path = Path(entry).resolve()
            if not path.is_file():
                raise ConfigError(f"imports[{i}]={entry!r}: no such file (from {os.getcwd()})")
            loaded = sys.modules.get(path.stem)
            if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == path:
                continue
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            sys.modules[path.stem] = module
            try:
                spec.loader.exec_module(module)  # type: ignore[union-attr]
            except BaseException:
                del sys.modules[path.stem]
                raise
        except ConfigError:
            raise
        except Exception as error:  # the user's code: say which entry, keep the traceback chained
            raise ConfigError(
                f"imports[{i}]={entry!r}: could not be imported: {type(error).__name__}: {error}"
            ) from error


def takes_rollouts(model_class_path: str | None) -> bool:
    """Whether the model class trains on rollouts (an :class:`EchoRLModule`)."""
    cls = _import(model_class_path) if model_class_path else None
    return isinstance(cls, type) and issubclass(cls, EchoRLModule)


def checkpoint_dirs(callbacks: Any) -> list[Path]:
    """The ``dirpath`` of every ModelCheckpoint in a parsed ``trainer.callbacks`` list."""
    entries = callbacks if isinstance(callbacks, list) else [callbacks] if callbacks else []
    dirs = []
    for cb in entries:
        cls = _import(cb.get("class_path", "")) if isinstance(cb, dict) else None
        dirpath = (cb.get("init_args") or {}).get("dirpath") if isinstance(cb, dict) else None
        if isinstance(cls, type) and issubclass(cls, ModelCheckpoint) and dirpath:
            dirs.append(Path(dirpath))
    return dirs


def resumed_version(ckpt_path: str, ckpt_dirs: list[Path]) -> int | str | None:
    """The logger version of the run a checkpoint came from: ``run.json`` in the checkpoint's folder (for
    ``last``/``best``/``hpc``: in the config's checkpoint folders), else a ``version_N`` folder in its path."""
    named = ckpt_path in ("last", "best", "hpc", "registry")
    folders = ckpt_dirs if named else [Path(ckpt_path).parent]
    for folder in folders:
        record = folder / RUN_RECORD
        if record.is_file():
            return json.loads(record.read_text()).get("version")
    if not named:
        match = re.search(r"version_(\d+)", str(Path(ckpt_path).resolve().parent))
        if match:
            return int(match.group(1))
    return None


def use_safe_checkpoint_loads(strategy: Strategy) -> str | None:
    """Make ``strategy`` read checkpoints weights-only (``checkpoint_safety``): a strategy that loads through its
    checkpoint IO gets :class:`SafeCheckpointIO` in place of Lightning's default one.

    Returns:
        None, or why ``strategy`` would still unpickle a checkpoint unrestricted (its own load, or a checkpoint
        IO of the user's own).
    """
    if isinstance(strategy, FSDP2Strategy):
        return None  # its load_checkpoint reads every pickle restricted
    name = type(strategy).__name__
    if type(strategy).load_checkpoint is not Strategy.load_checkpoint:
        return (
            f"trainer.strategy: {name} reads checkpoints with its own unrestricted unpickling; resume with "
            "echorl_lightning.training.sharding.FSDP2Strategy (sharded) or a DDP / single-device strategy"
        )
    if type(strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default
        strategy.checkpoint_io = SafeCheckpointIO()
    if not isinstance(strategy.checkpoint_io, SafeCheckpointIO):
        return (
            f"trainer.plugins: the checkpoint IO {type(strategy.checkpoint_io).__name__} may unpickle checkpoints "
            "unrestricted; leave it out to resume (checkpoints are then read weights-only)"
        )
    return None


class EchoRLParser(LightningArgumentParser):
    """Lightning's parser, whose errors end a run as one :class:`ConfigError` line naming the config file, the
    line and the key (:func:`~echorl_lightning.files.config_file.parse_error_line`) instead of the usage text
    and exit status 2. Parsers that jsonargparse builds inside (``exit_on_error`` off) raise as before."""

    def error(self, message: str, ex: Exception | None = None) -> Any:
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        args = list(getattr(self, "args", None) or sys.argv[1:])
        known = [action.dest for action in parser._actions]
        raise ConfigError(parse_error_line(message, config_paths(args), args, known)) from None


def _built_error(error: BaseException, config: Any) -> BaseException | None:
    """The error to raise instead of jsonargparse's dump when a model or datamodule ``__init__`` failed: the
    project's own error (it names its key) as it is, an ``OSError`` / ``ValueError`` as a :class:`ConfigError`
    naming the group and class; None for anything else (a bug keeps its traceback)."""
    root = error
    while root.__cause__ is not None:
        root = root.__cause__
        if isinstance(root, ConfigError | DataSourceError):
            return root
    if root is error or not isinstance(root, OSError | ValueError):
        return None
    given = re.search(r"class_path='([^']+)'", str(error))
    group = next(
        (g for g in ("model", "data") if given and (config.get(g) or {}).get("class_path") == given.group(1)),
        "model or data",
    )
    lines = [line.strip() for line in str(root).splitlines() if line.strip()]
    what = given.group(1).rpartition(".")[2] if given else "its class"
    return ConfigError(f"{group}: {what} could not be built: {type(root).__name__}: {' '.join(lines[:3])}")


class EchoRLCLI(LightningCLI):
    """LightningCLI with subclass mode for model and data, the ``rollout`` and ``failure_report`` groups, config
    checks before instantiation, resumable logging, checkpoints read weights-only, and tokenizer binding + data
    checks before each subcommand."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--imports",
            type=list[str],
            default=[],
            help="the user's own modules (names or .py paths) to import before the config is checked, e.g. "
            "ones that register a policy loss or advantage estimator to select by name",
        )
        parser.add_lightning_class_args(RolloutCallback, "rollout")
        parser.add_lightning_class_args(FailureReport, "failure_report")
        parser.add_lightning_class_args(RolloutProgress, "progress")
        parser.add_lightning_class_args(RunSummary, "run_summary")

    # ---- (2) before anything is built -------------------------------------------------------------------
    def before_instantiate_classes(self) -> None:
        sub = self.subcommand
        config = self.config[sub] if sub else self.config
        plain = config.as_dict()
        import_user_code(list(plain.get("imports") or []))
        model_path = (plain.get("model") or {}).get("class_path")
        trainer = plain.get("trainer") or {}
        problems = []
        callbacks = trainer.get("callbacks") or []
        for i, cb in enumerate(callbacks if isinstance(callbacks, list) else [callbacks]):
            if isinstance(cb, dict) and cb.get("class_path") == _ROLLOUT_CLASS:
                problems.append(
                    f"trainer.callbacks[{i}]: the RolloutCallback is the `rollout:` config group now (always "
                    "added for fit); move its init_args under `rollout:` and remove it from trainer.callbacks"
                )
        problems += check_config(
            plain, sub or "fit", rollout_key="rollout" if takes_rollouts(model_path) else None
        )
        if problems:
            argv = list(getattr(self.parser, "args", None) or sys.argv[1:])
            problems = [locate(problem, config_paths(argv), argv) for problem in problems]
            raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))
        ckpt_path = plain.get("ckpt_path")
        logger = config.get("trainer.logger") if sub else None
        if ckpt_path and sub == "fit" and hasattr(logger, "init_args") and "version" in logger.init_args:
            if logger.init_args.version is None:
                version = resumed_version(str(ckpt_path), checkpoint_dirs(callbacks))
                if version is not None:
                    logger.init_args.version = version
                    log.info("resuming logger version %s of the run of %s", version, ckpt_path)

    def instantiate_classes(self) -> None:
        """Build the classes; an ``__init__`` that fails on a user's input ends the run with one line."""
        try:
            super().instantiate_classes()
        except ValueError as error:  # jsonargparse wraps __init__ errors in a dump of the whole group
            sub = self.subcommand
            built = _built_error(error, (self.config[sub] if sub else self.config).as_dict())
            if built is None:
                raise
            if type(built) is ConfigError:  # reworded here: say where the group was given
                argv = list(getattr(self.parser, "args", None) or sys.argv[1:])
                built = ConfigError(locate(str(built), config_paths(argv), argv))
            raise built from error

    # ---- (3) the rollout callback only for models that take rollouts --------------------------------------
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        extra = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        if not isinstance(self.model, EchoRLModule):
            extra = [cb for cb in extra if not isinstance(cb, RolloutCallback)]
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        trainer = self._instantiate_trainer(trainer_config, extra)
        problem = use_safe_checkpoint_loads(trainer.strategy)
        if problem and self.subcommand and self.config[self.subcommand].get("ckpt_path") is not None:
            raise ConfigError(f"--ckpt_path: {problem}")
        return trainer

    def _parse_ckpt_path(self) -> None:
        """Lightning reads the hyperparameters of a ``--ckpt_path`` file while parsing, with
        ``torch.load(weights_only=True)``: here with the project's allowlist, a refusal naming the file."""
        sub = self.config.get("subcommand")
        if sub and self.config[sub].get("ckpt_path") is not None:
            check_checkpoint_path(str(self.config[sub].get("ckpt_path")))
        with reading_checkpoint(str(self.config[sub].get("ckpt_path")) if sub else "--ckpt_path"):
            super()._parse_ckpt_path()

    # ---- (4) before each subcommand -----------------------------------------------------------------
    def _prepare(self, stage: Literal["fit", "validate", "test"]) -> None:
        tokenizer = getattr(self.model, "tokenizer", None)
        connect = getattr(self.datamodule, "connect", None)
        if tokenizer is not None and callable(connect):
            connect(tokenizer)
        check = getattr(self.datamodule, "check_data", None)
        if callable(check):
            counts = check(max_prompt_tokens=self._prompt_limit(stage), stage=stage)
            resumed = self.config[self.subcommand].get("ckpt_path") is not None
            if counts and self.trainer.logger is not None and not resumed:
                self.trainer.logger.log_metrics({k: float(v) for k, v in counts.items()}, step=0)
        if stage == "fit" and self.trainer.is_global_zero:
            self._write_run_record()

    def _prompt_limit(self, stage: str) -> int | None:
        """The model's context minus the longest response the stage generates (None: context unknown)."""
        path = getattr(self.model, "hparams", {}).get("model")
        if not isinstance(path, str):
            return None
        from transformers import AutoConfig

        context = getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", None)
        eval_cfg = getattr(self.model, "eval_cfg", None)
        lengths = {"model.init_args.eval.max_new_tokens": getattr(eval_cfg, "max_new_tokens", 0)}
        if stage == "fit":
            for cb in self.trainer.callbacks:
                if isinstance(cb, RolloutCallback):
                    lengths["rollout.max_new_tokens"] = cb.settings.max_new_tokens
        if not context:
            return None
        key, longest = max(lengths.items(), key=lambda kv: kv[1])
        if longest >= context:
            raise ConfigError(
                f"{key}={longest}: leaves no room for a prompt in the model's context of {context} tokens "
                f"(max_position_embeddings of {path}); must be < {context}"
            )
        return context - longest

    def _write_run_record(self) -> None:
        """``run.json`` next to the checkpoints: the logger version a resumed run continues."""
        logger = self.trainer.logger
        version = getattr(logger, "version", None)
        if version is None:
            return
        for cb in self.trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath:
                Path(cb.dirpath).mkdir(parents=True, exist_ok=True)
                record = {"version": version, "log_dir": getattr(logger, "log_dir", None)}
                (Path(cb.dirpath) / RUN_RECORD).write_text(json.dumps(record) + "\n")

    def before_fit(self) -> None:
        self._prepare("fit")

    def before_validate(self) -> None:
        self._prepare("validate")

    def before_test(self) -> None:
        self._prepare("test")


def main(args: list[str] | None = None, run: bool = True) -> EchoRLCLI:
    """Build (and by default run) the CLI; ``args`` as on the command line.

    Raises:
        ConfigError: a config file that cannot be read, or a value that cannot work (raised before any model is
            loaded); the message names the file, line and key.
        DataSourceError: a data file that cannot be read (raised before any model is loaded).
    """
    argv = list(sys.argv[1:] if args is None else args)
    problems = [p for p in map(config_file_problem, config_paths(argv)) if p]
    if problems:
        raise ConfigError("\n".join(problems))
    kwargs: dict[str, Any] = dict(
        model_class=LightningModule,
        datamodule_class=LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        parser_class=EchoRLParser,
        auto_configure_optimizers=False,
        args=args,
        run=run,
    )
    return EchoRLCLI(**kwargs)
