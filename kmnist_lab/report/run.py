"""Single-run reports: the study report's table and figures for one run folder, plus
the evaluations under `evaluation/` (confusion matrix, classification report, per-class
accuracy and evaluate.py's most confidently wrong images)."""

from __future__ import annotations

import json
from pathlib import Path

from kmnist_lab import plots, runs
from kmnist_lab.report.common import (
    read_evaluation,
    read_json_or_empty,
    read_metrics,
    study_folder_problem,
)
from kmnist_lab.report.document import Document
from kmnist_lab.report.study import (
    compares_with_report,
    figures,
    regression_table,
    runs_table,
    say_damaged,
    say_damaged_metrics,
)


def render_run(path: Path, doc: Document) -> str:
    """Adds a run folder's report to `doc` and returns its title: status, config, the study
    report's table and figures for this one run (beside the report's numbers where it is
    part of a study that compares with them) and evaluate.py's results."""
    # `detect` refused a config.json of other types (`common.run_folder_problem`).
    cfg = read_json_or_empty(path / "config.json")
    config = cfg.get("config", {})
    metrics, metrics_problem = read_metrics(path / runs.COMPLETE_MARKER)
    title = f"Run `{path.name}`"
    dataset = cfg.get("dataset", {}).get("name", config.get("dataset"))
    doc.para(f"Status **{runs.run_status(path)}**; dataset {dataset}; config:")
    doc.pre(json.dumps(config, sort_keys=True, indent=1))
    original = {}
    # A study.json beside the run that is not what study.py writes is no study of it.
    in_study = (path.parent / "study.json").is_file() and not study_folder_problem(path.parent)
    record = read_json_or_empty(path.parent / "study.json") if in_study else {}
    study = record.get("study", {})
    comparable = compares_with_report(record)  # as in the study's own report
    for r in study.get("runs", []):
        if r["name"] == path.name:
            original = r.get("original", {}) if comparable else {}
            doc.para(f"Part of study `{study['name']}` (report {study.get('report')}).")
    # `effective`: the planned epochs, shown (as in a study's table) until metrics.json
    # holds the epochs run.
    entry = {"name": path.name, "dir": path, "status": runs.run_status(path), "metrics": metrics,
             "metrics_problem": metrics_problem, "original": original, "factors": {},
             "effective": {"epochs": config.get("epochs")}}  # fmt: skip
    doc.heading("Results")
    if "mean_error" in metrics:
        regression_table(doc, [entry])
    else:
        runs_table(doc, [entry])
    say_damaged_metrics(doc, [entry])
    colors = {path.name: plots.COLORS[0]}
    fake_study = {"name": path.name, "extras": ["confusion", "per_class_train"],
                  "kind": "regression" if "mean_error" in metrics else "classify"}  # fmt: skip
    if (path / "history.csv").is_file():
        figures(doc, [entry], colors, fake_study)
    # The dataset the model learnt first, then transfer to other datasets.
    evaluated = sorted(
        (path / "evaluation").glob("*/evaluation.json"),
        key=lambda p: (not p.parent.name.startswith(f"{dataset}-"), p.parent.name),
    )
    if (path / "evaluation_test.json").is_file():
        # A study run's own test evaluation is in the figures above already; evaluate.py's
        # other splits and datasets are not.
        evaluated = [p for p in evaluated if p.parent.name != f"{dataset}-test"]
    render_evaluations(doc, evaluated, trained_on=dataset)
    return title


def render_evaluations(doc: Document, evaluated: list[Path], trained_on: str | None = None) -> None:
    """evaluate.py's results, one section per `evaluation.json` in `evaluated`: the
    confusion matrix, the classification report, per-class accuracy and wrong.png;
    a note where the dataset scored is not `trained_on`, the one the model learnt, and
    where evaluate.py scored the run before it had finished (`"run_complete": false`)."""
    damaged = []
    for ev_path in evaluated:
        ev, problem = read_evaluation(ev_path)
        if problem:
            damaged.append((ev_path, f"{problem}; the report leaves it out"))
        names = list(ev.get("per_class_accuracy", {}))
        if names:
            doc.heading(f"Evaluation {ev_path.parent.name}")
            scored = ev.get("dataset")
            if trained_on and scored and scored != trained_on:
                doc.para(
                    f"Scored on {scored}; the model was trained on {trained_on}, so this "
                    "measures transfer to another dataset."
                )
            if ev.get("run_complete") is False:
                doc.para(
                    "Scored before the run had finished (its folder had no metrics.json "
                    "then): the SavedModel of its last epoch, without the run's test metrics."
                )
            where = ev_path.parent.name
            fig = plots.confusion_matrix(ev["confusion_matrix"], names, f"Confusion {where}",
                                         ev.get("predicted_class_names"))  # fmt: skip
            doc.figure(fig, f"confusion_{where}", "Confusion matrix.")
            doc.pre(ev.get("classification_report_text", ""))
            fig = plots.per_class_accuracy(
                {where: list(ev["per_class_accuracy"].values())},
                names,
                f"Per-class accuracy {where}",
            )
            doc.figure(fig, f"per_class_{where}", "Accuracy per class.")
            if (ev_path.parent / "wrong.png").is_file():  # the images are not in the JSON
                doc.image(
                    ev_path.parent / "wrong.png",
                    "The most confidently wrong images.",
                    name=f"wrong_{where}",  # as confusion_ and per_class_: whose they are
                )
    if damaged:
        say_damaged(doc, damaged)
