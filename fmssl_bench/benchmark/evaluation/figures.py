"""Pictures of one run, written into its record: training curves and qualitative overlays.

- ``progress.png`` (nnU-Net's idea): one panel per kind of logged value in ``train_log.csv``
  (losses, learning rate, ramp weights, other logs), stages one after another on a common
  iteration axis, one line per logged column and stage. Long logs get a running mean over the
  faint raw values, so a noisy loss still shows its trend.
- ``overlays.png``: the best, median and worst test cases by Dice (per-case Dice from the
  record's ``per_case.csv``, averaged over the foreground classes): image, reference contours
  (solid) and prediction contours (dashed), one colour per class. 3D cases show the slice along
  the last axis (the slice axis of the LA volumes and of NIfTI storage order) with the most
  reference foreground.

Matplotlib renders with the Agg canvas on a private :class:`~matplotlib.figure.Figure`, never
through pyplot, so nothing global (backend, open figures) changes in the caller's process. A
picture is a reading aid, not a result: the runner calls these inside a ``try`` and a failure
only costs a warning.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..records.statistics import record_case_dice
from ..records.store import atomic_write_bytes
from .predictions import prediction_path, read_prediction

PROGRESS = "progress.png"
OVERLAYS = "overlays.png"
DPI = 100
#: palette size of overlays.png (see :func:`figure_png`)
OVERLAY_COLOURS = 128
#: the train_log.csv columns that are coordinates, not logged values
LOG_INDEX = ("stage", "iteration")
KINDS = ("losses", "learning rate", "ramp weights", "other logs")
#: above this many points a series is drawn faint with its running mean on top
SMOOTH_ABOVE = 100
LINESTYLES = ("-", "--", ":", "-.")


def new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas (no pyplot state)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Figure, colours: int | None = None) -> bytes:
    """The figure as PNG bytes; ``colours`` quantises to a palette of that many colours.

    Overlays of photographs (Kvasir) are ~0.5 MB as true-colour PNG and every committed record
    carries one; a 128-colour palette (no dithering, so contours stay crisp) is ~3.5x smaller.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    if colours is None:
        return buf.getvalue()
    from PIL import Image

    image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    out = io.BytesIO()
    image.quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, "PNG", optimize=True)
    return out.getvalue()


# --------------------------------------------------------------------------- progress.png


def log_kind(column: str) -> str:
    """Which panel a ``train_log.csv`` column belongs to (methods log ``loss_*`` and ``w_*``)."""
    if column == "lr":
        return "learning rate"
    if column.startswith("loss"):
        return "losses"
    if column.startswith("w_") or "weight" in column:
        return "ramp weights"
    return "other logs"


def write_progress_png(record_dir: Path) -> Path | None:
    """Draw ``train_log.csv`` into ``progress.png``; None when the record has no training log
    (outside predictions, an oracle)."""
    record_dir = Path(record_dir)
    log_path = record_dir / "train_log.csv"
    if not log_path.is_file():
        return None
    log = pd.read_csv(log_path)
    if log.empty or not set(LOG_INDEX) <= set(log.columns):
        return None
    stages = list(dict.fromkeys(log["stage"].astype(str)))
    offsets, start = {}, 0
    for stage in stages:  # stages run one after another: a common iteration axis
        offsets[stage] = start
        start += int(log.loc[log["stage"].astype(str) == stage, "iteration"].max())
    columns = [c for c in log.columns if c not in LOG_INDEX and pd.api.types.is_numeric_dtype(log[c])]
    kinds = [k for k in KINDS if any(log_kind(c) == k for c in columns)]
    fig = new_figure(9, 2.4 * max(1, len(kinds)) + 0.4)
    axes = fig.subplots(max(1, len(kinds)), 1, sharex=True, squeeze=False)[:, 0]
    for ax, kind in zip(axes, kinds):
        for ci, column in enumerate(c for c in columns if log_kind(c) == kind):
            colour = f"C{ci % 10}"
            for si, stage in enumerate(stages):
                part = log.loc[log["stage"].astype(str) == stage, ["iteration", column]].dropna()
                if part.empty:
                    continue
                x, y = part["iteration"].to_numpy() + offsets[stage], part[column].to_numpy(dtype=float)
                label = column if len(stages) == 1 else f"{column} · {stage}"
                style = LINESTYLES[si % len(LINESTYLES)]
                if len(y) > SMOOTH_ABOVE:
                    ax.plot(x, y, style, color=colour, alpha=0.25, linewidth=0.6)
                    y = pd.Series(y).rolling(max(2, len(y) // 50), min_periods=1, center=True).mean().to_numpy()
                ax.plot(x, y, style, color=colour, linewidth=1.3, label=label)
        for stage in stages[1:]:
            ax.axvline(offsets[stage], color="0.6", linewidth=0.8, linestyle=":")
        ax.set_ylabel(kind)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[-1].set_xlabel("iteration" + ("" if len(stages) == 1 else f" (stages in order: {', '.join(stages)})"))
    fig.suptitle(f"training progress: {record_dir.name}", fontsize=10)
    out = record_dir / PROGRESS
    atomic_write_bytes(out, figure_png(fig))
    return out


# --------------------------------------------------------------------------- overlays.png


def pick_cases(dice: dict[str, float]) -> list[tuple[str, str]]:
    """``(role, case)`` for the best, median and worst case by Dice (fewer when there are fewer cases)."""
    ranked = sorted((v, c) for c, v in dice.items() if not math.isnan(v))
    if not ranked:
        return []
    picks = {"best": len(ranked) - 1, "median": (len(ranked) - 1) // 2, "worst": 0}
    out, seen = [], set()
    for role, i in picks.items():
        if i not in seen:
            seen.add(i)
            out.append((role, ranked[i][1]))
    return out


def display_slice(image: np.ndarray, label: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """2D views (image HxW or HxWx3 in 0..1, reference, prediction) and a note saying which slice."""
    note = ""
    if label.ndim == 3:
        area = (label > 0).reshape(-1, label.shape[-1]).sum(0)
        if not area.any():
            area = (pred > 0).reshape(-1, pred.shape[-1]).sum(0)
        k = int(np.argmax(area)) if area.any() else label.shape[-1] // 2
        image, label, pred, note = image[..., k], label[..., k], pred[..., k], f", slice {k}/{label.shape[-1]}"
    view = np.moveaxis(image[:3], 0, -1) if image.shape[0] == 3 else image[0]
    low, high = float(view.min()), float(view.max())
    return (view - low) / (high - low if high > low else 1.0), label, pred, note


def write_overlays_png(record_dir: Path, adapter, test_ids: Sequence[str]) -> Path | None:
    """Overlays of the best, median and worst test cases into ``overlays.png``; None without any
    scored, predicted test case."""
    record_dir = Path(record_dir)
    ndim = int(adapter.ndim)
    predictions = record_dir / "predictions"
    dice = record_case_dice(record_dir)
    dice = {c: dice[c] for c in test_ids if c in dice and prediction_path(predictions, c, ndim).is_file()}
    picks = pick_cases(dice)
    if not picks:
        return None
    classes = list(adapter.classes)
    fig = new_figure(3.6 * len(picks), 4.2)
    axes = fig.subplots(1, len(picks), squeeze=False)[0]
    for ax, (role, case_id) in zip(axes, picks):
        case = adapter.load(case_id)
        pred, _ = read_prediction(prediction_path(predictions, case_id, ndim), ndim)
        view, label, pred, note = display_slice(case.image, case.label, np.asarray(pred))
        ax.imshow(view, cmap="gray", interpolation="nearest")
        for k in range(1, len(classes)):
            for mask, style in ((label == k, "solid"), (pred == k, "dashed")):
                if mask.any() and not mask.all():
                    ax.contour(mask.astype(float), levels=[0.5], colors=[f"C{k % 10}"], linestyles=style,
                               linewidths=1.3)
        ax.set_title(f"{role}: {case_id}{note}\nDice {100 * dice[case_id]:.1f}%", fontsize=9)
        ax.set_axis_off()
    handles = [Line2D([], [], color="0.2", linestyle="solid", label="reference"),
               Line2D([], [], color="0.2", linestyle="dashed", label="prediction"),
               *(Line2D([], [], color=f"C{k % 10}", label=classes[k]) for k in range(1, len(classes)))]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    fig.suptitle(f"best, median and worst test cases: {record_dir.name}", fontsize=10)
    out = record_dir / OVERLAYS
    atomic_write_bytes(out, figure_png(fig, colours=OVERLAY_COLOURS))
    return out
