"""Read every scalar of a TensorBoard log folder into plain lists (the harness's record of one run)."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator


def read_scalars(log_dir: Path) -> dict[str, list[list[float]]]:
    """``{tag: [[step, value], ...]}`` (sorted by step, the last write of a step wins) for every scalar
    under ``log_dir`` (all versions and event files); raises ``FileNotFoundError`` when there is none."""
    files = sorted(Path(log_dir).rglob("events.out.tfevents.*"))
    if not files:
        raise FileNotFoundError(f"no TensorBoard event file under {log_dir}")
    merged: dict[str, dict[int, float]] = {}
    for path in files:
        acc = EventAccumulator(str(path), size_guidance={SCALARS: 0})
        acc.Reload()
        for tag in acc.Tags()[SCALARS]:
            series = merged.setdefault(tag, {})
            for event in acc.Scalars(tag):
                series[int(event.step)] = float(event.value)
    return {tag: [[step, series[step]] for step in sorted(series)] for tag, series in merged.items()}
