"""Scripts end to end on tiny data, and every bad input: exit code 2, one line, no traceback."""

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import _cli
import evaluate as evaluate_script
import numpy as np
import pytest
import train as train_script
from conftest import make_images
from helpers import write_idx_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_idx_dataset(tmp_path_factory.mktemp("data"), n_train=100, n_test=40)


@pytest.fixture(scope="module")
def trained_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    argv = ["--arch", "bn_mlp", "--dataset", "kmnist", "--data-dir", str(data_dir), "--epochs", "2",
            "--batch-size", "16", "--output-dir", str(out), "--run-name", "r", "-q"]  # fmt: skip
    assert _cli.run(train_script.main, argv) == 0
    return out / "r"


def _one_line_error(capsys, code, expected_code=2, match=None):
    err = capsys.readouterr().err.strip()
    assert code == expected_code, err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err and "error:" in err
    if match:
        assert match in err, err
    return err


def test_train_writes_a_complete_run(trained_run, capsys):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["dataset"] == "kmnist"
    assert (trained_run / "saved_model" / "saved_model.pb").is_file()


def test_evaluate_writes_report_and_matches_training_metrics(trained_run, data_dir, capsys):
    assert _cli.run(evaluate_script.main, [str(trained_run)]) == 0
    out = capsys.readouterr().out
    assert "per-class accuracy" in out and "macro avg" in out
    report = json.loads(
        (trained_run / "evaluation" / "kmnist-test" / "evaluation.json").read_text()
    )
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert report["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-5)
    assert report["cross_entropy"] == pytest.approx(metrics["test_loss"], abs=1e-4)
    assert np.array(report["confusion_matrix"]).sum() == 40
    for fig in ("confusion.png", "per_class.png"):
        assert (trained_run / "evaluation" / "kmnist-test" / fig).stat().st_size > 1000
    # -q: the accuracy line and where the files went, as train.py's -q gives one line.
    assert _cli.run(evaluate_script.main, [str(trained_run), "-q"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and out[0].startswith("kmnist test: accuracy "), out
    assert out[1].startswith("wrote ") and out[1].endswith("kmnist-test"), out


def test_evaluate_naming_the_run_own_dataset_reads_the_run_data_dir(trained_run, tmp_path, capsys):
    """`--dataset kmnist` on a run trained on kmnist changes nothing: the run's --data-dir
    still applies (kmnist can be read from nowhere else)."""
    argv = [str(trained_run), "--dataset", "kmnist", "--output-dir", str(tmp_path)]
    assert _cli.run(evaluate_script.main, argv) == 0, capsys.readouterr().err
    assert "kmnist test: accuracy" in capsys.readouterr().out


def test_evaluate_warns_when_the_dataset_is_not_the_one_trained_on(
    trained_run, data_dir, tmp_path, capsys
):
    """Scoring a model on another dataset is allowed (transfer), but it says so."""
    same = [str(trained_run), "--dataset", "kmnist", "--data-dir", str(data_dir),
            "--output-dir", str(tmp_path / "same")]  # fmt: skip
    assert _cli.run(evaluate_script.main, same) == 0
    assert "warning" not in capsys.readouterr().err
    other = [str(trained_run / "saved_model"), "--dataset", "mnist", "--data-dir", str(data_dir),
             "--output-dir", str(tmp_path / "other")]  # fmt: skip
    assert _cli.run(evaluate_script.main, other) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warnings) == 1, captured.err
    assert warnings[0].startswith("evaluate.py: warning: the model was trained on kmnist")
    assert "evaluated on mnist (--dataset mnist)" in warnings[0]
    assert "mnist test: accuracy" in captured.out  # and it was evaluated all the same
    assert json.loads((tmp_path / "other" / "evaluation.json").read_text())["dataset"] == "mnist"


def test_a_refused_transfer_evaluation_is_one_error_line_without_the_warning(
    trained_run, data_dir, tmp_path, capsys
):
    """The transfer warning is printed only once the model has been scored: a model
    that cannot be loaded gives the one error line alone."""
    import shutil

    run = tmp_path / "r"
    shutil.copytree(trained_run, run)
    (run / "saved_model" / "saved_model.pb").write_bytes(b"not a SavedModel")
    argv = [str(run), "--dataset", "mnist", "--data-dir", str(data_dir)]
    code = _cli.run(evaluate_script.main, argv)
    err = _one_line_error(capsys, code, match="cannot load SavedModel")
    assert "warning" not in err


def test_evaluate_split_val_is_the_validation_split_the_run_trained_with(
    trained_run, data_dir, tmp_path, capsys
):
    """`--split val` scores the run's own validation images (its config's seed and
    fraction) into evaluation/kmnist-val, as scoring them directly does."""
    import shutil

    from kmnist_lab.data import load_dataset
    from kmnist_lab.evaluation import load_saved_model, predict_scores, score

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("evaluation"))
    record = json.loads((run / "config.json").read_text())
    record["config"].update(seed=5, val_fraction=0.3)
    (run / "config.json").write_text(json.dumps(record))
    assert _cli.run(evaluate_script.main, [str(run), "--split", "val"]) == 0
    assert "kmnist val: accuracy" in capsys.readouterr().out
    result = json.loads((run / "evaluation" / "kmnist-val" / "evaluation.json").read_text())
    x, y = load_dataset("kmnist", data_dir, val_fraction=0.3, seed=5).val
    expected = score(y, predict_scores(load_saved_model(run), x), [str(i) for i in range(10)])
    assert (result["split"], result["n"]) == ("val", 30)
    assert (result["seed"], result["val_fraction"]) == (5, 0.3)  # what made the split
    assert result["cross_entropy"] == pytest.approx(expected["cross_entropy"], rel=1e-6)
    assert result["confusion_matrix"] == expected["confusion_matrix"]


def _copy_run(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("evaluation"))
    return run


def test_evaluate_refuses_another_split_of_the_runs_own_training_images(
    trained_run, data_dir, tmp_path, capsys
):
    """`--split val --seed 3` re-split the run's training images: its "val" held images
    the run trained on and scored higher, into the run's own evaluation/kmnist-val.
    A --seed or --val-fraction other than the run's is refused on its own dataset."""
    from kmnist_lab.data import load_dataset

    run = _copy_run(trained_run, tmp_path)
    config = json.loads((run / "config.json").read_text())["config"]
    assert (config["seed"], config["val_fraction"]) == (0, None)  # kmnist's 1/12
    # The leak the refusal prevents: seed 3's validation images are training images of
    # the run's split (seed 0).
    x_train = load_dataset("kmnist", data_dir, seed=0).train[0]
    x_val_3 = load_dataset("kmnist", data_dir, seed=3).val[0]
    trained = {img.tobytes() for img in x_train}
    assert sum(img.tobytes() in trained for img in x_val_3) >= len(x_val_3) // 2

    run_split = "seed 0 and val_fraction 0.0833333 (the kmnist default)"
    cases = {
        ("--split", "val", "--seed", "3"): (
            f"the run split kmnist's training images with {run_split}; "
            "--seed 3 would split them differently, so --split val would include images the "
            "run trained on: drop --seed to score the run's own val split"
        ),
        ("--split", "train", "--val-fraction", "0.3", "--seed", "0"): (
            f"the run split kmnist's training images with {run_split}; "
            "--val-fraction 0.3 would split them differently, so --split train would include "
            "the run's validation images and leave out some it trained on: drop "
            "--val-fraction to score the run's own train split"
        ),
        ("--split", "val", "--dataset", "kmnist", "--seed", "1", "--val-fraction", "0.5"): (
            "--seed 1 and --val-fraction 0.5 would split them differently, so --split val "
            "would include images the run trained on: drop --seed and --val-fraction"
        ),
    }
    for flags, message in cases.items():
        code = _cli.run(evaluate_script.main, [str(run), *flags])
        assert message in _one_line_error(capsys, code).split(": error: ", 1)[1]
    assert not (run / "evaluation").exists()  # the honest result is never overwritten

    # The run's own values are its split: scored, and recorded.
    argv = [str(run), "--split", "val", "--seed", "0", "--val-fraction", str(1 / 12)]
    assert _cli.run(evaluate_script.main, argv) == 0, capsys.readouterr().err
    assert "kmnist val: accuracy" in capsys.readouterr().out
    result = json.loads((run / "evaluation" / "kmnist-val" / "evaluation.json").read_text())
    assert result["seed"] == 0 and result["val_fraction"] == pytest.approx(1 / 12, rel=1e-12)
    sizes = json.loads((run / "config.json").read_text())["dataset"]["sizes"]
    assert result["n"] == sizes["val"] == 10
    # No flags: the same split, the same numbers.
    first = result
    assert _cli.run(evaluate_script.main, [str(run), "--split", "val"]) == 0
    result = json.loads((run / "evaluation" / "kmnist-val" / "evaluation.json").read_text())
    assert result["confusion_matrix"] == first["confusion_matrix"]
    assert (result["seed"], result["val_fraction"]) == (0, first["val_fraction"])


def test_evaluate_refuses_split_flags_with_split_test(trained_run, data_dir, tmp_path, capsys):
    """The test split is fixed: --seed and --val-fraction would be ignored, so they are
    refused as other flags that do not apply are, with a run or a bare SavedModel."""
    run = _copy_run(trained_run, tmp_path)
    bare = [str(run / "saved_model"), "--dataset", "kmnist", "--data-dir", str(data_dir)]
    cases = {
        (str(run), "--seed", "0"): (
            "--seed 0 would be ignored: it only chooses which training "
            "images form the validation split, and --split test scores the fixed test split; "
            "drop it"
        ),
        (*bare, "--seed", "7", "--val-fraction", "0.2"): (
            "--seed 7 and --val-fraction 0.2 would be ignored: they only "
            "choose which training images form the validation split, and --split test scores "
            "the fixed test split; drop them"
        ),
    }
    for argv, message in cases.items():
        code = _cli.run(evaluate_script.main, list(argv))
        assert _one_line_error(capsys, code).split(": error: ", 1)[1] == message
    assert not (run / "evaluation").exists() and not (tmp_path / "evaluation").exists()
    # Without them: scored, with the splits' seed and fraction recorded.
    assert _cli.run(evaluate_script.main, [str(run)]) == 0
    result = json.loads((run / "evaluation" / "kmnist-test" / "evaluation.json").read_text())
    assert result["seed"] == 0 and result["val_fraction"] == pytest.approx(1 / 12)


def test_evaluate_a_bare_saved_model_takes_any_split_and_records_it(
    trained_run, data_dir, tmp_path, capsys
):
    """A SavedModel outside a run has no split to compare with: --seed/--val-fraction
    make the split asked for, as before, and evaluation.json records them."""
    import shutil

    from kmnist_lab.data import load_dataset
    from kmnist_lab.evaluation import load_saved_model, predict_scores, score

    shutil.copytree(trained_run / "saved_model", tmp_path / "export" / "sm")
    argv = [str(tmp_path / "export" / "sm"), "--dataset", "kmnist", "--data-dir", str(data_dir),
            "--split", "val", "--seed", "3", "--val-fraction", "0.2"]  # fmt: skip
    assert _cli.run(evaluate_script.main, argv) == 0, capsys.readouterr().err
    path = tmp_path / "export" / "evaluation" / "kmnist-val" / "evaluation.json"
    result = json.loads(path.read_text())
    assert (result["seed"], result["val_fraction"]) == (3, 0.2)
    assert result["run_complete"] is None  # no run to be finished or not
    x, y = load_dataset("kmnist", data_dir, val_fraction=0.2, seed=3).val
    scores = predict_scores(load_saved_model(tmp_path / "export" / "sm"), x)
    expected = score(y, scores, [str(i) for i in range(10)])
    assert result["n"] == 20 and result["confusion_matrix"] == expected["confusion_matrix"]


def test_default_val_fraction_is_the_one_load_dataset_uses(data_dir):
    from kmnist_lab.data import load_dataset
    from kmnist_lab.evaluation import default_val_fraction

    for name, where in (("kmnist", data_dir), ("mnist_5k", None)):
        default = load_dataset(name, where, seed=4)
        explicit = load_dataset(name, where, default_val_fraction(name), seed=4)
        np.testing.assert_array_equal(default.val[1], explicit.val[1])
        np.testing.assert_array_equal(default.val[0], explicit.val[0])
    assert len(load_dataset("mnist_5k").val[1]) == 500  # its 4000/500 split


def _capture_figures(monkeypatch):
    """`plots.save` records each figure by file name (and still writes it)."""
    from kmnist_lab import plots

    figures, save = {}, plots.save

    def record(fig, path, *args, **kwargs):
        figures[Path(path).name] = fig
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(plots, "save", record)
    return figures


def test_evaluate_on_another_dataset_names_predictions_by_the_models_classes(
    trained_run, data_dir, tmp_path, monkeypatch, capsys
):
    """A kmnist model scored on MNIST predicts kmnist's classes: the confusion
    matrix's predicted axis names them (o, ki, ...), its true axis MNIST's digits."""
    from kmnist_lab.data import DIGITS, KUZUSHIJI

    figures = _capture_figures(monkeypatch)
    argv = [str(trained_run), "--dataset", "mnist", "--data-dir", str(data_dir),
            "--output-dir", str(tmp_path / "other")]  # fmt: skip
    assert _cli.run(evaluate_script.main, argv) == 0, capsys.readouterr().err
    ax = figures["confusion.png"].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(KUZUSHIJI)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(DIGITS)
    assert ax.get_xlabel() == "predicted class (the model's)"
    result = json.loads((tmp_path / "other" / "evaluation.json").read_text())
    assert result["predicted_class_names"] == list(KUZUSHIJI)
    assert list(result["per_class_accuracy"]) == list(DIGITS)  # true labels: MNIST's
    # (This model makes no mistakes here, so wrong.png's captions, named the same way,
    # are checked with write_report below.)
    # On its own dataset both axes carry the same names, as before.
    figures.clear()
    argv = [str(trained_run), "--output-dir", str(tmp_path / "own")]
    assert _cli.run(evaluate_script.main, argv) == 0
    ax = figures["confusion.png"].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(KUZUSHIJI)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(KUZUSHIJI)
    assert ax.get_xlabel() == "predicted class"


def test_write_report_captions_wrong_images_with_the_models_class_names(tmp_path, monkeypatch):
    """An MNIST model's 8 on a Fashion-MNIST Bag is "pred 8", not "pred Bag"."""
    from kmnist_lab.data import DIGITS, FASHION
    from kmnist_lab.evaluation import score, write_report

    figures = _capture_figures(monkeypatch)
    y = np.array([8, 0, 1])
    scores = np.zeros((3, 10))
    scores[0, 8] = scores[1, 3] = scores[2, 1] = 5.0  # right, wrong (3), right
    result = score(y, scores, FASHION)
    x = np.zeros((3, 28, 28), np.uint8)
    write_report(result, x, FASHION, tmp_path, predicted_class_names=DIGITS)
    (caption,) = [ax.get_title() for ax in figures["wrong.png"].axes if ax.get_title()]
    confidence = result["most_confident_wrong"][0]["confidence"]
    assert caption == f"true {FASHION[0]}\npred 3 {confidence:.2f}"
    ax = figures["confusion.png"].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(DIGITS)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(FASHION)
    # Default: the data's names on both axes and in the captions.
    write_report(result, x, FASHION, tmp_path / "same")
    (caption,) = [ax.get_title() for ax in figures["wrong.png"].axes if ax.get_title()]
    assert caption.startswith(f"true {FASHION[0]}\npred {FASHION[3]} ")
    with pytest.raises(ValueError, match="9 predicted class names for 10 classes"):
        write_report(result, x, FASHION, tmp_path / "bad", predicted_class_names=DIGITS[:9])


def test_evaluate_on_another_dataset_names_report_rows_by_both_classes(
    trained_run, data_dir, tmp_path, capsys
):
    """A kmnist model scored on MNIST: row k of the classification report holds the
    recall of MNIST's k and the precision of the model's predictions of its class k,
    so it is named by both ("3 (pred tsu)"), in evaluation.json and as printed. On its
    own dataset the rows keep the class names alone."""
    from kmnist_lab.data import DIGITS, KUZUSHIJI

    argv = [str(trained_run), "--dataset", "mnist", "--data-dir", str(data_dir),
            "--output-dir", str(tmp_path / "other")]  # fmt: skip
    assert _cli.run(evaluate_script.main, argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "other" / "evaluation.json").read_text())
    rows = [f"{digit} (pred {kana})" for digit, kana in zip(DIGITS, KUZUSHIJI)]
    assert list(result["classification_report"])[:10] == rows
    for row in rows:
        assert row in result["classification_report_text"] and row in printed
    argv = [str(trained_run), "--output-dir", str(tmp_path / "own")]
    assert _cli.run(evaluate_script.main, argv) == 0
    result = json.loads((tmp_path / "own" / "evaluation.json").read_text())
    assert list(result["classification_report"])[:10] == list(KUZUSHIJI)
    assert "(pred" not in result["classification_report_text"]


def test_score_names_report_rows_by_the_true_and_the_predicted_class():
    """An MNIST model on Fashion-MNIST: the row "Bag (pred 8)" has the precision of its
    predictions of 8 (how many were Bags) and the recall of Bags (how many it called 8)."""
    from kmnist_lab.data import DIGITS, FASHION
    from kmnist_lab.evaluation import score

    y = np.array([8, 8, 0, 1])
    scores = np.zeros((4, 10))
    scores[0, 8] = scores[1, 3] = scores[2, 8] = scores[3, 1] = 5.0
    report = score(y, scores, FASHION, predicted_class_names=DIGITS)["classification_report"]
    bag = report["Bag (pred 8)"]
    assert (bag["precision"], bag["recall"], bag["support"]) == (0.5, 0.5, 2)
    assert list(report)[:3] == ["T-shirt/top (pred 0)", "Trouser (pred 1)", "Pullover (pred 2)"]
    # Its own classes (given or not): the names alone.
    for same in (FASHION, None):
        report = score(y, scores, FASHION, predicted_class_names=same)["classification_report"]
        assert list(report)[:10] == list(FASHION)


@pytest.mark.parametrize("state", ["stopped", "running"])
def test_evaluate_scores_an_unfinished_run_with_a_warning(trained_run, tmp_path, capsys, state):
    """A run folder with saved_model/ but no metrics.json stopped (or is still busy)
    between its export, which follows its last epoch, and metrics.json, written last:
    it is scored all the same, with one warning saying so, and evaluation.json
    records that the run is not complete. A finished run gets neither."""
    from kmnist_lab.runs import RunLock

    assert (
        _cli.run(evaluate_script.main, [str(trained_run), "--output-dir", str(tmp_path / "done")])
        == 0
    )
    assert "warning" not in capsys.readouterr().err
    assert json.loads((tmp_path / "done" / "evaluation.json").read_text())["run_complete"] is True
    run = _copy_run(trained_run, tmp_path)
    (run / "metrics.json").unlink()
    (run / "status.json").write_text(json.dumps({"status": "interrupted"}))
    argv = [str(run), "--output-dir", str(tmp_path / "out")]
    if state == "running":
        with RunLock(run):  # as train.py holds it while it runs
            code = _cli.run(evaluate_script.main, argv)
    else:
        code = _cli.run(evaluate_script.main, argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "kmnist test: accuracy" in captured.out  # scored all the same
    (warning,) = [line for line in captured.err.splitlines() if "warning" in line]
    assert warning.startswith(f"evaluate.py: warning: {run} has no metrics.json")
    expected = {
        "stopped": "its training stopped after exporting saved_model/ (after its last epoch) "
        "and before writing metrics.json",
        "running": "its training is still running, in the steps after its last epoch",
    }[state]
    assert expected in warning, warning
    if state == "stopped":
        assert warning.endswith("re-run its training command to complete it"), warning
    assert json.loads((tmp_path / "out" / "evaluation.json").read_text())["run_complete"] is False
    # A refused command says only why: the warning comes once nothing can be refused.
    code = _cli.run(evaluate_script.main, [str(run), "--seed", "3"])
    _one_line_error(capsys, code, match="--seed 3 would be ignored")


def test_per_class_figure_has_a_legend_only_for_several_series(tmp_path, monkeypatch):
    """evaluate.py's per_class.png draws one series, which its title names: a legend
    would repeat the title. Several series (runs, splits) are told apart by one."""
    from kmnist_lab import plots
    from kmnist_lab.evaluation import score, write_report

    figures = _capture_figures(monkeypatch)
    y = np.array([0, 1, 2])
    scores = np.eye(3) * 5.0
    write_report(score(y, scores, list("abc")), np.zeros((3, 28, 28), np.uint8), list("abc"),
                 tmp_path, title="(kmnist test)")  # fmt: skip
    ax = figures["per_class.png"].axes[0]
    assert ax.get_title() == "Per-class accuracy (kmnist test)"
    assert ax.get_legend() is None
    several = plots.per_class_accuracy({"run a": [1, 0.5], "run b": [0.5, 1]}, ["x", "y"])
    legend = several.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["run a", "run b"]


def test_model_class_names_come_from_the_run(tmp_path):
    from kmnist_lab.data import DIGITS, FASHION
    from kmnist_lab.evaluation import model_class_names

    recorded = {"dataset": {"name": "kmnist", "class_names": list("abcdefghij")}}
    assert model_class_names(recorded) == tuple("abcdefghij")
    # An older config without them, a search's best_model/: the trained-on dataset's.
    assert model_class_names({"config": {"dataset": "fashion_mnist"}}) == FASHION
    assert model_class_names({"dataset": {"name": "mnist_5k"}}) == DIGITS
    assert model_class_names({"config": {"dataset": "auto"}}) == DIGITS
    assert model_class_names({}) is None  # a SavedModel outside a run: unknown
    assert model_class_names({"dataset": "mnist"}) is None  # damaged: unknown, no traceback
    assert model_class_names({"dataset": {"name": 5}, "config": []}) is None


def test_evaluate_a_saved_model_outside_a_run_writes_beside_it(trained_run, data_dir, tmp_path):
    import shutil

    shutil.copytree(trained_run / "saved_model", tmp_path / "export" / "sm")
    argv = [str(tmp_path / "export" / "sm"), "--dataset", "kmnist", "--data-dir", str(data_dir)]
    assert _cli.run(evaluate_script.main, argv) == 0
    assert (tmp_path / "export" / "evaluation" / "kmnist-test" / "evaluation.json").is_file()


@pytest.mark.parametrize("dataset", ['"kmnist"', "null", "[1, 2]"])
def test_evaluate_refuses_a_run_whose_config_json_is_not_trainings(
    trained_run, data_dir, tmp_path, capsys, dataset
):
    """A run folder's config.json with a `"dataset"` that is no object is refused with
    what is wrong (no traceback); its saved_model/ passed on its own is still scored."""
    import shutil

    run = tmp_path / "r"
    shutil.copytree(trained_run / "saved_model", run / "saved_model")
    config = json.loads((trained_run / "config.json").read_text())
    text = json.dumps(config).replace(json.dumps(config["dataset"]), dataset, 1)
    (run / "config.json").write_text(text)
    code = _cli.run(evaluate_script.main, [str(run)])
    err = _one_line_error(capsys, code, match="is not a kmnist_lab run folder")
    assert f'has "dataset": {json.dumps(json.loads(dataset))}, not an object' in err
    assert str(run / "saved_model") in err
    argv = [str(run / "saved_model"), "--dataset", "kmnist", "--data-dir", str(data_dir)]
    assert _cli.run(evaluate_script.main, argv) == 0
    assert (run / "evaluation" / "kmnist-test" / "evaluation.json").is_file()


def test_evaluate_names_a_bad_dataset_or_val_fraction_in_the_runs_config_json(
    trained_run, tmp_path, capsys
):
    """A hand-edited config.json: a misspelt dataset is an unknown name with a guess (not
    "arrays of its own"), and a val_fraction train.py would refuse is named as the
    file's (before, 0 gave an empty split and "the model outputs 0 classes")."""
    run = _copy_run(trained_run, tmp_path)
    original = json.loads((run / "config.json").read_text())
    for field, value, message in [
        ("dataset", "kmnist_", "names dataset 'kmnist_', which is not one of"),
        ("val_fraction", 0, "has val_fraction 0; it must be in (0, 1)"),
        ("val_fraction", 2.5, "has val_fraction 2.5; it must be in (0, 1)"),
    ]:
        edited = json.loads(json.dumps(original))
        edited["config"][field] = value
        (run / "config.json").write_text(json.dumps(edited))
        code = _cli.run(evaluate_script.main, [str(run), "--split", "val"])
        err = _one_line_error(capsys, code, match=message)
        assert str(run / "config.json") in err
        if field == "dataset":
            assert "Did you mean 'kmnist'?" in err and "arrays of its own" not in err


def test_evaluate_a_path_that_does_not_exist_says_what_it_takes(tmp_path, capsys):
    code = _cli.run(evaluate_script.main, [str(tmp_path / "nope")])
    _one_line_error(capsys, code, match="does not exist; pass a run folder (holding saved_model/)")


def test_evaluate_refuses_a_run_folder_that_lost_its_config_json(
    trained_run, data_dir, tmp_path, capsys
):
    """Without config.json, evaluate.py cannot know the run's data: it says so rather
    than scoring on `auto` (a Fashion-MNIST model on MNIST digits, silently)."""
    import shutil

    run = tmp_path / "r"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("evaluation"))
    (run / "config.json").unlink()
    code = _cli.run(evaluate_script.main, [str(run)])
    err = _one_line_error(capsys, code, match="has a metrics.json but no config.json")
    assert str(run / "saved_model") in err
    assert not (run / "evaluation").exists()


def test_evaluate_on_another_dataset_does_not_read_the_runs_data_dir(
    trained_run, tmp_path, monkeypatch, capsys
):
    """The run's --data-dir holds kmnist: `--dataset mnist` looks for MNIST elsewhere
    (here it is nowhere: an error) rather than scoring kmnist's files as MNIST."""
    from kmnist_lab import data

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("KMNIST_LAB_NO_DOWNLOAD", "1")
    monkeypatch.setitem(data._DEBIAN_DIRS, "mnist", str(tmp_path / "none"))
    argv = [str(trained_run), "--dataset", "mnist", "--output-dir", str(tmp_path / "out")]
    code = _cli.run(evaluate_script.main, argv)
    _one_line_error(capsys, code, match="mnist not found in")
    assert not (tmp_path / "out").exists()


def test_evaluate_refuses_a_saved_model_without_the_serve_signature(data_dir, tmp_path, capsys):
    import tensorflow as tf

    module = tf.Module()
    module.other = tf.function(
        lambda pixels: {"scores": tf.zeros([tf.shape(pixels)[0], 10])},
        input_signature=[tf.TensorSpec(None, tf.float32, name="pixels")],
    )
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"other": module.other})
    argv = [str(tmp_path / "sm"), "--dataset", "kmnist", "--data-dir", str(data_dir)]
    code = _cli.run(evaluate_script.main, argv)
    _one_line_error(capsys, code, match="has no `serve` signature (it has ['other'])")


def test_evaluate_refuses_a_model_with_another_number_of_classes(data_dir, tmp_path, capsys):
    import keras

    from kmnist_lab.export import export_saved_model

    inputs = keras.Input((28, 28, 1))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    export_saved_model(model, tmp_path / "sm")
    argv = [str(tmp_path / "sm"), "--dataset", "kmnist", "--data-dir", str(data_dir)]
    code = _cli.run(evaluate_script.main, argv)
    _one_line_error(capsys, code, match="the model outputs 3 classes but kmnist has 10")


def test_savedmodel_in_fresh_process_with_tensorflow_only(trained_run, data_dir, tmp_path):
    """A new interpreter that imports only TensorFlow predicts what Keras predicted."""
    from kmnist_lab.data import load_dataset
    from kmnist_lab.models import load_keras_model

    x = load_dataset("kmnist", data_dir=data_dir).test[0]
    np.save(tmp_path / "x.npy", x)
    expected = load_keras_model(trained_run / "model.keras").predict(x, verbose=0)
    code = (
        "import sys, numpy as np, tensorflow as tf\n"
        f"m = tf.saved_model.load({str(trained_run / 'saved_model')!r})\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        "out = m.signatures['serve'](pixels=tf.constant(x, tf.float32))\n"
        f"np.save({str(tmp_path / 'scores.npy')!r}, out['scores'].numpy())\n"
        "assert 'kmnist_lab' not in sys.modules, 'served without our code'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    served = np.load(tmp_path / "scores.npy")
    np.testing.assert_array_equal(served.argmax(1), expected.argmax(1))
    np.testing.assert_allclose(served, expected, atol=1e-5, rtol=1e-5)


def test_saved_model_cli_lists_the_serve_signature(trained_run):
    cli = subprocess.run(
        [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "show", "--all",
         "--dir", str(trained_run / "saved_model")],  # fmt: skip
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "signature_def['serve']" in cli.stdout and "signature_def['serve_uint8']" in cli.stdout


def test_existing_run_is_refused_without_overwrite(trained_run, data_dir, capsys):
    before = (trained_run / "metrics.json").read_text()
    argv = ["--arch", "bn_mlp", "--dataset", "kmnist", "--data-dir", str(data_dir), "--epochs", "2",
            "--batch-size", "16", "--output-dir", str(trained_run.parent), "--run-name", "r", "-q"]  # fmt: skip
    _one_line_error(capsys, _cli.run(train_script.main, argv), match="--overwrite")
    assert (trained_run / "metrics.json").read_text() == before


@pytest.mark.parametrize(
    "param, match",
    [
        ("dropout=1.5", "`dropout` must be a number in [0, 1). Received: dropout=1.5"),
        ("init_std=-1", "`init_std` must be a positive number"),
        ("augment=3", "`augment` must be true or false"),
        ("hidden=[64]", "does not take hidden"),
    ],
)
def test_bad_model_param_is_reported_before_the_finished_run(
    param, match, trained_run, data_dir, capsys
):
    """The bad value is the error to fix first: refusing the finished run instead hides
    it until the user has passed --overwrite or a new --run-name."""
    argv = ["--arch", "bn_mlp", "--dataset", "kmnist", "--data-dir", str(data_dir), "--epochs", "2",
            "--batch-size", "16", "--output-dir", str(trained_run.parent), "--run-name", "r", "-q",
            "--model-param", param]  # fmt: skip
    err = _one_line_error(capsys, _cli.run(train_script.main, argv), match=match)
    assert "finished run" not in err


def test_dataset_auto_names_the_run_after_the_dataset_it_found(tmp_path, monkeypatch, capsys):
    """As tune.py's and study.py's folders: `auto` is not a dataset, what it found is."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    write_idx_dataset(tmp_path / "keras" / "datasets", n_train=120, n_test=20)
    out = tmp_path / "runs"
    argv = ["--arch", "bn_mlp", "--dataset", "auto", "--epochs", "1", "--batch-size", "16",
            "--output-dir", str(out), "--no-export", "-q"]  # fmt: skip
    assert _cli.run(train_script.main, argv) == 0
    assert [p.name for p in out.iterdir()] == ["bn_mlp_mnist_ce_s0"]
    recorded = json.loads((out / "bn_mlp_mnist_ce_s0" / "config.json").read_text())
    assert recorded["config"]["dataset"] == "mnist" and recorded["config"]["run_name"] == (
        "bn_mlp_mnist_ce_s0"
    )
    assert recorded["dataset"]["name"] == "mnist" and recorded["dataset"]["requested"] == "auto"
    capsys.readouterr()
    # The same command finds its run again (and would resume it, had it been killed).
    code = _cli.run(train_script.main, argv)
    _one_line_error(capsys, code, match="bn_mlp_mnist_ce_s0 already holds a finished run")


@pytest.mark.parametrize(
    "arch, params, match",
    [
        ("mlp", {"hidden": [0]}, "`hidden` must be a non-empty list of positive widths"),
        ("mlp", {"activation": "swish2"}, "`activation` must be one of"),
        ("mlp", {"batchnorm": "yes"}, "`batchnorm` must be true or false"),
        ("relu_mlp", {"l2": -0.1}, "`l2` must be a finite number >= 0"),
        ("resnet18", {"activation": "gelu"}, "`activation` must be one of relu, sigmoid, tanh"),
        ("residual_cnn", {"augment": "no"}, "`augment` must be true or false"),
    ],
)
def test_train_config_checks_model_param_values_without_building(arch, params, match):
    from kmnist_lab.config import TrainConfig
    from kmnist_lab.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(match)):
        TrainConfig(arch=arch, model_params=params)
    TrainConfig(arch=arch, model_params={k: None for k in params})  # None: the default


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--epochs", "0"], "--epochs: must be a positive integer"),
        (["--epochs", "-3"], "--epochs"),
        (["--epochs", "ten"], "--epochs"),
        (["--batch-size", "0"], "--batch-size"),
        (["--lr", "nan"], "--lr: must be a positive finite number"),
        (["--lr", "0"], "--lr: must be a positive finite number"),
        (["--lr", "fast"], "--lr: must be a positive finite number"),
        (["--arch", "vgg16"], "invalid choice: 'vgg16' (choose from"),  # no close name
        (["--arch", "bnmlp"], "invalid choice: 'bnmlp'. Did you mean 'bn_mlp'? (choose from"),
        (["--epoch", "2"], "unrecognized arguments: --epoch 2. Did you mean '--epochs'? (see"),
        (["--dataset", "cifar10"], "invalid choice: 'cifar10'"),
        (["--optimizer", "sgdx"], "invalid choice"),
        (["--loss", "l1"], "invalid choice"),
        (["--arch", "mlp", "--activation", "swish2"], "--activation: invalid choice: 'swish2'"),
        (["--val-fraction", "1.5"], "--val-fraction"),
        (["--backend", "numpy"], "--backend must be one of"),
        (["--loss-param", "margin"], "KEY=VALUE"),
        (["--arch", "bn_mlp", "--hidden", "64"], "does not take hidden"),
        (["--loss", "ce", "--loss-param", "margin=0.2"], "margin"),
        (["--optimizer", "adam", "--momentum", "0.5"], "momentum"),
        (["--dataset", "kmnist"], "--data-dir only"),
        # Splitting the CPU changes nothing for a run on one device.
        (["--cpu-devices", "2"], "--cpu-devices 2 splits the CPU for --distribute data-parallel"),
        (["--cpu-devices", "2", "--distribute", "none"], "(distribute none)"),
    ],
)
def test_bad_train_arguments_exit_2_with_one_line(argv, match, capsys, tmp_path):
    argv = (
        argv + ["--output-dir", str(tmp_path), "--epochs", "1"] if "--epochs" not in argv else argv
    )
    code = _cli.run(train_script.main, argv + ["--output-dir", str(tmp_path)])
    _one_line_error(capsys, code, match=match)


def test_study_list_with_a_name_and_a_run_flag_is_refused_and_lists_nothing(capsys):
    """`NAME --list` lists that study's runs and trains none: a run flag beside it would
    be ignored. Without one it lists the runs; without NAME, the studies."""
    import study as study_script

    code = _cli.run(study_script.main, ["a_models", "--list", "--quick"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "", captured.out
    assert captured.err.strip().splitlines() == [
        "study.py: error: --list lists the runs of a_models and trains none, so --quick would "
        "be ignored; drop --list to run a_models with it (see --help)"
    ]
    assert _cli.run(study_script.main, ["a_models", "--list"]) == 0
    assert capsys.readouterr().out.split()[:3] == ["plain_mlp", "model", "plain_mlp"]
    assert _cli.run(study_script.main, ["--list"]) == 0
    assert "a_models" in capsys.readouterr().out


def test_a_missing_required_flag_lists_its_choices(capsys):
    """`tune.py` alone says which spaces --space takes; a positional without choices
    (evaluate.py's path) gets argparse's message as it is."""
    import tune as tune_script

    from tuning import list_spaces

    code = _cli.run(tune_script.main, [])
    err = _one_line_error(capsys, code, match="the following arguments are required: --space")
    assert f"(--space one of: {', '.join(list_spaces())})" in err
    code = _cli.run(evaluate_script.main, [])
    err = _one_line_error(capsys, code)
    assert err == "evaluate.py: error: the following arguments are required: path (see --help)"


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--dataset", "fashion_mnist"], "--dataset"),
        (["--quick"], "--quick"),
        (["--only", "bs128_*", "--no-export"], "--only, --no-export"),
        (["--epochs-scale", "0.5", "--report"], "--epochs-scale, --report"),
    ],
)
def test_study_list_with_run_flags_is_refused_and_names_them(flags, named, capsys):
    """--list runs nothing, so a flag that only changes how a study runs would be ignored."""
    import study as study_script

    code = _cli.run(study_script.main, ["--list", *flags])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "", captured.out
    assert captured.err.strip().splitlines() == [
        f"study.py: error: --list lists every study and runs none, so {named} would be "
        "ignored; drop --list to run a study with them (see --help)"
    ]


@pytest.mark.parametrize(
    "script, argv",
    [
        ("train", ["--back", "torch"]),  # would train on the auto backend, not torch
        ("train", ["--arc", "resnet18"]),  # would pick bn_mlp's backend
        ("train", ["--conf", "run/config.json"]),
        ("tune", ["--space", "mlp", "--back", "jax"]),
        ("study", ["e_sweeps", "--back", "jax"]),
    ],
)
def test_abbreviated_flags_are_refused(script, argv, capsys):
    # The backend is chosen from argv before argparse runs, and only from full flag names.
    module = __import__(script)
    with pytest.raises(SystemExit) as exit_info:
        module.build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"unrecognized arguments: {argv[-2]}" in err, err


def test_corrupt_data_file_is_named(tmp_path, capsys):
    d = write_idx_dataset(tmp_path / "d")
    (d / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    code = _cli.run(
        train_script.main,
        ["--dataset", "kmnist", "--data-dir", str(d), "--output-dir", str(tmp_path)],
    )
    _one_line_error(capsys, code, match="train-images-idx3-ubyte")


def test_malformed_config_file(tmp_path, capsys):
    (tmp_path / "c.json").write_text('{"arch": "bn_mlp", "epochs": ')
    code = _cli.run(train_script.main, ["--config", str(tmp_path / "c.json")])
    _one_line_error(capsys, code, match="cannot read config file")


@pytest.mark.parametrize("make", ["empty_dir", "missing", "file"])
def test_evaluate_refuses_what_is_not_a_saved_model(tmp_path, capsys, make):
    target = tmp_path / "thing"
    if make == "empty_dir":
        target.mkdir()
    elif make == "file":
        target.write_text("hello")
    code = _cli.run(evaluate_script.main, [str(target)])
    _one_line_error(capsys, code, match=str(target))


def test_help_lists_registries_and_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_script.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "per-architecture defaults" in out and "resnet18" in out and "mnist_5k" in out


def test_help_gives_the_weight_decay_default_adamw_trains_with(capsys):
    """--help said `--weight-decay` defaults to none, while adamw decays at 0.004 without it."""
    from kmnist_lab.optimizers import optimizer_defaults

    with pytest.raises(SystemExit):
        train_script.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    decay = optimizer_defaults("adamw")["weight_decay"]
    assert f"adamw's {decay:g}" in out and "default none)" not in out


@pytest.mark.parametrize(
    "argv, env, expected",
    [
        (["--arch", "bn_mlp"], {}, "jax"),
        (["--arch=relu_mlp"], {}, "jax"),
        ([], {}, "jax"),  # the default arch, bn_mlp
        (["--arch", "resnet18"], {}, "tensorflow"),
        (["--arch", "residual_cnn", "--backend", "auto"], {}, "tensorflow"),
        (["--arch", "bn_mlp", "--backend", "torch"], {}, "torch"),
        (["--arch", "bn_mlp"], {"KERAS_BACKEND": "tensorflow"}, "tensorflow"),  # env wins
        (["--arch", "bn_mlp", "--backend", "auto"], {"KERAS_BACKEND": "torch"}, "jax"),
    ],
)
def test_auto_backend_is_picked_per_arch_before_keras_loads(argv, env, expected):
    """train.py's default: the fastest measured backend for --arch (kmnist_lab.config.FAST_BACKEND)."""
    import importlib.util
    import os
    from pathlib import Path

    if expected == "jax" and importlib.util.find_spec("jax") is None:
        expected = "tensorflow"  # auto falls back when the jax extra is missing
    scripts = Path(__file__).resolve().parents[1] / "scripts"
    code = (f"import sys; sys.path.insert(0, {str(scripts)!r}); import _cli; "
            f"b = _cli.select_backend({argv!r}, auto=True); "
            "assert 'keras' not in sys.modules; print(b)")  # fmt: skip
    clean = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env},
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert out.stdout.strip() == expected


@pytest.mark.parametrize(
    "flags, env, expected",
    [
        ([], {}, "torch"),  # the run's own backend, though auto would pick jax for bn_mlp
        ([], {"KERAS_BACKEND": "tensorflow"}, "torch"),  # the file is more specific than env
        (["--backend", "tensorflow"], {}, "tensorflow"),  # a flag overrides the file
    ],
)
def test_a_config_file_reruns_on_its_recorded_backend(flags, env, expected, tmp_path):
    import json
    import os
    from pathlib import Path

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"config": {"arch": "bn_mlp", "backend": "torch"}}))
    argv = ["--config", str(config), *flags]
    scripts = Path(__file__).resolve().parents[1] / "scripts"
    code = (f"import sys; sys.path.insert(0, {str(scripts)!r}); import _cli; "
            f"print(_cli.select_backend({argv!r}, auto=True))")  # fmt: skip
    clean = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env},
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert out.stdout.strip() == expected


def test_auto_backend_falls_back_to_tensorflow(monkeypatch):
    import importlib.util

    from kmnist_lab.config import FAST_BACKEND, auto_backend

    assert set(FAST_BACKEND) >= {"bn_mlp", "relu_mlp", "plain_mlp", "residual_cnn", "resnet18"}
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n: None if n == "jax" else real(n))
    assert auto_backend("bn_mlp") == "tensorflow"
    assert auto_backend("no_such_arch") == "tensorflow"


def test_config_file_neither_inherits_overwrite_nor_pins_the_derived_run_name(tmp_path):
    """`--config RUN/config.json --seed 1` must not replace RUN (recorded `overwrite: true`)
    nor write a seed-1 run into RUN's `..._s0` folder; a chosen --run-name is kept."""
    from kmnist_lab.config import TrainConfig

    recorded = TrainConfig(arch="bn_mlp", dataset="mnist_5k", epochs=1, overwrite=True,
                           output_dir=str(tmp_path)).resolved()  # fmt: skip
    assert recorded.run_name == "bn_mlp_mnist_5k_ce_s0"
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"config": recorded.to_dict(), "backend": "tensorflow"}))

    def parse(*flags):
        args = train_script.build_parser().parse_args(["--config", str(path), *flags])
        return train_script.config_from_args(args).resolved()

    cfg = parse("--seed", "1")
    assert cfg.overwrite is False
    assert cfg.run_name == "bn_mlp_mnist_5k_ce_s1" and cfg.seed == 1
    assert parse().run_name == "bn_mlp_mnist_5k_ce_s0"  # a plain re-run targets the same run
    assert parse("--overwrite").overwrite is True
    custom = {**recorded.to_dict(), "run_name": "mine"}
    path.write_text(json.dumps({"config": custom}))
    assert parse("--seed", "1").run_name == "mine"
    # A recorded switch can be turned off again on the command line.
    path.write_text(json.dumps({"config": {**custom, "precise_bn": True}}))
    assert parse().precise_bn is True and parse("--no-precise-bn").precise_bn is False


def test_a_config_files_chosen_run_name_kept_for_another_dataset_is_warned_about(tmp_path, caplog):
    """A search's best_train_config.json names its run (`..._best`); `--dataset` of
    another dataset trains into that folder's name, which train.py says (once), and a
    --run-name or an unchanged dataset says nothing."""
    from kmnist_lab.config import TrainConfig

    chosen = TrainConfig(arch="bn_mlp", dataset="mnist_5k", epochs=1, run_name="s_best",
                         output_dir=str(tmp_path)).resolved()  # fmt: skip
    path = tmp_path / "best_train_config.json"
    path.write_text(json.dumps({"config": chosen.to_dict()}))

    def warnings(*flags):
        caplog.clear()
        args = train_script.build_parser().parse_args(["--config", str(path), *flags])
        cfg = train_script.config_from_args(args).resolved()
        return cfg, [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]

    cfg, said = warnings("--dataset", "fashion_mnist")
    assert cfg.run_name == "s_best" and len(said) == 1
    assert said[0].startswith("--dataset fashion_mnist: the run keeps the config file's run name")
    assert "'s_best'" in said[0] and "--run-name" in said[0]
    assert warnings("--dataset", "mnist_5k")[1] == []  # the file's own dataset
    assert warnings("--dataset", "auto")[1] == []  # MNIST or mnist_5k, whichever is there
    assert warnings("--epochs", "3")[1] == []
    cfg, said = warnings("--dataset", "fashion_mnist", "--run-name", "fm")
    assert cfg.run_name == "fm" and said == []


def test_cpu_devices_splits_the_cpu_before_the_backend_initialises(tmp_path):
    """`train.py --cpu-devices 2 --distribute data-parallel` must give training two devices
    (README: try --distribute on a CPU); building the parser used to initialise TensorFlow
    first."""
    import os
    from pathlib import Path

    scripts = Path(__file__).resolve().parents[1] / "scripts"
    code = (
        f"import sys; sys.path.insert(0, {str(scripts)!r}); import train; "
        "import kmnist_lab.training as t; from kmnist_lab.distribute import device_count; "
        "t.train = lambda cfg: (print('devices', device_count()), sys.exit(0)); "
        "train.main(['--cpu-devices', '2', '--distribute', 'data-parallel', "
        "'--backend', 'tensorflow', '-q'])"
    )
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert "devices 2" in out.stdout, out.stdout + out.stderr[-2000:]


def test_scripts_on_jax_cache_compiled_programs(tmp_path):
    """`_cli.select_backend` turns on JAX's persistent cache, every program included; a
    user's own setting wins; TensorFlow runs are left alone."""
    import os
    from pathlib import Path

    pytest.importorskip("jax")
    scripts = Path(__file__).resolve().parents[1] / "scripts"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "KERAS_"))}

    def run(argv, **env):
        code = (f"import sys, os; sys.path.insert(0, {str(scripts)!r}); import _cli; "
                f"b = _cli.select_backend({argv!r}); "
                "print(os.environ.get('JAX_COMPILATION_CACHE_DIR'))\n"
                "if b == 'jax':\n"
                "    import jax, jax.numpy as jnp\n"
                "    jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3)).block_until_ready()")  # fmt: skip
        out = subprocess.run([sys.executable, "-c", code], env={**clean, **env},
                             capture_output=True, text=True, check=True)  # fmt: skip
        return out.stdout.strip().splitlines()[-1]

    cache = tmp_path / "kmnist_lab" / "jax"
    assert run(["--backend", "jax"], XDG_CACHE_HOME=str(tmp_path)) == str(cache)
    assert any(cache.iterdir())  # a sub-second compile was written
    own = tmp_path / "own"
    assert run(["--backend", "jax"], JAX_COMPILATION_CACHE_DIR=str(own)) == str(own)
    assert run(["--backend", "tensorflow"], XDG_CACHE_HOME=str(tmp_path / "tf")) == "None"


def test_no_jax_cache_folder_without_a_home(monkeypatch):
    """With no home directory, `os.path.expanduser("~")` returns "~": the cache folder
    would be `./~/.cache/kmnist_lab/jax` in the working directory. It stays off instead;
    an absolute $XDG_CACHE_HOME still works, a relative one (invalid per XDG) is ignored."""
    import os

    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(os.path, "expanduser", lambda path: path)  # no home to expand
    _cli.jax_compilation_cache()
    assert "JAX_COMPILATION_CACHE_DIR" not in os.environ
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    _cli.jax_compilation_cache()
    assert "JAX_COMPILATION_CACHE_DIR" not in os.environ
    monkeypatch.setenv("XDG_CACHE_HOME", "/var/cache/me")
    _cli.jax_compilation_cache()
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == "/var/cache/me/kmnist_lab/jax"


def test_the_test_sessions_jax_cache_folder_is_removed(tmp_path):
    """conftest.py gives each test session a JAX cache folder of its own in the temp
    directory; it goes when the session ends (each full run left one behind)."""
    import os
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    (tmp_path / "test_one.py").write_text("def test_one():\n    pass\n")
    (tmp_path / "conftest.py").write_text((tests / "conftest.py").read_text())
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    temp = tmp_path / "temp"
    temp.mkdir()
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    str(tmp_path / "test_one.py")], env={**env, "TMPDIR": str(temp)},
                   cwd=tmp_path, capture_output=True, text=True, check=True, timeout=120)  # fmt: skip
    assert list(temp.glob("kmnist_lab_jax_cache_*")) == []


@pytest.mark.parametrize(
    ("resumable", "expected"),
    [(True, "interrupted; re-run the same command to resume"), (False, "interrupted")],
)
def test_ctrl_c_exits_130_and_offers_a_resume_only_where_one_exists(resumable, expected, capsys):
    """train/study/tune resume on a re-run; evaluate/report/benchmark just stop."""

    def interrupted(argv):
        raise KeyboardInterrupt

    code = _cli.run(interrupted, [], resumable=resumable)
    err = _one_line_error(capsys, code, expected_code=130)
    assert err.endswith(f"error: {expected}"), err


def test_config_file_rederives_the_defaults_a_run_recorded(tmp_path):
    """config.json records resolved defaults (Adam's lr 0.001): `--config RUN/config.json
    --optimizer lion` must train at Lion's default lr as `--optimizer lion` does
    (docs/optimizers.md), and `--arch` must bring its own defaults; explicit values stay."""
    from kmnist_lab.config import TrainConfig

    path = tmp_path / "config.json"

    def parse(recorded, *flags):
        path.write_text(json.dumps({"config": recorded.to_dict(), "backend": "tensorflow"}))
        args = train_script.build_parser().parse_args(["--config", str(path), *flags])
        return train_script.config_from_args(args).resolved()

    run = TrainConfig(arch="bn_mlp", dataset="mnist_5k", epochs=1).resolved()
    assert (run.optimizer, run.lr, run.batch_size) == ("adam", 0.001, 128)
    assert parse(run, "--optimizer", "lion").lr == pytest.approx(1e-4)
    assert parse(run, "--optimizer", "adadelta").lr == pytest.approx(1.0)
    assert parse(run).lr == pytest.approx(0.001) and parse(run).epochs == 1
    assert parse(run, "--arch", "resnet18").batch_size == 64
    sgd = TrainConfig(arch="bn_mlp", dataset="mnist_5k", optimizer="sgd").resolved()
    assert parse(sgd, "--optimizer", "lion").lr == pytest.approx(1e-4)
    explicit = TrainConfig(arch="bn_mlp", dataset="mnist_5k", lr=0.05, batch_size=32).resolved()
    chosen = parse(explicit, "--optimizer", "lion", "--arch", "resnet18")
    assert (chosen.lr, chosen.batch_size) == (0.05, 32)


def test_every_train_flag_sets_its_config_field(tmp_path):
    """Each option of train.py reaches the TrainConfig it builds (a flag missing from the
    mapping would be parsed, then silently ignored)."""
    argv = ["--arch", "mlp", "--dataset", "mnist_5k", "--data-dir", str(tmp_path),
            "--val-fraction", "0.25", "--loss", "focal", "--l2", "0.01", "--no-augment",
            "--epochs", "4", "--batch-size", "32", "--lr", "0.02", "--optimizer", "sgdm",
            "--momentum", "0.5", "--weight-decay", "0.001", "--lr-schedule", "step",
            "--warmup-epochs", "2", "--seed", "3", "--run-name", "r1",
            "--output-dir", str(tmp_path / "out"), "--overwrite", "--jit", "off",
            "--precision", "mixed", "--steps-per-execution", "2", "--input-pipeline",
            "iterator", "--tensorboard", "--no-export", "--precise-bn", "--hidden", "8", "4",
            "--activation", "tanh", "--dropout", "0.25", "-q"]  # fmt: skip
    cfg = train_script.config_from_args(train_script.build_parser().parse_args(argv))
    expected = dict(
        arch="mlp", dataset="mnist_5k", data_dir=str(tmp_path), val_fraction=0.25, loss="focal",
        l2=0.01, augment=False, epochs=4, batch_size=32, lr=0.02, optimizer="sgdm",
        momentum=0.5, weight_decay=0.001, lr_schedule="step", warmup_epochs=2, seed=3,
        run_name="r1", output_dir=str(tmp_path / "out"), overwrite=True, jit="off",
        precision="mixed", steps_per_execution=2, input_pipeline="iterator", tensorboard=True,
        export=False, precise_bn=True, verbose=0,
        model_params={"hidden": [8, 4], "activation": "tanh", "dropout": 0.25},
    )  # fmt: skip
    assert {k: getattr(cfg, k) for k in expected} == expected
    args = train_script.build_parser().parse_args(["--distribute", "data-parallel", "-q"])
    assert train_script.config_from_args(args).distribute == "data-parallel"


def test_cpu_devices_counts_the_distribute_of_a_config_file(tmp_path, monkeypatch, capsys):
    """`--cpu-devices` needs a data-parallel run: `--config` saying so is one, and a
    `--distribute none` on the command line overrides the file."""
    import kmnist_lab.distribute

    class Split(Exception):
        pass

    def split_cpu(n):
        raise Split(n)

    monkeypatch.setattr(kmnist_lab.distribute, "split_cpu", split_cpu)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"config": {"arch": "bn_mlp", "distribute": "data-parallel"}}))
    argv = ["--config", str(path), "--cpu-devices", "2", "-q"]
    with pytest.raises(Split):
        train_script.main(argv)
    with pytest.raises(SystemExit):
        train_script.main([*argv, "--distribute", "none"])
    assert "--cpu-devices 2 splits the CPU" in capsys.readouterr().err


def test_a_null_model_param_means_the_archs_default_even_over_a_config_file(tmp_path):
    """`--model-param K=null` drops a value `--config` gave, so the builder's default
    applies: `mlp` with activation=null is ReLU again (activation=linear is none)."""
    from kmnist_lab.config import TrainConfig
    from kmnist_lab.training import build_for_config

    recorded = TrainConfig(arch="mlp", dataset="mnist_5k", epochs=1, output_dir=str(tmp_path),
                           model_params={"hidden": [8], "activation": "tanh"})  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"config": recorded.resolved().to_dict()}))

    def activation_of(*flags):
        args = train_script.build_parser().parse_args(["--config", str(path), *flags])
        model, _ = build_for_config(train_script.config_from_args(args).resolved(), 10)
        return model.get_layer("act1").get_config()["activation"]

    assert activation_of() == "tanh"
    assert activation_of("--model-param", "activation=null") == "relu"
    assert activation_of("--model-param", "activation=linear") == "linear"


def test_a_new_loss_optimizer_or_arch_does_not_inherit_the_old_ones_keywords(tmp_path, caplog):
    """`--config RUN/config.json --loss ce` of an AM-Softmax run failed with "Unknown
    parameter(s) margin for loss 'ce'", a keyword the user never typed and could not
    remove; the same for --optimizer and --arch. The file's keywords now go with its
    component (and say so); the same component keeps them, and K=null drops one.
    Regression too: a file with `optimizer_params` failed on any command line ("`eta_plus`
    does not apply to optimizer 'adam'"), since re-deriving a defaulted optimizer raised."""
    from kmnist_lab.config import TrainConfig

    recorded = TrainConfig(
        arch="mlp", dataset="mnist_5k", epochs=1, output_dir=str(tmp_path), loss="am_softmax",
        loss_params={"margin": 0.3}, optimizer="rprop", optimizer_params={"eta_plus": 1.1},
        model_params={"hidden": [8]},
    ).resolved()  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"config": recorded.to_dict()}))

    def parse(*flags):
        args = train_script.build_parser().parse_args(["--config", str(path), *flags])
        cfg = train_script.config_from_args(args).resolved()
        return cfg.loss_params, cfg.optimizer_params, cfg.model_params

    kept = ({"margin": 0.3}, {"eta_plus": 1.1}, {"hidden": [8]})
    assert parse() == kept
    assert parse("--loss", "am_softmax", "--optimizer", "rprop", "--arch", "mlp") == kept
    with caplog.at_level(logging.INFO, logger="kmnist_lab"):
        assert parse("--loss", "ce") == ({}, *kept[1:])
    assert "--loss ce: not reusing the config file's loss_params {'margin': 0.3}" in caplog.text
    assert parse("--optimizer", "adam") == (kept[0], {}, kept[2])
    # momentum and weight decay are the optimizer's keywords too
    sgdm = {**recorded.to_dict(), "optimizer": "sgdm", "optimizer_params": {}, "momentum": 0.5}
    path.write_text(json.dumps({"config": sgdm}))
    args = train_script.build_parser().parse_args(["--config", str(path), "--optimizer", "adam"])
    assert train_script.config_from_args(args).resolved().momentum is None
    args = train_script.build_parser().parse_args(["--config", str(path)])
    assert train_script.config_from_args(args).resolved().momentum == 0.5
    path.write_text(json.dumps({"config": recorded.to_dict()}))
    assert parse("--arch", "bn_mlp") == (*kept[:2], {})
    assert parse("--loss-param", "margin=null", "--optimizer-param", "eta_plus=null") == (
        {}, {}, kept[2])  # fmt: skip
    assert parse("--loss", "ce", "--loss-param", "margin=null")[0] == {}


def test_a_null_model_param_drops_a_config_value_the_new_arch_does_not_take(tmp_path):
    """`--config MLP_RUN/config.json --arch bn_mlp --model-param hidden=null`: the null
    drops the file's `hidden` (bn_mlp takes none); it was refused as "does not take"."""
    from kmnist_lab.config import TrainConfig
    from kmnist_lab.training import build_for_config

    recorded = TrainConfig(arch="mlp", dataset="mnist_5k", epochs=1, output_dir=str(tmp_path),
                           model_params={"hidden": [8], "activation": "tanh"})  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"config": recorded.resolved().to_dict()}))
    flags = ["--arch", "bn_mlp", "--model-param", "hidden=null", "--model-param", "activation=null"]
    args = train_script.build_parser().parse_args(["--config", str(path), *flags])
    model, _ = build_for_config(train_script.config_from_args(args).resolved(), 10)
    assert [layer.units for layer in model.layers if hasattr(layer, "units")] == [512, 128, 10]


def test_a_config_files_data_dir_and_switches_give_way_to_the_command_line(tmp_path):
    """`--config RUN/config.json --dataset mnist_5k` of a run on `--data-dir` files kept
    that folder (and was refused: mnist_5k reads no files), and `--export`/`--no-tensorboard`
    did not exist to undo a recorded `--no-export`/`--tensorboard`."""
    from kmnist_lab.config import TrainConfig

    recorded = TrainConfig(dataset="fashion_mnist", data_dir=str(tmp_path), epochs=1,
                           export=False, tensorboard=True, output_dir=str(tmp_path))  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"config": recorded.resolved().to_dict()}))

    def config(*flags):
        args = train_script.build_parser().parse_args(["--config", str(path), *flags])
        return train_script.config_from_args(args)

    kept = config()
    assert (kept.data_dir, kept.export, kept.tensorboard) == (str(tmp_path), False, True)
    assert config("--dataset", "fashion_mnist").data_dir == str(tmp_path)  # the same dataset
    assert config("--dataset", "mnist_5k").data_dir is None
    assert config("--dataset", "mnist", "--data-dir", "elsewhere").data_dir == "elsewhere"
    switched = config("--export", "--no-tensorboard")
    assert (switched.export, switched.tensorboard) == (True, False)


def test_evaluate_says_when_the_runs_own_data_dir_is_gone(trained_run, data_dir, tmp_path, capsys):
    """A run whose data folder moved was refused as `--data-dir X does not exist`,
    naming a flag the user never passed; it names the run's config.json instead."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("evaluation"))
    record = json.loads((run / "config.json").read_text())
    record["config"]["data_dir"] = str(tmp_path / "moved")
    (run / "config.json").write_text(json.dumps(record))
    code = _cli.run(evaluate_script.main, [str(run)])
    err = _one_line_error(capsys, code, match=f"the run's data dir {tmp_path / 'moved'}")
    assert "(its config.json)" in err and "pass --data-dir" in err
    assert _cli.run(evaluate_script.main, [str(run), "--data-dir", str(data_dir)]) == 0
    # A search's best_model/ records its data in metrics.json, and the error names that.
    best = tmp_path / "best_model"
    shutil.copytree(trained_run / "saved_model", best / "saved_model")
    identity = {"space": "losses", "dataset": "kmnist", "data_dir": str(tmp_path / "moved"),
                "val_fraction": 0.1, "seed": 0}  # fmt: skip
    (best / "metrics.json").write_text(json.dumps({"identity": identity}))
    code = _cli.run(evaluate_script.main, [str(best)])
    err = _one_line_error(capsys, code, match=f"the run's data dir {tmp_path / 'moved'}")
    assert "(its metrics.json)" in err, err


def test_config_of_a_quick_study_run_warns_that_it_trained_on_a_subset(tmp_path, caplog):
    """A `study.py --quick` run trained on a few images its config.json does not hold
    (only `dataset.sizes` records them): `--config` of it says the new run uses them all."""
    from kmnist_lab.config import TrainConfig

    config = TrainConfig(arch="bn_mlp", dataset="mnist_5k", epochs=1).resolved().to_dict()
    sizes = {"train": 128, "val": 32, "test": 64}
    for quick in (True, False):
        run = tmp_path / f"quick_{quick}" / "a_models" / "bn_mlp"
        run.mkdir(parents=True)
        (run.parent / "study.json").write_text(json.dumps({"quick": quick}))
        (run / "config.json").write_text(
            json.dumps({"config": config, "dataset": {"name": "mnist_5k", "sizes": sizes}})
        )
        caplog.clear()
        args = train_script.build_parser().parse_args(["--config", str(run / "config.json")])
        with caplog.at_level(logging.WARNING, logger="kmnist_lab"):
            assert train_script.config_from_args(args).arch == "bn_mlp"
        warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        if quick:
            assert len(warned) == 1 and "`study.py --quick`" in warned[0], warned
            assert "(128 train / 32 val / 64 test images)" in warned[0]
        else:
            assert warned == []


def test_config_of_a_run_on_in_memory_arrays_warns_that_no_file_holds_them(tmp_path, caplog):
    """`training.train(cfg, dataset=from_arrays(..., name="pets"))` records the config's
    `dataset` (`auto`), not the arrays: `--config` of that run says it trains on `auto`."""
    from kmnist_lab.config import TrainConfig

    config = TrainConfig(arch="bn_mlp", epochs=1).resolved().to_dict()
    for origin in ("in-memory arrays", "/data/mnist"):
        path = tmp_path / f"{len(origin)}.json"
        dataset = {"name": "pets", "source": {"origin": origin, "files": {}}}
        path.write_text(json.dumps({"config": config, "dataset": dataset}))
        caplog.clear()
        args = train_script.build_parser().parse_args(["--config", str(path)])
        with caplog.at_level(logging.WARNING, logger="kmnist_lab"):
            assert train_script.config_from_args(args).dataset == "auto"
        warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        if origin == "in-memory arrays":
            assert len(warned) == 1 and "in-memory arrays ('pets'" in warned[0], warned
            assert "trains on --dataset auto instead" in warned[0]
        else:
            assert warned == []


def test_a_run_on_arrays_of_its_own_is_named_after_them_and_its_config_renames(tmp_path, caplog):
    """`train(cfg, dataset=from_arrays(..., name="my pets"))` with the default dataset
    `auto` writes `mlp_my_pets_ce_s0/` (the arrays' name, a space as `_`), not
    `mlp_auto_ce_s0/`; `--config` of that run, which trains on `auto`, derives its
    name again instead of writing into the arrays' folder. An explicit `run_name` and
    an explicit dataset other than `auto` keep their names."""
    from kmnist_lab.config import TrainConfig
    from kmnist_lab.data import from_arrays
    from kmnist_lab.training import train

    x, y = make_images(40, num_classes=3)
    dataset = from_arrays(x, y, x[:9], y[:9], name="my pets")
    common = dict(arch="mlp", model_params={"hidden": [4]}, epochs=1, batch_size=16,
                  output_dir=str(tmp_path), verbose=0, augment=False)  # fmt: skip
    run_dir = train(TrainConfig(**common), dataset=dataset, plots=False).run_dir
    assert run_dir == tmp_path / "mlp_my_pets_ce_s0"
    record = json.loads((run_dir / "config.json").read_text())
    assert record["config"]["run_name"] == "mlp_my_pets_ce_s0"
    assert record["config"]["dataset"] == "auto" and record["dataset"]["name"] == "my pets"
    args = train_script.build_parser().parse_args(["--config", str(run_dir / "config.json")])
    with caplog.at_level(logging.WARNING, logger="kmnist_lab"):
        assert train_script.config_from_args(args).run_name is None
    named = TrainConfig(**common, run_name="mine")
    assert train(named, dataset=dataset, plots=False).run_dir == tmp_path / "mine"
    explicit = TrainConfig(**common, dataset="kmnist")
    assert train(explicit, dataset=dataset, plots=False).run_dir == tmp_path / "mlp_kmnist_ce_s0"


@pytest.mark.parametrize("parse, accepted, refused", [
    (_cli.positive_int, ["1", "60"], ["0", "-1", "1.5", "ten"]),
    (_cli.nonneg_int, ["0", "3"], ["-1", "0.5"]),  # --workers 0, --warmup-epochs 0
    (_cli.positive_float, ["1e-4", "2"], ["0", "-0.1", "nan", "inf"]),
    (_cli.nonneg_float, ["0", "0.9"], ["-1e-9", "nan", "-inf"]),  # --dropout 0, --l2 0
    (_cli.fraction, ["0.001", "0.999"], ["0", "1", "1.5", "nan"]),
])  # fmt: skip
def test_number_arguments_take_their_bounds_and_refuse_values_past_them(parse, accepted, refused):
    import argparse

    for text in accepted:
        assert parse(text) == float(text)
    for text in refused:
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(repr(text))):
            parse(text)


def test_key_value_arguments_parse_json_values_and_keep_other_text():
    assert _cli.key_value("margin=0.35") == ("margin", 0.35)
    assert _cli.key_value("hidden=[64, 32]") == ("hidden", [64, 32])
    assert _cli.key_value("init-std=1e-2") == ("init_std", 0.01)
    assert _cli.key_value("activation=tanh") == ("activation", "tanh")
    assert _cli.key_value("expr=a=b") == ("expr", "a=b")  # split at the first '='
    with pytest.raises(Exception, match="KEY=VALUE"):
        _cli.key_value("margin")
    with pytest.raises(Exception, match="gamma must be finite"):
        _cli.key_value("gamma=1e999")


def test_flag_values_are_read_as_argparse_reads_them(tmp_path):
    """`select_backend` reads --backend/--arch/--config before argparse runs: both
    spellings, the last one winning, and nothing for a flag that merely starts alike."""
    from kmnist_lab.config import TrainConfig

    value = _cli._flag_value
    assert value(["--backend", "jax"], "--backend") == "jax"
    assert value(["--backend=torch"], "--backend") == "torch"
    assert value(["--backend", "jax", "--backend=torch"], "--backend") == "torch"
    assert value(["--backend=torch", "--backend", "jax"], "--backend") == "jax"
    assert value(["--backend"], "--backend") is None  # no value: argparse reports it
    assert value(["--backends", "jax", "--backend-x=1"], "--backend") is None
    nested, bare = tmp_path / "config.json", tmp_path / "bare.json"
    nested.write_text(json.dumps({"config": {"arch": "resnet18"}}))  # a run's config.json
    bare.write_text(json.dumps({"arch": "plain_mlp"}))
    assert _cli.peek_arch(["--config", str(nested)]) == "resnet18"
    assert _cli.peek_arch([f"--config={bare}"]) == "plain_mlp"
    assert _cli.peek_arch(["--config", str(nested), "--arch", "relu_mlp"]) == "relu_mlp"
    assert _cli.peek_arch(["--config", str(tmp_path / "missing.json")]) == TrainConfig.arch


def test_select_backend_names_a_bad_value_and_keeps_the_users_settings(
    tmp_path, monkeypatch, capsys
):
    import os

    import keras

    current = keras.backend.backend()
    monkeypatch.setenv("KERAS_BACKEND", current)
    with pytest.raises(SystemExit) as info:
        _cli.select_backend(["--backend", "numpy"], auto=True)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        "error: --backend must be one of tensorflow, jax, torch, auto. Received: 'numpy'"
    )
    # `auto` is train.py's (auto=True) only: study.py, tune.py and evaluate.py refused it
    # after listing it as valid.
    with pytest.raises(SystemExit) as info:
        _cli.select_backend(["--backend", "auto"])
    err = capsys.readouterr().err.strip()
    assert err.endswith("error: --backend must be one of tensorflow, jax, torch. Received: 'auto'")
    # A mistyped KERAS_BACKEND, which Keras' import would fail on with a traceback.
    for value, hint in (("Jax", " Did you mean 'jax'?"), ("pytorch", " Did you mean 'torch'?"),
                        ("foo", "")):  # fmt: skip
        monkeypatch.setenv("KERAS_BACKEND", value)
        with pytest.raises(SystemExit) as info:
            _cli.select_backend([])
        assert info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith(
            "error: KERAS_BACKEND must be one of tensorflow, jax, torch (or unset). "
            f"Received: KERAS_BACKEND={value!r}.{hint}"
        ), err
        # The flag decides where one is given.
        assert _cli.select_backend(["--backend", current]) == current
    monkeypatch.setenv("KERAS_BACKEND", current)
    # A config.json's backend that is none of ours is ignored, not an error.
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"config": {"arch": "bn_mlp", "backend": "numpy"}}))
    assert _cli.select_backend(["--config", str(config)]) == current
    # Keras is loaded: another backend cannot be had in this process.
    other = "torch" if current != "torch" else "tensorflow"
    with pytest.raises(SystemExit) as info:
        _cli.select_backend(["--backend", other])
    assert info.value.code == 2 and os.environ["KERAS_BACKEND"] == current
    assert f"already loaded with backend {current!r}" in capsys.readouterr().err
    # TensorFlow's log level: quiet by default, the user's own value kept.
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    _cli.select_backend([])
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    _cli.select_backend([])
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"


def test_jax_cache_defaults_leave_the_users_own_settings(monkeypatch):
    import os

    def settings():
        return tuple(os.environ.get(k) for k in (
            "JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"))  # fmt: skip

    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/mine/jax")
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "5")
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    _cli.jax_compilation_cache()
    assert settings() == ("/mine/jax", "5")
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")
    _cli.jax_compilation_cache()
    assert settings() == ("/xdg/kmnist_lab/jax", "0")
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", "/home/me")
    _cli.jax_compilation_cache()
    assert settings() == ("/home/me/.cache/kmnist_lab/jax", "0")
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # invalid per XDG: the home's
    _cli.jax_compilation_cache()
    assert settings() == ("/home/me/.cache/kmnist_lab/jax", "0")


def test_run_turns_user_errors_into_one_line_and_their_exit_code(capsys):
    from kmnist_lab.errors import ConfigError
    from kmnist_lab.training import DivergedError

    def raising(error):
        def main(argv):
            raise error

        return main

    code = _cli.run(raising(ConfigError("bad value\nmore detail")))
    assert _one_line_error(capsys, code).endswith("error: bad value")
    code = _cli.run(raising(DivergedError("non-finite loss")))
    assert _one_line_error(capsys, code, expected_code=3).endswith("error: non-finite loss")
    code = _cli.run(raising(ConfigError()))
    assert _one_line_error(capsys, code).endswith("error: ConfigError")
    assert _cli.run(raising(SystemExit(0))) == 0  # --help
    assert _cli.run(raising(SystemExit(None))) == 0  # a bare sys.exit(): success
    assert _cli.run(raising(SystemExit(2))) == 2  # argparse's usage error
    assert _cli.run(lambda argv: 0) == 0
    with pytest.raises(SystemExit) as info:
        _cli.fail("nope")
    assert info.value.code == 2 and capsys.readouterr().err.strip().endswith("error: nope")


def test_a_ctrl_c_dropped_before_training_began_still_stops_train_py(
    data_dir, tmp_path, monkeypatch, capsys, python_sigint
):
    """A Ctrl-C while train.py loaded its data raised its KeyboardInterrupt inside JAX's
    garbage-collection callback, where Python drops it ("Exception ignored in
    _xla_gc_callback"): the run trained to the end and exited 0. It must stop, exit 130
    and stay resumable."""
    import signal

    original = train_script.config_from_args

    def config_then_a_dropped_ctrl_c(args):
        config = original(args)
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass  # as a gc callback does
        return config

    monkeypatch.setattr(train_script, "config_from_args", config_then_a_dropped_ctrl_c)
    argv = ["--arch", "bn_mlp", "--dataset", "kmnist", "--data-dir", str(data_dir), "--epochs", "2",
            "--batch-size", "16", "--output-dir", str(tmp_path), "--run-name", "r", "-q",
            "--no-export"]  # fmt: skip
    code = _cli.run(train_script.main, argv)
    assert code == 130, capsys.readouterr().err
    assert not (tmp_path / "r" / "metrics.json").exists()
    assert json.loads((tmp_path / "r" / "status.json").read_text())["status"] == "interrupted"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_a_ctrl_c_dropped_outside_training_still_exits_130(capsys, python_sigint):
    """evaluate.py, report.py or a search's export have no training loop to stop at a
    recorded Ctrl-C whose KeyboardInterrupt a callback dropped: the command still ends
    as interrupted (130), not as a success."""
    import signal

    def work_with_a_dropped_ctrl_c(argv):
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass  # as a gc callback does
        return 0

    assert _cli.run(work_with_a_dropped_ctrl_c, resumable=False) == 130
    assert capsys.readouterr().err.strip().endswith("error: interrupted")
    assert _cli.run(lambda argv: 0) == 0  # the recorded Ctrl-C was forgotten after it
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_ctrl_c_dropped_in_a_callback_prints_no_traceback():
    """A recorded Ctrl-C whose KeyboardInterrupt Python drops in a callback (a `__del__`
    here, a weakref callback in tune.py) prints no "Exception ignored" traceback; any
    other dropped exception still does, and `uninstall` puts Python's hook back."""
    code = (
        "import signal, sys\n"
        "from kmnist_lab import interrupts\n"
        # Python's own handler, which a process started in the background lacks.
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "class Raises:\n"
        "    def __init__(self, error): self.error = error\n"
        "    def __del__(self): raise self.error\n"
        "assert interrupts.install()\n"
        "try:\n"
        "    signal.raise_signal(signal.SIGINT)\n"
        "except KeyboardInterrupt:\n"
        "    pass\n"
        "Raises(KeyboardInterrupt())\n"
        "Raises(ValueError('other'))\n"
        "interrupts.uninstall()\n"
        "assert sys.unraisablehook is sys.__unraisablehook__\n"
        "print('done')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "done", out.stderr
    assert "KeyboardInterrupt" not in out.stderr, out.stderr
    assert out.stderr.count("Exception ignored") == 1 and "ValueError: other" in out.stderr


@pytest.mark.parametrize(
    "script, argv",
    [
        ("train", ["--arch", "bn_mlp", "--model-param", "widht=3"]),
        ("tune", ["--space", "losses", "--project-name", "a/b"]),
    ],
)
def test_bad_options_print_one_line_even_without_quiet(script, argv, tmp_path, capsys, caplog):
    """The README's convention (one stderr line, exit 2) holds without -q too: the
    "Keras backend: X" progress line is logged only after the options were checked."""
    import importlib

    caplog.set_level(logging.INFO)  # the log records, as a run without -q emits them
    main = importlib.import_module(script).main
    code = _cli.run(main, [*argv, "--output-dir" if script == "train" else "--directory",
                           str(tmp_path)])  # fmt: skip
    _one_line_error(capsys, code)
    assert caplog.messages == []


def test_train_gives_residual_cnn_one_batch_shard_per_core_by_default(data_dir, tmp_path):
    """A fresh `train.py` process on TensorFlow and a CPU: residual_cnn trains its
    batches of 64 as one shard per core (at least 32 samples each), TensorFlow's
    threads set for them before it started; `--batch-shards 1` turns them off."""
    pytest.importorskip("tensorflow")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one shard per core is 1 shard on one core: the default would not show")
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    # 64 samples, at least 32 per shard: 2 shards on any machine of 2 or more cores.
    for extra, expected in (([], 2), (["--batch-shards", "1"], 1)):
        name = f"shards{len(extra)}"
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "train.py"), "--arch", "residual_cnn",
             "--dataset", "kmnist", "--data-dir", str(data_dir), "--epochs", "1",
             "--batch-size", "64", "--output-dir", str(tmp_path), "--run-name", name, "-q",
             "--no-export", "--backend", "tensorflow", *extra],
            check=True, capture_output=True, env=env,
        )  # fmt: skip
        config = json.loads((tmp_path / name / "config.json").read_text())
        assert config["speed"]["batch_shards"] == expected, extra


def test_study_sets_threads_for_batch_shards_only_when_every_run_plans_them(monkeypatch):
    """Report C's study trains residual_cnn only (batch 64: two shards of 32 on two
    cores); report A's trains MLPs (1 shard: TensorFlow's threads stay as they are)."""
    import study as study_script

    from kmnist_lab import speed
    from kmnist_lab.studies import get_study

    configured = []
    monkeypatch.setattr(speed, "configure_batch_shards", configured.append)
    monkeypatch.setattr(speed, "cpu_cores", lambda: 2)
    monkeypatch.setattr(speed, "has_accelerator", lambda: False)
    study_script._configure_batch_shards(get_study("c_optimizers"))
    study_script._configure_batch_shards(get_study("a_grid"))
    study_script._configure_batch_shards(get_study("e_regression"))  # sin x: no arch
    assert configured == [2, 1, 1]
