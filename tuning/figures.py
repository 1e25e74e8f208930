"""Search figures from `trials.csv` rows; each function returns a matplotlib `Figure`.

Same style as `kmnist_lab.plots` (no pyplot). `write_figures` saves every figure
that applies to a search into `<search folder>/figures/`:

- `val_accuracy_heatmap.png`: val accuracy over batch size x lr; one panel per
  epoch count when epochs are a hyperparameter (report A's table as a figure),
  else the best trial of each cell, annotated with the epochs it reached. For
  spaces whose lr is a set of values; where lr is drawn from a range (the `mlp`
  space), `val_accuracy_vs_lr.png` instead: each trial's val accuracy against its
  lr (log axis), a colour per batch size.
- `hyperband_brackets.png`: each Hyperband bracket, a line per configuration
  through its rounds (val accuracy against the epochs the model reached).
- `epochs_spent.png`: epochs trained per trial with the running total, and the
  best val accuracy so far against epochs spent.

Diverged trials (`DIVERGED` in `trials.csv`) have no score: they are marked, never
drawn as a score. `epochs_spent.png` hatches their bars (their epochs count in the
budget), `val_accuracy_vs_lr.png` draws a dashed vertical line at their lr, a heatmap
cell that only they reached reads "diverged", and a Hyperband bracket's title counts
them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from kmnist_lab.plots import color_for, heatmap_panels, save
from tuning.results import DIVERGED, completed, diverged

DIVERGED_COLOR = "0.55"


def _num(value):
    return float(value) if value not in ("", None) else np.nan


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def has_heatmap(rows) -> bool:
    """Whether `accuracy_heatmap` can draw `rows`: some trial completed with a score, and
    the rows have `hp_batch_size` and `hp_lr` columns."""
    rows = completed(rows)
    return bool(rows) and "hp_batch_size" in rows[0] and "hp_lr" in rows[0]


def accuracy_heatmap(rows, title: str = "Validation accuracy (%)") -> Figure:
    """Val accuracy (%) over batch size (rows) x learning rate (columns).

    With an `hp_epochs` column of several values: one panel per epoch count. Else
    one panel holding each cell's best trial, annotated with its epochs.
    """
    broken = diverged(rows)
    rows = completed(rows)
    sizes = sorted({int(r["hp_batch_size"]) for r in rows + broken})
    lrs = sorted({float(r["hp_lr"]) for r in rows + broken})
    per_epoch = "hp_epochs" in rows[0] and len({r["hp_epochs"] for r in rows}) > 1
    panels = sorted({int(r["hp_epochs"]) for r in rows}) if per_epoch else [None]
    grids, notes = [], []
    for epochs in panels:
        grid = np.full((len(sizes), len(lrs)), np.nan)
        note = np.full(grid.shape, "", dtype=object)
        for r in rows:
            if epochs is not None and int(r["hp_epochs"]) != epochs:
                continue
            i, j = sizes.index(int(r["hp_batch_size"])), lrs.index(float(r["hp_lr"]))
            acc = 100 * float(r["val_accuracy"])
            if np.isnan(grid[i, j]) or acc > grid[i, j]:
                grid[i, j] = acc
                note[i, j] = "" if epochs is not None else f"\n{r['epochs']} ep"
        grids.append(grid)
        notes.append(note)
    titles = [f"{e} epochs" if e is not None else "best trial per cell" for e in panels]
    fig = heatmap_panels(
        dict(zip(titles, grids, strict=True)), sizes, [f"{lr:g}" for lr in lrs], title,
        "learning rate", "batch size", cbar_label="val accuracy (%)",
        notes=dict(zip(titles, notes, strict=True)),
    )  # fmt: skip
    # A cell no trial scored, where one diverged, says so instead of staying blank.
    for ax, epochs, grid in zip(fig.axes, panels, grids, strict=False):
        cells = {
            (sizes.index(int(r["hp_batch_size"])), lrs.index(float(r["hp_lr"])))
            for r in broken
            if epochs is None or int(r["hp_epochs"]) == epochs
        }
        for i, j in sorted(cells):
            if np.isnan(grid[i, j]):
                ax.text(j, i, "diverged", ha="center", va="center", fontsize=7,
                        color=DIVERGED_COLOR, style="italic")  # fmt: skip
    return fig


def hyperband_brackets(rows, title: str = "Hyperband brackets") -> Figure:
    """One panel per bracket: val accuracy against epochs reached, a line per configuration."""
    broken = [r for r in diverged(rows) if r["bracket"] != ""]
    rows = [r for r in completed(rows) if r["bracket"] != ""]
    brackets = sorted({int(r["bracket"]) for r in rows}, reverse=True)
    fig = Figure(figsize=(4.2 * max(1, len(brackets)), 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(1, len(brackets)), sharey=True))
    for ax, bracket in zip(axes, brackets, strict=False):
        members = [r for r in rows if int(r["bracket"]) == bracket]
        starts = [r for r in members if r["from_trial"] == ""]
        for k, start in enumerate(starts):
            chain, current = [start], start
            while True:
                nxt = [r for r in members if r["from_trial"] == current["trial_id"]]
                if not nxt:
                    break
                current = nxt[0]
                chain.append(current)
            xs = [0] + [int(r["epochs"]) for r in chain]
            ys = [np.nan] + [100 * r["val_accuracy"] for r in chain]
            ax.plot(xs[1:], ys[1:], marker="o", ms=3, color=color_for(k), alpha=0.8)
        lost = [r for r in broken if int(r["bracket"]) == bracket]
        spent = sum(int(r["epochs_trained"]) for r in members + lost if r["epochs_trained"] != "")
        rounds = sorted({int(r["round"]) for r in members + lost})
        sizes = [sum(1 for r in members + lost if int(r["round"]) == n) for n in rounds]
        ax.set_title(
            f"bracket {bracket}: {' -> '.join(map(str, sizes))} models"
            + (f" ({len(lost)} diverged)" if lost else "")
            + f", {_plural(spent, 'epoch')}"
        )
        ax.set_xlabel("epochs reached")
        ax.grid(alpha=0.3)
        best = max(members, key=lambda r: r["val_accuracy"]) if members else None
        if best is not None:
            point = (int(best["epochs"]), 100 * best["val_accuracy"])
            ax.annotate(f"{point[1]:.2f}", point, textcoords="offset points", xytext=(4, 4),
                        fontsize=8)  # fmt: skip
    axes[0].set_ylabel("val accuracy (%)")
    fig.suptitle(title)
    return fig


def accuracy_vs_lr(rows, title: str = "Validation accuracy vs learning rate") -> Figure:
    """Each completed trial's val accuracy (%) against its learning rate (log axis), a
    colour per batch size: for an lr drawn from a range, where a batch size x lr grid
    would have one column per trial."""
    broken = diverged(rows)
    rows = completed(rows)
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for k, size in enumerate(sorted({int(r["hp_batch_size"]) for r in rows})):
        mine = [r for r in rows if int(r["hp_batch_size"]) == size]
        ax.scatter([float(r["hp_lr"]) for r in mine],
                   [100 * float(r["val_accuracy"]) for r in mine],
                   color=color_for(k), label=f"batch {size}")  # fmt: skip
    # A diverged trial has no score: a dashed vertical line at its lr, at no height.
    for k, r in enumerate(broken):
        ax.axvline(float(r["hp_lr"]), color=DIVERGED_COLOR, ls="--", lw=1,
                   label=f"diverged ({len(broken)})" if k == 0 else None)  # fmt: skip
    ax.set_xscale("log")
    _finish(ax, "learning rate", "val accuracy (%)", title)
    return fig


def _finish(ax, xlabel: str, ylabel: str, title: str) -> None:
    """Axis labels, a light grid, the legend and the title of a one-panel figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)


# Up to this many trials the bars are labelled with their ids, beyond by integer ticks.
MAX_LABELLED_TRIALS = 30


def epochs_spent(rows, title: str = "Epochs spent") -> Figure:
    """Epochs per trial with the running total, and best val accuracy vs epochs spent.

    Diverged trials' bars are grey and hatched (their epochs count; they have no score).
    """
    rows = [r for r in rows if r["epochs_trained"] != ""]
    trained = np.array([int(r["epochs_trained"]) for r in rows])
    acc = np.array([100 * _num(r["val_accuracy"]) for r in rows])
    cumulative = np.cumsum(trained)
    best = np.fmax.accumulate(np.where(np.isnan(acc), -np.inf, acc))
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax_bar, ax_best = fig.subplots(1, 2)
    broken = [r["status"] == DIVERGED for r in rows]
    colors = [
        DIVERGED_COLOR if bad else color_for(int(r["bracket"]) if r["bracket"] != "" else 0)
        for r, bad in zip(rows, broken, strict=True)
    ]
    bars = ax_bar.bar(range(len(rows)), trained, color=colors)
    for bar, bad in zip(bars, broken, strict=True):
        if bad:
            bar.set_hatch("xx")
    if any(broken):
        bars[broken.index(True)].set_label(f"diverged ({sum(broken)})")
        ax_bar.legend(loc="upper left")
    if len(rows) <= MAX_LABELLED_TRIALS:
        ax_bar.set_xticks(range(len(rows)), [r["trial_id"] for r in rows],
                          rotation=90 if len(rows) > 12 else 0)  # fmt: skip
    else:
        ax_bar.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_bar.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_bar.set_xlabel("trial (in id order)")
    ax_bar.set_ylabel("epochs trained")
    twin = ax_bar.twinx()
    twin.plot(range(len(rows)), cumulative, color="black", lw=1.2, marker="o", ms=3)
    twin.set_ylim(bottom=0)  # from 0, so one trial's total still gets integer ticks
    twin.yaxis.set_major_locator(MaxNLocator(integer=True))
    twin.set_ylabel("cumulative epochs")
    total = int(cumulative[-1]) if len(rows) else 0
    ax_bar.set_title(f"{_plural(total, 'epoch')} in {_plural(len(rows), 'trial')}")
    # Markers: a search of one trial (or one scored trial) is one point, no line.
    ax_best.step(cumulative, best, where="post", color=color_for(1), marker="o", ms=4)
    ax_best.set_xlim(left=0)  # the budget from nothing spent
    ax_best.xaxis.set_major_locator(MaxNLocator(integer=True))
    if not np.isfinite(best).any():
        note = "no trial scored yet"
        if any(broken):
            note = ("no trial scored: every trial diverged" if all(broken)
                    else f"no trial scored ({sum(broken)} diverged)")  # fmt: skip
        ax_best.text(0.5, 0.5, note, ha="center", va="center", transform=ax_best.transAxes,
                     color=DIVERGED_COLOR)  # fmt: skip
    ax_best.set_xlabel("cumulative epochs trained")
    ax_best.set_ylabel("best val accuracy so far (%)")
    ax_best.set_title("best so far vs budget")
    ax_best.grid(alpha=0.3)
    fig.suptitle(title)
    return fig


def budget_curves(searches: dict, title: str = "Best val accuracy vs epochs spent") -> Figure:
    """Several searches on one axis: `{label: rows}` (e.g. grid vs Hyperband)."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    for k, (label, rows) in enumerate(searches.items()):
        rows = [r for r in rows if r["epochs_trained"] != ""]
        cumulative = np.cumsum([int(r["epochs_trained"]) for r in rows])
        acc = np.array([100 * _num(r["val_accuracy"]) for r in rows])
        best = np.fmax.accumulate(np.where(np.isnan(acc), -np.inf, acc))
        ax.step(cumulative, best, where="post", color=color_for(k), label=label, marker="o",
                ms=3)  # fmt: skip
    _finish(ax, "cumulative epochs trained", "best val accuracy so far (%)", title)
    return fig


def write_figures(rows, out_dir: Path, label: str = "", lr_values: bool = True) -> list[str]:
    """Saves every figure that applies; returns their paths relative to the search folder.

    `lr_values`: the space's lr is a set of values (a heatmap over batch size x lr), not
    a range (a scatter of val accuracy against lr).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    prefix = f"{label}: " if label else ""
    if has_heatmap(rows) and lr_values:
        save(accuracy_heatmap(rows, f"{prefix}validation accuracy (%) over batch size x lr"),
             out_dir / "val_accuracy_heatmap.png")  # fmt: skip
        written.append("val_accuracy_heatmap.png")
    elif has_heatmap(rows):
        save(accuracy_vs_lr(rows, f"{prefix}validation accuracy vs learning rate"),
             out_dir / "val_accuracy_vs_lr.png")  # fmt: skip
        written.append("val_accuracy_vs_lr.png")
    if any(r["bracket"] != "" for r in completed(rows)):
        save(
            hyperband_brackets(rows, f"{prefix}Hyperband brackets"),
            out_dir / "hyperband_brackets.png",
        )
        written.append("hyperband_brackets.png")
    if any(r["epochs_trained"] != "" for r in rows):
        save(epochs_spent(rows, f"{prefix}epochs spent"), out_dir / "epochs_spent.png")
        written.append("epochs_spent.png")
    return [f"{out_dir.name}/{name}" for name in written]
