"""A search trial whose training loss turns non-finite: stopped, listed as diverged,
never the best, and quiet.

keras-tuner 1.4.8 has no notion of divergence: a trial that raises is retried and three
failures in a row stop the whole search, and a NaN score makes the trial INVALID (also
retried). So a diverged trial reports the worst possible score to keras-tuner and a
`diverged` metric; `trials.csv`, `summary.md` and the figures show it as `DIVERGED`.
"""

import csv
import dataclasses
import json
import logging
import math
import warnings
from types import SimpleNamespace

import _cli
import keras_tuner as kt
import numpy as np
import tune as tune_script
from helpers import write_idx_dataset

from tuning import finalize, get_hypermodel, results
from tuning.tuners import GridOracle, final_metrics

# What `SearchTuner.run_trial` reports for a trial whose loss broke at epoch 1, step 20:
# the worst val accuracy there is (`tuning.tuners.DIVERGED_SCORE`), and where.
DIVERGED = {"val_accuracy": 0.0, "diverged": 1.0, "diverged_epoch": 1.0,
            "diverged_step": 20.0, "epochs_trained": 1.0}  # fmt: skip


def _oracle(tmp_path, verbose=0):
    hp = kt.HyperParameters()
    get_hypermodel("a_grid", max_epochs=1).declare_hyperparameters(hp)
    oracle = GridOracle(objective=kt.Objective("val_accuracy", "max"), hyperparameters=hp)
    oracle._set_project_dir(str(tmp_path), "p")
    oracle.verbose = verbose
    return oracle


def _run(oracle, metrics):
    """One trial through keras-tuner's oracle API, reporting `metrics`."""
    trial = oracle.create_trial("tuner0")
    oracle.update_trial(trial.trial_id, metrics)
    trial.status = "COMPLETED"
    oracle.end_trial(trial)
    return trial.trial_id


def _finalize(tmp_path, oracle, monkeypatch, exported=None):
    """`finalize.finalize` on `oracle`'s trials. The best trial's files are not written:
    their writers append the trial id to `exported`, and without it are an error."""

    def export(tuner, trial, *args):
        if exported is None:
            raise AssertionError(f"a best model was written for trial {trial.trial_id}")
        exported.append(trial.trial_id)
        return {}

    monkeypatch.setattr(finalize, "write_figures", lambda *args, **kwargs: [])
    monkeypatch.setattr(finalize, "write_train_config", export)
    monkeypatch.setattr(finalize, "export_best", export)
    cfg = SimpleNamespace(project_dir=tmp_path, project_name="p", space="a_grid", tuner="grid",
                          max_epochs=1, max_trials=None,
                          to_dict=lambda: {"space": "a_grid", "tuner": "grid"})  # fmt: skip
    tuner = SimpleNamespace(oracle=oracle, hypermodel=SimpleNamespace(summary="grid"))
    return finalize.finalize(tuner, cfg, SimpleNamespace(name="fake"))


# ------------------------------------------------------------------ trial records


def test_a_diverged_trial_is_listed_as_diverged_with_no_scores(tmp_path):
    """trials.csv: status DIVERGED, where the loss broke, and empty score cells (the
    worst-possible score keras-tuner holds is no measurement)."""
    oracle = _oracle(tmp_path)
    _run(oracle, {"val_accuracy": 0.8, "val_loss": 0.5, "loss": 0.4, "epochs_trained": 1.0})
    _run(oracle, DIVERGED)
    good, bad = results.trial_rows(oracle)
    assert (good["status"], good["val_accuracy"], good["diverged_epoch"]) == ("COMPLETED", 0.8, "")
    assert bad["status"] == "DIVERGED"
    assert (bad["diverged_epoch"], bad["diverged_step"], bad["epochs_trained"]) == (1, 20, 1.0)
    assert [bad[k] for k in ("val_accuracy", "val_loss", "accuracy", "loss")] == [""] * 4
    assert results.completed([good, bad]) == [good]
    assert results.diverged([good, bad]) == [bad]
    assert results.columns(oracle)[-2:] == ["diverged_epoch", "diverged_step"]


def test_a_trial_recorded_before_divergence_was_is_recognised_by_its_nan_loss(tmp_path):
    """Searches run before kept a diverged trial as COMPLETED, scored like a model of NaN
    weights (10 %: every image a 0) with a NaN training loss: it is DIVERGED too."""
    oracle = _oracle(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # keras-tuner's All-NaN, as it was
        _run(oracle, {"val_accuracy": 0.1, "val_loss": math.nan, "loss": math.nan})
    (row,) = results.trial_rows(oracle)
    assert row["status"] == "DIVERGED" and row["val_accuracy"] == ""
    assert (row["diverged_epoch"], row["diverged_step"]) == ("", "")


def test_trial_metrics_keep_only_finite_values_and_divergence_is_found():
    """A NaN metric given to keras-tuner warns `All-NaN axis encountered` at every update
    (and a NaN score makes the trial INVALID, retried): non-finite values are left out."""
    from tuning.tuners import divergence

    assert final_metrics({"loss": [0.5, math.inf], "val_loss": [math.nan], "accuracy": [0.9],
                          "val_accuracy": []}) == {"accuracy": 0.9}  # fmt: skip

    def history(losses, epochs, at=None, val=(1.0, 1.0)):
        logs = {"loss": losses, "val_loss": list(val)}
        return SimpleNamespace(history=logs, epoch=epochs, diverged_at=at)

    assert divergence(history([0.5, 0.4], [0, 1])) is None
    assert divergence(history([0.5, math.nan], [0, 1], at=(2, 7))) == (2, 7)  # the guard's
    # From the history alone: the model's epoch (a Hyperband continuation starts at 3).
    assert divergence(history([0.5, math.inf], [2, 3])) == (4, None)
    # The last update broke the weights: only the validation loss shows it.
    assert divergence(history([0.5, 0.4], [2, 3], val=(1.0, math.nan))) == (4, None)


# ------------------------------------------------------------------------ summary


def test_summary_counts_diverged_trials_and_never_picks_one_as_best(tmp_path, monkeypatch):
    """The old record scores 10 % (NaN weights), above the real 5 % of trial 0: still the
    real one is the best, and summary.md counts and lists the diverged ones."""
    oracle = _oracle(tmp_path)
    first = _run(oracle, {"val_accuracy": 0.05, "val_loss": 2.3, "loss": 2.3,
                          "epochs_trained": 1.0})  # fmt: skip
    _run(oracle, DIVERGED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _run(oracle, {"val_accuracy": 0.1, "loss": math.nan, "epochs_trained": 1.0})
    exported = []
    summary = _finalize(tmp_path, oracle, monkeypatch, exported)
    assert summary["best"]["trial_id"] == first and exported == [first, first]
    assert (summary["trials"], summary["trials_completed"], summary["trials_diverged"]) == (3, 1, 2)
    assert (summary["trials_failed"], summary["trials_other"], summary["total_epochs"]) == (0, 0, 3)
    text = (tmp_path / "summary.md").read_text()
    assert "| trials | 1 completed, 2 diverged, 0 failed, 0 other |" in text
    with open(tmp_path / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["COMPLETED", "DIVERGED", "DIVERGED"]
    section = text.split("## Diverged trials (non-finite loss; never the best)\n")[1]
    cells = [f"| {r['trial_id']} | {r['hp_batch_size']} | {r['hp_lr']} | 1 |" for r in rows[1:]]
    assert section.splitlines()[1:5] == [
        "| trial | batch_size | lr | epochs | diverged at | epochs trained |",
        "|---|---|---|---|---|---|",
        f"{cells[0]} epoch 1, step 20 | 1 |",
        f"{cells[1]} where not recorded | 1 |",
    ]


def test_a_search_whose_every_trial_diverged_exports_no_model_and_says_so(
    tmp_path, monkeypatch, caplog
):
    """No best trial, no best_train_config.json, no best_model/; best files an earlier
    version wrote for a diverged "best" are removed; a warning and summary.md say why."""
    oracle = _oracle(tmp_path)
    _run(oracle, DIVERGED)
    _run(oracle, DIVERGED)
    for name in ("best_hyperparameters.json", "best_train_config.json",
                 "best_model/metrics.json"):  # fmt: skip
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("{}")
    with caplog.at_level(logging.WARNING, logger="tuning.finalize"):
        summary = _finalize(tmp_path, oracle, monkeypatch)
    assert summary["best"] is None and summary["best_model"] is None
    assert (summary["trials_completed"], summary["trials_diverged"]) == (0, 2)
    assert not [p.name for p in tmp_path.glob("best*")]
    (record,) = [r for r in caplog.records if r.name == "tuning.finalize"]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        "search p: all 2 trials diverged (non-finite loss): no best trial, no model "
        "exported (try lower learning rates); removed the earlier best_hyperparameters.json, "
        "best_train_config.json, best_model"
    )
    text = (tmp_path / "summary.md").read_text()
    assert ("| best trial | none: all 2 trials diverged (non-finite loss);"
            " no model exported |") in text  # fmt: skip


def test_keras_tuners_trial_lines_say_a_trial_diverged(tmp_path, capsys):
    """Not `val_accuracy: 0.0` (the stand-in score) nor `Best val_accuracy So Far: 0.0`."""
    oracle = _oracle(tmp_path, verbose=1)
    _run(oracle, DIVERGED)
    out = capsys.readouterr().out
    assert "val_accuracy: none, diverged (non-finite loss at epoch 1, step 20;" \
           " ranked last)" in out.splitlines()  # fmt: skip
    assert "Best val_accuracy So Far: none (every trial so far diverged)" in out.splitlines()
    _run(oracle, {"val_accuracy": 0.5, "epochs_trained": 1.0})
    lines = capsys.readouterr().out.splitlines()
    assert "val_accuracy: 0.5" in lines and "Best val_accuracy So Far: 0.5" in lines


# -------------------------------------------------------------------- a search


def test_a_diverging_trial_is_stopped_marked_and_never_the_best(tmp_path, monkeypatch, capsys):
    """A grid search of two cells, the first trained at lr 1e30. `-q` prints the summary
    lines only (no Keras `Invalid loss` line, no `Reloading Tuner` when re-run), and
    keras-tuner never sees a NaN (no `All-NaN axis encountered` warning)."""
    from tuning.hypermodels import AGrid

    space = AGrid.space

    def diverging_space(self, hp):
        spec = space(self, hp)
        return dataclasses.replace(spec, lr=1e30) if hp.values["lr"] == 0.03 else spec

    monkeypatch.setattr(AGrid, "space", diverging_space)
    # 3 steps of 128 per epoch: a first step at lr 1e30 gives infinite weights, the next a
    # non-finite loss (a one-step epoch would leave only the validation loss non-finite).
    data = write_idx_dataset(tmp_path / "data", n_train=400, n_test=20)
    argv = ["--dataset", "kmnist", "--data-dir", str(data), "--directory", str(tmp_path),
            "--jit", "off", "-q", "--space", "a_grid", "--tuner", "grid", "--max-epochs", "1",
            "--max-trials", "2", "--no-export"]  # fmt: skip
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert _cli.run(tune_script.main, argv) == 0
        first = capsys.readouterr().out
        assert _cli.run(tune_script.main, argv) == 0  # finished: resumes, trains nothing
        again = capsys.readouterr().out
    assert not [w for w in seen if "All-NaN" in str(w.message)]
    project = tmp_path / "a_grid_grid_kmnist"
    with open(project / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["hp_lr"], r["status"]) for r in rows] == [
        ("0.03", "DIVERGED"),
        ("0.01", "COMPLETED"),
    ]
    assert rows[0]["val_accuracy"] == "" and rows[0]["diverged_epoch"] == "1"
    assert rows[0]["diverged_step"] != ""  # within its first epoch's 3 steps
    summary = json.loads((project / "summary.json").read_text())
    assert summary["best"]["trial_id"] == rows[1]["trial_id"] and summary["trials_diverged"] == 1
    state = json.loads((project / f"trial_{rows[0]['trial_id']}" / "trial.json").read_text())
    assert state["status"] == "COMPLETED" and state["score"] == 0.0  # the worst; not retried
    for out in (first, again):
        assert "Invalid loss" not in out and "Reloading Tuner" not in out, out
        assert [line.split(":")[0] for line in out.splitlines()] == [
            "a_grid/grid on kmnist",
            "train the best configuration",
        ], out
        assert out.startswith("a_grid/grid on kmnist: 2 trials (1 diverged), total epochs"), out
    assert np.isfinite(float(rows[1]["val_accuracy"]))


def test_tune_py_says_when_every_trial_diverged(tmp_path, monkeypatch, capsys):
    """Both grid cells at lr 1e30: the summary line counts them as diverged trials and
    says why there is no best trial nor a model."""
    from tuning.hypermodels import AGrid

    space = AGrid.space
    monkeypatch.setattr(
        AGrid, "space", lambda self, hp: dataclasses.replace(space(self, hp), lr=1e30)
    )
    data = write_idx_dataset(tmp_path / "data", n_train=400, n_test=20)
    argv = ["--dataset", "kmnist", "--data-dir", str(data), "--directory", str(tmp_path),
            "--jit", "off", "-q", "--space", "a_grid", "--tuner", "grid", "--max-epochs", "1",
            "--max-trials", "2"]  # fmt: skip
    assert _cli.run(tune_script.main, argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("a_grid/grid on kmnist: 2 trials (2 diverged), total epochs"), out
    assert "; no best trial (every trial diverged), no model exported" in out
    assert not (tmp_path / "a_grid_grid_kmnist" / "best_model").exists()


def test_a_retraining_of_the_best_that_diverges_exports_nothing_and_says_so(
    tmp_path, monkeypatch, capsys, caplog
):
    """`--retrain` trains the best configuration again; where that run diverges (here the
    space is patched to lr 1e30 after the search), no NaN model is exported as the
    best: a warning says why, and the summary is still written."""
    from tuning.hypermodels import AGrid

    data = write_idx_dataset(tmp_path / "data", n_train=400, n_test=20)
    argv = ["--dataset", "kmnist", "--data-dir", str(data), "--directory", str(tmp_path),
            "--jit", "off", "-q", "--space", "a_grid", "--tuner", "grid", "--max-epochs", "1",
            "--max-trials", "1"]  # fmt: skip
    assert _cli.run(tune_script.main, argv) == 0
    project = tmp_path / "a_grid_grid_kmnist"
    assert (project / "best_model" / "saved_model").is_dir()
    space = AGrid.space
    monkeypatch.setattr(
        AGrid, "space", lambda self, hp: dataclasses.replace(space(self, hp), lr=1e30)
    )
    with caplog.at_level("WARNING", logger="tuning"):
        assert _cli.run(tune_script.main, [*argv, "--retrain"]) == 0
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("configuration diverged (non-finite loss at epoch 1): no model exported; "
               "re-run without --retrain" in m for m in said), said  # fmt: skip
    assert not (project / "best_model" / "saved_model").exists()
    summary = json.loads((project / "summary.json").read_text())
    assert summary["best_model"] is None and summary["best"] is not None
