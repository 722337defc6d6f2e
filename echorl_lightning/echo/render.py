"""Text and figure of EchoClips for TensorBoard: what a clip looks like.

Reads a :class:`~echorl_lightning.echo.clip_view.ClipView` (steps, peak step, clip end) and turns chosen
rows into

* :func:`clip_markdown`: per rollout a header (the caller's title, the clip's extent, the peak step's
  entropy and relative position) and a table with one line per step: its index (the peak step marked
  ``★ peak``), its mean token entropy and its decoded text, the EchoClip's tokens in **bold**. Text is
  escaped for Markdown (TensorBoard's text plugin renders Markdown with tables), newlines shown as ``↵``,
  and long steps cut at ``max_step_chars`` with ``…``;
* :func:`step_entropy_figure`: step entropy along each rollout (x = relative token position 0..1, one
  horizontal segment per step), the peak step marked with a star and the clip end with a dashed line, drawn
  on a bare ``matplotlib.figure.Figure`` (no pyplot, no global state) and returned as an RGB array.

Decoding is the caller's callable, so nothing here knows a tokenizer. Left out: steps that the clip only
partly covers are split into a bold prefix and a plain rest, decoded separately, which can split a multi-byte
character (the selectors always end a clip on a step boundary, so it does not happen there); no cap on the
number of steps shown.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from torch import Tensor

from echorl_lightning.echo.clip_view import ClipView

_MD_SPECIAL = set("\\`*_{}[]()#+-.!|")  # what Python-Markdown (with its tables extension) unescapes


def escape_markdown(text: str) -> str:
    """``text`` as literal Markdown: ``&`` and ``<`` as entities, specials backslash-escaped, newlines as
    ``↵``, tabs as a space, carriage returns dropped (so it stays on one table line)."""
    out = []
    for ch in text:
        if ch == "&":
            out.append("&amp;")
        elif ch == "<":
            out.append("&lt;")
        elif ch == "\n":
            out.append("↵")
        elif ch == "\t":
            out.append(" ")
        elif ch == "\r":
            continue
        elif ch in _MD_SPECIAL:
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def _bold(text: str) -> str:
    """Markdown bold of already-escaped ``text``; whitespace stays outside the markers (``** a**`` is not
    bold in Markdown); empty or blank text is returned unchanged."""
    core = text.strip()
    if not core:
        return text
    head = text[: len(text) - len(text.lstrip())]
    tail = text[len(text.rstrip()) :]
    return f"{head}**{core}**{tail}"


def _cut(text: str, budget: int) -> str:
    return text if len(text) <= budget else text[: max(budget - 1, 0)] + "…"


def clip_markdown(
    view: ClipView,
    responses: Tensor,
    clip_mask: Tensor,
    rows: Sequence[int],
    decode: Callable[[list[int]], str],
    titles: Sequence[str],
    max_step_chars: int = 200,
) -> str:
    """Markdown of the chosen rows' steps, clips and step entropies.

    Args:
        view: the :class:`ClipView` of the batch.
        responses: ``[N, T]`` long, response token ids.
        clip_mask: ``[N, T]`` bool, the EchoClip tokens.
        rows: the row indices to show, in order.
        decode: token ids -> text (e.g. ``tokenizer.decode``).
        titles: one Markdown heading text per row (written as ``#### <title>``; the caller escapes it).
        max_step_chars: the most characters of decoded text shown per step (>= 1).

    Returns:
        The Markdown document; "" when ``rows`` is empty.
    """
    if len(titles) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(titles)} titles")
    if max_step_chars < 1:
        raise ValueError(f"max_step_chars must be >= 1, got {max_step_chars}")
    blocks = []
    for row, title in zip(rows, titles, strict=True):
        blocks.append(_row_markdown(view, responses, clip_mask, int(row), decode, title, max_step_chars))
    return "\n\n".join(blocks)


def _row_markdown(
    view: ClipView,
    responses: Tensor,
    clip_mask: Tensor,
    row: int,
    decode: Callable[[list[int]], str],
    title: str,
    max_step_chars: int,
) -> str:
    """One row's heading, summary line and step table (see :func:`clip_markdown`)."""
    k = int(view.steps.num_steps[row])
    peak = int(view.peak_step[row])
    clip_tokens = int(view.clip_end[row]) + 1
    lines = [f"#### {title}", ""]
    if peak >= 0:
        lines.append(
            f"EchoClip (bold): steps 0–{peak} of {k}, {clip_tokens} of {int(view.response_len[row])} "
            f"tokens; peak step {peak}, mean entropy {float(view.steps.entropy[row, peak]):.3f}, "
            f"relative position {float(view.peak_pos[row]):.2f}"
        )
    else:
        lines.append(f"no EchoClip in this rollout ({k} steps)")
    lines += ["", "| step | mean entropy | text |", "|---:|---:|---|"]
    ids = responses[row].tolist()
    in_clip = clip_mask[row].bool().tolist()
    for s in range(k):
        lo, hi = int(view.start[row, s]), int(view.stop[row, s])
        clip_part = [ids[i] for i in range(lo, hi) if in_clip[i]]
        rest = [ids[i] for i in range(lo, hi) if not in_clip[i]]
        clip_raw = decode(clip_part) if clip_part else ""
        rest_raw = decode(rest) if rest else ""
        shown = _cut(clip_raw + rest_raw, max_step_chars)  # the bold part is the first len(clip_raw) chars
        clip_text, rest_text = (
            escape_markdown(shown[: len(clip_raw)]),
            escape_markdown(shown[len(clip_raw) :]),
        )
        entropy = f"{float(view.steps.entropy[row, s]):.3f}"
        label = str(s)
        if s == peak:
            label, entropy = f"**{s} ★ peak**", f"**{entropy}**"
        lines.append(f"| {label} | {entropy} | {_bold(clip_text)}{rest_text} |")
    return "\n".join(lines)


def step_entropy_figure(
    view: ClipView, rows: Sequence[int], labels: Sequence[str], title: str = ""
) -> np.ndarray:
    """Step entropy along the chosen rollouts, peak steps and clip ends marked, as an RGB image.

    Each row is a staircase: step s spans ``[start_s / L, stop_s / L)`` of the relative token position
    (L = the row's step tokens) at height = its mean entropy; a star marks the peak step (at the middle of
    its span) and a dashed vertical line of the same colour the clip end (``(clip_end + 1) / L``).

    Args:
        view: the :class:`ClipView` of the batch.
        rows: the row indices to draw.
        labels: one legend label per row.
        title: the axes title.

    Returns:
        ``[H, W, 3]`` uint8 image (640 x 320 pixels).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if len(labels) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(labels)} labels")
    fig = Figure(figsize=(6.4, 3.2), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        xs, ys, peak_xy, clip_x = step_entropy_curve(view, int(row))
        color = f"C{i % 10}"
        ax.plot(xs, ys, color=color, lw=1.5, label=label)
        if peak_xy is not None:
            ax.plot(*peak_xy, marker="*", ms=14, color=color, mec="black", ls="none")
        if clip_x is not None:
            ax.axvline(clip_x, color=color, ls="--", lw=1)
    ax.plot([], [], marker="*", ms=10, color="gray", mec="black", ls="none", label="peak step")
    ax.plot([], [], color="gray", ls="--", lw=1, label="clip end")
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("relative token position in the response")
    ax.set_ylabel("step mean token entropy (nats)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def step_entropy_curve(
    view: ClipView, row: int
) -> tuple[list[float], list[float], tuple[float, float] | None, float | None]:
    """The staircase of one row and where its marks go (what :func:`step_entropy_figure` draws).

    Returns:
        ``(xs, ys, peak_xy, clip_x)``: the staircase corners (two points per step, at its start and stop
        relative positions), the peak star ``(middle of the peak step, its entropy)`` or None without a
        clip, and the clip end's relative position ``(clip_end + 1) / L`` or None without a clip.
    """
    length = max(int(view.response_len[row]), 1)
    xs: list[float] = []
    ys: list[float] = []
    for s in range(int(view.steps.num_steps[row])):
        h = float(view.steps.entropy[row, s])
        xs += [int(view.start[row, s]) / length, int(view.stop[row, s]) / length]
        ys += [h, h]
    peak = int(view.peak_step[row])
    if peak < 0:
        return xs, ys, None, None
    mid = (int(view.start[row, peak]) + int(view.stop[row, peak])) / (2 * length)
    return xs, ys, (mid, float(view.steps.entropy[row, peak])), (int(view.clip_end[row]) + 1) / length
