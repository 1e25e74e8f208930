"""What the study, run and search reports share: their error, the readers of the
folders' JSON and CSV files (which say what is wrong with a damaged one) and the number
formats (`—` for a missing value)."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

from kmnist_lab import runs
from kmnist_lab.errors import KmnistLabError, is_int, is_real


class ReportError(KmnistLabError):
    """The path is not a run, study or search folder, or cannot be written."""


def read_json_or_empty(path: Path) -> dict:
    """The JSON object in `path`, or `{}` when it is missing, unreadable or not an object."""
    return runs.read_json(path) or {}


def _keys(data: dict, limit: int = 5) -> str:
    keys = [str(k) for k in data]
    shown = ", ".join(keys[:limit]) + (
        f" and {len(keys) - limit} more" if len(keys) > limit else ""
    )
    return f"its keys: {shown}" if keys else "an empty object"


def _read_object(path: Path) -> tuple[dict, str | None]:
    """The JSON object in `path`, or `{}` and what is wrong with the file, as a phrase
    that follows its name: `is not valid JSON` (e.g. cut short), `cannot be read (...)`,
    `holds a JSON list, not an object`."""
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        return {}, f"cannot be read ({e.strerror or type(e).__name__})"
    except ValueError:  # UnicodeDecodeError included
        return {}, "is not valid JSON"
    if not isinstance(data, dict):
        return {}, f"holds a JSON {type(data).__name__}, not an object"
    return data, None


def _shown(value, limit: int = 30) -> str:
    """`value` as it reads in its JSON file, cut to `limit` characters."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_object_problem(path: Path, key: str) -> str | None:
    """What keeps `path` from holding a JSON object with the object `key` (None: nothing),
    as a phrase about `path`'s name, e.g. `its config.json is not valid JSON`."""
    data, problem = _read_object(path)
    if problem:
        return f"its {path.name} {problem}"
    if not isinstance(data.get(key), dict):
        return f'its {path.name} has no "{key}" object ({_keys(data)})'
    return None


# What a report reads from a run's config.json besides its "config" object, and the type
# train.py and study.py write each with: `(where, key, type, what the type is called)`,
# `where` None for the file's top level. A key may be absent (a run from an older
# version reads the dataset's name from "config").
_CONFIG_FIELDS = (
    (None, "dataset", dict, "an object"),
    ("dataset", "name", str, "a string"),
    ("config", "dataset", str, "a string"),
    ("config", "epochs", int, "a positive integer"),
)


def run_folder_problem(path: Path) -> str | None:
    """Why `path` is not a kmnist_lab run folder, or None when it is one.

    train.py's test of a run it may resume (`runs.prepare_run_dir`): a `config.json`
    whose `"config"` is an object. Training writes it before the first epoch, so a run
    still training (no metrics yet), an interrupted and a diverged run all pass; a
    `metrics.json` without it is not a run that kmnist_lab wrote. The other fields the
    report reads (`_CONFIG_FIELDS`: the dataset's name, the planned epochs) must have the
    type training writes them with, where present.
    """
    if not (path / "config.json").is_file():
        found = [f for f in (runs.COMPLETE_MARKER, runs.STATUS_FILE) if (path / f).is_file()]
        return f"it has {' and '.join(found) or 'nothing of a run'} but no config.json"
    problem = json_object_problem(path / "config.json", "config")
    if problem:
        return problem
    data = runs.read_json(path / "config.json")
    for where, key, kind, called in _CONFIG_FIELDS:
        holder = data if where is None else data.get(where)
        if not isinstance(holder, dict) or key not in holder:
            continue
        value = holder[key]
        if kind is int:  # JSON's true is no number of epochs, nor is 0
            fits = is_int(value) and value > 0
        else:
            fits = isinstance(value, kind)
        if not fits:
            inside = f'its config.json\'s "{where}"' if where else "its config.json"
            return f'{inside} has "{key}": {_shown(value)}, not {called}'
    return None


def study_folder_problem(path: Path) -> str | None:
    """Why `path` is not a kmnist_lab study folder, or None when it is one: its
    `study.json` holds the record `studies.run_study` writes, a `"study"` object whose
    `"runs"` list at least one run, each an object with a `"name"`."""
    problem = json_object_problem(path / "study.json", "study")
    if problem:
        return problem
    study = runs.read_json(path / "study.json")["study"]
    runs_ = study.get("runs")
    if not isinstance(runs_, list) or not runs_:
        return 'its study.json\'s "study" has no list of runs'
    for i, r in enumerate(runs_):
        if not (isinstance(r, dict) and isinstance(r.get("name"), str)):
            return f'its study.json\'s run {i + 1} is not an object with a "name"'
    return None


# The numbers a report shows from a run's metrics.json (each may be null: a regression
# has no test accuracy).
METRICS_NUMBERS = ("test_accuracy", "test_loss", "val_accuracy", "train_accuracy_eval",
                   "mean_error", "max_abs_error", "epochs", "wall_time_s", "samples_per_s")  # fmt: skip


def read_metrics(path: Path) -> tuple[dict, str | None]:
    """The metrics of a run's `metrics.json` that a report can show, and what is wrong
    with the file (None: nothing), as `read_csv_log` says it of a CSV log.

    A missing file is a run not finished yet: `{}`, nothing wrong. A file that cannot be
    read, is not valid JSON (e.g. cut short) or holds no object gives `{}`; a value of
    `METRICS_NUMBERS` that is neither a number nor null is left out (the report shows
    `—` for it), the others kept.
    """
    if not path.is_file():
        return {}, None
    data, problem = _read_object(path)
    if problem:
        return {}, problem
    bad = [k for k in METRICS_NUMBERS if data.get(k) is not None and not is_real(data[k])]
    if not bad:
        return data, None
    shown = ", ".join(f"{k} {_shown(data[k], 20)}" for k in bad)
    kept = {k: v for k, v in data.items() if k not in bad}
    return kept, f"has values that are not numbers: {shown}"


def _evaluation_problem(data: dict) -> str | None:
    """What keeps an evaluation record from being drawn (None: nothing)."""
    per_class = data.get("per_class_accuracy")
    if not isinstance(per_class, dict) or not per_class:
        return f'has "per_class_accuracy": {_shown(per_class)}, not an object of class accuracies'
    bad = [k for k, v in per_class.items() if v is not None and not is_real(v)]
    if bad:
        return f"has per-class accuracies that are not numbers: {', '.join(bad[:3])}"
    if data.get("accuracy") is not None and not is_real(data["accuracy"]):
        return f'has "accuracy": {_shown(data["accuracy"])}, not a number'
    n = len(per_class)
    matrix = data.get("confusion_matrix")
    square = (
        isinstance(matrix, list)
        and len(matrix) == n
        and all(
            isinstance(row, list) and len(row) == n and all(map(is_real, row)) for row in matrix
        )
    )
    if not square:
        return f"has no {n} x {n} confusion matrix of numbers for its {n} classes"
    predicted = data.get("predicted_class_names")
    if predicted is not None and not (isinstance(predicted, list) and len(predicted) == n):
        return f'has "predicted_class_names": {_shown(predicted)}, not a list of {n} names'
    if not isinstance(data.get("classification_report_text", ""), str):
        return '"classification_report_text" is not text'
    return None


def read_evaluation(path: Path) -> tuple[dict, str | None]:
    """An `evaluation.json` (evaluate.py) or a study run's `evaluation_test.json` /
    `evaluation_train.json`, and what is wrong with the file (None: nothing), as
    `read_metrics` says it of a `metrics.json`.

    A missing file is `{}`, nothing wrong. One that cannot be read, or whose accuracy,
    per-class accuracies, confusion matrix, predicted class names or classification
    report are not what `evaluation.score` writes, gives `{}`: it is named, not drawn.
    A per-class accuracy of `null` (a class with no images in the scored split,
    `evaluation.write_evaluation`) reads as NaN: no bar.
    """
    if not path.is_file():
        return {}, None
    data, problem = _read_object(path)
    problem = problem or _evaluation_problem(data)
    if problem:
        return {}, problem
    per_class = data["per_class_accuracy"]
    data["per_class_accuracy"] = {k: math.nan if v is None else v for k, v in per_class.items()}
    return data, None


# The columns the figures draw from each CSV log, and those that a row needs filled in
# (and the file needs in its header) to be drawn at all.
CSV_DRAWN = {
    "history.csv": (("epoch", "loss", "accuracy", "val_loss", "val_accuracy"), ("epoch", "loss")),
    "batches.csv": (("epoch", "step", "steps", "loss"), ("loss",)),
}
_EXTRA = "\0extra"  # DictReader's key for the cells past the header's
# Control characters (NUL, newlines, ...): no writer of these files puts one in a cell.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` with its control characters written as escapes (`\\x00`), as `repr` does."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def _cell_problem(
    row: dict, column: str, needed: tuple[str, ...], number: bool = True
) -> str | None:
    cell = row[column]
    if cell is None:
        return "fewer cells than the header"
    if cell == "":
        return f"no {column}" if column in needed else None  # no validation: a gap
    if _CONTROL.search(cell):
        return f"{column} {cell[:20]!r}"
    if not number:
        return None
    try:
        float(cell)  # `nan` and `inf` too: a diverged run logs them
    except ValueError:
        return f"{column} {cell[:20]!r}"
    return None


def _read_csv(
    path: Path,
    numbers: tuple[str, ...],
    needed: tuple[str, ...],
    filled: tuple[str, ...],
    every_column: bool = False,
) -> tuple[list[str], list[dict], int | None, str | None]:
    """`(header, readable rows, rows read, what is wrong)` of a CSV file: the checks of
    `read_csv_log` and `read_trials_csv`; no rows read (None) where the file cannot be
    read or its header is damaged.

    The header must name every column of `needed`. A row is readable when its cells
    in `numbers` are numbers or empty, those of `filled` (in the header) filled in, no
    cell holds a control character and it has as many cells as the header; with
    `every_column`, the cells of the other columns are checked too (text, not numbers),
    else only those of `numbers`.
    """
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f, restkey=_EXTRA)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        return [], [], None, f"cannot be read ({why})"
    shown = printable(",".join(header))
    shown = f"its header: {shown[:60]}{'...' if len(shown) > 60 else ''}" if header else "empty"
    missing = [c for c in needed if c not in header]
    if missing:
        return header, [], None, f"has no {' or '.join(missing)} column ({shown})"
    if any(_CONTROL.search(c) for c in header):
        return header, [], None, f"has control characters in its header ({shown})"
    checked = [c for c in (header if every_column else numbers) if c in header]
    good, bad = [], []
    for line, row in enumerate(rows, start=2):
        problems = [_cell_problem(row, c, filled, c in numbers) for c in checked]
        problems = [p for p in problems if p] + (
            ["more cells than the header"] if _EXTRA in row else []
        )
        if problems:
            bad.append(f"line {line}: {problems[0]}")
        else:
            good.append(row)
    if not bad:
        return header, good, len(rows), None
    return header, good, len(rows), f"damaged rows: {len(bad)} of {len(rows)} ({bad[0]})"


def read_csv_log(path: Path) -> tuple[list[dict], str | None]:
    """The drawable rows of a run's `history.csv` or `batches.csv`, and what is wrong
    with the file (None: nothing).

    A row is drawable when its cells in the drawn columns (`CSV_DRAWN`) are numbers or
    empty (an epoch without validation), the needed ones filled in; damaged rows (text
    where a number belongs, too few or too many cells) are left out and counted. A file
    with a header but no rows yet (a run that has just started) has nothing wrong.
    """
    drawn, needed = CSV_DRAWN[path.name]
    _, good, _, problem = _read_csv(path, drawn, needed, needed)
    return good, problem


# The columns of a search's `trials.csv` (`tuning.results`) that hold numbers, empty
# where not applicable (a diverged trial's scores, Hyperband's columns elsewhere); its
# other columns are text (ids, statuses, choices). The report sorts by `val_accuracy`.
TRIALS_NUMBERS = ("val_accuracy", "val_loss", "epochs_trained", "wall_time_s", "bracket",
                  "round", "initial_epoch", "epochs", "accuracy", "loss", "rss_mb",
                  "diverged_epoch", "diverged_step")  # fmt: skip
TRIALS_FILLED = ("trial_id", "status")


def read_trials_csv(
    path: Path, expected: int | None = None
) -> tuple[list[str], list[dict], int, str | None]:
    """`(header, readable rows, rows read, what is wrong)` of a search's `trials.csv`,
    as `read_csv_log` reads a run's CSV log (None: nothing wrong; no rows read from a
    file that cannot be read or whose header is damaged).

    A row is readable when its cells are what `tuning.results.write_trials_csv` writes:
    numbers or empty in `TRIALS_NUMBERS`, a trial id and status, no control character
    (NUL, a newline: an unterminated quote swallows the rows after it) in any cell, and
    as many cells as the header; damaged rows are left out and counted. `expected`, the
    number of trials the search's `summary.json` counts: a file with fewer rows (cut
    short, down to its header) says so.
    """
    header, good, read, problem = _read_csv(
        path, TRIALS_NUMBERS, ("val_accuracy",), TRIALS_FILLED, every_column=True
    )
    if expected is not None and read is not None and read < expected:
        rows = f"{read} row{'' if read == 1 else 's'}" if read else "no rows"
        trials = f"{expected} trial{'' if expected == 1 else 's'}"
        short = f"has {rows} for the {trials} that summary.json counts"
        problem = f"{short}; {problem}" if problem else short
    return header, good, read or 0, problem


def pct(x) -> str:
    """A fraction in percent with two decimals and no `%` (0.9512 -> `95.12`); `—` for None
    or NaN."""
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def num(x, fmt="{:.3f}") -> str:
    """`x` formatted with `fmt`; `—` for None or NaN."""
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def diff_points(ours, original: dict) -> str:
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


def original_acc(original: dict) -> str:
    """The report's test accuracy in percent: its `test_accuracy`, else its
    `test_accuracy_range` as `lo–hi`, else `—`."""
    if original.get("test_accuracy") is not None:
        return pct(original["test_accuracy"])
    rng = original.get("test_accuracy_range")
    return f"{100 * rng[0]:.2f}–{100 * rng[1]:.2f}" if rng else "—"
