"""Markdown and self-contained HTML reports of a run, a study or a search folder.

`write_report(path)` detects what `path` holds:

- a study (`study.json`, written by `kmnist_lab.studies.run_study`): a table of every
  run (test accuracy and loss, train accuracy where the train split is evaluated,
  wall time, samples/s) beside the original report's numbers and the difference;
  overlaid loss-vs-iteration and loss/accuracy-vs-epoch curves; a heatmap for
  two-factor studies; confusion matrices, classification reports, per-class bars and
  a training-loss-per-epoch table where the study has them; the fit plot of a
  regression;
- a run (`config.json` with its `"config"`, written before training starts; then
  `metrics.json`): the same for one run;
- a search (`trials.csv`): the trials sorted by validation accuracy, every PNG under
  `figures/` and `summary.md`.

Everything is read from the CSV/JSON files of the folders, so a report can be
rebuilt without retraining. It writes `report.md` (figures as PNG files under
`report_files/`) and `report.html` (the same PNGs embedded as base64 data URIs, so
the file is self-contained).

Modules: `document` (the Markdown/HTML rendering), `study`, `run` and `search` (what
each kind of folder adds to a document), `common` (the error, readers and number
formats they share).
"""

from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path

from kmnist_lab import runs
from kmnist_lab.report.common import ReportError, run_folder_problem, study_folder_problem
from kmnist_lab.report.document import FIG_DIR, Document
from kmnist_lab.report.run import render_run
from kmnist_lab.report.search import render_search
from kmnist_lab.report.study import render_study

__all__ = ["FIG_DIR", "Document", "ReportError", "detect", "write_report"]

log = logging.getLogger(__name__)


def detect(path: Path) -> str:
    """`study`, `run` or `search`; raises `ReportError` otherwise, before anything is
    written (a `study.json` or `config.json` that is not what study.py or train.py
    writes makes the folder none of them: its report would be empty)."""
    path = Path(path)
    if not path.is_dir():
        raise ReportError(f"{path} is not a folder (expected a run, study or search folder)")
    if (path / "study.json").is_file():
        problem = study_folder_problem(path)
        if problem:
            raise ReportError(
                f"{path} is not a kmnist_lab study folder: {problem}; report a folder that "
                "scripts/study.py wrote"
            )
        return "study"
    if (path / "trials.csv").is_file():
        return "search"
    if not (path / "config.json").is_file() and (path.parent / "search.json").is_file():
        raise ReportError(
            f"{path} is the best model of the search {path.parent}, not a run: report the "
            f"search (scripts/report.py {path.parent}), which shows this model's settings "
            "and scores"
        )
    if (path / "config.json").is_file() or (path / runs.COMPLETE_MARKER).is_file():
        problem = run_folder_problem(path)
        if problem:
            raise ReportError(
                f"{path} is not a kmnist_lab run folder: {problem}; report a folder that "
                "scripts/train.py or scripts/study.py wrote"
            )
        return "run"
    if (path / "search.json").is_file():
        raise ReportError(
            f"{path} holds a search that has written no trials.csv yet (it writes one when "
            "it finishes); re-run its scripts/tune.py command to resume it, then report"
        )
    raise ReportError(
        f"{path} is not a run (config.json), study (study.json) or search (trials.csv) folder"
    )


def write_report(path, out_dir=None) -> tuple[Path, Path]:
    """Writes `report.md` and `report.html` for the folder `path`; returns their paths.

    Args:
        path: a run, study or search folder.
        out_dir: where to write (default: `path` itself).
    """
    # Absolute and normalised: a report names the folder and its parent (`report.py .`
    # or `..` gave a run named "" and a study's finishing command `--output-dir .`).
    path = Path(os.path.abspath(path))
    kind = detect(path)
    out = Path(out_dir) if out_dir is not None else path
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"cannot write the report to {out}: {e.strerror}") from None
    doc = Document(out)
    title = {"study": render_study, "run": render_run, "search": render_search}[kind](path, doc)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc.para(f"Generated {stamp} by `scripts/report.py {path}` from the folder's CSV/JSON files.")
    md, page = out / "report.md", out / "report.html"
    runs.atomic_write_text(md, f"# {title}\n\n" + doc.markdown())
    doc.blocks.insert(0, ("h", 1, title))
    runs.atomic_write_text(page, doc.html(title))
    doc.remove_stale_files()  # figures of an earlier report that this one no longer has
    log.debug("report written: %s, %s", md, page)  # the scripts print it
    return md, page
