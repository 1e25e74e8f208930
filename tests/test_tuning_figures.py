"""Search figures read right for small and troubled searches: one trial, diverged trials.

Rows are fabricated as `tuning.results.trial_rows` makes them; no search runs.
"""

import numpy as np

from tuning.figures import (
    accuracy_heatmap,
    accuracy_vs_lr,
    budget_curves,
    epochs_spent,
    hyperband_brackets,
    write_figures,
)


def _row(trial_id, acc, trained, status="COMPLETED", bracket="", rnd="", **hps):
    """A `trials.csv` row; a DIVERGED one has no scores, as `trial_rows` leaves it."""
    return {"trial_id": trial_id, "status": status, **{f"hp_{k}": v for k, v in hps.items()},
            "val_accuracy": acc, "val_loss": "", "epochs_trained": trained, "wall_time_s": 1.0,
            "worker": "", "bracket": bracket, "round": rnd, "initial_epoch": 0,
            "epochs": int(trained) if trained != "" else "", "from_trial": "",
            "diverged_epoch": 1 if status == "DIVERGED" else "",
            "diverged_step": 19 if status == "DIVERGED" else ""}  # fmt: skip


def _diverged(trial_id, trained=1.0, **hps):
    return _row(trial_id, "", trained, status="DIVERGED", **hps)


def _ticks(axis):
    return [
        t for t in axis.get_ticklocs() if axis.axes.get_xlim()[0] <= t <= axis.axes.get_xlim()[1]
    ]


def test_epochs_spent_of_a_one_trial_search_reads_right():
    """`tune.py --max-trials 1`: "3 epochs in 1 trial" (not "1 trials"), the bar's tick is
    its trial id (not -0.4 ... 0.4), and the best so far is a visible point (a step line
    through one point drew nothing)."""
    fig = epochs_spent([_row("0", 0.856, 3.0, batch_size=128, lr=0.03)])
    ax_bar, ax_best, twin = fig.axes
    assert ax_bar.get_title() == "3 epochs in 1 trial"
    assert list(ax_bar.get_xticks()) == [0]
    assert [t.get_text() for t in ax_bar.get_xticklabels()] == ["0"]
    assert all(float(t).is_integer() for t in ax_bar.get_yticks())
    (best,) = ax_best.lines
    assert best.get_marker() not in ("None", "", None, " ")
    assert (list(best.get_xdata()), list(best.get_ydata())) == ([3], [85.6])
    assert all(float(t).is_integer() for t in _ticks(ax_best.xaxis))
    assert twin.lines[0].get_marker() not in ("None", "", None, " ")
    assert epochs_spent([_row("0", 0.5, 1.0)]).axes[0].get_title() == "1 epoch in 1 trial"
    curve = budget_curves({"one": [_row("0", 0.5, 1.0)]}).axes[0].lines[0]
    assert curve.get_marker() not in ("None", "", None, " ")


def test_epochs_spent_hatches_diverged_trials_and_scores_only_the_others(tmp_path):
    rows = [_row("0", 0.5, 2.0), _diverged("1"), _row("2", 0.7, 2.0)]
    fig = epochs_spent(rows)
    ax_bar, ax_best, _ = fig.axes
    assert ax_bar.get_title() == "5 epochs in 3 trials"  # the diverged trial's epoch counts
    assert [bool(p.get_hatch()) for p in ax_bar.patches] == [False, True, False]
    assert [t.get_text() for t in ax_bar.get_legend().get_texts()] == ["diverged (1)"]
    (best,) = ax_best.lines
    assert list(best.get_ydata()) == [50.0, 50.0, 70.0]
    everyone = [_diverged("0", batch_size=32, lr=0.1), _diverged("1", batch_size=64, lr=0.1)]
    assert [t.get_text() for t in epochs_spent(everyone).axes[1].texts] == [
        "no trial scored: every trial diverged"
    ]
    # nothing scored: no heatmap (nor scatter), only the budget
    assert write_figures(everyone, tmp_path / "figures") == ["figures/epochs_spent.png"]


def test_val_accuracy_vs_lr_marks_a_diverged_trial_at_its_lr_without_a_score():
    """A dashed vertical line at the lr (no height: no score), not a point at 10 %."""
    rows = [_row("0", 0.5, 1.0, batch_size=32, lr=0.001),
            _diverged("1", batch_size=64, lr=0.0608)]  # fmt: skip
    ax = accuracy_vs_lr(rows).axes[0]
    assert {c.get_label(): c.get_offsets().tolist() for c in ax.collections} == {
        "batch 32": [[0.001, 50.0]]
    }
    (line,) = ax.lines
    assert line.get_label() == "diverged (1)" and list(line.get_xdata()) == [0.0608, 0.0608]
    assert line.get_linestyle() == "--"


def test_a_heatmap_cell_that_only_diverged_says_so():
    rows = [_row("0", 0.8, 1.0, batch_size=32, lr=0.01),
            _diverged("1", batch_size=32, lr=0.1),
            _diverged("2", batch_size=64, lr=0.01),
            _row("3", 0.6, 1.0, batch_size=64, lr=0.01)]  # fmt: skip
    ax = accuracy_heatmap(rows).axes[0]
    np.testing.assert_allclose(np.ma.filled(ax.images[0].get_array(), np.nan),
                               [[80.0, np.nan], [60.0, np.nan]])  # fmt: skip
    # (64, 0.01) scored by trial 3; (32, 0.1) only diverged; (64, 0.1) never ran
    assert [(t.get_text(), t.get_position()) for t in ax.texts if t.get_text() == "diverged"] == [
        ("diverged", (1, 0))
    ]


def test_a_hyperband_bracket_counts_its_diverged_models_and_their_epochs():
    rows = [_row("0", 0.4, 1.0, bracket=1, rnd=0), _diverged("1", bracket=1, rnd=0)]
    (ax,) = hyperband_brackets(rows).axes
    assert ax.get_title() == "bracket 1: 2 models (1 diverged), 2 epochs"
    assert [list(line.get_ydata()) for line in ax.lines] == [[40.0]]
