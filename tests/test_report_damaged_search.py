"""A search folder's damaged `trials.csv`: named on stderr and in the report, which shows
the rows it can read and says how many of the search's trials that is.

The search folders are fabricated: rows as `tuning.results.trial_rows` makes them
(`test_tuning_figures._row`), written by `tuning.results.write_trials_csv`, with the
`summary.json` and `summary.md` a search writes beside them; no search runs.
"""

import re
import subprocess
import sys
from pathlib import Path

import _cli
import pytest
import report as report_script
from test_tuning_figures import _diverged, _row

from kmnist_lab import runs
from kmnist_lab.report import write_report
from kmnist_lab.report.common import TRIALS_NUMBERS
from tuning import results

_HPS = ("arch", "lr", "batch_size")
REPORT_PY = Path(__file__).resolve().parents[1] / "scripts" / "report.py"


def fake_search(folder, rows):
    """A search folder as `tuning.finalize` leaves it: trials.csv, summary.json, summary.md."""
    folder.mkdir()
    fields = ["trial_id", "status", *(f"hp_{n}" for n in _HPS), *results.METRIC_COLUMNS,
              *results.TAIL_COLUMNS]  # fmt: skip
    results.write_trials_csv(rows, fields, folder / "trials.csv")
    done, broken = results.completed(rows), results.diverged(rows)
    summary = {
        "config": {"space": "mlp", "tuner": "random"}, "dataset": "mnist_5k",
        "space_summary": "MLPs", "tuner_settings": "max_trials=2", "trials": len(rows),
        "trials_completed": len(done), "trials_diverged": len(broken), "trials_failed": 0,
        "trials_other": len(rows) - len(done) - len(broken),
        "total_epochs": results.total_epochs(rows), "trial_wall_time_s": 2.0, "workers": [],
    }  # fmt: skip
    runs.atomic_write_json(folder / "summary.json", summary)
    (folder / "summary.md").write_text(results.summary_markdown(summary, rows, []))
    return folder


def two_trials(tmp_path):
    return fake_search(tmp_path / "search", [
        _row("0", 0.874, 1.0, arch="bn_mlp", lr=0.0738079, batch_size=32),
        _row("1", 0.176, 1.0, arch="bn_mlp", lr=0.00047876, batch_size=64),
    ])  # fmt: skip


def _lines(path):
    return path.read_text().splitlines(keepends=True)


# Each: how the file is damaged (its text from the sound one's lines), what is wrong with
# it and what the report's table shows of the 2 trials the summary counts.
DAMAGE = {
    # The audit's file: an unterminated quote (its cell swallows the rows after it) and
    # NUL bytes; its garbage went into the table, NULs and all.
    "unterminated quote and NULs": (
        lambda lines: lines[0] + lines[1].replace("bn_mlp", '"bn\0\0mlp', 1) + lines[2],
        "has 1 row for the 2 trials that summary.json counts; damaged rows: 1 of 1 "
        "(line 2: hp_arch 'bn\\x00\\x00mlp,0.0738079,32'); the Trials table shows none of 2 trials",
    ),
    # Cut to its header: "trials | 2 completed" above "Trials (0, ...)" and an empty table.
    "cut to its header": (
        lambda lines: lines[0],
        "has no rows for the 2 trials that summary.json counts; "
        "the Trials table shows none of 2 trials",
    ),
    "cut after its first row": (
        lambda lines: lines[0] + lines[1],
        "has 1 row for the 2 trials that summary.json counts; the Trials table shows 1 of 2 trials",
    ),
    "cut inside a row": (
        lambda lines: lines[0] + lines[1] + lines[2][:12],
        "damaged rows: 1 of 2 (line 3: fewer cells than the header); "
        "the Trials table shows 1 of 2 trials",
    ),
    "a NUL in a text cell": (
        lambda lines: lines[0] + lines[1] + lines[2].replace("bn_mlp", "bn\0mlp"),
        "damaged rows: 1 of 2 (line 3: hp_arch 'bn\\x00mlp'); the Trials table shows 1 of 2 trials",
    ),
    "text where a number belongs": (
        lambda lines: lines[0] + lines[1].replace(",0.874,", ",high,") + lines[2],
        "damaged rows: 1 of 2 (line 2: val_accuracy 'high'); the Trials table shows 1 of 2 trials",
    ),
    "more cells than the header": (
        lambda lines: lines[0] + lines[1].rstrip("\n") + ",9,9\n" + lines[2],
        "damaged rows: 1 of 2 (line 2: more cells than the header); "
        "the Trials table shows 1 of 2 trials",
    ),
    "no trial id": (
        lambda lines: lines[0] + lines[1][1:] + lines[2],
        "damaged rows: 1 of 2 (line 2: no trial_id); the Trials table shows 1 of 2 trials",
    ),
    "not UTF-8": (
        lambda lines: (lines[0] + lines[1].replace("bn_mlp", "bn\xe9mlp")).encode("latin-1"),
        "cannot be read (UnicodeDecodeError); the Trials table shows none of 2 trials",
    ),
    "garbage": (
        lambda lines: "garbage\nfoo\n",
        "has no val_accuracy column (its header: garbage); the Trials table shows none of 2 trials",
    ),
    "a NUL in the header": (
        lambda lines: lines[0].replace("status", "sta\0tus") + lines[1] + lines[2],
        "has control characters in its header (its header: trial_id,sta\\x00tus,hp_arch,"
        "hp_lr,hp_batch_size,val_accuracy...); the Trials table shows none of 2 trials",
    ),
}

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # a newline ends a line, nothing else


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_trials_csv_is_named_and_the_report_shows_what_it_can_read(
    tmp_path, caplog, damage
):
    """A damaged trials.csv went into the report unread (an unterminated quote's NUL bytes
    and the rows it swallowed in the table; a file cut to its header an empty table
    under a summary of 2 trials), exit 0, no word of it. It is named with what is wrong
    in one line on stderr and in the report; the table holds only the readable rows,
    and its heading says how many of the summary's trials they are."""
    folder = two_trials(tmp_path)
    path = folder / "trials.csv"
    make, said = DAMAGE[damage]
    damaged = make(_lines(path))
    if isinstance(damaged, bytes):
        path.write_bytes(damaged)
    else:
        path.write_text(damaged, newline="")
    with caplog.at_level("WARNING", logger="kmnist_lab"):
        assert _cli.run(report_script.main, [str(folder)]) == 0
    assert [r.getMessage() for r in caplog.records] == [f"{path}: {said}"]
    text = (folder / "report.md").read_text()
    assert f"**Damaged files.** `search/trials.csv`: {said}." in text
    shown = int(re.search(r"shows (none|\d+) of 2", said)[1].replace("none", "0"))
    assert f"## Trials ({shown} of 2, best validation accuracy first)" in text
    table = text.split("## Trials", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == (shown + 1 if shown else 0)  # the header and the readable rows
    if not shown:
        assert "No trial rows to show." in table
    for report in (folder / "report.md", folder / "report.html"):
        assert not _CONTROL.search(report.read_text()), report


def test_report_py_prints_one_line_for_a_damaged_trials_csv_and_exits_0(tmp_path):
    """The audit's command on the audit's file: one warning line on stderr, naming the
    file, what is wrong and what the report shows; `-q` leaves it to the report."""
    folder = two_trials(tmp_path)
    path = folder / "trials.csv"
    make, said = DAMAGE["unterminated quote and NULs"]
    path.write_text(make(_lines(path)), newline="")
    out = tmp_path / "out"
    for quiet in (False, True):
        done = subprocess.run(
            [sys.executable, str(REPORT_PY), str(folder), "--output-dir", str(out),
             *(["-q"] if quiet else [])],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stderr.splitlines() == ([] if quiet else [f"{path}: {said}"]), done.stderr
        assert f"`search/trials.csv`: {said}." in (out / "report.md").read_text()


def test_a_sound_trials_csv_is_not_damage(tmp_path, caplog):
    """What `write_trials_csv` writes is read whole: a diverged trial's empty scores,
    choices of text (one with a `|`), an infinite loss, empty Hyperband columns."""
    folder = fake_search(tmp_path / "search", [
        _row("0", 0.874, 2.0, arch="bn_mlp", lr=0.07, batch_size=32),
        _diverged("1", arch="relu_mlp", lr=3.0, batch_size=64),
        {**_row("2", 0.5, 1.0, arch="plain|mlp", lr=0.5, batch_size=32), "loss": float("inf")},
    ])  # fmt: skip
    with caplog.at_level("WARNING", logger="kmnist_lab"):
        text = write_report(folder)[0].read_text()
    assert not caplog.records and "Damaged" not in text
    assert "## Trials (3, best validation accuracy first)" in text
    assert text.index("| 0 | COMPLETED |") < text.index("| 2 | COMPLETED |")
    assert text.index("| 2 | COMPLETED |") < text.index("| 1 | DIVERGED |")
    assert "plain\\|mlp" in text and "| inf |" in text


def test_a_search_without_summary_json_reads_its_trials_csv_alone(tmp_path, caplog):
    """No summary.json (nothing to count against): a file cut to its header is no damage,
    a damaged row still is, and the heading counts the rows the file holds."""
    folder = two_trials(tmp_path)
    (folder / "summary.json").unlink()
    path = folder / "trials.csv"
    lines = _lines(path)
    path.write_text(lines[0])
    with caplog.at_level("WARNING", logger="kmnist_lab"):
        text = write_report(folder)[0].read_text()
    assert not caplog.records and "## Trials (0, " in text
    path.write_text(lines[0] + lines[1].replace(",0.874,", ",high,") + lines[2])
    with caplog.at_level("WARNING", logger="kmnist_lab"):
        text = write_report(folder)[0].read_text()
    said = (
        "damaged rows: 1 of 2 (line 2: val_accuracy 'high'); the Trials table shows 1 of 2 trials"
    )
    assert [r.getMessage() for r in caplog.records] == [f"{path}: {said}"]
    assert "## Trials (1 of 2, " in text


def test_the_number_columns_are_those_tuning_results_writes_numbers_in():
    """The report's reader and the search's writer agree on trials.csv's columns: every
    column `tuning.results` writes after the hyperparameters holds numbers, but the
    worker's name and the id of the trial a Hyperband trial continues."""
    written = {*results.METRIC_COLUMNS, *results.TAIL_COLUMNS}
    assert set(TRIALS_NUMBERS) == written - {"worker", "from_trial"}


def test_a_damaged_summary_md_is_shown_escaped_not_copied(tmp_path):
    """NUL bytes and bytes that are not UTF-8 in summary.md: the report shows `\\x00` and
    U+FFFD where they were (before, the NULs reached report.md and the non-UTF-8 bytes
    ended in a UnicodeDecodeError)."""
    folder = two_trials(tmp_path)
    summary = folder / "summary.md"
    summary.write_bytes(summary.read_bytes() + b"\nbest so far: bn\0mlp \xff\xfe\n")
    text = write_report(folder)[0].read_text()
    assert "\0" not in text
    assert "best so far: bn\\x00mlp \ufffd\ufffd" in text
