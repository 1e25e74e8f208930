"""Figures from data: each function takes arrays or CSV paths and returns a Figure.

Uses `matplotlib.figure.Figure` directly (no pyplot state, no GUI backend), so it
works headless and in threads. Plots read the CSV histories only, so every figure
can be rebuilt without retraining.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

COLORS = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
]  # fmt: skip


def color_for(index: int) -> str:
    """Stable colour of the `index`-th run, so a run keeps its colour across figures."""
    return COLORS[index % len(COLORS)]


def read_csv(path) -> dict[str, np.ndarray]:
    """Columns of a CSV file as float arrays (non-numeric cells become NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    out = {}
    for key in rows[0]:
        values = []
        for r in rows:
            try:
                values.append(float(r[key]))
            except (TypeError, ValueError):
                values.append(np.nan)
        out[key] = np.asarray(values)
    return out


def save(fig: Figure, path, dpi: int = 100) -> Path:
    """Saves `fig` as PNG via a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def learning_curves(histories, title: str = "Learning curves", colors=None) -> Figure:
    """Loss and accuracy per epoch, train (solid) and validation (dashed).

    Args:
        histories: a `history.csv` path, or `{label: path}` for several runs.
        title: figure title.
        colors: optional `{label: colour}` (keeps a run's colour across figures).
    """
    if not isinstance(histories, dict):
        histories = {"": histories}
    several = len(histories) > 1
    data = {label: read_csv(path) for label, path in histories.items()}
    # A regression's history has no accuracy: its figure is the loss panel alone.
    accuracy = not any(data.values()) or any(
        "accuracy" in h or "val_accuracy" in h for h in data.values() if h
    )
    fig = Figure(figsize=(11, 4) if accuracy else (6.5, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2) if accuracy else (fig.subplots(), None)
    panels = ((ax_loss, "loss"), (ax_acc, "accuracy")) if accuracy else ((ax_loss, "loss"),)
    handles = []  # several runs: one legend entry per run (its colour), then the line styles
    for i, (label, h) in enumerate(data.items()):
        if not h:
            continue
        color, prefix = (colors or {}).get(label, color_for(i)), (f"{label} " if label else "")
        marker = "o" if len(h["epoch"]) < 3 else None  # a one-epoch line would be invisible
        for ax, key in panels:
            if key in h:
                ax.plot(h["epoch"], h[key], color=color, marker=marker, label=f"{prefix}train")
            if f"val_{key}" in h:
                ax.plot(h["epoch"], h[f"val_{key}"], color=color, ls="--", marker=marker,
                        label=f"{prefix}val")  # fmt: skip
        handles.append(Line2D([], [], color=color, label=label))
    for ax, name in panels:
        ax.set_xlabel("epoch")
        # No epoch 1.2 on short runs; min_n_ticks=1: a one-epoch run gets tick 1, not 0.945-1.05.
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if ax.lines and not several:
            ax.legend(fontsize=8)
    if several and handles:
        handles += [Line2D([], [], color="grey", label="train"),
                    Line2D([], [], color="grey", ls="--", label="val")]  # fmt: skip
        fig.legend(handles=handles, loc="outside right upper", fontsize=8,
                   ncols=1 + len(handles) // 18)  # fmt: skip
    # One diverging epoch (e.g. a validation loss of 2,000 when the rest are ~0.1)
    # flattens every other curve on a linear axis: switch to log beyond 2 decades.
    losses = np.concatenate([np.asarray(line.get_ydata(), float) for line in ax_loss.lines] or [[]])
    positive = losses[np.isfinite(losses) & (losses > 0)]
    if positive.size and positive.max() / positive.min() > 100:
        ax_loss.set_yscale("log", nonpositive="mask")
        ax_loss.set_ylabel("loss (log scale)")
    for ax, name in panels:
        ax.set_title(name)
    fig.suptitle(title)
    return fig


def batch_losses(
    runs: dict, title: str = "Training loss per iteration", log_y: bool = True, colors=None
) -> Figure:
    """Loss vs iteration (the reports' main figure) for `{label: batches.csv path}`.

    `colors`: optional `{label: colour}` (keeps a run's colour across figures).
    """
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    for i, (label, path) in enumerate(runs.items()):
        b = read_csv(path)
        if not b:
            continue
        iteration = np.cumsum(b["steps"]) if "steps" in b else np.arange(1, len(b["loss"]) + 1)
        color = (colors or {}).get(label, color_for(i))
        marker = "o" if len(iteration) < 3 else None  # a one-point line would be invisible
        ax.plot(iteration, b["loss"], color=color, lw=0.8, marker=marker, ms=3, label=label)
    ax.set_xlabel("iteration")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # no iteration 3.8
    ax.set_ylabel("training loss")
    if log_y and ax.lines and all(np.nanmax(line.get_ydata()) > 0 for line in ax.lines):
        ax.set_yscale("log", nonpositive="mask")  # a loss of exactly 0 is left out, not -inf
    ax.grid(alpha=0.3)
    ax.set_title(title)
    if ax.lines:
        ax.legend(fontsize=8)
    return fig


def confusion_matrix(
    cm, class_names, title: str = "Confusion matrix", predicted_names=None
) -> Figure:
    """Heatmap of a confusion matrix (rows: true class, columns: predicted), with counts.

    `predicted_names` label the columns where the model's classes are not the scored
    data's (an MNIST model scored on Fashion-MNIST predicts "8", not "Bag")."""
    cm = np.asarray(cm)
    n = len(class_names)
    predicted = list(predicted_names) if predicted_names is not None else list(class_names)
    fig = Figure(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n))
    ax = fig.subplots()
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(range(n), predicted, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel(
        "predicted class" if predicted == list(class_names) else "predicted class (the model's)"
    )
    ax.set_ylabel("true class")
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > threshold else "black")  # fmt: skip
    ax.set_title(title)
    return fig


def per_class_accuracy(values: dict, class_names, title: str = "Per-class accuracy") -> Figure:
    """Grouped bars of per-class accuracy, `{split_or_run: [acc per class]}`.

    A legend names the series where there are several; one series is the title's."""
    fig = Figure(figsize=(9, 4))
    ax = fig.subplots()
    n, k = len(class_names), max(len(values), 1)
    width = 0.8 / k
    lows = []
    for i, (label, acc) in enumerate(values.items()):
        acc = np.asarray(acc, dtype=float)
        lows.append(np.nanmin(acc))
        ax.bar(
            np.arange(n) + (i - (k - 1) / 2) * width, acc, width, color=color_for(i), label=label
        )
    ax.set_xticks(
        range(n), class_names, rotation=45 if n > 10 or max(map(len, class_names)) > 3 else 0
    )
    ax.set_xlabel("class")
    ax.set_ylabel("accuracy")
    ax.set_ylim(max(0.0, min(lows, default=0.0) - 0.05), 1.0)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title)
    if len(values) > 1:
        ax.legend(fontsize=8)
    return fig


def image_grid(images, titles, ncols: int = 8, title: str = "") -> Figure:
    """Grid of 28x28 grayscale images with a caption under each."""
    images = np.asarray(images)
    n = len(images)
    nrows = max(1, int(np.ceil(n / ncols)))
    fig = Figure(figsize=(1.5 * ncols, 1.75 * nrows))
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, img, caption in zip(axes, images, titles):
        ax.imshow(img.reshape(28, 28), cmap="gray_r", vmin=0, vmax=255)
        ax.set_title(caption, fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def palette(n: int) -> list[str]:
    """`n` distinct colours: `COLORS`, else tab20 (hues first, then their light shades)."""
    if n <= len(COLORS):
        return COLORS[:n]
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    tab20 = [to_hex(c) for c in colormaps["tab20"].colors]
    ordered = tab20[0::2] + tab20[1::2]
    if n <= len(ordered):
        return ordered[:n]
    return [to_hex(colormaps["turbo"](i / max(n - 1, 1))) for i in range(n)]


def _text_colour(rgba) -> str:
    """Black or white, whichever reads on a cell of colour `rgba`: white where the
    cell's luminance (ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B) is below 0.5. (A
    threshold on the value instead gave black on viridis' darkest colour when every
    cell held the same value: matplotlib then paints them all at the bottom of the
    scale.)"""
    r, g, b = rgba[:3]
    return "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"


def heatmap(values, row_labels, col_labels, title: str, xlabel: str, ylabel: str,
            fmt: str = "{:.1%}", cbar_label: str = "") -> Figure:  # fmt: skip
    """Annotated heatmap of a 2-D array (NaN cells left blank), e.g. accuracy per depth x width."""
    return heatmap_panels({"": values}, row_labels, col_labels, title, xlabel, ylabel, fmt=fmt,
                          cbar_label=cbar_label, best=None)  # fmt: skip


def heatmap_panels(panels: dict, row_labels, col_labels, title: str, xlabel: str, ylabel: str,
                   fmt: str = "{:.1f}", cbar_label: str = "", best: str | None = "max",
                   notes: dict | None = None) -> Figure:  # fmt: skip
    """Annotated heatmaps side by side on one colour scale, e.g. accuracy per batch x lr per epochs.

    Args:
        panels: `{panel title: 2-D array}` (rows x columns; NaN cells left blank).
        row_labels: one label per row; `col_labels` one per column.
        fmt: format of each cell's annotation.
        best: `"max"` or `"min"` draws the best cell over all panels in bold; None: none.
        notes: `{panel title: 2-D array of str}` appended under a cell's value.
    """
    if best not in ("max", "min", None):
        raise ValueError(f"`best` must be 'max', 'min' or None. Received: best={best!r}")
    if not panels:
        raise ValueError("`panels` must hold at least one panel. Received: panels={}")
    grids = {k: np.asarray(v, dtype=float) for k, v in panels.items()}
    finite = np.concatenate([g[np.isfinite(g)].ravel() for g in grids.values()])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    best_value = {"max": vmax, "min": vmin}.get(best) if finite.size else None
    n = len(grids)
    fig = Figure(
        figsize=(1.2 + n * (0.4 + 0.85 * len(col_labels)), 1.4 + 0.6 * len(row_labels)),
        layout="constrained",
    )
    axes = np.atleast_1d(fig.subplots(1, n, sharey=True))
    image = None
    for ax, (panel, grid) in zip(axes, grids.items(), strict=True):
        image = ax.imshow(
            np.ma.masked_invalid(grid), cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto"
        )
        note = (notes or {}).get(panel)
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                if not np.isfinite(grid[i, j]):
                    continue
                text = fmt.format(grid[i, j]) + (note[i][j] if note is not None else "")
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color=_text_colour(image.cmap(image.norm(grid[i, j]))),
                        fontweight="bold" if grid[i, j] == best_value else "normal")  # fmt: skip
        ax.set_xticks(range(len(col_labels)), [str(c) for c in col_labels])
        ax.set_xlabel(xlabel)
        if panel:
            ax.set_title(panel)
    axes[0].set_yticks(range(len(row_labels)), [str(r) for r in row_labels])
    axes[0].set_ylabel(ylabel)
    cbar = fig.colorbar(image, ax=list(axes), shrink=0.85 if n > 1 else 1.0)
    if cbar_label:
        cbar.set_label(cbar_label)
    fig.suptitle(title)
    return fig


def grouped_bars(values: dict, labels, title: str, xlabel: str = "", ylabel: str = "",
                 colors=None, ylim=None, errors=None) -> Figure:  # fmt: skip
    """Grouped bars, `{series: [value per label]}` (NaN: no bar), e.g. ours vs the report.

    `errors`: `{series: [half-width per label]}`, drawn as whiskers (0: none), e.g. a
    range the report gave instead of one number, its bar at the range's midpoint.
    """
    fig = Figure(figsize=(max(6.0, 0.9 * len(labels) + 2), 4))
    ax = fig.subplots()
    k = max(len(values), 1)
    width = 0.8 / k
    for i, (series, vals) in enumerate(values.items()):
        color = (colors or {}).get(series, color_for(i))
        x = np.arange(len(labels)) + (i - (k - 1) / 2) * width
        err = (errors or {}).get(series)
        if err is not None and any(err):  # NaN: no whisker (nor a cap) on a 0 half-width
            err = np.where(np.asarray(err, dtype=float) > 0, err, np.nan)
        else:
            err = None
        ax.bar(x, np.asarray(vals, dtype=float), width, color=color, label=series, yerr=err,
               capsize=4)  # fmt: skip
    ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 5 else 0, ha="right"
                  if len(labels) > 5 else "center")  # fmt: skip
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def regression_fit(fit_csv, title: str = "Fit vs truth") -> Figure:
    """A 1-D regression from `fit.csv`: truth and prediction (left), their error (right)."""
    d = read_csv(fit_csv)
    fig = Figure(figsize=(9, 4), layout="constrained")
    ax_fit, ax_err = fig.subplots(1, 2)
    ax_fit.plot(d["x"], d["y_true"], color=COLORS[0], lw=2.5, alpha=0.6, label="truth sin(x)")
    ax_fit.plot(d["x"], d["y_pred"], color=COLORS[1], lw=1.2, ls="--", label="network")
    ax_fit.set_xlabel("x")
    ax_fit.set_ylabel("y")
    ax_fit.set_title("fit")
    ax_fit.legend(fontsize=8)
    ax_err.plot(d["x"], d["y_pred"] - d["y_true"], color=COLORS[1], lw=1)
    ax_err.axhline(0, color="gray", lw=0.8)
    ax_err.set_xlabel("x")
    ax_err.set_ylabel("prediction - truth")
    ax_err.set_title("error")
    for ax in (ax_fit, ax_err):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig
