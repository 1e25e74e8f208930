"""Search reports: `trials.csv` sorted by validation accuracy, `summary.md`, every
PNG under `figures/` and evaluate.py's results for `best_model/`.

A damaged `trials.csv` (`common.read_trials_csv`: unreadable, rows that are not what
`tuning.results` writes, fewer rows than `summary.json`'s trials) is named in the report
and on stderr, as a run's damaged files are; the table shows the rows it can read."""

from __future__ import annotations

import math
from pathlib import Path

from kmnist_lab.errors import is_int
from kmnist_lab.report.common import printable, read_json_or_empty, read_trials_csv
from kmnist_lab.report.document import Document
from kmnist_lab.report.run import render_evaluations
from kmnist_lab.report.study import say_damaged


def render_search(path: Path, doc: Document) -> str:
    """Adds a search folder's report to `doc` and returns its title: `summary.md`, the
    `trials.csv` rows (best validation accuracy first; a damaged file is named), the PNGs
    under `figures/` and evaluate.py's results for `best_model/`."""
    summary = read_json_or_empty(path / "summary.json")
    # The trials the search wrote (`tuning.finalize` writes both files): a trials.csv of
    # fewer rows was cut short.
    expected = summary.get("trials") if is_int(summary.get("trials")) else None
    headers, trials, read, problem = read_trials_csv(path / "trials.csv", expected)

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
        try:  # bytes that are not UTF-8 (a damaged file) show as U+FFFD, not a traceback
            text = (path / "summary.md").read_text(errors="replace")
        except OSError as e:
            text = f"summary.md cannot be read ({e.strerror or type(e).__name__})."
        _add_summary(doc, text)
    # Columns empty in every row (e.g. Hyperband's outside a Hyperband search) are left out.
    headers = [h for h in headers if any(r.get(h, "") != "" for r in trials)]
    # The trials the file holds or the summary counts, where the table shows fewer.
    listed = max(expected or 0, read)
    shown = f"{len(trials)} of {listed}" if len(trials) < listed else f"{len(trials)}"
    doc.heading(f"Trials ({shown}, best validation accuracy first)")
    if problem:
        trials_word = f"trial{'' if listed == 1 else 's'}"
        told = (f"the Trials table shows {len(trials) or 'none'} of {listed} {trials_word}"
                if listed else "the report shows no trials")  # fmt: skip
        say_damaged(doc, [(path / "trials.csv", f"{problem}; {told}")])
    if trials:
        doc.table(headers, [[_short(r.get(h, "")) for h in headers] for r in trials])
    else:
        doc.para("No trial rows to show.")
    figures = sorted((path / "figures").glob("**/*.png"))
    if figures:
        doc.heading("Figures")
        for fig in figures:
            doc.image(fig, fig.stem.replace("_", " "))
    # evaluate.py SEARCH/best_model writes under best_model/evaluation/, as for a run.
    evaluated = sorted((path / "best_model" / "evaluation").glob("*/evaluation.json"))
    if evaluated:
        doc.heading("Best model, scored by evaluate.py")
        trained_on = summary.get("dataset")
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
        line = printable(line.strip())  # a NUL of a damaged file is shown, not copied
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
