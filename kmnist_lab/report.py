"""Markdown and self-contained HTML reports of a run, a study or a search folder.

`write_report(path)` detects what `path` holds:

- a study (`study.json`, written by `kmnist_lab.studies.run_study`): a table of every
  run (test accuracy and loss, wall time, samples/s) beside the original report's
  numbers and the difference; overlaid loss-vs-iteration and loss/accuracy-vs-epoch
  curves; a heatmap for two-factor studies; confusion matrices, classification
  reports and per-class bars where the study has them; the fit plot of a regression;
- a run (`config.json` / `metrics.json`): the same for one run;
- a search (`trials.csv`): the trials sorted by validation accuracy, every PNG under
  `figures/` and `summary.md`.

Everything is read from the CSV/JSON files of the folders, so a report can be
rebuilt without retraining. It writes `report.md` (figures as PNG files under
`report_files/`) and `report.html` (the same PNGs embedded as base64 data URIs, so
the file is self-contained).
"""

from __future__ import annotations

import base64
import csv
import datetime
import html
import json
import logging
import math
import re
import shutil
from pathlib import Path

from kmnist_lab import plots, runs
from kmnist_lab.errors import KmnistLabError

log = logging.getLogger(__name__)

FIG_DIR = "report_files"


class ReportError(KmnistLabError):
    """The path is not a run, study or search folder, or cannot be written."""


# ----------------------------------------------------------------------------- document


class Document:
    """An ordered list of blocks rendered to Markdown and to HTML."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.blocks: list[tuple] = []
        self._names: set[str] = set()

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", level, text))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, headers: list[str], rows: list[list]) -> None:
        self.blocks.append(("table", headers, rows))

    def pre(self, text: str) -> None:
        self.blocks.append(("pre", text))

    def _new_file(self, name: str, suffix: str = ".png") -> Path:
        """A fresh path `report_files/<name><suffix>` (name made safe and unique)."""
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
        while name in self._names:
            name += "_"
        self._names.add(name)
        folder = self.out_dir / FIG_DIR
        folder.mkdir(exist_ok=True)
        return folder / f"{name}{suffix}"

    def figure(self, fig, name: str, caption: str) -> None:
        """Saves a matplotlib Figure as `report_files/<name>.png` and adds it."""
        self.blocks.append(("img", plots.save(fig, self._new_file(name)), caption))

    def image(self, path: Path, caption: str) -> None:
        """Adds an existing PNG (e.g. a search's figures), copied next to the report
        when it lies outside the report's folder, so the report can be moved."""
        path = Path(path)
        try:
            path.resolve().relative_to(self.out_dir.resolve())
        except ValueError:
            path = Path(shutil.copyfile(path, self._new_file(path.stem, path.suffix)))
        self.blocks.append(("img", path, caption))

    def markdown(self) -> str:
        out = []
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                out.append(f"{'#' * block[1]} {block[2]}")
            elif kind == "p":
                out.append(block[1])
            elif kind == "pre":
                out.append(f"```\n{block[1].rstrip()}\n```")
            elif kind == "table":
                headers, rows = block[1], block[2]
                lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
                lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
                out.append("\n".join(lines))
            elif kind == "img":
                path, caption = block[1], block[2]
                out.append(f"![{caption}]({_relative(path, self.out_dir)})\n\n*{caption}*")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        body = []
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                body.append(f"<h{block[1]}>{_inline(block[2])}</h{block[1]}>")
            elif kind == "p":
                body.append(f"<p>{_inline(block[1])}</p>")
            elif kind == "pre":
                body.append(f"<pre>{html.escape(block[1])}</pre>")
            elif kind == "table":
                head = "".join(f"<th>{_inline(h)}</th>" for h in block[1])
                rows = "".join(
                    "<tr>" + "".join(f"<td>{_inline(_cell(c))}</td>" for c in row) + "</tr>"
                    for row in block[2]
                )
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif kind == "img":
                data = base64.b64encode(Path(block[1]).read_bytes()).decode("ascii")
                cap = html.escape(block[2])
                body.append(
                    f'<figure><img alt="{cap}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{cap}</figcaption></figure>"
                )
        return _HTML.format(title=html.escape(title), body="\n".join(body))


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
       color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th {{ background: #f3f3f3; }} td:first-child, th:first-child {{ text-align: left; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; border: 1px solid #eee; }}
figcaption {{ color: #555; font-size: 0.9em; }}
pre {{ background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }}
code {{ background: #f3f3f3; padding: 0 0.2em; }}
</style></head><body>
{body}
</body></html>
"""


def _inline(text: str) -> str:
    """Escapes HTML, then renders `code` and **bold** (the Markdown we write)."""
    text = html.escape(str(text))
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.4g}"
    return str(value).replace("|", "\\|")


def _relative(path: Path, base: Path) -> str:
    try:
        return Path(path).resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return Path(path).resolve().as_uri()


# ----------------------------------------------------------------------------- readers


def _json(path: Path) -> dict:
    return runs.read_json(path) or {}


def _pct(x) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def _num(x, fmt="{:.3f}") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _diff_points(ours, original: dict) -> str:
    """Ours minus the report, in percentage points (0 inside a reported range)."""
    if ours is None:
        return "—"
    if original.get("test_accuracy") is not None:
        return f"{100 * (ours - original['test_accuracy']):+.2f}"
    rng = original.get("test_accuracy_range")
    if rng:
        lo, hi = rng
        gap = ours - lo if ours < lo else (ours - hi if ours > hi else 0.0)
        return f"{100 * gap:+.2f}"
    return "—"


def _original_acc(original: dict) -> str:
    if original.get("test_accuracy") is not None:
        return _pct(original["test_accuracy"])
    rng = original.get("test_accuracy_range")
    return f"{100 * rng[0]:.2f}–{100 * rng[1]:.2f}" if rng else "—"


def detect(path: Path) -> str:
    """`study`, `run` or `search`; raises `ReportError` otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise ReportError(f"{path} is not a folder (expected a run, study or search folder)")
    if (path / "study.json").is_file():
        return "study"
    if (path / "trials.csv").is_file():
        return "search"
    if (path / "config.json").is_file() or (path / runs.COMPLETE_MARKER).is_file():
        return "run"
    raise ReportError(
        f"{path} is not a run (config.json), study (study.json) or search (trials.csv) folder"
    )


def write_report(path, out_dir=None) -> tuple[Path, Path]:
    """Writes `report.md` and `report.html` for the folder `path`; returns their paths.

    Args:
        path: a run, study or search folder.
        out_dir: where to write (default: `path` itself).
    """
    path = Path(path)
    kind = detect(path)
    out = Path(out_dir) if out_dir is not None else path
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"cannot write the report to {out}: {e.strerror}") from None
    doc = Document(out)
    title = {"study": _study, "run": _run, "search": _search}[kind](path, doc)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc.para(f"Generated {stamp} by `scripts/report.py {path}` from the folder's CSV/JSON files.")
    md, page = out / "report.md", out / "report.html"
    runs.atomic_write_text(md, f"# {title}\n\n" + doc.markdown())
    doc.blocks.insert(0, ("h", 1, title))
    runs.atomic_write_text(page, doc.html(title))
    log.debug("report written: %s, %s", md, page)  # the scripts print it
    return md, page


# ----------------------------------------------------------------------------- studies


def _study(path: Path, doc: Document) -> str:
    record = runs.read_json(path / "study.json")
    if record is None:
        raise ReportError(f"cannot read {path / 'study.json'}: not a readable JSON object")
    study = record.get("study", {})
    runs_ = study.get("runs", [])
    dataset = record.get("dataset", "?")
    title = (
        f"Study `{study.get('name', path.name)}` (report {study.get('report', '?')}) on {dataset}"
    )
    doc.para(study.get("description", ""))
    mode = "quick mode (a few batches per run on a small subset)" if record.get("quick") else "full"
    doc.para(f"Dataset **{dataset}**, {mode}, epochs scale {record.get('epochs_scale', 1)}.")
    if study.get("notes"):
        doc.para(f"Notes: {study['notes']}")
    entries = []
    for r in runs_:
        run_dir = path / r["name"]
        entries.append({**r, "dir": run_dir, "status": runs.run_status(run_dir),
                        "metrics": _json(run_dir / runs.COMPLETE_MARKER)})  # fmt: skip
    colors = dict(zip([e["name"] for e in entries], plots.palette(len(entries)), strict=True))
    doc.heading("Results")
    if study.get("kind") == "regression":
        _regression_table(doc, entries)
    else:
        _table(doc, entries)
    if study.get("grid"):
        _grid(doc, entries, study)
    _figures(doc, entries, colors, study)
    return title


def _table(doc: Document, entries: list[dict]) -> None:
    factor_keys = []
    for e in entries:
        # `epochs` has its own column (the epochs actually run).
        factor_keys += [k for k in e.get("factors", {}) if k not in factor_keys and k != "epochs"]
    has_wall = any("wall_time_s" in e.get("original", {}) for e in entries)
    has_loss = any("test_loss" in e.get("original", {}) for e in entries)
    # A study whose report gave no accuracies gets no empty "report"/"Δ" columns.
    has_acc = any(_original_acc(e.get("original", {})) != "—" for e in entries)
    headers = ["run", *factor_keys, "status", "epochs", "test acc %"]
    headers += ["report %", "Δ points"] if has_acc else []
    headers += ["test loss"]
    headers += ["report loss"] if has_loss else []
    headers += ["wall time s"] + (["report wall s"] if has_wall else []) + ["samples/s"]
    rows = []
    for e in entries:
        m, orig = e["metrics"], e.get("original", {})
        acc = m.get("test_accuracy")
        factors = [e.get("factors", {}).get(k, "") for k in factor_keys]
        epochs = m.get("epochs", e.get("effective", {}).get("epochs"))
        row = [f"`{e['name']}`", *factors, e["status"], epochs, _pct(acc)]
        row += [_original_acc(orig), _diff_points(acc, orig)] if has_acc else []
        row += [_num(m.get("test_loss"))]
        if has_loss:
            row.append(_num(orig.get("test_loss")))
        wall = _num(m.get("wall_time_s"), "{:.0f}")
        row.append(f"{wall} (resumed)" if m.get("resumed") else wall)
        if has_wall:
            row.append(_num(orig.get("wall_time_s"), "{:.0f}"))
        row.append(_num(m.get("samples_per_s"), "{:.0f}"))
        rows.append(row)
    doc.table(headers, rows)
    doc.para(
        "test acc: accuracy on the test split after the last epoch (the test split is used once); "
        "Δ points: ours minus the report, in percentage points (0 inside a reported range); "
        "wall time: the whole run (data, compile, fit, test, export; for a resumed run, the "
        "last process only); samples/s: training throughput in steady epochs."
    )


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
    best = max(val, key=val.get) if val else None
    doc.heading("Grid", 3)
    if best is not None:
        m = cells[best]
        doc.para(
            f"Best validation accuracy: **{row_key} {best[0]}, {col_key} {best[1]}, {panel_key} "
            f"{best[2]}** ({_pct(m.get('val_accuracy'))} %; test {_pct(m.get('test_accuracy'))} "
            f"%, test loss {_num(m.get('test_loss'))}), bold in the tables below."
        )
    for metric, label, fmt in (
        ("test_accuracy", "test accuracy (%)", _pct),
        ("test_loss", "test loss", _num),
        ("val_accuracy", "validation accuracy (%)", _pct),
    ):
        table = []
        for r, c in rows:
            values = []
            for p in panels:
                text = fmt(cells.get((r, c, p), {}).get(metric))
                values.append(f"**{text}**" if (r, c, p) == best else text)
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


def _regression_table(doc: Document, entries: list[dict]) -> None:
    headers = ["run", "status", "epochs", "mean error", "report mean error", "max abs error",
               "test MSE", "wall time s", "samples/s"]  # fmt: skip
    rows = []
    for e in entries:
        m, orig = e["metrics"], e.get("original", {})
        rows.append([f"`{e['name']}`", e["status"], m.get("epochs"),
                     _num(m.get("mean_error"), "{:.2e}"),
                     _num(orig.get("mean_error"), "{:.2e}"), _num(m.get("max_abs_error"), "{:.2e}"),
                     _num(m.get("test_loss"), "{:.2e}"), _num(m.get("wall_time_s"), "{:.0f}"),
                     _num(m.get("samples_per_s"), "{:.0f}")])  # fmt: skip
    doc.table(headers, rows)
    doc.para("Errors are prediction minus sin(x) on the grid -pi/2, -pi/2 + 0.01, ... < pi/2.")


def _groups(entries: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for e in entries:
        groups.setdefault(e.get("group") or "", []).append(e)
    return groups


def _figures(doc: Document, entries: list[dict], colors: dict, study: dict) -> None:
    name = study.get("name", "study")
    done = [e for e in entries if (e["dir"] / "history.csv").is_file()]
    if not done:
        doc.para("No run has written a history yet.")
        return
    compared = [e for e in entries if e.get("original", {}).get("test_accuracy") is not None]
    if compared:
        labels = [e["name"] for e in compared]
        ours = [e["metrics"].get("test_accuracy", math.nan) for e in compared]
        theirs = [e["original"]["test_accuracy"] for e in compared]
        ours = [100 * a if a is not None else math.nan for a in ours]
        theirs = [100 * a for a in theirs]
        low = max(0, min(a for a in ours + theirs if a == a) - 10)
        fig = plots.grouped_bars(
            {"ours": ours, "report": theirs},
            labels,
            f"{name}: test accuracy, ours vs the report",
            "run",
            "test accuracy (%)",
            colors={"ours": "#1f77b4", "report": "#aaaaaa"},
            ylim=(low, 100),
        )
        doc.figure(
            fig, f"{name}_vs_report", "Test accuracy: ours (blue) vs the original report (grey)."
        )
    doc.heading("Curves")
    for group, members in _groups(done).items():
        suffix = f" — {group}" if group else ""
        if len(entries) > len(plots.COLORS):
            # Too many runs for distinct study-wide colours: distinct within each figure.
            curve_colors = dict(zip([e["name"] for e in members], plots.palette(len(members)),
                                    strict=True))  # fmt: skip
        else:
            curve_colors = colors
        batches = {
            e["name"]: e["dir"] / "batches.csv"
            for e in members
            if (e["dir"] / "batches.csv").is_file()
        }
        if batches:
            fig = plots.batch_losses(
                batches, f"{name}: training loss per iteration{suffix}", colors=curve_colors
            )
            doc.figure(fig, f"{name}_{group}_iterations", f"Training loss vs iteration{suffix}.")
        histories = {e["name"]: e["dir"] / "history.csv" for e in members}
        fig = plots.learning_curves(
            histories, f"{name}: loss and accuracy per epoch{suffix}", colors=curve_colors
        )
        caption = f"Loss and accuracy per epoch, train (solid) and validation (dashed){suffix}."
        doc.figure(fig, f"{name}_{group}_epochs", caption)
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
    evals = {e["name"]: _json(e["dir"] / "evaluation_test.json") for e in done}
    evals = {k: v for k, v in evals.items() if v}
    if not evals:
        return
    class_names = list(next(iter(evals.values()))["per_class_accuracy"])
    doc.heading("Per-class accuracy")
    splits = ["test"] + (["train"] if "per_class_train" in extras else [])
    for split in splits:
        values = {}
        for e in done:
            ev = evals[e["name"]] if split == "test" else _json(e["dir"] / "evaluation_train.json")
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
            doc.table(headers, [[f"`{k}`", *[_pct(v) for v in vals]] for k, vals in values.items()])
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


# ----------------------------------------------------------------------------- runs


def _run(path: Path, doc: Document) -> str:
    cfg = _json(path / "config.json")
    config = cfg.get("config", {})
    metrics = _json(path / runs.COMPLETE_MARKER)
    title = f"Run `{path.name}`"
    dataset = cfg.get("dataset", {}).get("name", config.get("dataset"))
    doc.para(
        f"Status **{runs.run_status(path)}**; dataset {dataset}; "
        f"config: `{json.dumps(config, sort_keys=True)}`"
    )
    original = {}
    study = _json(path.parent / "study.json").get("study", {})
    for r in study.get("runs", []):
        if r["name"] == path.name:
            original = r.get("original", {})
            doc.para(f"Part of study `{study['name']}` (report {study.get('report')}).")
    entry = {"name": path.name, "dir": path, "status": runs.run_status(path), "metrics": metrics,
             "original": original, "factors": {}}  # fmt: skip
    doc.heading("Results")
    if "mean_error" in metrics:
        _regression_table(doc, [entry])
    else:
        _table(doc, [entry])
    colors = {path.name: plots.COLORS[0]}
    fake_study = {"name": path.name, "extras": ["confusion", "per_class_train"],
                  "kind": "regression" if "mean_error" in metrics else "classify"}  # fmt: skip
    if (path / "history.csv").is_file():
        _figures(doc, [entry], colors, fake_study)
    evaluated = sorted((path / "evaluation").glob("*/evaluation.json"))
    for ev_path in evaluated if not (path / "evaluation_test.json").is_file() else []:
        ev = _json(ev_path)
        names = list(ev.get("per_class_accuracy", {}))
        if names:
            doc.heading(f"Evaluation {ev_path.parent.name}")
            where = ev_path.parent.name
            fig = plots.confusion_matrix(ev["confusion_matrix"], names, f"Confusion {where}")
            doc.figure(fig, f"confusion_{where}", "Confusion matrix.")
            doc.pre(ev.get("classification_report_text", ""))
    return title


# ----------------------------------------------------------------------------- searches


def _search(path: Path, doc: Document) -> str:
    with open(path / "trials.csv", newline="") as f:
        reader = csv.DictReader(f)
        headers = list(reader.fieldnames or [])
        trials = list(reader)

    def key(row):
        try:
            value = float(row.get("val_accuracy", ""))
        except ValueError:
            value = math.nan
        return (math.isnan(value), -value if not math.isnan(value) else 0.0)

    trials.sort(key=key)
    title = f"Search `{path.name}`"
    doc.heading(f"Trials ({len(trials)}, best validation accuracy first)")
    doc.table(headers, [[r.get(h, "") for h in headers] for r in trials])
    if (path / "summary.md").is_file():
        doc.heading("Summary")
        doc.pre((path / "summary.md").read_text())
    figures = sorted((path / "figures").glob("**/*.png"))
    if figures:
        doc.heading("Figures")
        for fig in figures:
            doc.image(fig, fig.stem.replace("_", " "))
    return title
