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


def learning_curves(histories, title: str = "Learning curves") -> Figure:
    """Loss and accuracy per epoch, train (solid) and validation (dashed).

    Args:
        histories: a `history.csv` path, or `{label: path}` for several runs.
        title: figure title.
    """
    if not isinstance(histories, dict):
        histories = {"": histories}
    fig = Figure(figsize=(11, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for i, (label, path) in enumerate(histories.items()):
        h = read_csv(path)
        if not h:
            continue
        color, prefix = color_for(i), (f"{label} " if label else "")
        for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            if key in h:
                ax.plot(h["epoch"], h[key], color=color, label=f"{prefix}train")
            if f"val_{key}" in h:
                ax.plot(h["epoch"], h[f"val_{key}"], color=color, ls="--", label=f"{prefix}val")
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    ax_loss.set_title("loss")
    ax_acc.set_title("accuracy")
    fig.suptitle(title)
    return fig


def batch_losses(runs: dict, title: str = "Training loss per iteration", log_y: bool = True) -> Figure:
    """Loss vs iteration (the reports' main figure) for `{label: batches.csv path}`."""
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    for i, (label, path) in enumerate(runs.items()):
        b = read_csv(path)
        if not b:
            continue
        iteration = np.cumsum(b["steps"]) if "steps" in b else np.arange(1, len(b["loss"]) + 1)
        ax.plot(iteration, b["loss"], color=color_for(i), lw=0.8, label=label)
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss")
    if log_y and ax.lines and all(np.nanmin(line.get_ydata()) > 0 for line in ax.lines):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.set_title(title)
    if ax.lines:
        ax.legend(fontsize=8)
    return fig


def confusion_matrix(cm, class_names, title: str = "Confusion matrix") -> Figure:
    """Heatmap of a confusion matrix (rows: true class, columns: predicted), with counts."""
    cm = np.asarray(cm)
    n = len(class_names)
    fig = Figure(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n))
    ax = fig.subplots()
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > threshold else "black")  # fmt: skip
    ax.set_title(title)
    return fig


def per_class_accuracy(values: dict, class_names, title: str = "Per-class accuracy") -> Figure:
    """Grouped bars of per-class accuracy, `{split_or_run: [acc per class]}`."""
    fig = Figure(figsize=(9, 4))
    ax = fig.subplots()
    n, k = len(class_names), max(len(values), 1)
    width = 0.8 / k
    lows = []
    for i, (label, acc) in enumerate(values.items()):
        acc = np.asarray(acc, dtype=float)
        lows.append(np.nanmin(acc))
        ax.bar(np.arange(n) + (i - (k - 1) / 2) * width, acc, width, color=color_for(i), label=label)
    ax.set_xticks(range(n), class_names, rotation=45 if n > 10 or max(map(len, class_names)) > 3 else 0)
    ax.set_xlabel("class")
    ax.set_ylabel("accuracy")
    ax.set_ylim(max(0.0, min(lows, default=0.0) - 0.05), 1.0)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title)
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
