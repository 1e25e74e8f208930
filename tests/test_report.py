"""Reports from files alone: study, run and search folders; Markdown + self-contained HTML.

Study folders are fabricated here from CSV/JSON files (no training), which is also
what guarantees that a report can be rebuilt without retraining.
"""

import base64
import csv
import json
import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

import _cli
import numpy as np
import pytest
import report as report_script

from kmnist_lab import plots, runs
from kmnist_lab.evaluation import score
from kmnist_lab.report import ReportError, detect, write_report
from kmnist_lab.report.common import diff_points
from kmnist_lab.studies import _study_record, get_study

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def fake_run(run_dir: Path, seed: int, epochs=3, steps=4, extras=True, complete=True):
    """A run folder as `train` writes it, with made-up but plausible numbers."""
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True)
    runs.atomic_write_json(
        run_dir / "config.json", {"config": {"arch": "mlp"}, "dataset": {"name": "fake"}}
    )
    final = 0.8 + 0.15 * rng.random()
    _write_csv(run_dir / "history.csv", [
        {"epoch": e, "loss": 1.0 / e, "accuracy": final - 0.1 / e, "val_loss": 1.1 / e,
         "val_accuracy": final - 0.12 / e, "learning_rate": 0.01, "epoch_time": 1.5}
        for e in range(1, epochs + 1)
    ])  # fmt: skip
    _write_csv(run_dir / "batches.csv", [
        {"epoch": e, "step": s, "steps": 1, "loss": 2.0 / (e * s) + 0.01 * rng.random()}
        for e in range(1, epochs + 1) for s in range(1, steps + 1)
    ])  # fmt: skip
    if extras:
        y = np.repeat(np.arange(10), 5)
        scores = rng.normal(size=(50, 10)) + 3 * np.eye(10)[y]
        for split in ("test", "train"):
            runs.atomic_write_json(
                run_dir / f"evaluation_{split}.json", score(y, scores, [str(i) for i in range(10)])
            )
    if complete:
        runs.atomic_write_json(run_dir / "metrics.json", {
            "status": "complete", "test_accuracy": final, "test_loss": 0.3, "epochs": epochs,
            "wall_time_s": 12.0, "samples_per_s": 900.0, "dataset": "fake"})  # fmt: skip


def fake_study(root: Path, name: str, incomplete=(), dataset: str = "mnist_5k") -> Path:
    study = get_study(name)
    study_dir = root / name
    study_dir.mkdir(parents=True)
    dataset = "sin" if study.kind == "regression" else dataset
    runs.atomic_write_json(study_dir / "study.json", _study_record(study, dataset, False, 1.0))
    for i, run in enumerate(study.runs):
        fake_run(study_dir / run.name, i, complete=run.name not in incomplete)
        if study.kind == "regression" and run.name not in incomplete:
            x = np.arange(-1.57, 1.57, 0.01)
            fit = [{"x": v, "y_true": np.sin(v), "y_pred": np.sin(v) + 1e-3} for v in x]
            _write_csv(study_dir / run.name / "fit.csv", fit)
            runs.atomic_write_json(study_dir / run.name / "metrics.json", {
                "status": "complete", "test_accuracy": None, "test_loss": 1e-6,
                "mean_error": 1e-3, "max_abs_error": 1e-3, "epochs": 3, "wall_time_s": 5.0,
                "samples_per_s": 1e4})  # fmt: skip
    return study_dir


@pytest.mark.parametrize("name", ["a_models", "b_resnet", "d_losses_activations", "e_regression"])
def test_study_report_lists_every_run_beside_the_report(name, tmp_path):
    several = len(get_study(name).runs) > 1
    study_dir = fake_study(
        tmp_path, name, incomplete=(get_study(name).runs[0].name,) if several else ()
    )
    md, page = write_report(study_dir)
    text = md.read_text()
    for run in get_study(name).runs:
        assert f"`{run.name}`" in text
    assert "incomplete" in text or not several  # an unfinished run is listed, not dropped
    figures = sorted((study_dir / "report_files").glob("*.png"))
    assert figures and all(f.stat().st_size > 5000 for f in figures)
    html = page.read_text()
    assert html.count("<img") == html.count('src="data:image/png;base64,') == text.count("![")
    if name == "a_models":
        assert "report %" in text and "98.18" in text and "Δ points" in text
    if name == "b_resnet":
        assert (study_dir / "report_files" / "per_class_train.png").is_file()
        assert "macro avg" in text
    if name == "d_losses_activations":
        assert (study_dir / "report_files" / "d_losses_activations_heatmap.png").is_file()
        assert "97.28–97.43" in text
    if name == "e_regression":
        assert "mean error" in text and (study_dir / "report_files" / "sin_3x50_fit.png").is_file()


def test_b_resnet_report_sets_train_accuracy_beside_the_reports_99_48(tmp_path):
    # Report B gave train 99.48 % beside test 99.05 %; the catalog holds it, the table showed none.
    study_dir = fake_study(tmp_path, "b_resnet")
    text = write_report(study_dir)[0].read_text()
    ours = runs.read_json(study_dir / "baseline" / "evaluation_train.json")["accuracy"]
    row = next(line for line in text.splitlines() if line.startswith("| `baseline`"))
    assert "train acc %" in text and f"{100 * ours:.2f} (report 99.48)" in row
    sigmoid = next(line for line in text.splitlines() if line.startswith("| `sigmoid`"))
    assert "(report" not in sigmoid  # the report gave no train accuracy for it
    # Studies without train-split evaluations get no such column.
    other = fake_study(tmp_path, "a_models")
    for path in other.glob("*/evaluation_train.json"):
        path.unlink()
    assert "train acc" not in write_report(other)[0].read_text()


def test_b_resnet_report_has_the_reports_epoch_loss_table(tmp_path):
    # Report B compared the activations by epoch-loss tables; the report drew only curves.
    study_dir = fake_study(tmp_path, "b_resnet")
    text = write_report(study_dir)[0].read_text()
    assert "| run | epoch 1 | epoch 2 | epoch 3 |" in text
    assert "| `sigmoid` | 1.000 | 0.500 | 0.333 |" in text  # fake_run's loss 1 / epoch
    assert "epoch 1 |" not in write_report(fake_study(tmp_path, "a_models"))[0].read_text()


def test_a_partly_run_study_report_names_its_unfinished_runs(tmp_path, caplog):
    # The table listed the statuses, but neither the report nor report.py said the study
    # was unfinished, or how to finish it.
    study_dir = fake_study(tmp_path, "b_resnet", incomplete=("sigmoid",))
    shutil.rmtree(study_dir / "tanh")
    with caplog.at_level("WARNING", logger="kmnist_lab"):
        text = write_report(study_dir)[0].read_text()
    said = "3 of 5 runs finished; 2 not yet: `sigmoid` (incomplete), `tanh` (missing)"
    command = (
        f"python scripts/study.py b_resnet --dataset mnist_5k --backend tensorflow "
        f"--output-dir {tmp_path}"
    )
    assert said in text and f"`{command}` finishes them" in text
    assert said.replace("`", "") in caplog.text and command in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="kmnist_lab"):
        text = write_report(fake_study(tmp_path / "done", "b_resnet"))[0].read_text()
    assert "Unfinished" not in text and not caplog.text


def test_study_on_another_dataset_is_not_set_beside_the_reports_mnist_numbers(tmp_path):
    study_dir = fake_study(tmp_path, "a_models", dataset="fashion_mnist")
    text = write_report(study_dir)[0].read_text()
    assert "not compared with fashion_mnist's" in text
    assert "report %" not in text and "Δ points" not in text and "98.18" not in text
    assert not (study_dir / "report_files" / "a_models_vs_report.png").exists()


@pytest.mark.parametrize("ours, original, expected", [
    (0.9850, {"test_accuracy": 0.9818}, "+0.32"),            # a single reported value
    (0.9700, {"test_accuracy": 0.9818}, "-1.18"),
    (0.9700, {"test_accuracy_range": [0.9728, 0.9743]}, "-0.28"),  # below: from the low end
    (0.9750, {"test_accuracy_range": [0.9728, 0.9743]}, "+0.07"),  # above: from the high end
    (0.9735, {"test_accuracy_range": [0.9728, 0.9743]}, "+0.00"),  # inside the range
    (None, {"test_accuracy": 0.9818}, "—"),                   # no run result
    (0.9700, {}, "—"),                                        # the report gave none
])  # fmt: skip
def test_delta_points_are_ours_minus_the_report_or_its_nearest_range_end(ours, original, expected):
    assert diff_points(ours, original) == expected


@pytest.mark.parametrize("dataset, compared", [("fashion_mnist", False), ("mnist_5k", True)])
def test_run_report_of_a_study_run_compares_like_its_study_report(dataset, compared, tmp_path):
    """A study run's own report (report.py RUN) must leave the report's MNIST numbers
    out on another dataset, as the study's report does."""
    study_dir = fake_study(tmp_path, "a_models", dataset=dataset)
    run = study_dir / get_study("a_models").runs[0].name
    text = write_report(run)[0].read_text()
    assert "Part of study `a_models`" in text
    assert ("Δ points" in text) is compared and ("report %" in text) is compared


def test_html_embeds_decodable_pngs(tmp_path):
    study_dir = fake_study(tmp_path, "c_optimizers")
    _, page = write_report(study_dir, tmp_path / "elsewhere")
    html = page.read_text()
    chunks = html.split('src="data:image/png;base64,')[1:]
    assert len(chunks) >= 6  # vs-report bars, curves, per-class, 4 confusion matrices
    for chunk in chunks:
        assert base64.b64decode(chunk.split('"', 1)[0]).startswith(b"\x89PNG")
    assert "report_files" not in html


def test_a_regenerated_report_leaves_no_figure_of_the_earlier_one(tmp_path):
    fake_run(tmp_path / "r", 0)
    write_report(tmp_path / "r")
    files = tmp_path / "r" / "report_files"
    first = sorted(p.name for p in files.iterdir())
    (files / "confusion_old-evaluation.png").write_bytes(b"\x89PNG")  # a figure gone since
    write_report(tmp_path / "r")
    assert sorted(p.name for p in files.iterdir()) == first


def test_run_report(tmp_path):
    fake_run(tmp_path / "r", 0)
    md, page = write_report(tmp_path / "r")
    text = md.read_text()
    assert "`r`" in text and "Training loss vs iteration" in text and page.is_file()
    figures = sorted(p.name for p in (tmp_path / "r" / "report_files").iterdir())
    assert "r_iterations.png" in figures and not any("__" in f for f in figures), figures


def test_the_report_of_an_interrupted_run_shows_its_planned_epochs(tmp_path):
    """As a study's table does for its unfinished runs: config.json's epochs, not "—"."""
    fake_run(tmp_path / "r", 0, complete=False)
    runs.atomic_write_json(tmp_path / "r" / "config.json",
                           {"config": {"arch": "mlp", "epochs": 15}, "dataset": {"name": "fake"}})  # fmt: skip
    text = write_report(tmp_path / "r")[0].read_text()
    assert "Status **incomplete**" in text
    assert _rows(text, "r")[0][:4] == ["`r`", "incomplete", "15", "—"]


def test_run_report_of_a_study_run_keeps_evaluate_py_results_on_other_splits(tmp_path):
    """A study run's own test evaluation (evaluation_test.json) is in the report once; what
    scripts/evaluate.py added on other splits or datasets is reported too."""
    fake_run(tmp_path / "r", 0)  # with evaluation_test.json, on dataset "fake"
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(10), 5)
    for name in ("fake-test", "fake-val", "emnist-test"):
        scores = rng.normal(size=(50, 10)) + 3 * np.eye(10)[y]
        (tmp_path / "r" / "evaluation" / name).mkdir(parents=True)
        runs.atomic_write_json(
            tmp_path / "r" / "evaluation" / name / "evaluation.json",
            {**score(y, scores, [str(i) for i in range(10)]), "dataset": name.split("-")[0]},
        )
    text = write_report(tmp_path / "r")[0].read_text()
    # The run's own dataset first, then transfer (not alphabetical: emnist < fake).
    assert text.index("Evaluation fake-val") < text.index("Evaluation emnist-test")
    assert "Evaluation fake-test" not in text  # the run's own test evaluation, shown already
    # Scored on another dataset than the run's: said once, in that evaluation's section.
    note = "Scored on emnist; the model was trained on fake, so this measures transfer"
    assert text.count("measures transfer") == 1
    assert text.index("Evaluation emnist-test") < text.index(note)


def test_an_evaluation_scored_before_the_run_finished_says_so(tmp_path):
    """evaluate.py records `"run_complete": false` for a run without metrics.json; the
    report says so in that evaluation's section, and only there."""
    fake_run(tmp_path / "r", 0)
    y = np.repeat(np.arange(10), 5)
    scores = np.random.default_rng(1).normal(size=(50, 10)) + 3 * np.eye(10)[y]
    for name, complete in (("fake-val", False), ("fake-train", True)):
        (tmp_path / "r" / "evaluation" / name).mkdir(parents=True)
        runs.atomic_write_json(
            tmp_path / "r" / "evaluation" / name / "evaluation.json",
            {**score(y, scores, [str(i) for i in range(10)]), "dataset": "fake",
             "run_complete": complete},
        )  # fmt: skip
    text = write_report(tmp_path / "r")[0].read_text()
    assert text.count("Scored before the run had finished") == 1
    assert text.index("Evaluation fake-train") < text.index("Evaluation fake-val")
    assert text.index("Evaluation fake-val") < text.index("Scored before the run had finished")


def _evaluated_run(run_dir: Path, wheres: list[str]) -> list[Path]:
    """A `fake_run` with evaluate.py's output (figures, wrong.png) in
    `evaluation/<where>/` for each of `wheres`; returns those folders."""
    fake_run(run_dir, 0, extras=False)
    return _evaluations(run_dir, wheres)


def _evaluations(model_dir: Path, wheres: list[str]) -> list[Path]:
    """evaluate.py's output for a model folder (a run, a search's best_model/)."""
    from kmnist_lab import evaluation

    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(10), 5)
    scores = rng.normal(size=(50, 10)) + 3 * np.eye(10)[y]
    names = [str(i) for i in range(10)]
    x = rng.integers(0, 256, size=(50, 28, 28), dtype=np.uint8)
    outs = [model_dir / "evaluation" / where for where in wheres]
    for out in outs:
        evaluation.write_report(score(y, scores, names), x, names, out, title=out.name)
    return outs


def test_run_report_shows_every_figure_evaluate_py_wrote(tmp_path):
    """`report.py RUN` showed evaluate.py's confusion matrix and classification report but
    not its per-class accuracy nor its most confidently wrong images (wrong.png)."""
    out = _evaluated_run(tmp_path / "r", ["fake-test"])[0]
    assert (out / "wrong.png").is_file() and (out / "per_class.png").is_file()
    report, _ = write_report(tmp_path / "r")
    text, files = report.read_text(), report.parent / "report_files"
    assert "Accuracy per class." in text and "The most confidently wrong images." in text
    assert (files / "per_class_fake-test.png").is_file()
    assert "evaluation/fake-test/wrong.png" in text  # inside the report's folder: not copied


def test_search_report_sorts_trials_and_embeds_figures(tmp_path):
    search = tmp_path / "search"
    (search / "figures").mkdir(parents=True)
    _write_csv(search / "trials.csv", [
        {"trial": "t1", "lr": 0.1, "val_accuracy": 0.91, "bracket": ""},
        {"trial": "t2", "lr": 0.01, "val_accuracy": 0.9700000286102295, "bracket": ""},
        {"trial": "t3", "lr": 1.0, "val_accuracy": "", "bracket": ""},
    ])  # fmt: skip
    (search / "summary.md").write_text(
        "# Search x\n\nbest: t2\n\n| | |\n|---|---|\n| tuner | **grid** |\n\n"
        "## Figures\n\n![h](figures/h.png)\n"
    )

    plots.save(
        plots.heatmap([[0.1, 0.2]], ["a"], ["x", "y"], "t", "x", "y"), search / "figures" / "h.png"
    )
    md, page = write_report(search)
    text = md.read_text()
    assert detect(search) == "search"
    assert text.index("| t2 |") < text.index("| t1 |") < text.index("| t3 |")
    assert "best: t2" in text and page.read_text().count("data:image/png;base64,") == 1
    assert "| t2 | 0.01 | 0.97 |" in text  # rounded; the all-empty `bracket` column is left out
    assert "bracket" not in text and "```" not in text
    # summary.md's tables are tables in the HTML too, and its empty "Figures" section is dropped.
    assert "<td>tuner</td><td><strong>grid</strong></td>" in page.read_text()
    assert text.count("Figures") == 1
    # Written elsewhere, the report carries a copy of the figure and links it relatively.
    md, _ = write_report(search, out_dir=tmp_path / "elsewhere")
    assert "](report_files/h.png)" in md.read_text() and "file://" not in md.read_text()
    assert (tmp_path / "elsewhere" / "report_files" / "h.png").is_file()


def test_search_report_shows_evaluate_py_results_for_the_best_model(tmp_path):
    """`evaluate.py SEARCH/best_model` writes best_model/evaluation/; the search's report
    showed none of it, where a run's report shows its evaluations."""
    search = tmp_path / "search"
    search.mkdir()
    _write_csv(search / "trials.csv", [{"trial": "t1", "val_accuracy": 0.91}])
    md, _ = write_report(search)
    assert "evaluate.py" not in md.read_text()  # nothing scored yet: no section
    _evaluations(search / "best_model", ["fake-test"])
    text = write_report(search)[0].read_text()
    assert "Best model, scored by evaluate.py" in text and "Evaluation fake-test" in text
    assert "Accuracy per class." in text and "The most confidently wrong images." in text
    assert (search / "report_files" / "confusion_fake-test.png").is_file()


def test_corrupt_study_record_is_an_error_not_an_empty_report(tmp_path):
    (tmp_path / "study.json").write_text("{bad")
    with pytest.raises(ReportError, match=r"not a kmnist_lab study folder: its study\.json is not"):
        write_report(tmp_path)


@pytest.mark.parametrize(
    "record, found",
    [
        ('{"study": 5}', 'has no "study" object'),
        ('{"study": {"runs": 3}}', "has no list of runs"),
        ('{"study": {"runs": []}}', "has no list of runs"),
        ('{"study": {"runs": [{"epochs": 1}]}}', 'run 1 is not an object with a "name"'),
    ],
)
def test_a_study_record_of_another_shape_is_an_error_not_a_traceback(tmp_path, record, found):
    """A study.json that parses but is not what study.py writes (edited by hand, another
    tool's file) is refused with a ReportError (one line, exit 2 from report.py)."""
    (tmp_path / "study.json").write_text(record)
    with pytest.raises(
        ReportError, match=f"not a kmnist_lab study folder: its study.json.*{found}"
    ):
        write_report(tmp_path)


@pytest.mark.parametrize(
    "file, text, found",
    [
        ("config.json", '{"foo": 1}', 'its config.json has no "config" object (its keys: foo)'),
        ("config.json", "{bad", "its config.json is not valid JSON"),
        ("config.json", "[1, 2]", "its config.json holds a JSON list, not an object"),
        (
            "config.json",
            '{"config": 3}',
            'its config.json has no "config" object (its keys: config)',
        ),
        (runs.COMPLETE_MARKER, '{"foo": 1}', "it has metrics.json but no config.json"),
        ("study.json", '{"foo": 1}', 'its study.json has no "study" object (its keys: foo)'),
        ("study.json", "{bad", "its study.json is not valid JSON"),
    ],
)
def test_a_folder_that_is_not_a_kmnist_lab_run_or_study_is_refused_and_nothing_written(
    tmp_path, capsys, file, text, found
):
    """report.py wrote "Status incomplete; dataset None; config: {}" (exit 0) for any folder
    with a config.json, even `{"foo": 1}` or invalid JSON, and an empty study report for a
    study.json without runs. It is refused as train.py refuses a folder that is not a run,
    naming what it found, before anything is written (--output-dir not even created)."""
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / file).write_text(text)
    kind = "study" if file == "study.json" else "run"
    out = tmp_path / "elsewhere"
    for argv in ([str(folder)], [str(folder), "--output-dir", str(out)]):
        assert _cli.run(report_script.main, argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.split(": error: ", 1)[1] == (
            f"{folder} is not a kmnist_lab {kind} folder: {found}; report a folder that "
            f"{'scripts/train.py or ' if kind == 'run' else ''}scripts/study.py wrote"
        ), err
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(["folder", file])


def test_a_run_still_training_gets_a_report(tmp_path):
    """The config.json training writes before its first epoch makes a run folder: a run
    with no history or metrics yet is reported (status, planned epochs), not refused."""
    run = tmp_path / "r"
    run.mkdir()
    runs.atomic_write_json(run / "config.json", {"config": {"arch": "mlp", "epochs": 4}})
    runs.atomic_write_json(run / "status.json", {"status": "running"})
    (run / "batches.csv").write_text("epoch,step,steps,loss\n")  # BatchLogger's first write
    text = write_report(run)[0].read_text()
    assert _rows(text, "r")[0][:4] == ["`r`", "incomplete", "4", "—"]
    assert "Damaged" not in text


def test_not_a_report_folder(tmp_path):
    with pytest.raises(ReportError, match="not a run"):
        write_report(tmp_path)


def test_a_search_stopped_before_its_first_summary_says_how_to_finish_it(tmp_path):
    """A search folder holds search.json from its start and trials.csv only once it
    finishes: report.py names the search and the way on, not "not a search folder"."""
    (tmp_path / "search.json").write_text('{"identity": {"space": "a_grid"}}')
    with pytest.raises(ReportError, match="holds a search that has written no trials.csv yet"):
        write_report(tmp_path)
    assert not (tmp_path / "report.md").exists()


def test_a_searchs_best_model_points_to_the_search_report(tmp_path):
    """`best_model/` has a run's metrics.json but no config.json: a run report of it
    read "dataset None; config {}". The search's report is the one that describes it."""
    (tmp_path / "search.json").write_text('{"identity": {"space": "a_grid"}}')
    best = tmp_path / "best_model"
    best.mkdir()
    (best / runs.COMPLETE_MARKER).write_text('{"dataset": "mnist_5k"}')
    with pytest.raises(ReportError, match=f"best model of the search {tmp_path}, not a run"):
        write_report(best)
    assert not (best / "report.md").exists()


@pytest.mark.parametrize("argv, match", [(["/no/such/dir"], "not a folder"), ([], "required")])
def test_script_bad_input_is_one_line_exit_2(argv, match, capsys):
    code = _cli.run(report_script.main, argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and match in err, err


def test_script_writes_both_files(tmp_path, capsys):
    study_dir = fake_study(tmp_path, "e_batchnorm")
    assert _cli.run(report_script.main, [str(study_dir)]) == 0
    assert "report.html" in capsys.readouterr().out


def screenshot(page: Path, out: Path) -> None:
    """The documented command (docs/results.md): headless Chromium, no network, no GPU."""
    profile = tempfile.mkdtemp()
    try:
        subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync",
             f"--user-data-dir={profile}", f"--screenshot={out}", "--window-size=1200,2400",
             page.resolve().as_uri()],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.skipif(
    not Path(CHROMIUM).is_file(), reason="chromium not installed (apt-get install chromium)"
)
def test_html_renders_every_figure_in_headless_chromium(tmp_path):
    from matplotlib.image import imread

    study_dir = fake_study(tmp_path, "e_batchnorm")
    _, page = write_report(study_dir)
    shot = tmp_path / "shot.png"
    screenshot(page, shot)
    pixels = imread(shot)[..., :3]
    # Coloured pixels come only from the figures (text is black/grey, the page white):
    # a missing image would leave at most a small broken-image icon.
    saturation = pixels.max(axis=-1) - pixels.min(axis=-1)
    assert (saturation > 0.3).sum() > 3000
    # Both figures of the report are on the page: coloured rows in two separate bands.
    rows = np.flatnonzero((saturation > 0.3).sum(axis=1) > 0)
    assert rows.size and (np.diff(rows) > 40).sum() >= 1


def _history(path, val_losses):
    rows = ["epoch,loss,accuracy,val_loss,val_accuracy"]
    rows += [f"{i},0.5,0.8,{v},0.8" for i, v in enumerate(val_losses, start=1)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_learning_curves_switch_to_log_scale_only_when_one_loss_dwarfs_the_rest(tmp_path):
    from kmnist_lab.plots import learning_curves

    calm = learning_curves({"a": _history(tmp_path / "a.csv", [0.4, 0.3, 0.2])})
    assert calm.axes[0].get_yscale() == "linear"
    # A diverging first validation epoch (as b_resnet's batch-1000 run had: 2,300).
    spiky = learning_curves({"a": _history(tmp_path / "a.csv", [0.4, 0.3, 0.2]),
                             "b": _history(tmp_path / "b.csv", [2300.0, 0.2, 0.1])})  # fmt: skip
    assert spiky.axes[0].get_yscale() == "log" and spiky.axes[1].get_yscale() == "linear"


def test_learning_curves_of_a_regression_draw_the_loss_alone(tmp_path):
    """A regression's history has no accuracy: its figure had an empty accuracy panel."""
    from kmnist_lab.plots import learning_curves

    path = tmp_path / "h.csv"
    path.write_text("epoch,loss,val_loss\n1,0.5,0.6\n2,0.3,0.4\n")
    fig = learning_curves({"sin": path})
    assert [ax.get_title() for ax in fig.axes] == ["loss"] and len(fig.axes[0].lines) == 2
    both = learning_curves({"sin": path, "a": _history(tmp_path / "a.csv", [0.4, 0.3])})
    assert [ax.get_title() for ax in both.axes] == ["loss", "accuracy"]


def test_a_report_of_dot_names_the_folder(tmp_path, monkeypatch):
    """`report.py .` from inside a run folder titled the report "Run ``" (Path('.').name
    is empty) and left out the study it belongs to."""
    from kmnist_lab.studies import run_study

    study_dir = run_study(
        "e_regression", quick=True, output_dir=tmp_path, only=["sin_3x50"]
    ).study_dir
    monkeypatch.chdir(study_dir / "sin_3x50")
    md, _ = write_report(".")
    text = md.read_text()
    assert text.startswith("# Run `sin_3x50`") and "e_regression" in text, text[:300]
    monkeypatch.chdir(study_dir / "sin_3x50")
    md, _ = write_report("..")
    assert md == study_dir / "report.md" and md.read_text().startswith("# Study `e_regression`")
    assert f"by `scripts/report.py {study_dir}`" in md.read_text()  # not `report.py ..`


@pytest.mark.parametrize("losses", [[0.4, 0.3], [0.4]])
def test_learning_curves_tick_whole_epochs_only(losses, tmp_path):
    # A 2-epoch run's curves were ticked 1.0, 1.2, ..., 2.0: epochs that do not exist;
    # a one-epoch run's (every --quick study run) 0.945, 0.96, ..., 1.05.
    from kmnist_lab.plots import learning_curves

    fig = learning_curves(_history(tmp_path / "a.csv", losses))
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


@pytest.mark.parametrize("steps", [[4], [10, 10, 10]])
def test_batch_losses_tick_whole_iterations_only(steps, tmp_path):
    # A --quick run's one logged row (iteration 4) was ticked 3.80, 3.85, ..., 4.20.
    from kmnist_lab.plots import batch_losses

    rows = [{"epoch": 1, "step": sum(steps[: i + 1]), "steps": n, "loss": 1.0 / (i + 1)}
            for i, n in enumerate(steps)]  # fmt: skip
    _write_csv(tmp_path / "b.csv", rows)
    ax = batch_losses({"a": tmp_path / "b.csv"}).axes[0]
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_grid_study_tabulates_every_cell_and_marks_the_best_val_cell(tmp_path):
    # Report A's hand grid: a row per (batch, lr), a column per epochs, for test
    # accuracy, test loss and val accuracy; the best *validation* cell is bold.
    study_dir = fake_study(tmp_path, "a_grid", incomplete=("bs32_lr0.01_e3",))
    for run in get_study("a_grid").runs:
        if run.name == "bs32_lr0.01_e3":
            continue
        f = run.factors
        best = (f["batch_size"], f["lr"], f["epochs"]) == (64, 0.02, 10)
        # The best test accuracy is elsewhere (256, 0.01, 3): the table must not pick it.
        test_best = (f["batch_size"], f["lr"], f["epochs"]) == (256, 0.01, 3)
        runs.atomic_write_json(study_dir / run.name / "metrics.json", {
            "status": "complete", "epochs": f["epochs"], "dataset": "fake",
            "val_accuracy": 0.97 if best else 0.90, "test_accuracy": 0.99 if test_best else
            (0.9512 if best else 0.91), "test_loss": 0.123 if best else 0.3})  # fmt: skip
    md, _ = write_report(study_dir)
    text = md.read_text()
    assert (
        "Best validation accuracy 97.00 %: **batch_size 64, lr 0.02, epochs 10** (test 95.12 %, "
        "test loss 0.123); bold" in text
    )
    assert "Cells are labelled with the study's settings" not in text  # they ran as labelled
    assert "| batch_size | lr | epochs 3 | epochs 5 | epochs 7 | epochs 10 | epochs 15 |" in text
    assert "| 64 | 0.02 | 91.00 | 91.00 | 91.00 | **95.12** | 91.00 |" in text  # test accuracy
    assert "| 64 | 0.02 | 0.300 | 0.300 | 0.300 | **0.123** | 0.300 |" in text  # test loss
    assert "| 64 | 0.02 | 90.00 | 90.00 | 90.00 | **97.00** | 90.00 |" in text  # val accuracy
    assert "| 32 | 0.01 | — | 91.00 |" in text  # the unfinished cell stays empty
    assert "**99.00**" not in text
    assert (study_dir / "report_files" / "a_grid_grid.png").stat().st_size > 5000


def test_grid_report_bolds_every_tied_cell_and_says_when_cells_ran_otherwise(tmp_path):
    study_dir = fake_study(tmp_path, "a_grid")
    # Ran with --epochs-scale 0.2: "epochs 15" cells trained 3 epochs.
    runs.atomic_write_json(
        study_dir / "study.json", _study_record(get_study("a_grid"), "fake", False, 0.2)
    )
    for run in get_study("a_grid").runs:
        top = run.name in ("bs32_lr0.02_e5", "bs256_lr0.03_e15")
        runs.atomic_write_json(study_dir / run.name / "metrics.json", {
            "status": "complete", "val_accuracy": 0.95 if top else 0.9, "test_accuracy": 0.9,
            "test_loss": 0.3})  # fmt: skip
    text = write_report(study_dir)[0].read_text()
    assert "Best validation accuracy 95.00 %, a tie of 2 cells: **batch_size 32, lr 0.02" in text
    assert "; **batch_size 256, lr 0.03, epochs 15** (test 90.00 %" in text
    assert text.count("**95.00**") == 2  # both bold in the val accuracy table
    assert (
        "Cells are labelled with the study's settings, but 60 of them ran with others "
        "(`--quick` or `--epochs-scale`), e.g. `bs32_lr0.01_e3` ran with epochs 1." in text
    )


def test_heatmap_panels_share_one_scale_and_bold_the_best_cell_over_all_panels():
    fig = plots.heatmap_panels(
        {"3 epochs": [[0.5, np.nan], [0.7, 0.6]], "15 epochs": [[0.9, 0.8], [0.2, 0.4]]},
        ["32", "64"], ["0.01", "0.02"], "t", "lr", "batch", fmt="{:.2f}",
        notes={"3 epochs": [["", ""], ["", "*"]]},
    )  # fmt: skip
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["3 epochs", "15 epochs"]
    texts = [{t.get_text(): t.get_fontweight() for t in ax.texts} for ax in panels]
    assert texts[0] == {"0.50": "normal", "0.70": "normal", "0.60*": "normal"}  # NaN: no text
    assert texts[1]["0.90"] == "bold" and texts[1]["0.20"] == "normal"
    assert {tuple(ax.get_images()[0].get_clim()) for ax in panels} == {(0.2, 0.9)}
    low = plots.heatmap_panels({"a": [[1.0, 2.0]]}, ["r"], ["x", "y"], "t", "x", "y", best="min")
    assert {t.get_text(): t.get_fontweight() for t in low.axes[0].texts}["1.0"] == "bold"
    with pytest.raises(
        ValueError, match="`best` must be 'max', 'min' or None. Received: best='Max'"
    ):
        plots.heatmap_panels({"a": [[1.0]]}, ["r"], ["x"], "t", "x", "y", best="Max")
    with pytest.raises(ValueError, match="at least one panel"):
        plots.heatmap_panels({}, [], [], "t", "x", "y")


def test_cell_text_is_white_on_dark_cells_and_black_on_light_ones_even_when_all_are_equal():
    """viridis runs from dark purple (low) to yellow (high). When every cell holds the
    same value, matplotlib paints them all dark: their text used to be black on it."""
    fig = plots.heatmap_panels({"": [[0.2, 0.9]]}, ["r"], ["x", "y"], "t", "x", "y")
    assert [t.get_color() for t in fig.axes[0].texts] == ["white", "black"]
    same = plots.heatmap_panels({"": [[0.234, 0.234]]}, ["r"], ["x", "y"], "t", "x", "y")
    assert [t.get_color() for t in same.axes[0].texts] == ["white", "white"]


def test_a_reported_range_gets_a_bar_with_a_whisker_beside_ours(tmp_path, monkeypatch):
    # Report D gave hinge as a range (97.28-97.43 %), its best result; the "ours vs the
    # report" figure drew only runs with one reported number, so hinge had no bar.
    drawn = {}
    original = plots.grouped_bars

    def spy(values, labels, *args, **kwargs):
        drawn.update(labels=list(labels), values=values, errors=kwargs.get("errors"))
        return original(values, labels, *args, **kwargs)

    monkeypatch.setattr(plots, "grouped_bars", spy)
    text = write_report(fake_study(tmp_path, "d_losses_activations"))[0].read_text()
    for act in ("tanh", "selu", "hard_swish"):
        i = drawn["labels"].index(f"{act}_hinge")
        assert drawn["values"]["report"][i] == pytest.approx((97.28 + 97.43) / 2)
        assert drawn["errors"]["report"][i] == pytest.approx((97.43 - 97.28) / 2)
    focal = drawn["labels"].index("tanh_focal")
    assert drawn["values"]["report"][focal] == pytest.approx(91.0)
    assert drawn["errors"]["report"][focal] == 0.0
    assert "the whisker spans it" in text
    from matplotlib.container import ErrorbarContainer

    fig = original({"a": [1.0, 2.0]}, ["x", "y"], "t", errors={"a": [0.0, 0.5]})
    (bars,) = [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)]
    whiskers = bars.lines[2][0].get_segments()  # one vertical segment per bar
    np.testing.assert_allclose(whiskers[1][:, 1], [1.5, 2.5])
    assert np.isnan(whiskers[0]).all()  # none on a 0 half-width


def test_score_by_hand():
    # 3 classes. Predictions [0, 0, 1, 1, 1, 2] for labels [0, 0, 0, 1, 2, 2]: two wrong,
    # sample 4 (p = e^3 / (e^3 + 2)) more confidently than sample 2 (e / (e + 2)).
    y = np.array([0, 0, 0, 1, 2, 2])
    scores = np.array([[2.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 2, 0], [0, 3, 0], [0, 0, 1]])
    result = score(y, scores, ["a", "b", "c"])
    assert result["n"] == 6
    assert result["accuracy"] == pytest.approx(4 / 6)
    log_p = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
    assert result["cross_entropy"] == pytest.approx(-log_p[np.arange(6), y].mean())
    # Per-class accuracy is the recall of each true class (row of the confusion matrix).
    assert result["per_class_accuracy"] == pytest.approx({"a": 2 / 3, "b": 1.0, "c": 1 / 2})
    assert result["confusion_matrix"] == [[2, 1, 0], [0, 1, 0], [0, 1, 1]]
    wrong = result["most_confident_wrong"]
    assert [(w["index"], w["true"], w["pred"]) for w in wrong] == [(4, 2, 1), (2, 0, 1)]
    assert wrong[0]["confidence"] == pytest.approx(np.e**3 / (np.e**3 + 2))
    assert [
        w["index"] for w in score(y, scores, ["a", "b", "c"], n_wrong=1)["most_confident_wrong"]
    ] == [4]


@pytest.mark.parametrize(
    "y, names, kw, error, message",
    [
        # Two names for three columns: a 2x2 confusion matrix would drop the rows'
        # predictions of class 2 and report b's recall as 1.0 (it is 1/2).
        ([0, 1, 1, 2], ["a", "b"], {}, "ConfigError",
         r"2 class_names for scores with 3 columns \(classes\); pass one name per class"),
        ([0, 1, 1, 2], ["a", "b", "c"], {"predicted_class_names": ["x"]}, "ConfigError",
         "1 predicted_class_names for scores with 3 columns"),
        ([0, 1, 3, 2], ["a", "b", "c"], {}, "DataError",
         r"class ids outside \[0, 3\) \(the scores' columns\), e.g. 3"),
        ([0, 1, -1, 2], ["a", "b", "c"], {}, "DataError", "outside .* e.g. -1"),
        ([0.0, 1.0, 1.0, 2.0], ["a", "b", "c"], {}, "DataError",
         "must hold integer class ids. Received: dtype float64"),
        ([0, 1, 1], ["a", "b", "c"], {}, "ModelLoadError", "3 labels for 4 rows of scores"),
    ],
)  # fmt: skip
def test_score_refuses_names_and_labels_that_do_not_fit_the_scores(y, names, kw, error, message):
    from kmnist_lab import errors

    scores = np.array([[2.0, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 3]])
    with pytest.raises(getattr(errors, error), match=message):
        score(np.array(y), scores, names, **kw)
    with pytest.raises(errors.ModelLoadError, match=r"`scores` must be \(N, classes\)"):
        score(np.array([0]), np.zeros(3), ["a", "b", "c"])


def test_per_class_accuracy_of_a_class_absent_from_the_split_is_nan_not_zero():
    y = np.array([0, 0, 1])
    scores = np.array([[1.0, 0, 0], [0, 1, 0], [0, 1, 0]])
    result = score(y, scores, ["a", "b", "c"])
    assert result["per_class_accuracy"]["a"] == 0.5 and result["per_class_accuracy"]["b"] == 1.0
    assert np.isnan(result["per_class_accuracy"]["c"])  # no example of c: undefined
    assert result["confusion_matrix"][2] == [0, 0, 0]


def test_evaluation_files_are_strict_json_with_null_for_a_class_absent_from_the_split(tmp_path):
    """NaN is no JSON value (`jq` and JavaScript refuse `NaN`): the file holds `null`,
    and the reports read it back as NaN (no bar)."""
    from kmnist_lab.evaluation import write_evaluation
    from kmnist_lab.report.common import read_evaluation

    result = score(np.array([0, 0, 1]), np.eye(3)[[0, 1, 1]], ["a", "b", "c"])
    write_evaluation(tmp_path / "evaluation.json", result)
    text = (tmp_path / "evaluation.json").read_text()
    assert "NaN" not in text
    strict = json.loads(text, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert strict["per_class_accuracy"] == {"a": 0.5, "b": 1.0, "c": None}
    read, problem = read_evaluation(tmp_path / "evaluation.json")
    assert problem is None and read["per_class_accuracy"]["b"] == 1.0
    assert np.isnan(read["per_class_accuracy"]["c"])


def test_most_confidently_wrong_ranks_by_the_predicted_class_probability():
    """Confidence is the probability of the class predicted, not how unlikely the true
    class was: sample 0 is predicted with p = 0.95, sample 1 with 0.52, although its
    true class is far less likely (2e-7 against 0.05)."""
    y = np.array([0, 0, 2])
    scores = np.array([[0.0, 3, -10], [-10, 5, 4.9], [0, 0, 1]])
    wrong = score(y, scores, ["a", "b", "c"])["most_confident_wrong"]
    assert [w["index"] for w in wrong] == [0, 1]
    assert [w["confidence"] for w in wrong] == pytest.approx(
        [np.e**3 / (np.e**3 + 1 + np.e**-10), np.e**5 / (np.e**5 + np.e**4.9 + np.e**-10)]
    )


def tiny_study(root: Path, runs_, quick=False, dataset="mnist_5k", epochs_scale=1.0, **study):
    """A study folder with a hand-written study.json (a few runs, no catalog study):
    `runs_` is `[{"name", "factors", "original", "epochs"}]`, each a `fake_run` without
    per-class files; `effective` holds the run's planned epochs."""
    study_dir = root / study.get("name", "tiny")
    study_dir.mkdir(parents=True)
    record = {"name": "tiny", "report": "T", "description": "", "kind": "classify",
              "extras": [], **study,
              "runs": [{"name": r["name"], "factors": r.get("factors", {}),
                        "original": r.get("original", {}),
                        "effective": {"epochs": r.get("epochs", 10)}} for r in runs_]}  # fmt: skip
    runs.atomic_write_json(study_dir / "study.json", {
        "study": record, "dataset": dataset, "quick": quick, "epochs_scale": epochs_scale})  # fmt: skip
    for i, r in enumerate(runs_):
        fake_run(study_dir / r["name"], i, extras=False)
    return study_dir


def _rows(text: str, name: str) -> list[list[str]]:
    """The cells of every table row of run `name`, in the order of the document."""
    return [[c.strip() for c in line.strip("|").split("|")]
            for line in text.splitlines() if line.startswith(f"| `{name}` |")]  # fmt: skip


def test_study_table_shows_the_runs_own_final_numbers_beside_the_report(tmp_path, monkeypatch):
    """Each row: the epochs the run ran (metrics.json, not the planned ones), its test
    accuracy after the last epoch (not its validation accuracy), ours minus the report,
    a resumed run's wall time marked; a run that never started shows no epochs."""
    drawn = {}
    original = plots.grouped_bars

    def spy(values, labels, *args, **kwargs):
        drawn.update(labels=list(labels), values=values)
        return original(values, labels, *args, **kwargs)

    monkeypatch.setattr(plots, "grouped_bars", spy)
    study_dir = tiny_study(tmp_path, [
        {"name": "a", "factors": {"lr": 0.1}, "original": {"test_accuracy": 0.9818}, "epochs": 10},
        {"name": "b", "factors": {"lr": 0.01}, "original": {"test_accuracy": 0.95}, "epochs": 10},
        {"name": "c", "factors": {"lr": 0.001}, "original": {"test_accuracy": 0.9}, "epochs": 7},
    ])  # fmt: skip
    runs.atomic_write_json(study_dir / "a" / "metrics.json", {
        "status": "complete", "test_accuracy": 0.9850, "val_accuracy": 0.9100, "test_loss": 0.25,
        "epochs": 3, "wall_time_s": 40.4, "samples_per_s": 1234.4, "resumed": True})  # fmt: skip
    runs.atomic_write_json(study_dir / "b" / "metrics.json", {
        "status": "complete", "test_accuracy": 0.9400, "val_accuracy": 0.99, "test_loss": 0.5,
        "epochs": 4, "wall_time_s": 12.0, "samples_per_s": 900.0})  # fmt: skip
    shutil.rmtree(study_dir / "c")
    text = write_report(study_dir)[0].read_text()
    assert "| run | lr | status | epochs | test acc % | report % | Δ points | test loss |" in text
    assert _rows(text, "a") == [
        ["`a`", "0.1", "complete", "3", "98.50", "98.18", "+0.32", "0.250", "40 (resumed)", "1234"]
    ]
    assert _rows(text, "b") == [
        ["`b`", "0.01", "complete", "4", "94.00", "95.00", "-1.00", "0.500", "12", "900"]
    ]
    assert _rows(text, "c") == [["`c`", "0.001", "missing", "—", "—", "90.00", "—", "—", "—", "—"]]
    # The "ours vs the report" bars: the same test accuracies, in percent.
    assert drawn["labels"] == ["a", "b", "c"]
    np.testing.assert_allclose(drawn["values"]["ours"], [98.5, 94.0, np.nan])
    np.testing.assert_allclose(drawn["values"]["report"], [98.18, 95.0, 90.0])


def test_a_diverged_run_is_finished_and_the_unfinished_note_repeats_the_studys_settings(
    tmp_path,
):
    """A diverged run is not "not yet" (re-running skips it); the command that finishes
    a quick, scaled study carries --quick and --epochs-scale, without which study.py
    refuses the folder. A quick study is never set beside the report's numbers."""
    study_dir = tiny_study(tmp_path, [
        {"name": "a", "original": {"test_accuracy": 0.98}},
        {"name": "b", "original": {"test_accuracy": 0.98}},
        {"name": "c", "original": {"test_accuracy": 0.98}},
    ], quick=True, epochs_scale=0.5)  # fmt: skip
    (study_dir / "b" / "metrics.json").unlink()
    runs.atomic_write_json(study_dir / "b" / "status.json", {"status": "diverged"})
    shutil.rmtree(study_dir / "c")
    text = write_report(study_dir)[0].read_text()
    assert "2 of 3 runs finished; 1 not yet: `c` (missing). " in text
    command = (
        f"python scripts/study.py tiny --dataset mnist_5k --quick --epochs-scale 0.5 "
        f"--output-dir {tmp_path}"
    )
    assert f"`{command}` finishes them" in text
    assert _rows(text, "b")[0][:2] == ["`b`", "diverged"]
    assert "**quick mode**" in text and "report %" not in text and "Δ points" not in text
    assert not (study_dir / "report_files" / "tiny_vs_report.png").exists()


def test_heatmap_holds_the_test_accuracy_of_the_runs_matching_every_condition(
    tmp_path, monkeypatch
):
    """Report D's heatmap: activation x loss at 10 epochs and lr 0.1 only; the 50-epoch
    and lr-0.01 variants of a cell must not overwrite it; a cell without a run is NaN."""
    drawn = {}
    original = plots.heatmap

    def spy(values, rows, cols, *args, **kwargs):
        drawn.update(values=values, rows=rows, cols=cols)
        return original(values, rows, cols, *args, **kwargs)

    monkeypatch.setattr(plots, "heatmap", spy)
    cells = [("tanh", "ce", 10, 0.1, 0.91), ("tanh", "hinge", 10, 0.1, 0.92),
             ("relu", "ce", 10, 0.1, 0.93), ("tanh", "ce", 50, 0.1, 0.50),
             ("relu", "hinge", 10, 0.01, 0.40)]  # fmt: skip
    study_dir = tiny_study(
        tmp_path,
        [{"name": f"{a}_{loss}_{e}_{lr}", "factors": {"activation": a, "loss": loss, "epochs": e,
          "lr": lr}} for a, loss, e, lr, _ in cells],
        heatmap=["activation", "loss"], heatmap_where=[["epochs", 10], ["lr", 0.1]],
    )  # fmt: skip
    for a, loss, e, lr, acc in cells:
        runs.atomic_write_json(study_dir / f"{a}_{loss}_{e}_{lr}" / "metrics.json", {
            "status": "complete", "test_accuracy": acc, "val_accuracy": 1 - acc,
            "test_loss": 0.3, "epochs": e})  # fmt: skip
    write_report(study_dir)
    assert (drawn["rows"], drawn["cols"]) == (["tanh", "relu"], ["ce", "hinge"])
    np.testing.assert_allclose(drawn["values"], [[0.91, 0.92], [0.93, np.nan]])
    assert (study_dir / "report_files" / "tiny_heatmap.png").is_file()


def test_per_class_tables_read_each_split_from_its_own_evaluation(tmp_path):
    """The train-split table (studies with `per_class_train`) is evaluation_train.json's,
    not a copy of the test split's."""
    study_dir = tiny_study(tmp_path, [{"name": "a"}], extras=["per_class_train"])
    names = ["x", "y", "z"]
    y = np.array([0, 0, 1, 1, 2, 2])
    test = score(y, np.eye(3)[[0, 1, 1, 1, 2, 2]], names)  # x 50 %, y 100 %, z 100 %
    train = score(y, np.eye(3)[[0, 0, 1, 2, 2, 0]], names)  # x 100 %, y 50 %, z 50 %
    runs.atomic_write_json(study_dir / "a" / "evaluation_test.json", test)
    runs.atomic_write_json(study_dir / "a" / "evaluation_train.json", train)
    text = write_report(study_dir)[0].read_text()
    _, test_row, train_row = _rows(text, "a")  # the runs table, then test, then train
    assert test_row == ["`a`", "50.00", "100.00", "100.00"]
    assert train_row == ["`a`", "100.00", "50.00", "50.00"]
    assert (study_dir / "report_files" / "per_class_train.png").is_file()


def test_a_transfer_evaluations_confusion_matrix_names_predictions_by_the_models_classes(
    tmp_path, monkeypatch
):
    """evaluate.py records the model's class names when it scores another dataset; the
    run report's confusion matrix labels its predicted axis with them, not the data's."""
    from kmnist_lab.report.document import Document
    from kmnist_lab.report.run import render_evaluations

    names = ["T-shirt", "Trouser"]
    result = score(np.array([0, 1]), np.eye(2)[[0, 0]], names)
    result.update(dataset="fashion_mnist", predicted_class_names=["0", "1"])
    path = tmp_path / "evaluation" / "fashion_mnist-test" / "evaluation.json"
    path.parent.mkdir(parents=True)
    runs.atomic_write_json(path, result)
    drawn = []
    confusion = plots.confusion_matrix
    monkeypatch.setattr(plots, "confusion_matrix",
                        lambda *a, **k: drawn.append(confusion(*a, **k)) or drawn[-1])  # fmt: skip
    render_evaluations(Document(tmp_path), [path], trained_on="mnist")
    (ax,) = drawn[0].axes[:1]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1"]
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    assert ax.get_xlabel() == "predicted class (the model's)"
    same = plots.confusion_matrix([[1, 0], [0, 1]], names)  # a run's own dataset
    assert same.axes[0].get_xlabel() == "predicted class"


def test_document_escapes_table_pipes_in_markdown_and_markup_in_html(tmp_path):
    """A cell holding `|` (a search's choice `a|b`) must not split its Markdown row, and
    text holding `<` must not become HTML markup; `code` and **bold** still render."""
    from kmnist_lab.report import Document

    doc = Document(tmp_path)
    doc.table(["name", "value"], [["act", "relu|tanh"], ["loss", 0.123456]])
    doc.para("a <script>x</script> **b** `c`")
    md = doc.markdown()
    assert "| act | relu\\|tanh |" in md and "| loss | 0.1235 |" in md
    page = doc.html("t")
    assert "<td>relu|tanh</td>" in page and "<script>" not in page
    assert "a &lt;script&gt;x&lt;/script&gt; <strong>b</strong> <code>c</code>" in page


def test_batch_losses_are_drawn_at_the_cumulative_iteration_of_each_logged_row(tmp_path):
    """batches.csv logs a row every `steps` iterations (a run's last row of an epoch may
    be shorter): the x of each point is the running sum of `steps`, not the row number;
    a file without `steps` counts rows."""
    from kmnist_lab.plots import batch_losses

    _write_csv(tmp_path / "b.csv", [{"epoch": 1, "step": 10, "steps": 10, "loss": 0.9},
                                    {"epoch": 1, "step": 15, "steps": 5, "loss": 0.7},
                                    {"epoch": 2, "step": 10, "steps": 10, "loss": 0.5}])  # fmt: skip
    _write_csv(tmp_path / "c.csv", [{"loss": 0.9}, {"loss": 0.8}])
    a, c = batch_losses({"a": tmp_path / "b.csv", "c": tmp_path / "c.csv"}).axes[0].lines
    np.testing.assert_array_equal(a.get_xdata(), [10, 15, 25])
    np.testing.assert_array_equal(a.get_ydata(), [0.9, 0.7, 0.5])
    np.testing.assert_array_equal(c.get_xdata(), [1, 2])


def test_learning_curves_draw_train_solid_and_val_dashed_and_go_log_beyond_two_decades(
    tmp_path,
):
    from kmnist_lab.plots import learning_curves

    fig = learning_curves({"a": _history(tmp_path / "a.csv", [0.4, 0.3])}, colors={"a": "#123456"})
    for ax in fig.axes[:2]:
        train, val = ax.lines
        assert (train.get_linestyle(), val.get_linestyle()) == ("-", "--")
        assert train.get_color() == val.get_color() == "#123456"
    # The largest loss over the smallest: 3 decades is log, 1.5 decades stays linear.
    assert learning_curves(_history(tmp_path / "b.csv", [500.0, 0.6])).axes[0].get_yscale() == "log"
    assert learning_curves(_history(tmp_path / "c.csv", [15.0, 0.6])).axes[0].get_yscale() == (
        "linear"
    )


def test_read_csv_gives_nan_for_empty_or_text_cells_and_nothing_for_an_empty_file(tmp_path):
    """An epoch without validation (an empty val_accuracy cell) must be a gap in the
    curves, not a drop to 0."""
    (tmp_path / "h.csv").write_text("epoch,val_accuracy,note\n1,0.9,x\n2,,y\n3,0.95,\n")
    h = plots.read_csv(tmp_path / "h.csv")
    np.testing.assert_array_equal(h["epoch"], [1, 2, 3])
    np.testing.assert_array_equal(h["val_accuracy"], [0.9, np.nan, 0.95])
    assert np.isnan(h["note"]).all()
    (tmp_path / "empty.csv").write_text("epoch,loss\n")
    assert plots.read_csv(tmp_path / "empty.csv") == {}


def test_runs_interrupted_before_or_after_their_evaluation_leave_the_report_whole(tmp_path):
    """A run killed mid-training has a history but no evaluation files; one killed after
    writing them but before metrics.json is not complete, so its train accuracy is not
    shown. Neither crashes the per-class figures nor the confusion matrices."""
    study_dir = tiny_study(tmp_path, [{"name": "before"}, {"name": "after"}, {"name": "done"}],
                           extras=["confusion", "per_class_train"])  # fmt: skip
    names = [str(i) for i in range(10)]
    y = np.repeat(np.arange(10), 2)
    evaluation = score(y, np.eye(10)[y], names)  # every image right: 100 %
    for run in ("after", "done"):
        for split in ("test", "train"):
            runs.atomic_write_json(study_dir / run / f"evaluation_{split}.json", evaluation)
    for run in ("before", "after"):
        (study_dir / run / "metrics.json").unlink()
    text = write_report(study_dir)[0].read_text()
    assert "| run | status | epochs | test acc % | train acc % | test loss |" in text
    assert _rows(text, "before")[0][:5] == ["`before`", "incomplete", "10", "—", "—"]
    assert _rows(text, "after")[0][:5] == ["`after`", "incomplete", "10", "—", "—"]
    assert _rows(text, "done")[0][4] == "100.00"
    assert len(_rows(text, "before")) == 1  # no per-class row, no confusion matrix
    files = study_dir / "report_files"
    assert (files / "confusion_done.png").is_file() and not (
        files / "confusion_before.png"
    ).exists()


def test_regression_table_sets_each_error_in_its_own_column(tmp_path):
    study_dir = tiny_study(tmp_path, [{"name": "sin", "original": {"mean_error": 1.5e-4}}],
                           kind="regression", dataset="sin")  # fmt: skip
    runs.atomic_write_json(study_dir / "sin" / "metrics.json", {
        "status": "complete", "test_accuracy": None, "test_loss": 4e-6, "mean_error": -2e-3,
        "max_abs_error": 5e-3, "epochs": 300, "wall_time_s": 61.0, "samples_per_s": 2e4})  # fmt: skip
    text = write_report(study_dir)[0].read_text()
    assert ("| run | status | epochs | mean error | report mean error | max abs error | test MSE "
            "| wall time s | samples/s |") in text  # fmt: skip
    assert _rows(text, "sin") == [
        ["`sin`", "complete", "300", "-2.00e-03", "1.50e-04", "5.00e-03", "4.00e-06", "61", "20000"]
    ]


def test_grid_note_counts_only_the_cells_that_ran_with_other_settings(tmp_path):
    """With --epochs-scale, the cells that ran trained other epochs than their labels; a
    cell that never ran trained nothing, so it is neither counted nor the example."""
    cells = [{"name": n, "factors": {"bs": 32, "lr": lr, "epochs": 10}, "epochs": 2}
             for n, lr in (("never", 0.01), ("ran", 0.02))]  # fmt: skip
    study_dir = tiny_study(tmp_path, cells, epochs_scale=0.2, grid=["bs", "lr", "epochs"])
    shutil.rmtree(study_dir / "never")
    text = write_report(study_dir)[0].read_text()
    assert (
        "Cells are labelled with the study's settings, but 1 of them ran with others "
        "(`--quick` or `--epochs-scale`), e.g. `ran` ran with epochs 2." in text
    )


def test_the_finishing_command_keeps_no_export_and_the_backend(tmp_path):
    """A study run with --no-export (on JAX) is finished the same way: the hint carries
    --no-export (or the remaining runs would export) and the backend study.py needs."""
    study_dir = tiny_study(tmp_path, [{"name": "a"}, {"name": "b"}])
    record = runs.read_json(study_dir / "study.json")
    runs.atomic_write_json(study_dir / "study.json", {**record, "export": False, "backend": "jax"})
    shutil.rmtree(study_dir / "b")
    text = write_report(study_dir)[0].read_text()
    command = (
        f"python scripts/study.py tiny --dataset mnist_5k --backend jax --no-export "
        f"--output-dir {tmp_path}"
    )
    assert f"`{command}` finishes them" in text


def test_unfinished_regression_study_command_names_no_dataset(tmp_path):
    """e_regression has no --dataset (its data is sin x): the finishing command leaves it
    out, as study.py would refuse `--dataset sin`."""
    study_dir = tiny_study(tmp_path, [{"name": "a"}, {"name": "b"}], kind="regression",
                           dataset="sin")  # fmt: skip
    shutil.rmtree(study_dir / "b")
    text = write_report(study_dir)[0].read_text()
    assert f"`python scripts/study.py tiny --output-dir {tmp_path}` finishes them" in text


def test_search_report_rounds_long_decimals_to_four_significant_digits(tmp_path):
    _write_csv(tmp_path / "trials.csv", [
        {"trial": "t1", "lr": 0.000123456, "units": 128, "val_accuracy": 0.912345678},
        {"trial": "t2", "lr": 0.5, "units": 64, "val_accuracy": 0.8940000128},
    ])  # fmt: skip
    text = write_report(tmp_path)[0].read_text()
    assert "| t1 | 0.0001235 | 128 | 0.9123 |" in text
    assert "| t2 | 0.5 | 64 | 0.894 |" in text


def test_run_report_of_a_regression_run_shows_its_errors_and_fit(tmp_path):
    """A sine-fit run (e_regression's) has no accuracy: its own report gives the
    regression table and the fit figure, not a column of empty accuracies."""
    fake_run(tmp_path / "sin", 0, extras=False)
    x = np.arange(-1.57, 1.57, 0.01)
    _write_csv(tmp_path / "sin" / "fit.csv",
               [{"x": v, "y_true": np.sin(v), "y_pred": np.sin(v) + 1e-3} for v in x])  # fmt: skip
    runs.atomic_write_json(tmp_path / "sin" / "metrics.json", {
        "status": "complete", "test_accuracy": None, "test_loss": 1e-6, "mean_error": 1e-3,
        "max_abs_error": 2e-3, "epochs": 3, "wall_time_s": 5.0, "samples_per_s": 1e4})  # fmt: skip
    text = write_report(tmp_path / "sin")[0].read_text()
    assert _rows(text, "sin")[0][:6] == ["`sin`", "complete", "3", "1.00e-03", "—", "2.00e-03"]
    assert "test acc %" not in text
    assert (tmp_path / "sin" / "report_files" / "sin_fit.png").is_file()


def test_script_quiet_prints_nothing_and_output_dir_is_where_the_report_goes(tmp_path, capsys):
    study_dir = fake_study(tmp_path, "e_batchnorm")
    out = tmp_path / "elsewhere"
    assert _cli.run(report_script.main, [str(study_dir), "--output-dir", str(out), "-q"]) == 0
    assert capsys.readouterr().out == ""
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    assert not (study_dir / "report.md").exists()


def test_a_run_report_written_elsewhere_names_each_evaluations_wrong_images(tmp_path):
    """`report.py RUN --output-dir OUT` copied two evaluations' wrong.png as
    `report_files/wrong.png` and `wrong_.png`: which split was which? They are named as
    the confusion matrices and per-class bars beside them are."""
    _evaluated_run(tmp_path / "r", ["fake-test", "fake-val"])
    report, _ = write_report(tmp_path / "r", tmp_path / "elsewhere")
    files = sorted(p.name for p in (report.parent / "report_files").glob("wrong*"))
    assert files == ["wrong_fake-test.png", "wrong_fake-val.png"]
    assert "](report_files/wrong_fake-val.png)" in report.read_text()


def test_a_mostly_unfinished_study_names_a_few_runs_and_counts_the_rest(tmp_path, caplog):
    """After `study.py a_grid --only ...` trained 2 of 60 runs, report.py (and study.py
    --report) printed one line naming all 58 others. It names the first few (interrupted
    ones first) and counts the rest; -q prints nothing but errors."""
    study_dir = fake_study(tmp_path, "a_grid")
    names = [r.name for r in get_study("a_grid").runs]
    for name in names[2:]:
        shutil.rmtree(study_dir / name)
    (study_dir / names[1] / "metrics.json").unlink()  # interrupted
    with caplog.at_level("WARNING", logger="kmnist_lab"):
        assert _cli.run(report_script.main, [str(study_dir)]) == 0
    said = (
        f"1 of 60 runs finished; 59 not yet: `{names[1]}` (incomplete), `{names[2]}` (missing), "
        f"`{names[3]}` (missing) and 56 more (see the report's table). "
        "`python scripts/study.py a_grid --dataset mnist_5k"
    )
    assert said in (study_dir / "report.md").read_text()
    [warning] = [r.getMessage() for r in caplog.records]
    assert said.replace("`", "") in warning, warning
    assert len(warning.replace(str(tmp_path), "")) < 300, warning  # was 1,400 characters
    caplog.clear()
    with caplog.at_level("WARNING", logger="kmnist_lab"):
        assert _cli.run(report_script.main, [str(study_dir), "-q"]) == 0
    assert caplog.records == []
    assert logging.getLogger("kmnist_lab").level == logging.NOTSET  # -q does not outlive main


@pytest.mark.parametrize(
    "file, text, said, drawn",
    [
        ("batches.csv", "garbage\n", "has no loss column (its header: garbage)", False),
        ("batches.csv", "garbage\nfoo\n", "has no loss column (its header: garbage)", False),
        ("batches.csv", "", "has no loss column (empty)", False),
        ("history.csv", "epoch,loss,accuracy\nx,y,z\n", "damaged rows: 1 of 1 (line 2: epoch 'x')",
         False),
        ("history.csv", "epoch,loss,accuracy\n1,0.5,0.8\n2,abc,0.9\n3,0.3,0.95\n",
         "damaged rows: 1 of 3 (line 3: loss 'abc')", True),
        ("batches.csv", "epoch,step,steps,loss\n1,1,1,0.5\n1,2,1\n1,3,1,0.4,9\n1,4,1,0.3\n",
         "damaged rows: 2 of 4 (line 3: fewer cells than the header)", True),
    ],
)  # fmt: skip
def test_a_damaged_csv_log_is_named_and_its_readable_rows_drawn(
    tmp_path, caplog, monkeypatch, file, text, said, drawn
):
    """A batches.csv holding "garbage" gave an empty figure, one with a row under that
    header a KeyError traceback, a history.csv of text an empty figure: all exit 0, no
    word of it. The file is named with what is wrong, on stderr and in the report, which
    draws the rows it can read (a figure of none is left out) and is written still."""
    fake_run(tmp_path / "r", 0)
    path = tmp_path / "r" / file
    path.write_text(text)
    seen = {}

    def spy(name):
        original = getattr(plots, name)

        def drawn_from(logs, *args, **kwargs):
            seen[name] = {k: plots.read_csv(v) for k, v in logs.items()}
            return original(logs, *args, **kwargs)

        return drawn_from

    for name in ("batch_losses", "learning_curves"):
        monkeypatch.setattr(plots, name, spy(name))
    with caplog.at_level("WARNING", logger="kmnist_lab"):
        assert _cli.run(report_script.main, [str(tmp_path / "r")]) == 0
    consequence = "its other rows are drawn" if drawn else "left out of the figures"
    assert [r.getMessage() for r in caplog.records] == [f"{path}: {said}; {consequence}"]
    report = (tmp_path / "r" / "report.md").read_text()
    assert f"**Damaged files.** `r/{file}`: {said}; {consequence}." in report
    figure = {"batches.csv": "batch_losses", "history.csv": "learning_curves"}[file]
    if drawn:  # only the readable rows, every value a number
        [rows] = seen[figure].values()
        assert len(rows["loss"]) == 2 and not np.isnan(rows["loss"]).any()
    else:
        assert figure not in seen
    stem = {"batches.csv": "r_iterations.png", "history.csv": "r_epochs.png"}[file]
    assert (tmp_path / "r" / "report_files" / stem).is_file() == drawn
    assert (tmp_path / "r" / "report.html").is_file()


def test_a_diverged_runs_nan_losses_and_an_epoch_without_validation_are_not_damage(
    tmp_path, caplog
):
    fake_run(tmp_path / "r", 0)
    (tmp_path / "r" / "history.csv").write_text(
        "epoch,loss,accuracy,val_loss,val_accuracy\n1,0.5,0.8,,\n2,nan,0.1,inf,0.1\n"
    )
    (tmp_path / "r" / "batches.csv").write_text("epoch,step,steps,loss\n1,1,1,0.5\n2,1,1,nan\n")
    with caplog.at_level("WARNING", logger="kmnist_lab"):
        text = write_report(tmp_path / "r")[0].read_text()
    assert not caplog.records and "Damaged" not in text


@pytest.mark.parametrize(
    "text, said, left",
    [
        ('{"status": "complete", "test_acc', "is not valid JSON", "its numbers"),
        ("", "is not valid JSON", "its numbers"),
        ("[0.9, 0.3]", "holds a JSON list, not an object", "its numbers"),
        ('{"test_accuracy": "high", "test_loss": 0.3, "wall_time_s": [1]}',
         'has values that are not numbers: test_accuracy "high", wall_time_s [1]', "them"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("kind", ["run", "study"])
def test_a_damaged_metrics_json_is_named_not_shown_as_missing_numbers(
    tmp_path, caplog, kind, text, said, left
):
    """A run folder whose metrics.json was cut short showed "—" in the table (a list, or a
    number in quotes, a ValueError traceback), with no word of it: the — of a run not
    finished yet. It is named with what is wrong, on stderr and in the report, as a
    damaged CSV log is; the numbers it does hold are shown."""
    if kind == "run":
        fake_run(tmp_path / "r", 0)
        folder = tmp_path / "r"
    else:
        folder = tiny_study(tmp_path, [{"name": "r"}, {"name": "ok"}])
    path = folder / "r" if kind == "study" else folder
    (path / "metrics.json").write_text(text)
    with caplog.at_level("WARNING", logger="kmnist_lab"):
        assert _cli.run(report_script.main, [str(folder)]) == 0
    told = f"{said}; the table shows — for {left}"
    assert [r.getMessage() for r in caplog.records] == [f"{path / 'metrics.json'}: {told}"]
    report = (folder / "report.md").read_text()
    assert f"**Damaged files.** `r/metrics.json`: {told}." in report
    row = _rows(report, "r")[0]
    planned = "10" if kind == "study" else "—"  # the study's epochs; the run's config has none
    assert row[1:4] == ["complete", planned, "—"]  # no test accuracy
    assert ("0.300" in row) == (left == "them")  # the test loss it holds
    if kind == "study":  # the other run's numbers are all there
        assert "—" not in _rows(report, "ok")[0]


@pytest.mark.parametrize(
    "text, said",
    [
        ('{"accuracy": 0.9, "per_class_acc', "is not valid JSON"),
        ('{"accuracy": 0.9, "per_class_accuracy": "high"}',
         'has "per_class_accuracy": "high", not an object of class accuracies'),
        ('{"accuracy": 0.9, "per_class_accuracy": {"0": 0.9, "1": "x"}}',
         "has per-class accuracies that are not numbers: 1"),
        ('{"accuracy": 0.9, "per_class_accuracy": {"0": 0.9, "1": 0.8}, '
         '"confusion_matrix": [[1, 0]]}',
         "has no 2 x 2 confusion matrix of numbers for its 2 classes"),
        ('{"accuracy": "0.9", "per_class_accuracy": {"0": 0.9, "1": 0.8}, '
         '"confusion_matrix": [[1, 0], [0, 1]]}', 'has "accuracy": "0.9", not a number'),
    ],
)  # fmt: skip
def test_a_damaged_evaluation_json_is_named_and_left_out(tmp_path, caplog, text, said):
    """evaluate.py's evaluation.json and a study run's evaluation_train.json, damaged:
    each was a traceback (or a figure of nothing); now it is named on stderr and in the
    report, which leaves it out and shows the rest."""
    fake_run(tmp_path / "r", 0)  # evaluation_test.json and evaluation_train.json
    (tmp_path / "r" / "evaluation_train.json").write_text(text)
    (tmp_path / "r" / "evaluation" / "fake-val").mkdir(parents=True)
    (tmp_path / "r" / "evaluation" / "fake-val" / "evaluation.json").write_text(text)
    with caplog.at_level("WARNING", logger="kmnist_lab"):
        assert _cli.run(report_script.main, [str(tmp_path / "r")]) == 0
    told = f"{said}; the report leaves it out"
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'r' / 'evaluation_train.json'}: {told}",
        f"{tmp_path / 'r' / 'evaluation' / 'fake-val' / 'evaluation.json'}: {told}",
    ]
    report = (tmp_path / "r" / "report.md").read_text()
    assert f"`r/evaluation_train.json`: {told}" in report
    assert f"`fake-val/evaluation.json`: {told}" in report
    assert "Per-class accuracy on the test split" in report  # the sound test evaluation
    assert "Evaluation fake-val" not in report


def test_a_run_without_metrics_json_yet_is_unfinished_not_damaged(tmp_path, caplog):
    fake_run(tmp_path / "r", 0, complete=False)
    with caplog.at_level("WARNING", logger="kmnist_lab"):
        text = write_report(tmp_path / "r")[0].read_text()
    assert not caplog.records and "Damaged" not in text
    assert _rows(text, "r")[0][1:4] == ["incomplete", "—", "—"]


@pytest.mark.parametrize(
    "config, found",
    [
        ({"config": {"arch": "mlp"}, "dataset": "mnist"},
         'its config.json has "dataset": "mnist", not an object'),
        ({"config": {"arch": "mlp"}, "dataset": None},
         'its config.json has "dataset": null, not an object'),
        ({"config": {"arch": "mlp"}, "dataset": ["mnist", 1]},
         'its config.json has "dataset": ["mnist", 1], not an object'),
        ({"config": {"arch": "mlp"}, "dataset": {"name": 3}},
         'its config.json\'s "dataset" has "name": 3, not a string'),
        ({"config": {"arch": "mlp", "dataset": {"name": "mnist"}}},
         'its config.json\'s "config" has "dataset": {"name": "mnist"}, not a string'),
        ({"config": {"arch": "mlp", "epochs": "ten"}},
         'its config.json\'s "config" has "epochs": "ten", not a positive integer'),
        ({"config": {"arch": "mlp", "epochs": True}},
         'its config.json\'s "config" has "epochs": true, not a positive integer'),
        ({"config": {"arch": "mlp"}, "dataset": ["mnist"] * 10},  # cut short
         'its config.json has "dataset": ["mnist", "mnist", "mnist",..., not an object'),
    ],
)  # fmt: skip
def test_a_config_json_whose_fields_have_other_types_is_refused_not_a_traceback(
    tmp_path, capsys, config, found
):
    """A config.json whose "dataset" was a string or null gave report.py an AttributeError
    traceback; a dataset name or planned epochs of another type went into the report as
    they were. Such a folder is not what train.py writes: refused as one whose "config"
    is missing, saying what the field holds and what it should be, before anything is
    written."""
    run = tmp_path / "r"
    fake_run(run, 0)
    (run / "config.json").write_text(json.dumps(config))
    before = sorted(p.name for p in run.iterdir())
    assert _cli.run(report_script.main, [str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.split(": error: ", 1)[1] == (
        f"{run} is not a kmnist_lab run folder: {found}; report a folder that "
        "scripts/train.py or scripts/study.py wrote"
    ), err
    assert sorted(p.name for p in run.iterdir()) == before


def test_a_config_json_of_an_older_run_without_the_dataset_object_is_reported(tmp_path):
    """The checked fields may be absent: the dataset's name is read from "config" then."""
    run = tmp_path / "r"
    fake_run(run, 0)
    runs.atomic_write_json(run / "config.json", {"config": {"dataset": "mnist", "epochs": 3}})
    text = write_report(run)[0].read_text()
    assert "dataset mnist;" in text and _rows(text, "r")[0][2] == "3"


@pytest.mark.parametrize("record", ['{"study": 5}', "{bad", '{"study": {"runs": ["r"]}}'])
def test_a_run_beside_a_study_json_of_another_shape_is_reported_on_its_own(tmp_path, record):
    """A run whose folder's parent holds a study.json that study.py did not write (a
    `"study"` number) gave report.py an AttributeError traceback: the run is reported
    without a study's numbers, as one outside any study."""
    fake_run(tmp_path / "r", 0)
    (tmp_path / "study.json").write_text(record)
    text = write_report(tmp_path / "r")[0].read_text()
    assert "Part of study" not in text and _rows(text, "r")[0][1] == "complete"
