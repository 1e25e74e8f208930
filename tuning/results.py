"""What a search leaves behind: `trials.csv`, the best hyperparameters, a summary.

Everything here reads the oracle (the chief's, in a distributed search), so it
needs no access to the workers' disks.

`trials.csv` columns (stable; empty where not applicable):

```
trial_id, status, hp_<name>..., val_accuracy, val_loss, epochs_trained, wall_time_s,
worker, bracket, round, initial_epoch, epochs, from_trial, accuracy, loss, rss_mb,
diverged_epoch, diverged_step
```

`epochs_trained` is what the trial itself trained; `epochs` is the model's total
(for a Hyperband continuation: `initial_epoch + epochs_trained`, from the trial it
continues, `from_trial`).

`status` is keras-tuner's (`COMPLETED`, `FAILED`, `INVALID`, `RUNNING`, ...), except
for a trial whose loss turned non-finite (in training, or in validation after its last
epoch): `DIVERGED`. keras-tuner counts it as completed with the worst possible score
(`tuning.tuners.SearchTuner.run_trial`), so the search goes on; here its scores are
left empty (those of a model of NaN weights are no scores), `diverged_epoch` /
`diverged_step` say where the loss broke (the model's epoch, from 1, and the step in
it; empty where unknown), and it is never a candidate for the best trial.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from kmnist_lab import runs

METRIC_COLUMNS = ("val_accuracy", "val_loss", "epochs_trained", "wall_time_s")
TAIL_COLUMNS = (
    "worker", "bracket", "round", "initial_epoch", "epochs", "from_trial", "accuracy", "loss",
    "rss_mb", "diverged_epoch", "diverged_step",
)  # fmt: skip
DIVERGED = "DIVERGED"
# What a diverged trial reports to keras-tuner: `diverged` (present only then) and where.
DIVERGED_METRICS = ("diverged", "diverged_epoch", "diverged_step")


def hp_names(oracle) -> list[str]:
    """Names of the tuned hyperparameters, in declaration order (no `tuner/...`)."""
    return [hp.name for hp in oracle.get_space().space if not hp.name.startswith("tuner/")]


def _metric(trial, name):
    if not trial.metrics.exists(name):
        return ""
    value = trial.metrics.get_last_value(name)
    return "" if value is None else float(value)


def diverged_at(trial) -> tuple[int | None, int | None] | None:
    """Where a trial's training loss turned non-finite: `(epoch, step)`, None where not
    recorded; None if it did not diverge.

    A diverged trial reports a `diverged` metric (`SearchTuner.run_trial`); trials run
    before it did are recognised by their non-finite training loss.
    """
    metrics = trial.metrics
    if metrics.exists("diverged"):
        return tuple(_whole(_metric(trial, name)) for name in DIVERGED_METRICS[1:])
    loss = _metric(trial, "loss")
    if isinstance(loss, float) and not math.isfinite(loss):
        return (None, None)
    return None


def _whole(value):
    return int(value) if isinstance(value, float) and math.isfinite(value) else None


def where_text(point) -> str:
    """`epoch 2, step 19` (or what of it is known) for a `diverged_at` point."""
    parts = [f"{name} {value}" for name, value in zip(("epoch", "step"), point) if value]
    return ", ".join(parts) or "where not recorded"


def trial_order(trial_id: str):
    """Sort key of a trial id in start order: keras-tuner zero-pads ids to the width of
    `max_trials`, so a search extended from 4 to 11 trials has ids 0-3, then 04-10, and
    text order would put "04" before "1"."""
    return (int(trial_id), trial_id) if trial_id.isdigit() else (math.inf, trial_id)


def trial_rows(oracle) -> list[dict]:
    """One dict per trial (all statuses), ordered by trial id; keys are the CSV columns."""
    names = hp_names(oracle)
    worker_of = getattr(oracle, "worker_of", lambda _: None)
    rows = []
    for trial_id in sorted(oracle.trials, key=trial_order):
        trial = oracle.trials[trial_id]
        values = trial.hyperparameters.values
        point = diverged_at(trial) if trial.status == "COMPLETED" else None
        row = {"trial_id": trial_id, "status": DIVERGED if point else trial.status}
        row.update({f"hp_{n}": values.get(n, "") for n in names})
        row.update({m: _metric(trial, m) for m in METRIC_COLUMNS})
        trained = row["epochs_trained"]
        initial = int(values.get("tuner/initial_epoch", 0))
        row.update(
            worker=worker_of(trial_id) or "",
            bracket=values.get("tuner/bracket", ""),
            round=values.get("tuner/round", ""),
            initial_epoch=initial if "tuner/epochs" in values else "",
            epochs=(initial + int(trained)) if trained != "" else "",
            from_trial=values.get("tuner/trial_id", ""),
            accuracy=_metric(trial, "accuracy"),
            loss=_metric(trial, "loss"),
            rss_mb=_metric(trial, "rss_mb"),
            diverged_epoch="" if point is None or point[0] is None else point[0],
            diverged_step="" if point is None or point[1] is None else point[1],
        )
        if point:
            # keras-tuner holds the worst possible score for it, no measured one.
            row.update(val_accuracy="", val_loss="", accuracy="", loss="")
        rows.append(row)
    return rows


def columns(oracle) -> list[str]:
    """The `trials.csv` header: `trial_id`, `status`, `hp_<name>` per tuned hyperparameter
    of `oracle`, then `METRIC_COLUMNS` and `TAIL_COLUMNS`."""
    return [
        "trial_id", "status", *(f"hp_{n}" for n in hp_names(oracle)), *METRIC_COLUMNS,
        *TAIL_COLUMNS,
    ]  # fmt: skip


def write_trials_csv(rows: list[dict], fields: list[str], path: Path) -> Path:
    """Writes `rows` to `path` (atomically) as CSV with the columns `fields`: other keys are
    dropped, missing ones left empty, floats written to 6 significant digits (NaN empty).
    Returns `path`."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    runs.atomic_write_text(path, buffer.getvalue())
    return path


def _cell(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def completed(rows: list[dict]) -> list[dict]:
    """The trials that finished with a score: the candidates for the best one."""
    return [r for r in rows if r["status"] == "COMPLETED" and r["val_accuracy"] != ""]


def diverged(rows: list[dict]) -> list[dict]:
    """The trials whose training loss turned non-finite (stopped there, never the best)."""
    return [r for r in rows if r["status"] == DIVERGED]


def total_epochs(rows: list[dict]) -> int:
    """Epochs trained by all trials that reported (the search's training budget)."""
    return int(sum(r["epochs_trained"] for r in rows if r["epochs_trained"] != ""))


# ------------------------------------------------------------------------ summary


def _pct(value) -> str:
    return "" if value in ("", None) else f"{100 * float(value):.2f}"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def grid_table(rows: list[dict]) -> str | None:
    """Report A's table: val accuracy (%) per batch size x lr (rows) and epochs (columns)."""
    rows = completed(rows)
    axes = ("hp_batch_size", "hp_lr", "hp_epochs")
    if not rows or not all(k in rows[0] for k in axes):
        return None
    # Only a space whose other hyperparameters do not vary (report A's `a_grid`) has one
    # trial per cell; elsewhere (depth, optimizer, loss, ...) a cell would stand for
    # one arbitrary trial among several.
    others = [k for k in rows[0] if k.startswith("hp_") and k not in axes]
    if any(len({str(r[k]) for r in rows}) > 1 for k in others):
        return None
    epochs = sorted({int(r["hp_epochs"]) for r in rows})
    cells = {}
    for r in rows:
        key = (int(r["hp_batch_size"]), float(r["hp_lr"]), int(r["hp_epochs"]))
        cells[key] = max(cells.get(key, r["val_accuracy"]), r["val_accuracy"])
    keys = sorted({(b, lr) for b, lr, _ in cells})
    best = max(cells.values())
    lines = [
        "| batch size | lr | " + " | ".join(f"{e} ep" for e in epochs) + " |",
        "|---|---|" + "---|" * len(epochs),
    ]
    for b, lr in keys:
        out = []
        for e in epochs:
            v = cells.get((b, lr, e), "")
            text = _pct(v)
            out.append(f"**{text}**" if v == best else text)
        lines.append(f"| {b} | {lr:g} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def no_best_reason(rows: list[dict]) -> str:
    """Why a search has no best trial, e.g. `all 3 trials diverged (non-finite training
    loss)`."""
    broken = len(diverged(rows))
    if broken and broken == len(rows):
        return (f"{'the trial' if broken == 1 else f'all {broken} trials'} diverged"
                " (non-finite loss)")  # fmt: skip
    text = "no trial completed with a score"
    return text + (f" ({broken} diverged)" if broken else "")


def summary_markdown(summary: dict, rows: list[dict], figures: list[str]) -> str:
    """`summary.md` of a search folder."""
    cfg = summary["config"]
    best = summary.get("best")
    lines = [
        f"# Search `{cfg['space']}` / {cfg['tuner']} on {summary['dataset']}",
        "",
        "| | |",
        "|---|---|",
        f"| space | `{cfg['space']}`: {summary['space_summary']} |",
        f"| tuner | {cfg['tuner']} ({summary['tuner_settings']}) |",
        f"| Keras backend | {summary.get('backend', '?')} |",
        f"| trials | {summary['trials_completed']} completed,"
        f" {summary.get('trials_diverged', 0)} diverged, {summary['trials_failed']} failed,"
        f" {summary['trials_other']} other |",
        f"| epochs trained | **{summary['total_epochs']}** (sum over trials) |",
        f"| trial wall time | {summary['trial_wall_time_s']:.0f} s (sum over trials) |",
        f"| workers | {', '.join(summary['workers']) or '-'} |",
    ]
    memory = summary.get("session_memory_mb") or {}
    if "after_search_mb" in memory:
        which = ("the last process that ran trials" if memory.get("kept_from_an_earlier_process")
                 else "the last process")  # fmt: skip
        restarts = memory.get("restarts", 0)
        lines.append(
            f"| memory ({which}) | resident {memory['before_search_mb']:.0f} MB"
            f" before the search, {memory['after_search_mb']:.0f} MB after,"
            f" peak {memory['peak_mb']:.0f} MB"
            f" (+{memory['peak_mb'] - memory['before_search_mb']:.0f} MB);"
            f" {restarts} process restart{'' if restarts == 1 else 's'} |"
        )
    if best:
        hps = ", ".join(f"{k}={_fmt(v)}" for k, v in best["hyperparameters"].items())
        lines.append(
            f"| best trial | {best['trial_id']}: {hps}; {best['epochs']} "
            f"epoch{'' if best['epochs'] == 1 else 's'};"
            f" val accuracy **{_pct(best['val_accuracy'])}%** |"
        )
        model = summary.get("best_model") or {}
        if model:
            val, test = model.get("val_accuracy"), model.get("test_accuracy")
            lines.append(
                f"| best model | {model['origin']}; val accuracy {_pct(val)}%,"
                f" test accuracy {_pct(test)}% (test split used once);"
                f" {', '.join(model.get('artifacts', [])) or 'not exported'} |"
            )
    elif rows:
        lines.append(f"| best trial | none: {no_best_reason(rows)}; no model exported |")
    table = grid_table(rows)
    if table:
        lines += [
            "",
            "## Validation accuracy (%) per batch size, lr and epochs (report A's table layout)",
            "",
            table,
        ]
    done = sorted(completed(rows), key=lambda r: -r["val_accuracy"])[:10]
    if done:
        hp_cols = [k for k in done[0] if k.startswith("hp_")]
        header = ["trial", *(c[3:] for c in hp_cols), "val acc %", "model epochs",
                  "epochs trained", "worker"]  # fmt: skip
        lines += ["", "## Best trials", "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "---|" * len(header))
        for r in done:
            cells = [r["trial_id"], *(_fmt(r[c]) for c in hp_cols), _pct(r["val_accuracy"])]
            cells += [str(r["epochs"]), str(int(r["epochs_trained"])), r["worker"]]
            lines.append("| " + " | ".join(cells) + " |")
    broken = diverged(rows)
    if broken:
        hp_cols = [k for k in broken[0] if k.startswith("hp_")]
        header = ["trial", *(c[3:] for c in hp_cols), "diverged at", "epochs trained"]
        lines += ["", "## Diverged trials (non-finite loss; never the best)", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in broken:
            where = where_text((r["diverged_epoch"], r["diverged_step"]))
            cells = [r["trial_id"], *(_fmt(r[c]) for c in hp_cols), where]
            cells.append(str(int(r["epochs_trained"])) if r["epochs_trained"] != "" else "")
            lines.append("| " + " | ".join(cells) + " |")
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(lines) + "\n"
