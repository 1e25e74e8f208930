"""Search reports: `trials.csv` sorted by validation accuracy, `summary.md`, every
PNG under `figures/` and evaluate.py's results for `best_model/`."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from kmnist_lab.report.common import read_json_or_empty
from kmnist_lab.report.document import Document
from kmnist_lab.report.run import render_evaluations


def render_search(path: Path, doc: Document) -> str:
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
    if (path / "summary.md").is_file():
        doc.heading("Summary")
        _add_summary(doc, (path / "summary.md").read_text())
    # Columns empty in every row (e.g. Hyperband's outside a Hyperband search) are left out.
    headers = [h for h in headers if any(r.get(h, "") != "" for r in trials)]
    doc.heading(f"Trials ({len(trials)}, best validation accuracy first)")
    doc.table(headers, [[_short(r.get(h, "")) for h in headers] for r in trials])
    figures = sorted((path / "figures").glob("**/*.png"))
    if figures:
        doc.heading("Figures")
        for fig in figures:
            doc.image(fig, fig.stem.replace("_", " "))
    # evaluate.py SEARCH/best_model writes under best_model/evaluation/, as for a run.
    evaluated = sorted((path / "best_model" / "evaluation").glob("*/evaluation.json"))
    if evaluated:
        doc.heading("Best model, scored by evaluate.py")
        trained_on = read_json_or_empty(path / "summary.json").get("dataset")
        render_evaluations(doc, evaluated, trained_on=trained_on)
    return title


def _short(cell: str) -> str:
    """A CSV cell with long decimals rounded to 4 significant digits (`0.8940000128` -> 0.894)."""
    if "." not in cell:
        return cell
    try:
        return f"{float(cell):.4g}"
    except ValueError:
        return cell


def _add_summary(doc: Document, text: str) -> None:
    """Adds `summary.md` (Markdown that `tuning` writes: headings, tables, paragraphs and
    image links) as document blocks, so its tables render as tables in the HTML too.
    Its image links are dropped: the report adds the figures itself."""
    table: list[list[str]] = []
    pending: list[tuple[str, int]] = []  # a heading, written once its section has content

    def open_section() -> None:
        if pending:
            doc.heading(*pending.pop())

    def flush() -> None:
        if table:
            header, *rows = table
            open_section()
            doc.table(header, [r for r in rows if not all(set(c) <= set("-: ") for c in r)])
            table.clear()

    for line in text.splitlines():
        line = line.strip()
        if line.startswith("|") and line.endswith("|"):
            table.append([c.strip() for c in line[1:-1].split("|")])
            continue
        flush()
        if not line or line.startswith("!["):
            continue
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            # The summary's own title repeats the report's; its sections nest under "Summary".
            pending[:] = [(line.lstrip("#").strip(), min(level + 1, 6))] if level > 1 else []
        else:
            open_section()
            doc.para(line)
    flush()
