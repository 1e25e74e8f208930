"""Search reports: `trials.csv` sorted by validation accuracy, `summary.md` and every
PNG under `figures/`."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from kmnist_lab.report.document import Document


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
