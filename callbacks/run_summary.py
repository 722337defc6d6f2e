"""The run summary: the table a ``fit`` starts with, on rank 0.

What the run will do, read from the built objects (not the YAML), so overrides and presets show resolved: the
model (path, class, dtype, parameters total and trainable; the reference model when KL needs one), the method
preset and every axis of its resolved ``MethodConfig`` (EchoRL plugs into the GRPO family), the echo settings,
the rollout engine, accelerator, devices, strategy and precision, the data (train prompts, verifier,
evaluation sets and their sizes), the rollout and update schedule (from the ``RolloutCallback``), and where
logs and checkpoints go. Sections whose objects are absent (a module without a method, no rollout callback)
are left out. Printed with rich in a terminal, as plain text otherwise.

Left out: settings of objects the project does not know (other loggers' options, optimizer internals).
"""

from __future__ import annotations

import io
from dataclasses import asdict, is_dataclass
from typing import Any

import lightning.pytorch as L
import torch
from echorl_lightning.callbacks.rollout import RolloutCallback

Section = tuple[str, list[tuple[str, str]]]


def count_parameters(module: torch.nn.Module) -> tuple[int, int]:
    """``(total, trainable)`` parameter counts (shared tensors counted once)."""
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def settings_text(obj: Any) -> str:
    """``key=value, ...`` of a dataclass, or of an object's public scalar attributes."""
    items = asdict(obj) if is_dataclass(obj) and not isinstance(obj, type) else vars(obj)
    scalars = {
        k: v for k, v in items.items() if not k.startswith("_") and isinstance(v, bool | int | float | str)
    }
    return ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in scalars.items())


def _model_section(pl_module: L.LightningModule) -> Section:
    policy = getattr(pl_module, "policy", None)
    net = policy if isinstance(policy, torch.nn.Module) else pl_module
    total, trainable = count_parameters(net)
    first = next(net.parameters(), None)
    rows = [
        ("model", str(pl_module.hparams.get("model", type(pl_module).__name__))),
        ("policy class", f"{type(net).__name__} in {type(pl_module).__name__}"),
        ("parameters", f"{total:,} total, {trainable:,} trainable"),
        ("dtype", str(first.dtype).removeprefix("torch.") if first is not None else "-"),
    ]
    ref = getattr(pl_module, "ref_policy", None)
    if isinstance(ref, torch.nn.Module):
        rows.append(("reference model", f"{count_parameters(ref)[0]:,} parameters, frozen"))
    if "lr" in pl_module.hparams:
        rows.append(("lr", f"{pl_module.hparams['lr']:g}"))
    return "model", rows


def _method_sections(pl_module: L.LightningModule) -> list[Section]:
    sections = []
    method = getattr(pl_module, "method_cfg", None)
    if method is not None:
        preset = str(pl_module.hparams.get("method", "-"))
        sections.append(("method", [("preset", preset), ("axes", settings_text(method))]))
    echo = getattr(pl_module, "echo_cfg", None)
    if echo is not None:
        sections.append(
            ("echo", [("EchoRL", "on" if echo.enabled else "off"), ("echo settings", settings_text(echo))])
        )
    engine = getattr(pl_module, "engine", None)
    if engine is not None:
        sections.append(
            ("engine", [("engine", type(engine).__name__), ("engine settings", settings_text(engine))])
        )
    return sections


def _hardware_section(trainer: L.Trainer) -> Section:
    return "hardware", [
        ("accelerator", type(trainer.accelerator).__name__),
        ("devices", f"{trainer.num_devices} x {trainer.num_nodes} node(s), world size {trainer.world_size}"),
        ("strategy", type(trainer.strategy).__name__),
        ("precision", str(trainer.precision)),
    ]


def _data_section(trainer: L.Trainer, pl_module: L.LightningModule) -> Section:
    dm = trainer.datamodule
    rows = [("datamodule", type(dm).__name__)]
    if hasattr(dm, "train_prompts"):
        rows.append(("train prompts", f"{len(dm.train_prompts):,}"))
    if hasattr(dm, "verifier"):
        rows.append(("verifier", type(dm.verifier).__name__))
    if not trainer.enable_validation:
        rows.append(("eval sets", "validation off"))
    elif callable(getattr(dm, "eval_sets", None)):
        sets = dm.eval_sets()
        rows.append(("eval sets", ", ".join(f"{s.name}: {len(s.prompts):,}" for s in sets) or "none"))
        ev = getattr(pl_module, "eval_cfg", None)
        if ev is not None:
            rows.append(
                ("eval sampling", f"k={ev.n} at temperature {ev.temperature}, <= {ev.max_new_tokens} tokens")
            )
    return "data", rows


def _rollout_section(trainer: L.Trainer, rc: RolloutCallback) -> Section:
    s = rc.settings
    rollouts = s.prompts_per_epoch * s.group_size
    updates = (
        f"{s.ppo_epochs * s.num_minibatches} optimizer step(s) per epoch ({s.ppo_epochs} pass(es) x "
        f"{s.num_minibatches} minibatch(es)), {trainer.accumulate_grad_batches} micro-batch(es) each"
    )
    return "rollout", [
        ("per epoch", f"{s.prompts_per_epoch} prompts x G={s.group_size} = {rollouts} rollouts"),
        (
            "sampling",
            f"temperature {s.temperature}, top_p {s.top_p}, <= {s.max_new_tokens} new tokens, seed {s.seed}",
        ),
        ("updates", updates),
        ("old log-probs", f"batches of {s.logprob_batch_size}; on_policy_shortcut={s.on_policy_shortcut}"),
        ("epochs", f"max {trainer.max_epochs}, validation every {trainer.check_val_every_n_epoch}"),
    ]


def _output_section(trainer: L.Trainer) -> Section:
    logs = [f"{type(lg).__name__}: {lg.log_dir or lg.save_dir}" for lg in trainer.loggers]
    ckpts = [str(cb.dirpath) for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)]
    return "output", [
        ("logs", "; ".join(logs) or "no logger"),
        ("checkpoints", "; ".join(ckpts) or "none"),
        ("root dir", str(trainer.default_root_dir)),
    ]


def summary_sections(trainer: L.Trainer, pl_module: L.LightningModule) -> list[Section]:
    """The table's sections, in order (see the module docstring); call after the model is loaded."""
    sections = [_model_section(pl_module), *_method_sections(pl_module), _hardware_section(trainer)]
    if trainer.datamodule is not None:
        sections.append(_data_section(trainer, pl_module))
    rollout = next((cb for cb in trainer.callbacks if isinstance(cb, RolloutCallback)), None)
    if rollout is not None:
        sections.append(_rollout_section(trainer, rollout))
    sections.append(_output_section(trainer))
    return sections


def render_table(sections: list[Section], width: int = 120) -> Any:
    """A rich ``Table`` of the sections (section, setting, value)."""
    from rich.table import Table

    table = Table(title="echorl-lightning run", show_header=False, width=width)
    for column in ("section", "setting", "value"):
        table.add_column(column, overflow="fold", no_wrap=False)
    for i, (name, rows) in enumerate(sections):
        if i:
            table.add_section()
        for j, (key, value) in enumerate(rows):
            table.add_row(name if j == 0 else "", key, value)
    return table


def plain_text(sections: list[Section], width: int = 120) -> str:
    """The table as plain text (no colour codes), ``width`` columns wide."""
    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=width, color_system=None, force_terminal=False).print(
        render_table(sections, width)
    )
    return out.getvalue()


class RunSummary(L.Callback):
    """Prints the run summary table at the start of ``fit`` (rank 0).

    Args:
        width: the table's width in columns.
    """

    def __init__(self, width: int = 120) -> None:
        self.width = width

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        sections = summary_sections(trainer, pl_module)
        from rich import get_console

        console = get_console()
        if console.is_terminal:
            console.print(render_table(sections, min(self.width, console.width)))
        else:
            print(plain_text(sections, self.width), flush=True)
