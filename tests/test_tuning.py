"""keras-tuner searches: spaces, oracles, outputs, resume after a kill, distributed workers.

Searches run on tiny synthetic data (1 epoch per trial, XLA off to skip compile
time); the two multi-process tests start real `scripts/tune.py` processes.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import _cli
import keras
import keras_tuner as kt
import numpy as np
import pytest
import tune as tune_script
from helpers import write_idx_dataset

from tuning import SearchConfig, get_hypermodel, list_spaces
from tuning.hypermodels import TrialSpec
from tuning.tuners import GridOracle, HyperbandOracle, enumerate_space

TUNE = str(Path(__file__).resolve().parents[1] / "scripts" / "tune.py")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_idx_dataset(tmp_path_factory.mktemp("data"), n_train=240, n_test=40)


def _argv(data_dir, directory, *extra):
    return [
        "--dataset", "kmnist", "--data-dir", str(data_dir), "--directory", str(directory),
        "--jit", "off", "-q", *extra,
    ]  # fmt: skip


def _rows(project):
    with open(project / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def _trial_files(project):
    out = {}
    for path in sorted(project.glob("trial_*/trial.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):  # being written
            continue
        out[data["trial_id"]] = data
    return out


# ----------------------------------------------------------------------- spaces


@pytest.mark.parametrize("name", list_spaces())
def test_every_space_builds_its_default_model_through_the_registry(name):
    hypermodel = get_hypermodel(name, train_size=100)
    hp = kt.HyperParameters()
    hypermodel.declare_hyperparameters(hp)
    assert hp.space, "a space declares hyperparameters"
    assert all(p.default is not None for p in hp.space), "every hyperparameter has a default"
    spec = hypermodel.space(hp)
    assert isinstance(spec, TrialSpec)
    if name in ("resnet18", "residual_cnn"):
        return  # building the CNNs is covered by tests/test_models.py
    model = hypermodel.build(hp)
    assert model.compiled and model.output_shape == (None, 10)


def _layer_configs(model):
    return [
        (type(layer).__name__, {k: v for k, v in layer.get_config().items() if k != "name"})
        for layer in model.layers
    ]


@pytest.mark.parametrize("name", list_spaces())
def test_best_train_config_trains_what_the_trial_trained(name):
    """`train_config` as read by scripts/train.py builds the trial's model, loss and
    optimizer (same classes and settings, constant lr), batch size and epochs."""
    from kmnist_lab.config import TrainConfig
    from kmnist_lab.training import build_for_config, compile_for_config

    hypermodel = get_hypermodel(name, train_size=100, seed=3)
    hp = kt.HyperParameters()
    hypermodel.declare_hyperparameters(hp)
    count = 2 if name in ("resnet18", "residual_cnn") else 3  # building the CNNs is slower
    combos = enumerate_space(hp)
    if combos is not None:
        points = [combos[0], combos[-1], combos[len(combos) // 2]][:count]
    else:  # a continuous space: random points
        points = [{p.name: p.random_sample(seed) for p in hp.space} for seed in range(count)]
    for point in points:
        hp.values.update(point)
        hp.ensure_active_values()
        spec = hypermodel.space(hp)
        config = TrainConfig.from_dict(hypermodel.train_config(hp, epochs=7)).resolved()
        assert (config.batch_size, config.epochs, config.seed) == (spec.batch_size, 7, 3)
        trial_model = hypermodel.build(hp)
        model, loss = build_for_config(config, num_classes=10)
        compile_for_config(model, loss, config, steps_per_epoch=10)
        assert _layer_configs(model) == _layer_configs(trial_model), point
        assert loss.get_config() == trial_model.loss.get_config(), point
        ours, theirs = model.optimizer.get_config(), trial_model.optimizer.get_config()
        assert type(model.optimizer) is type(trial_model.optimizer), point
        assert ours.pop("learning_rate") == pytest.approx(theirs.pop("learning_rate")), point
        assert {k: v for k, v in ours.items() if k != "name"} == {
            k: v for k, v in theirs.items() if k != "name"
        }, point


def test_a_grid_is_report_a_grid():
    hp = kt.HyperParameters()
    get_hypermodel("a_grid").declare_hyperparameters(hp)
    combos = enumerate_space(hp)
    assert len(combos) == 60
    assert {c["batch_size"] for c in combos} == {32, 64, 128, 256}
    assert {c["lr"] for c in combos} == {0.01, 0.02, 0.03}
    assert {c["epochs"] for c in combos} == {3, 5, 7, 10, 15}
    # Under Hyperband the tuner sets the epochs: 12 configurations remain.
    hp = kt.HyperParameters()
    get_hypermodel("a_grid", tune_epochs=False).declare_hyperparameters(hp)
    assert len(enumerate_space(hp)) == 12 and "epochs" not in hp.values
    # A cap below every choice fixes the epochs.
    hp = kt.HyperParameters()
    get_hypermodel("a_grid", max_epochs=2).declare_hyperparameters(hp)
    assert hp.values["epochs"] == 2 and len(enumerate_space(hp)) == 12


def test_losses_space_is_conditional():
    hp = kt.HyperParameters()
    hypermodel = get_hypermodel("losses")
    hypermodel.declare_hyperparameters(hp)
    hp.values["loss"] = "am_softmax"
    hp.ensure_active_values()
    spec = hypermodel.space(hp)
    assert spec.loss == "am_softmax" and set(spec.loss_params) == {"margin", "scale"}
    hp.values["loss"] = "focal"
    hp.ensure_active_values()
    assert set(hypermodel.space(hp).loss_params) == {"gamma"} and "margin" not in hp.values
    combos = enumerate_space(hp)
    assert all(("margin" in c) == (c["loss"] in ("am_softmax", "arm_softmax")) for c in combos)


class _FakeModel:
    optimizer = keras.optimizers.SGD()

    def fit(self, *args, **kwargs):
        self.kwargs = kwargs
        return kwargs


def test_fit_takes_batch_size_from_hp_and_epochs_from_the_tuner():
    hypermodel = get_hypermodel("a_grid")
    hp = kt.HyperParameters()
    hypermodel.declare_hyperparameters(hp)
    hp.values.update(batch_size=64, epochs=7)
    model = _FakeModel()
    hypermodel.fit(hp, model, "x", "y", validation_data="v")
    assert model.kwargs["batch_size"] == 64 and model.kwargs["epochs"] == 7
    assert model.kwargs["validation_data"] == "v"
    # Hyperband passes epochs/initial_epoch; they win over the hyperparameter.
    hypermodel.fit(hp, model, "x", "y", epochs=5, initial_epoch=2)
    assert model.kwargs["epochs"] == 5 and model.kwargs["initial_epoch"] == 2


def test_report_a_table_only_where_a_cell_is_one_trial():
    """summary.md's per-cell table (batch x lr x epochs) must not let one trial of a cell
    stand for others that differ in another hyperparameter (depth_width, mlp, losses...)."""
    from tuning.results import grid_table

    def row(i, acc, **hp):
        return {"trial_id": str(i), "status": "COMPLETED", "val_accuracy": acc,
                **{f"hp_{k}": v for k, v in hp.items()}}  # fmt: skip

    cell = {"batch_size": 64, "lr": 0.01, "epochs": 5}
    rows = [row(0, 0.95, depth=2, **cell), row(1, 0.40, depth=16, **cell)]
    assert grid_table(rows) is None  # the cell holds two configurations
    a_grid = [row(0, 0.80, **cell), row(1, 0.85, batch_size=32, lr=0.01, epochs=5)]
    table = grid_table(a_grid)
    assert "| 32 | 0.01 | **85.00** |" in table and "| 64 | 0.01 | 80.00 |" in table


def test_report_table_shows_the_best_of_trials_with_the_same_configuration():
    """Two trials of one configuration (e.g. a search run again with more trials): the
    cell shows the better one, whichever finished last."""
    from tuning.results import grid_table

    def row(i, acc, batch_size):
        return {"trial_id": str(i), "status": "COMPLETED", "val_accuracy": acc,
                "hp_batch_size": batch_size, "hp_lr": 0.01, "hp_epochs": 5}  # fmt: skip

    table = grid_table([row(0, 0.90, 64), row(1, 0.70, 64), row(2, 0.80, 32)])
    assert "| 64 | 0.01 | **90.00** |" in table and "| 32 | 0.01 | 80.00 |" in table


# ---------------------------------------------------------------------- oracles


def _fake_search(oracle, n, tuner_id="tuner0"):
    """Runs `n` trials through the oracle API, scoring each by its learning rate."""
    ran = []
    for _ in range(n):
        trial = oracle.create_trial(tuner_id)
        if trial.status != "RUNNING":
            break
        oracle.update_trial(trial.trial_id, {"val_accuracy": trial.hyperparameters.values["lr"]})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
        ran.append(dict(trial.hyperparameters.values))
    return ran


def _grid_oracle(tmp_path):
    hp = kt.HyperParameters()
    get_hypermodel("a_grid", max_epochs=1).declare_hyperparameters(hp)
    oracle = GridOracle(objective=kt.Objective("val_accuracy", "max"), hyperparameters=hp)
    oracle._set_project_dir(str(tmp_path), "p")
    return oracle


def test_a_trial_killed_before_the_oracle_recorded_it_runs_on_resume(tmp_path, monkeypatch):
    """keras-tuner writes a new trial's trial.json, then oracle.json: a kill between the
    two left a RUNNING trial that no resume retried (seen in CI as a flaky kill test).
    On reload it is forgotten, and its id and grid cell run next."""
    oracle = _grid_oracle(tmp_path)
    _fake_search(oracle, 1)
    with monkeypatch.context() as m:
        m.setattr(GridOracle, "save", lambda self: None)  # killed before oracle.json
        orphan = oracle.create_trial("tuner0")
    first = list(oracle.trials)[0]
    assert orphan.status == "RUNNING" and orphan.trial_id != first
    resumed = _grid_oracle(tmp_path)
    resumed.reload()
    assert list(resumed.trials) == [first]
    ran = _fake_search(resumed, 3)
    assert ran[0] == orphan.hyperparameters.values
    assert resumed.start_order[1] == orphan.trial_id and len(resumed.trials) == 4
    assert {t.status for t in resumed.trials.values()} == {"COMPLETED"}
    cells = {tuple(sorted(t.hyperparameters.values.items())) for t in resumed.trials.values()}
    assert len(cells) == 4


def test_summary_counts_trials_by_status_and_a_tie_goes_to_the_earliest(tmp_path, monkeypatch):
    """Trials 1 and 2 tie for the best score: the earliest is the best, whatever order
    keras-tuner loads them in; a failed and an invalid trial count as failed, and the
    epochs of every trial that reported count toward the total."""
    from types import SimpleNamespace

    from tuning import finalize

    oracle = _grid_oracle(tmp_path)
    outcomes = [("COMPLETED", 0.5), ("COMPLETED", 0.9), ("COMPLETED", 0.9), ("FAILED", None),
                ("INVALID", None)]  # fmt: skip
    for status, acc in outcomes:
        trial = oracle.create_trial("tuner0")
        if acc is not None:  # a failed trial reports nothing
            metrics = {"val_accuracy": acc, "val_loss": 1 - acc, "epochs_trained": 2.0}
            oracle.update_trial(trial.trial_id, metrics)
        trial.status = status
        oracle.end_trial(trial)
        trial.status = status  # end_trial records INVALID as FAILED; a saved trial keeps it
    ids = sorted(oracle.trials)
    oracle.trials = dict(reversed(oracle.trials.items()))  # loaded newest first
    monkeypatch.setattr(finalize, "write_train_config", lambda *args: {})
    monkeypatch.setattr(finalize, "export_best", lambda *args: {})
    monkeypatch.setattr(finalize, "write_figures", lambda *args, **kwargs: [])
    cfg = SimpleNamespace(project_dir=tmp_path, project_name="p", space="a_grid", tuner="grid",
                          max_epochs=2, max_trials=5,
                          to_dict=lambda: {"space": "a_grid", "tuner": "grid"})  # fmt: skip
    tuner = SimpleNamespace(oracle=oracle, hypermodel=SimpleNamespace(summary="grid"))
    summary = finalize.finalize(tuner, cfg, SimpleNamespace(name="fake"))
    assert summary["best"]["trial_id"] == ids[1] and summary["best"]["val_accuracy"] == 0.9
    assert (summary["trials"], summary["trials_completed"], summary["trials_failed"]) == (5, 3, 2)
    assert summary["trials_other"] == 0 and summary["total_epochs"] == 6
    assert json.loads((tmp_path / "best_hyperparameters.json").read_text()) == summary["best"]


def test_trials_are_listed_in_start_order_after_max_trials_grew():
    from tuning.results import trial_order

    # keras-tuner pads ids to the width of max_trials: 4 trials, then extended to 11.
    ids = ["0", "1", "2", "3", "04", "05", "06", "07", "08", "09", "10"]
    assert sorted(reversed(ids), key=trial_order) == ids
    assert sorted(ids) != ids  # text order, what trials.csv used before


def test_grid_oracle_resumes_after_reload(tmp_path):
    """keras-tuner #1055: a reloaded GridSearchOracle raised KeyError; ours continues."""
    first = _fake_search(_grid_oracle(tmp_path), 5)
    oracle = _grid_oracle(tmp_path)
    oracle.reload()
    rest = _fake_search(oracle, 100)
    cells = [(v["batch_size"], v["lr"]) for v in first + rest]
    assert len(cells) == 12 and len(set(cells)) == 12


def test_grid_oracle_feeds_two_workers_at_once(tmp_path):
    oracle = _grid_oracle(tmp_path)
    a, b = oracle.create_trial("tuner0"), oracle.create_trial("tuner1")
    assert a.status == b.status == "RUNNING"
    assert a.hyperparameters.values != b.hyperparameters.values
    assert oracle.worker_of(a.trial_id) == "tuner0" and oracle.worker_of(b.trial_id) == "tuner1"


def test_hyperband_samples_a_small_space_without_replacement(tmp_path):
    hp = kt.HyperParameters()
    get_hypermodel("a_grid", tune_epochs=False).declare_hyperparameters(hp)
    oracle = HyperbandOracle(
        objective=kt.Objective("val_accuracy", "max"), hyperparameters=hp, max_epochs=15, factor=3,
        seed=1,
    )  # fmt: skip
    oracle._set_project_dir(str(tmp_path), "p")
    ran = _fake_search(oracle, 100)
    starts = [v for v in ran if v["tuner/round"] == 0]
    # Bracket 2 takes all 12 configurations (keras-tuner's sampling with
    # replacement gives up after 20 collisions, usually before the 12th).
    assert len(starts) == 12 and len({(v["batch_size"], v["lr"]) for v in starts}) == 12
    assert sum(v["tuner/epochs"] - v["tuner/initial_epoch"] for v in ran) == 12 * 2 + 4 * 3 + 2 * 10


def test_bayesian_never_repeats_a_configuration_of_a_finite_space(tmp_path):
    """docs/tuning.md: random and Bayesian draw a finite space's configurations without
    replacement. keras-tuner's Bayesian optimiser proposed report A's best cell again
    and again once its 9 random starting points were in (8 of 20 trials the same cell)."""
    from tuning.tuners import BayesianOracle

    hp = kt.HyperParameters()
    get_hypermodel("a_grid").declare_hyperparameters(hp)
    oracle = BayesianOracle(objective=kt.Objective("val_accuracy", "max"), hyperparameters=hp,
                            max_trials=20, seed=0)  # fmt: skip
    oracle._set_project_dir(str(tmp_path), "p")
    oracle.verbose = 0
    ran = []
    for _ in range(20):
        trial = oracle.create_trial("tuner0")
        if trial.status != "RUNNING":
            break
        v = trial.hyperparameters.values
        score = v["lr"] - v["batch_size"] / 1000 + v["epochs"] / 100
        oracle.update_trial(trial.trial_id, {"val_accuracy": score})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
        ran.append((v["batch_size"], v["lr"], v["epochs"]))
    assert len(ran) == 20 and len(set(ran)) == 20


def test_random_search_draws_each_configuration_once_then_stops(tmp_path):
    """docs/tuning.md: random search samples a finite space without replacement and the
    search stops when it is used up (keras-tuner's gives up after 20 collisions in a row,
    usually long before the 60th of report A's 60 cells)."""
    from tuning.tuners import RandomOracle

    hp = kt.HyperParameters()
    get_hypermodel("a_grid").declare_hyperparameters(hp)
    oracle = RandomOracle(objective=kt.Objective("val_accuracy", "max"), hyperparameters=hp,
                          max_trials=100, seed=0)  # fmt: skip
    oracle._set_project_dir(str(tmp_path), "p")
    ran = _fake_search(oracle, 100)
    cells = {(v["batch_size"], v["lr"], v["epochs"]) for v in ran}
    assert len(ran) == len(cells) == 60
    assert oracle.create_trial("tuner0").status == "STOPPED"


@pytest.mark.parametrize("kind", ["random", "bayesian", "hyperband"])
def test_seed_0_seeds_the_oracle(kind, tmp_path):
    """`--seed 0` (the default) must make the search reproducible: keras-tuner took seed 0
    for "no seed" and drew a random oracle seed, so two runs sampled different trials."""
    from tuning.tuners import BayesianOracle, RandomOracle

    def first_values(n):
        hp = kt.HyperParameters()
        get_hypermodel("mlp", tune_epochs=kind != "hyperband").declare_hyperparameters(hp)
        objective = kt.Objective("val_accuracy", "max")
        if kind == "hyperband":
            oracle = HyperbandOracle(objective=objective, hyperparameters=hp, max_epochs=3,
                                     factor=3, seed=0)  # fmt: skip
        else:
            cls = RandomOracle if kind == "random" else BayesianOracle
            oracle = cls(objective=objective, hyperparameters=hp, max_trials=3, seed=0)
        oracle._set_project_dir(str(tmp_path), f"p{n}")
        assert oracle.seed == 0
        return oracle.create_trial("tuner0").hyperparameters.values

    assert first_values(1) == first_values(2)


def test_hyperband_with_two_workers_keeps_each_model_in_its_bracket(tmp_path):
    hp = kt.HyperParameters()
    get_hypermodel("a_grid", tune_epochs=False).declare_hyperparameters(hp)
    oracle = HyperbandOracle(
        objective=kt.Objective("val_accuracy", "max"), hyperparameters=hp, max_epochs=4, factor=2,
        seed=1,
    )  # fmt: skip
    oracle._set_project_dir(str(tmp_path), "p")
    running = {}
    for _ in range(200):  # two workers: a new bracket starts while the last one promotes
        for worker in ("tuner0", "tuner1"):
            if worker not in running:
                trial = oracle.create_trial(worker)
                if trial.status == "RUNNING":
                    running[worker] = trial
        if not running:
            break
        worker, trial = next(iter(running.items()))
        del running[worker]
        oracle.update_trial(trial.trial_id, {"val_accuracy": trial.hyperparameters.values["lr"]})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
    values = {t.trial_id: t.hyperparameters.values for t in oracle.trials.values()}
    promoted = [v for v in values.values() if "tuner/trial_id" in v]
    assert promoted and len({v["tuner/bracket"] for v in values.values()}) == 3
    for v in promoted:
        assert v["tuner/bracket"] == values[v["tuner/trial_id"]]["tuner/bracket"]
    assert sum(v["tuner/epochs"] - v["tuner/initial_epoch"] for v in values.values()) == 30


# --------------------------------------------------------------------- searches


def test_grid_search_writes_every_output_and_reruns_nothing(data_dir, tmp_path):
    argv = _argv(data_dir, tmp_path, "--space", "a_grid", "--tuner", "grid", "--max-epochs", "1",
                 "--max-trials", "2")  # fmt: skip
    assert _cli.run(tune_script.main, [*argv, "--no-export"]) == 0
    project = tmp_path / "a_grid_grid_kmnist"
    scored = json.loads((project / "best_model" / "metrics.json").read_text())
    assert scored["artifacts"] == [] and not (project / "best_model" / "saved_model").exists()
    # Without --no-export the same search exports the model it scored; its test score
    # is kept (the test split is used once).
    assert _cli.run(tune_script.main, argv) == 0
    rows = _rows(project)
    assert list(rows[0])[:5] == ["trial_id", "status", "hp_batch_size", "hp_lr", "hp_epochs"]
    assert {"val_accuracy", "val_loss", "epochs_trained", "wall_time_s", "worker"} <= set(rows[0])
    assert [r["status"] for r in rows] == ["COMPLETED"] * 2
    summary = json.loads((project / "summary.json").read_text())
    assert summary["total_epochs"] == 2
    import keras

    assert summary["backend"] == keras.backend.backend()  # which backend ran the trials
    assert f"| Keras backend | {keras.backend.backend()} |" in (project / "summary.md").read_text()
    best = json.loads((project / "best_hyperparameters.json").read_text())
    assert best["val_accuracy"] == pytest.approx(
        max(float(r["val_accuracy"]) for r in rows), abs=1e-5
    )
    metrics = json.loads((project / "best_model" / "metrics.json").read_text())
    # The restored best model is the scored one, and the test split was used.
    assert metrics["val_accuracy"] == pytest.approx(best["val_accuracy"], abs=1e-6)
    assert metrics["test_size"] == 40 and 0 <= metrics["test_accuracy"] <= 1
    assert metrics["test_accuracy"] == scored["test_accuracy"]
    assert metrics["artifacts"] == ["best_model/model.keras", "best_model/saved_model"]
    import tensorflow as tf

    served = tf.saved_model.load(str(project / "best_model" / "saved_model"))
    out = served.signatures["serve"](pixels=tf.zeros((2, 28, 28), tf.float32))
    assert out["probabilities"].shape == (2, 10)
    for fig in ("val_accuracy_heatmap.png", "epochs_spent.png"):
        assert (project / "figures" / fig).stat().st_size > 1000
    assert "epochs trained | **2**" in (project / "summary.md").read_text()
    # Same command again: nothing is trained, the test split is not used again.
    stamps = {p: p.stat().st_mtime_ns for p in project.glob("trial_*/trial.json")}
    stamps[project / "best_model" / "metrics.json"] = (
        (project / "best_model" / "metrics.json").stat().st_mtime_ns
    )
    assert _cli.run(tune_script.main, argv) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


@pytest.mark.parametrize("damaged", ["oracle.json", "trial_0/trial.json"])
def test_a_damaged_keras_tuner_file_is_one_line_naming_the_way_out(
    damaged, data_dir, tmp_path, capsys
):
    """A search whose keras-tuner state was cut short (a full disk, a partial copy)
    ended in keras-tuner's JSONDecodeError traceback, exit 1."""
    argv = _argv(data_dir, tmp_path, "--space", "a_grid", "--tuner", "grid", "--max-epochs", "1",
                 "--max-trials", "1", "--no-export")  # fmt: skip
    assert _cli.run(tune_script.main, argv) == 0
    project = tmp_path / "a_grid_grid_kmnist"
    (project / damaged).write_text('{"trials": ')
    capsys.readouterr()
    assert _cli.run(tune_script.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and (
        f": error: cannot resume the search in {project}: its keras-tuner state " in err[0]
    ), err
    assert "is damaged (JSONDecodeError: " in err[0] and "pass --overwrite" in err[0]
    assert _cli.run(tune_script.main, [*argv, "--overwrite"]) == 0


def test_no_export_never_leaves_an_earlier_best_models_files(data_dir, tmp_path):
    """An extended search whose best trial changed, run with --no-export: best_model/
    holds only the new best's metrics.json, not the previous best's exported model nor
    evaluate.py's report of it."""
    argv = _argv(data_dir, tmp_path, "--space", "a_grid", "--tuner", "grid", "--max-epochs", "1")
    assert _cli.run(tune_script.main, [*argv, "--max-trials", "1"]) == 0
    best_model = tmp_path / "a_grid_grid_kmnist" / "best_model"
    assert (best_model / "model.keras").is_file() and (best_model / "saved_model").is_dir()
    (best_model / "evaluation" / "kmnist-test").mkdir(parents=True)  # evaluate.py's report
    assert _cli.run(tune_script.main, [*argv, "--max-trials", "4", "--no-export"]) == 0
    metrics = json.loads((best_model / "metrics.json").read_text())
    assert metrics["trial_id"] != "0", "the scenario needs a new best trial"
    assert metrics["artifacts"] == []
    assert sorted(p.name for p in best_model.iterdir()) == ["metrics.json"]


def test_best_train_config_json_runs_with_train_py(data_dir, tmp_path):
    """`train.py --config SEARCH/best_train_config.json` trains the best configuration on
    the search's data, in a run named after the search."""
    import train as train_script

    argv = _argv(data_dir, tmp_path, "--space", "a_grid", "--tuner", "grid", "--max-epochs", "1")
    assert _cli.run(tune_script.main, [*argv, "--max-trials", "2", "--no-export"]) == 0
    project = tmp_path / "a_grid_grid_kmnist"
    best = json.loads((project / "best_hyperparameters.json").read_text())
    config_path = project / "best_train_config.json"
    config = json.loads(config_path.read_text())
    assert config["dataset"] == "kmnist" and config["data_dir"] == str(data_dir)
    assert (config["batch_size"], config["lr"]) == (
        best["hyperparameters"]["batch_size"],
        best["hyperparameters"]["lr"],
    )
    out = tmp_path / "runs"
    code = _cli.run(
        train_script.main, ["--config", str(config_path), "--output-dir", str(out), "-q"]
    )
    assert code == 0
    run = json.loads((out / "a_grid_grid_kmnist_best" / "config.json").read_text())["config"]
    assert {k: run[k] for k in ("arch", "optimizer", "lr_schedule", "epochs", "augment")} == {
        "arch": "plain_mlp", "optimizer": "sgd", "lr_schedule": "constant", "epochs": 1,
        "augment": False,
    }  # fmt: skip


def test_a_ctrl_c_that_keras_swallows_still_stops_the_search(
    data_dir, tmp_path, monkeypatch, python_sigint
):
    """As for train.py (tests/test_training.py): a Ctrl-C dropped inside Keras' `fit`
    still stops the trial and the search (exit 130), leaving it to resume."""
    import signal

    from helpers import swallow_a_ctrl_c_after_the_first_epoch

    from kmnist_lab.callbacks import DivergenceGuard  # one of every trial's callbacks

    swallow_a_ctrl_c_after_the_first_epoch(monkeypatch, DivergenceGuard)
    argv = _argv(data_dir, tmp_path, "--space", "a_grid", "--tuner", "grid", "--max-epochs", "3")
    with pytest.raises(KeyboardInterrupt):
        tune_script.main([*argv, "--max-trials", "2", "--no-export"])
    project = tmp_path / "a_grid_grid_kmnist"
    assert not (project / "summary.json").exists()  # stopped in the first trial
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_evaluate_py_scores_a_best_model_on_the_searchs_own_splits(data_dir, tmp_path, capsys):
    """best_model/ has no config.json: evaluate.py reads the search's dataset, data dir
    and seed from its metrics.json, so `--split val` is the split the trial was tuned on."""
    import evaluate as evaluate_script

    argv = _argv(data_dir, tmp_path, "--space", "a_grid", "--tuner", "grid", "--max-epochs", "1")
    assert _cli.run(tune_script.main, [*argv, "--max-trials", "1", "--seed", "3"]) == 0
    best_model = tmp_path / "a_grid_grid_kmnist" / "best_model"
    metrics = json.loads((best_model / "metrics.json").read_text())
    # tune.py prints this follow-up command beside train.py's
    assert f"evaluate the best model: python scripts/evaluate.py {best_model}" in (
        capsys.readouterr().out.splitlines()
    )
    for path, split in ((best_model, "val"), (best_model / "saved_model", "test")):
        assert _cli.run(evaluate_script.main, [str(path), "--split", split]) == 0
        out = capsys.readouterr()
        assert "warning" not in out.err, out.err
        result = json.loads(
            (best_model / "evaluation" / f"kmnist-{split}" / "evaluation.json").read_text()
        )
        assert result["dataset"] == "kmnist"
        assert result["accuracy"] == pytest.approx(metrics[f"{split}_accuracy"], abs=1e-6)


def test_a_search_reports_its_result_once(data_dir, tmp_path, capsys, caplog):
    """One summary line at the end (stdout), not a second one in the log (stderr)."""
    import logging

    caplog.set_level(logging.INFO)
    argv = ["--dataset", "kmnist", "--data-dir", str(data_dir), "--directory", str(tmp_path),
            "--jit", "off", "--space", "a_grid", "--tuner", "grid", "--max-epochs", "1",
            "--max-trials", "1", "--no-export"]  # fmt: skip
    assert _cli.run(tune_script.main, argv) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err + caplog.text
    project = tmp_path / "a_grid_grid_kmnist"
    summaries = [line for line in text.splitlines() if line.endswith(f"-> {project}")]
    assert len(summaries) == 1, summaries
    assert summaries[0] in captured.out.splitlines()
    assert "1 trial, total epochs trained 1" in summaries[0]
    assert (
        f"train the best configuration: python scripts/train.py --config "
        f"{project / 'best_train_config.json'}"
    ) in captured.out.splitlines()
    assert "evaluate the best model" not in captured.out  # --no-export: nothing to evaluate
    assert "epochs=1, 1 epoch)" in summaries[0]  # not "1 epochs"
    # keras-tuner's own lines count from 1; the id beside it is the one summaries use.
    lines = captured.out.splitlines()
    assert "Search: Running Trial #1 (id 0)" in lines
    assert any(line.startswith("Trial 1 (id 0) Complete [") for line in lines), lines
    assert "(trial 0" in summaries[0]


def test_dataset_auto_names_the_search_after_the_dataset_it_found(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    write_idx_dataset(tmp_path / "keras" / "datasets", n_train=120, n_test=20)
    argv = ["--dataset", "auto", "--directory", str(tmp_path / "s"), "--jit", "off", "-q",
            "--space", "a_grid", "--tuner", "grid", "--max-epochs", "1", "--max-trials", "1",
            "--no-export"]  # fmt: skip
    assert _cli.run(tune_script.main, argv) == 0
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["a_grid_grid_mnist"]
    marker = json.loads((tmp_path / "s" / "a_grid_grid_mnist" / "search.json").read_text())
    assert marker["identity"]["dataset"] == "mnist"


def test_hyperband_accounts_for_every_epoch(data_dir, tmp_path):
    argv = _argv(data_dir, tmp_path, "--space", "a_grid", "--tuner", "hyperband",
                 "--max-epochs", "2", "--factor", "2", "--no-export")  # fmt: skip
    assert _cli.run(tune_script.main, argv) == 0
    project = tmp_path / "a_grid_hyperband_kmnist"
    rows = _rows(project)
    # max_epochs 2, factor 2: bracket 1 = 2 models x 1 epoch, best one +1 epoch; bracket 0 = 2 x 2.
    assert [int(r["epochs_trained"]) for r in rows] == [1, 1, 1, 2, 2]
    assert [r["bracket"] for r in rows] == ["1", "1", "1", "0", "0"]
    continued = rows[2]
    assert continued["from_trial"] in (rows[0]["trial_id"], rows[1]["trial_id"])
    assert int(continued["initial_epoch"]) == 1 and int(continued["epochs"]) == 2
    assert "epochs" not in {k[3:] for k in rows[0] if k.startswith("hp_")}
    assert json.loads((project / "summary.json").read_text())["total_epochs"] == 7
    assert (project / "figures" / "hyperband_brackets.png").is_file()


def test_killed_search_resumes_without_repeating_finished_trials(data_dir, tmp_path):
    argv = _argv(data_dir, tmp_path, "--space", "a_grid", "--tuner", "grid", "--max-epochs", "1",
                 "--max-trials", "3", "--no-export")  # fmt: skip
    project = tmp_path / "a_grid_grid_kmnist"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen([sys.executable, TUNE, *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 240
    try:
        while True:
            trials = _trial_files(project)
            statuses = [t["status"] for t in trials.values()]
            if "COMPLETED" in statuses and "RUNNING" in statuses:
                break
            assert proc.poll() is None, "the search ended before it could be killed"
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # midway through a trial, no clean-up
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    before = {k: v for k, v in _trial_files(project).items() if v["status"] == "COMPLETED"}
    killed = [k for k, v in _trial_files(project).items() if v["status"] == "RUNNING"]
    assert before and len(killed) == 1 and not (project / "trials.csv").exists()
    # Resume; `--recycle-mb 1` also makes the process restart itself after every
    # trial but the last (what bounds its memory), each restart resuming in turn.
    resumed = subprocess.run([sys.executable, TUNE, *argv, "--recycle-mb", "1"], env=env,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = _trial_files(project)
    assert sorted(after) == ["0", "1", "2"]
    statuses = {k: t["status"] for k, t in after.items()}
    assert set(statuses.values()) == {"COMPLETED"}, (statuses, sorted(before), killed)
    for trial_id, trial in before.items():  # finished trials were not run again
        assert after[trial_id]["metrics"] == trial["metrics"]
    cells = {(t["hyperparameters"]["values"]["batch_size"], t["hyperparameters"]["values"]["lr"])
             for t in after.values()}  # fmt: skip
    assert len(cells) == 3
    summary = json.loads((project / "summary.json").read_text())
    assert summary["total_epochs"] == 3
    # Not after the last trial: no trial is left to free memory for.
    assert summary["session_memory_mb"]["restarts"] == 3 - len(before) - 1


def test_overwrite_clears_once_even_when_the_process_restarts(data_dir, tmp_path):
    """`--overwrite` with memory restarts: each restart re-runs the same command line
    and must resume the search, not delete it again (which looped forever)."""
    argv = _argv(data_dir, tmp_path, "--space", "a_grid", "--tuner", "grid", "--max-epochs", "1",
                 "--max-trials", "2", "--no-export", "--recycle-mb", "1")  # fmt: skip
    project = tmp_path / "a_grid_grid_kmnist"
    project.mkdir(parents=True)
    # An earlier search (another seed): --overwrite clears it.
    (project / "search.json").write_text('{"identity": {"seed": 7}}')
    (project / "stale.txt").write_text("from an earlier search")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("KMNIST_TUNING_RESTARTS", None)
    done = subprocess.run([sys.executable, TUNE, *argv, "--overwrite"], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (project / "stale.txt").exists()
    assert len(_rows(project)) == 2
    summary = json.loads((project / "summary.json").read_text())
    assert summary["session_memory_mb"]["restarts"] == 1  # after trial 0, not after trial 1
    # Run again, the search finished: it trains nothing, and the summary keeps the
    # memory of the process that ran the trials (it once showed 0 restarts then).
    again = subprocess.run([sys.executable, TUNE, *argv], env=env, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    memory = json.loads((project / "summary.json").read_text())["session_memory_mb"]
    assert memory == {**summary["session_memory_mb"], "kept_from_an_earlier_process": True}
    assert ("| memory (the last process that ran trials) |" in
            (project / "summary.md").read_text())  # fmt: skip
    assert "; 1 process restart |" in (project / "summary.md").read_text()


def test_distributed_search_chief_and_two_workers(data_dir, tmp_path, capsys, caplog):
    import logging
    import re

    caplog.set_level(logging.INFO, logger="tuning.distributed")

    # Not quiet (progress lines) and exported (the chief writes a SavedModel).
    argv = [a for a in _argv(data_dir, tmp_path) if a != "-q"]
    argv += ["--space", "a_grid", "--tuner", "grid", "--max-epochs", "1", "--max-trials", "4",
             "--workers", "2"]  # fmt: skip
    assert _cli.run(tune_script.main, argv) == 0
    project = tmp_path / "a_grid_grid_kmnist"
    rows = _rows(project)
    assert len(rows) == 4 and all(r["status"] == "COMPLETED" for r in rows)
    assert {r["worker"] for r in rows} == {"tuner0", "tuner1"}
    assert {(r["hp_batch_size"], r["hp_lr"]) for r in rows}.__len__() == 4
    out = capsys.readouterr()
    # One progress line per trial as it ends, counting up to the grid's 4 trials.
    pattern = (r"trial (\d+) done on (tuner[01]): val_accuracy (\d\.\d{4}) "
               r"\((\d)/4 trials; best (\d\.\d{4})\)")  # fmt: skip
    progress = [re.fullmatch(pattern, line) for line in out.out.splitlines()
                if line.startswith("trial ")]  # fmt: skip
    assert len(progress) == 4 and all(progress), out.out
    assert [m[4] for m in progress] == ["1", "2", "3", "4"]
    by_id = {r["trial_id"]: r for r in rows}
    for m in progress:
        assert m[2] == by_id[m[1]]["worker"]
        assert float(m[3]) == pytest.approx(float(by_id[m[1]]["val_accuracy"]), abs=1e-4)
    best = max(float(r["val_accuracy"]) for r in rows)
    assert float(progress[-1][5]) == pytest.approx(best, abs=1e-4)
    assert "started chief and 2 workers (logs in" in caplog.text
    assert (project / "best_model" / "saved_model" / "saved_model.pb").is_file()
    for name in ("chief", "tuner0", "tuner1"):
        log = (project / "logs" / f"{name}.log").read_text()
        # TensorFlow's start-up lines are filtered in the processes too (scripts/_native_logs.py).
        assert "absl::InitializeLog" not in log and "oneDNN custom operations" not in log, log
        # ... and so are TensorFlow's Python INFO lines (SavedModel export), as in tune.py.
        assert "Assets written" not in log, log
        if name != "chief":
            assert re.search(rf"^worker {name}: no trial left; memory peak \d+ MB "
                             r"\([+-]\d+ MB during the search\)$", log, re.M), log  # fmt: skip
            assert "{'" not in log, log
    # Re-run once finished (as after a Ctrl-C during the chief's export), it rewrites the
    # outputs and ends: a worker answered IDLE while the others gathered was never
    # registered with the oracle, and waited on the stopped chief for 60 minutes.
    proc = subprocess.Popen([sys.executable, TUNE, *argv, "-q"], start_new_session=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:  # hung: take its chief and workers down too
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err[-2000:]
    assert len(_rows(project)) == 4


def test_workers_resolve_relative_paths_from_the_callers_folder(
    data_dir, tmp_path, monkeypatch, capsys, caplog
):
    """`--workers` started outside the repository, with a relative --directory (the
    default `searches` is one) and --data-dir: the chief and workers read and write
    the same folders the command named."""
    import logging

    caplog.set_level(logging.INFO, logger="tuning.distributed")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").symlink_to(data_dir)
    argv = ["--dataset", "kmnist", "--data-dir", "data", "--directory", "s", "--jit", "off", "-q",
            "--space", "a_grid", "--tuner", "grid", "--max-epochs", "1", "--max-trials", "1",
            "--no-export", "--workers", "1"]  # fmt: skip
    assert _cli.run(tune_script.main, argv) == 0
    rows = _rows(tmp_path / "s" / "a_grid_grid_kmnist")
    assert [r["status"] for r in rows] == ["COMPLETED"]
    out = capsys.readouterr()
    # -q: no progress lines (a one-process search prints no per-trial tables either)
    assert not [line for line in out.out.splitlines() if line.startswith("trial ")], out.out
    assert "started chief and 1 worker (logs in" in caplog.text  # not "1 workers"


# ------------------------------------------------------------------- bad input


def _one_line_error(capsys, code, match):
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert match in err, err


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--space", "nope"], "--space"),
        (["--space", "a_grid", "--tuner", "annealing"], "--tuner"),
        (["--space", "a_grid", "--max-epochs", "0"], "--max-epochs"),
        (["--space", "a_grid", "--factor", "1"], "--factor"),
        # Hyperband's schedule flags would be ignored by another tuner.
        (
            ["--space", "a_grid", "--tuner", "grid", "--factor", "4"],
            "--factor sets Hyperband's schedule, and this search uses --tuner grid: drop it",
        ),
        (
            [
                "--space",
                "a_grid",
                "--tuner",
                "random",
                "--factor",
                "3",
                "--hyperband-iterations",
                "2",
            ],
            "--factor, --hyperband-iterations set Hyperband's schedule, and this search uses "
            "--tuner random: drop them",
        ),  # fmt: skip
        (["--space", "a_grid", "--project-name", "a/b"], "project_name"),
        (["--space", "a_grid", "--dataset", "kmnist"], "kmnist is read from --data-dir only"),
        (
            ["--space", "a_grid", "--dataset", "kmnist", "--workers", "1"],
            "kmnist is read from --data-dir only",
        ),
        # --expect-workers where no chief reads it would do nothing.
        (["--space", "a_grid", "--expect-workers", "2"], "this search is not distributed"),
        (
            ["--space", "a_grid", "--workers", "2", "--expect-workers", "2"],
            "--workers 2 already makes its chief wait for its own 2 workers",
        ),
    ],
)
def test_bad_tune_arguments_exit_2_with_one_line(argv, match, capsys, tmp_path):
    code = _cli.run(tune_script.main, argv + ["--directory", str(tmp_path), "-q"])
    _one_line_error(capsys, code, match)
    assert not any(tmp_path.iterdir())  # nothing left that would refuse the fixed command


def test_expect_workers_is_for_the_chief_only(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "1")
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner0")
    argv = ["--space", "a_grid", "--expect-workers", "2", "--directory", str(tmp_path), "-q"]
    code = _cli.run(tune_script.main, argv)
    _one_line_error(capsys, code, "this process is a worker (KERASTUNER_TUNER_ID='tuner0'")
    assert not any(tmp_path.iterdir())


def test_a_search_folder_in_use_is_refused_naming_tune_flags(data_dir, tmp_path, capsys):
    """The refusal names tune.py's own flags (--project-name), not train.py's (--run-name)."""
    from kmnist_lab import runs

    argv = _argv(data_dir, tmp_path, "--space", "a_grid", "--tuner", "grid")
    with runs.RunLock(tmp_path / "a_grid_grid_kmnist"):  # a search running there
        code = _cli.run(tune_script.main, argv)
    _one_line_error(capsys, code, "choose another --project-name")


def test_other_settings_in_an_existing_search_folder_are_refused(tmp_path, capsys):
    cfg = SearchConfig(space="a_grid", tuner="grid", directory=str(tmp_path), project_name="p")
    project = tmp_path / "p"
    project.mkdir()
    (project / "search.json").write_text(json.dumps({"identity": cfg.identity()}))
    argv = [
        "--space",
        "a_grid",
        "--tuner",
        "random",
        "--directory",
        str(tmp_path),
        "--project-name",
        "p",
    ]
    _one_line_error(capsys, _cli.run(tune_script.main, argv), "--overwrite")


def test_a_search_resumes_on_its_own_backend_only(tmp_path, capsys):
    """Trials from two backends are not comparable: a resume on another one is refused."""
    import keras

    from tuning.search import prepare_project_dir

    # One trial of one epoch: were the refusal gone, the command would end quickly.
    cfg = SearchConfig(space="a_grid", tuner="grid", dataset="mnist_5k", max_epochs=1,
                       max_trials=1, directory=str(tmp_path), project_name="p")  # fmt: skip
    prepare_project_dir(cfg)
    marker = tmp_path / "p" / "search.json"
    stored = json.loads(marker.read_text())
    assert stored["backend"] == keras.backend.backend()
    prepare_project_dir(cfg)  # the same backend resumes
    other = "torch" if keras.backend.backend() != "torch" else "jax"
    marker.write_text(json.dumps({**stored, "backend": other}))
    argv = ["--space", "a_grid", "--tuner", "grid", "--dataset", "mnist_5k", "--max-epochs", "1",
            "--max-trials", "1"]  # fmt: skip
    code = _cli.run(tune_script.main, [*argv, "--directory", str(tmp_path), "--project-name", "p"])
    _one_line_error(capsys, code, f"holds a search run on the {other} backend")
    assert json.loads(marker.read_text())["backend"] == other  # nothing rewritten
    # A folder from before the backend was recorded resumes on any backend.
    marker.write_text(json.dumps({"identity": stored["identity"]}))
    prepare_project_dir(cfg)
    assert json.loads(marker.read_text())["backend"] == keras.backend.backend()


def test_a_resume_with_other_settings_names_the_stored_and_the_asked_values(tmp_path):
    """The refusal says what the folder holds and what was asked, as train.py's does."""
    from kmnist_lab.errors import RunFolderError
    from tuning.search import prepare_project_dir

    common = dict(space="a_grid", tuner="grid", dataset="mnist_5k", directory=str(tmp_path))
    prepare_project_dir(SearchConfig(**common, max_epochs=2, project_name="p"))
    with pytest.raises(RunFolderError, match=r"other settings \(max_epochs 2 -> 3, seed 0 -> 1\)"):
        prepare_project_dir(SearchConfig(**common, max_epochs=3, seed=1, project_name="p"))


@pytest.mark.parametrize(
    "tuner, refused", [("grid", False), ("random", False), ("hyperband", True)]
)
def test_hyperband_settings_refuse_a_resumed_search_only_for_hyperband(tuner, refused):
    # `--factor 4 --tuner grid` once, then the same grid search without --factor: the
    # factor never reached the grid tuner, so the search is the same one.
    stored = SearchConfig(space="a_grid", tuner=tuner, factor=4, hyperband_iterations=2).identity()
    again = SearchConfig(space="a_grid", tuner=tuner)
    expected = ["factor", "hyperband_iterations"] if refused else []
    assert again.identity_differences(stored) == expected
    other = SearchConfig(space="a_grid", tuner=tuner, seed=1)
    assert "seed" in other.identity_differences(stored)
    assert again.identity_differences(None) != []


def test_config_validation():
    with pytest.raises(ValueError, match="factor"):
        SearchConfig(space="a_grid", factor=1)
    with pytest.raises(
        ValueError,
        match="unknown search space 'b_grid'. Did you mean 'a_grid'. Valid spaces: a_grid",
    ):
        SearchConfig(space="b_grid")
    cfg = SearchConfig(space="a_grid", tuner="grid", dataset="mnist_5k").resolved()
    assert cfg.max_epochs == 15 and cfg.project_name == "a_grid_grid_mnist_5k"
    assert np.isfinite(cfg.factor)


def test_trial_ends_write_no_notebook_escape_codes_outside_ipython(capsys):
    """With IPython installed, keras-tuner took scripts for notebooks and wrote
    `ESC[2K` (IPython's clear_output) into tune.py's output and log files."""
    from keras_tuner.src import utils as kt_utils

    import tuning.tuners  # noqa: F401  (applies the fix on import)

    kt_utils.try_clear()
    out = capsys.readouterr().out
    assert out == "\n" and "\x1b" not in out


# ------------------------------------------------------- specifications (audit)


def test_enumerate_space_takes_int_bounds_inclusive_and_gives_up_past_the_limit():
    """A finite space is enumerated only up to `limit` configurations: one more and it
    is sampled like a continuous space (None). An `Int` without a step takes both bounds."""
    hp = kt.HyperParameters()
    hp.Int("units", 1, 3)
    hp.Choice("activation", ["relu", "tanh"])
    combos = enumerate_space(hp)
    assert sorted(c["units"] for c in combos) == [1, 1, 2, 2, 3, 3]
    assert len(enumerate_space(hp, limit=6)) == 6
    assert enumerate_space(hp, limit=5) is None  # 6 > 5: was returned whole (off by one)
    assert enumerate_space(hp, limit=4) is None
    hp.Float("lr", 1e-3, 1e-1)  # continuous
    assert enumerate_space(hp) is None


def test_a_trial_is_scored_by_its_final_epoch():
    """A trial of E epochs reports its metrics after epoch E; a non-finite one is left
    out (keras-tuner would store NaN and warn `All-NaN axis encountered`)."""
    from tuning.tuners import final_metrics

    history = {"val_accuracy": [0.5, 0.9, 0.7], "loss": [2.0, 1.0, float("inf")], "lr": []}
    assert final_metrics(history) == {"val_accuracy": 0.7}


def test_a_grid_defaults_are_report_a_best_cell():
    hp = kt.HyperParameters()
    get_hypermodel("a_grid").declare_hyperparameters(hp)
    assert hp.values == {"batch_size": 128, "lr": 0.03, "epochs": 15}


@pytest.mark.parametrize(
    "max_epochs, choices, default",
    [(None, [3, 5, 7, 10, 15], 15), (15, [3, 5, 7, 10, 15], 15), (10, [3, 5, 7, 10], 10),
     (7, [3, 5, 7], 7), (6, [3, 5], 5), (3, [3], 3)],
)  # fmt: skip
def test_max_epochs_keeps_the_epoch_choices_up_to_and_including_it(max_epochs, choices, default):
    """`--max-epochs E` keeps every epoch choice <= E; the default becomes the largest
    one left when the space's own default (15 for a_grid) is dropped."""
    hp = kt.HyperParameters()
    get_hypermodel("a_grid", max_epochs=max_epochs).declare_hyperparameters(hp)
    (epochs,) = [p for p in hp.space if p.name == "epochs"]
    assert list(getattr(epochs, "values", [epochs.default])) == choices
    assert hp.values["epochs"] == default
    # Under Hyperband (no epochs hyperparameter) the same default is the trained epochs.
    hypermodel = get_hypermodel("a_grid", tune_epochs=False, max_epochs=max_epochs)
    assert hypermodel.epochs(kt.HyperParameters()) == default


def test_fit_shuffles_and_stops_at_a_non_finite_loss_unless_told_otherwise():
    from kmnist_lab.callbacks import DivergenceGuard

    hypermodel = get_hypermodel("a_grid")
    hp = kt.HyperParameters()
    hypermodel.declare_hyperparameters(hp)
    model = _FakeModel()
    hypermodel.fit(hp, model, "x", "y")
    assert model.kwargs["shuffle"] is True and model.kwargs["verbose"] == 0
    # kmnist_lab's guard, not Keras' TerminateOnNaN, which prints a line even under -q
    assert any(isinstance(c, DivergenceGuard) for c in model.kwargs["callbacks"])
    hypermodel.fit(hp, model, "x", "y", shuffle=False, verbose=2)
    assert model.kwargs["shuffle"] is False and model.kwargs["verbose"] == 2


@pytest.mark.parametrize(
    "field, refused, accepted",
    [("max_epochs", 0, 1), ("max_epochs", True, 2), ("max_trials", 0, 1), ("factor", 1, 2),
     ("hyperband_iterations", 0, 1), ("workers", -1, 0), ("expect_workers", -1, 0),
     ("recycle_mb", 0, 1), ("val_fraction", 0.0, 0.01), ("val_fraction", 1.0, 0.99),
     ("seed", -1, 0), ("val_fraction", "0.1", 0.1), ("directory", "", "s"),
     ("directory", None, "s"), ("overwrite", "no", False), ("export", 1, True),
     ("retrain", "yes", True)],
)  # fmt: skip
def test_search_config_refuses_the_first_value_past_each_bound(field, refused, accepted):
    # `overwrite="no"` emptied the search (any non-empty string is true); `val_fraction`
    # as text and `directory=None` failed later, with a TypeError.
    from kmnist_lab.errors import ConfigError

    assert getattr(SearchConfig(space="a_grid", **{field: accepted}), field) == accepted
    with pytest.raises(ConfigError, match=field):
        SearchConfig(space="a_grid", **{field: refused})


def test_search_config_takes_numpy_integers_and_paths(tmp_path):
    import numpy as np

    cfg = SearchConfig(space="a_grid", max_trials=np.int64(2), seed=np.int32(3), directory=tmp_path)
    assert (cfg.max_trials, cfg.seed, cfg.directory) == (2, 3, str(tmp_path))
    assert type(cfg.max_trials) is int and type(cfg.seed) is int


def test_a_restarted_search_leaves_no_marker_for_the_next_one(tmp_path, data_dir, monkeypatch):
    """A search that `--recycle-mb` restarted leaves its markers in the environment; a
    later search in the same process then skipped `overwrite`'s emptying (resuming the
    old search) and reported the first one's restarts."""
    from tuning import run_search
    from tuning.search import _RESTARTS, _RSS0

    monkeypatch.setenv(_RESTARTS, "2")  # as a process `restart` re-executed holds them
    monkeypatch.setenv(_RSS0, "123.0")
    common = dict(space="a_grid", tuner="grid", dataset="kmnist", data_dir=str(data_dir),
                  max_epochs=1, max_trials=1, directory=str(tmp_path), jit="off", export=False,
                  verbose=0)  # fmt: skip
    first = run_search(SearchConfig(**common))
    assert first.summary["session_memory_mb"]["restarts"] == 2  # its own restarts
    import os

    assert _RESTARTS not in os.environ and _RSS0 not in os.environ
    (first.project_dir / "trial_0" / "mark.txt").write_text("from the first search")
    second = run_search(SearchConfig(**common, overwrite=True))
    assert not (second.project_dir / "trial_0" / "mark.txt").exists()  # emptied
    assert second.summary["session_memory_mb"]["restarts"] == 0


def test_a_folder_that_is_not_a_search_is_never_taken_over(tmp_path):
    import dataclasses

    from kmnist_lab.errors import RunFolderError
    from tuning.search import prepare_project_dir

    cfg = SearchConfig(
        space="a_grid", tuner="grid", dataset="mnist_5k", directory=str(tmp_path), project_name="p"
    )
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="is not a kmnist_lab search folder"):
        prepare_project_dir(cfg)
    assert [p.name for p in (tmp_path / "p").iterdir()] == ["notes.txt"]
    (tmp_path / "q").mkdir()  # an empty folder is taken
    prepare_project_dir(dataclasses.replace(cfg, project_name="q"))
    assert (tmp_path / "q" / "search.json").is_file()


@pytest.mark.parametrize(
    "name, which",
    [(".", r"'\.' is `directory` itself"), ("..", r"'\.\.' is the parent of `directory`")],
)
def test_a_project_name_that_is_the_directory_or_its_parent_is_refused(name, which):
    """`--project-name .` would make `--directory` itself the search folder (and
    --overwrite clear it), `..` its parent."""
    from kmnist_lab.errors import ConfigError

    expected = f"`project_name` must name a folder inside `directory`, and {which}"
    with pytest.raises(ConfigError, match=expected):
        SearchConfig(space="a_grid", project_name=name)
    assert SearchConfig(space="a_grid", project_name="...").project_dir.name == "..."


def _cfg(tmp_path, name="p", **kw):
    return SearchConfig(space="a_grid", tuner="grid", dataset="mnist_5k", directory=str(tmp_path),
                        project_name=name, **kw)  # fmt: skip


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_overwrite_never_clears_a_folder_that_is_not_a_search(tmp_path):
    """--overwrite replaces a search; a folder of other files is refused with or without
    it, by a message that does not suggest --overwrite, and keeps every file."""
    from kmnist_lab.errors import RunFolderError
    from tuning.search import prepare_project_dir

    (tmp_path / "mydata" / "sub").mkdir(parents=True)
    (tmp_path / "mydata" / "sub" / "images.npz").write_text("mine")
    (tmp_path / "mydata" / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(RunFolderError) as refused:
            prepare_project_dir(_cfg(tmp_path, "mydata", overwrite=overwrite))
        assert str(refused.value) == (
            f"{tmp_path / 'mydata'} exists and is not a kmnist_lab search folder, and "
            "--overwrite replaces only a search; choose another --project-name or --directory"
        )
    assert _files(tmp_path) == ["mydata/notes.txt", "mydata/sub/images.npz"]
    (tmp_path / "empty").mkdir()  # an empty folder is taken, --overwrite or not
    prepare_project_dir(_cfg(tmp_path, "empty", overwrite=True))
    assert _files(tmp_path / "empty") == ["search.json"]


@pytest.mark.parametrize("text", ['{"pages": ["index.html"]}', "[1, 2]", "{bad"])
def test_another_tools_search_json_does_not_make_a_search_folder(tmp_path, text):
    """Only the search.json this project writes (an object with the search's identity)
    marks a search folder: another tool's folder with a search.json keeps its files."""
    from kmnist_lab.errors import RunFolderError
    from tuning.search import prepare_project_dir

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "search.json").write_text(text)
    (tmp_path / "site" / "index.html").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(RunFolderError, match="is not a kmnist_lab search folder"):
            prepare_project_dir(_cfg(tmp_path, "site", overwrite=overwrite))
    assert _files(tmp_path) == ["site/index.html", "site/search.json"]


def test_an_overwrite_cut_short_leaves_a_search_the_same_command_clears(tmp_path, monkeypatch):
    """search.json goes last: a clearing that fails half-way (a file that cannot be
    deleted, a Ctrl-C) says what stopped it, and the re-run finishes the clearing
    instead of refusing a folder that lost its search.json."""
    import shutil

    from kmnist_lab.errors import RunFolderError
    from tuning import search

    search.prepare_project_dir(_cfg(tmp_path))
    for name in ("trial_0", "trial_1"):
        (tmp_path / "p" / name).mkdir()
        (tmp_path / "p" / name / "checkpoint.weights.h5").write_text("w")
    rmtree = shutil.rmtree

    def fails_on_trial_1(path, *args, **kwargs):
        if Path(path).name == "trial_1":
            raise PermissionError(13, "Permission denied", str(path))
        return rmtree(path, *args, **kwargs)

    monkeypatch.setattr(search.shutil, "rmtree", fails_on_trial_1)
    with pytest.raises(RunFolderError) as refused:
        search.prepare_project_dir(_cfg(tmp_path, overwrite=True))
    assert str(refused.value).startswith(f"cannot empty search folder {tmp_path / 'p'}")
    assert "Permission denied" in str(refused.value) and "trial_1" in str(refused.value)
    assert (tmp_path / "p" / "search.json").is_file()
    monkeypatch.setattr(search.shutil, "rmtree", rmtree)
    search.prepare_project_dir(_cfg(tmp_path, overwrite=True))
    assert _files(tmp_path / "p") == ["search.json"]


def test_a_first_write_cut_short_leaves_a_folder_a_search_still_takes(tmp_path):
    """A search killed while it wrote its first search.json leaves only the temporary
    file of that write: the folder is still the search's to take."""
    from tuning.search import prepare_project_dir

    (tmp_path / "p").mkdir()
    (tmp_path / "p" / ".search.json.k2x9.tmp").write_text('{"iden')
    prepare_project_dir(_cfg(tmp_path))
    assert (tmp_path / "p" / "search.json").is_file()


def test_overwrite_clears_a_search_folder_and_nothing_beside_it(tmp_path):
    from tuning.search import prepare_project_dir

    prepare_project_dir(_cfg(tmp_path))
    (tmp_path / "p" / "trial_0").mkdir()
    (tmp_path / "p" / "trial_0" / "trial.json").write_text("{}")
    (tmp_path / "p" / "trials.csv").write_text("trial_id\n0\n")
    (tmp_path / "sibling").mkdir()
    (tmp_path / "sibling" / "search.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    prepare_project_dir(_cfg(tmp_path, seed=1, overwrite=True))  # other settings: start over
    assert _files(tmp_path) == ["notes.txt", "p/search.json", "sibling/search.json"]
    assert json.loads((tmp_path / "p" / "search.json").read_text())["identity"]["seed"] == 1


def test_overwrite_of_a_linked_search_folder_clears_what_the_link_leads_to(tmp_path):
    """A search folder may be a link (to another disk): --overwrite empties it and keeps
    the link (`shutil.rmtree` refuses links: it crashed with a traceback)."""
    from tuning.search import prepare_project_dir

    prepare_project_dir(_cfg(tmp_path / "disk"))
    (tmp_path / "disk" / "p" / "trials.csv").write_text("trial_id\n0\n")
    (tmp_path / "searches").mkdir()
    os.symlink(tmp_path / "disk" / "p", tmp_path / "searches" / "p")
    prepare_project_dir(_cfg(tmp_path / "searches", overwrite=True))
    assert (tmp_path / "searches" / "p").is_symlink()
    assert _files(tmp_path / "disk") == ["p/search.json"]


@pytest.mark.parametrize("target", [".", ".."])
def test_a_search_folder_that_links_back_to_its_directory_is_refused(tmp_path, target):
    from kmnist_lab.errors import RunFolderError
    from tuning.search import prepare_project_dir

    (tmp_path / "searches").mkdir()
    (tmp_path / "searches" / "search.json").write_text("{}")  # as `--project-name .` left it
    os.symlink(target, tmp_path / "searches" / "loop")
    with pytest.raises(RunFolderError, match="loop leads to .*; choose another --project-name"):
        prepare_project_dir(_cfg(tmp_path / "searches", "loop", overwrite=True))
    assert _files(tmp_path) == ["searches/search.json"]


@pytest.mark.parametrize("how", ["resume", "extend", "overwrite"])
def test_a_search_that_goes_on_drops_the_report_of_its_earlier_state(tmp_path, how):
    """`report.py SEARCH` writes report.md/.html and report_files/ into the search folder;
    a tune.py run that resumes, extends (a larger --max-trials) or starts the search over
    changes what they describe, so they are removed, as a run's are when it trains again.
    A refused re-run (other settings) leaves them."""
    from kmnist_lab.errors import RunFolderError
    from tuning.search import prepare_project_dir

    project = prepare_project_dir(_cfg(tmp_path, max_trials=2))
    report = ["report.html", "report.md", "report_files/trials.png"]
    for name in [*report, "summary.md"]:
        (project / name).parent.mkdir(exist_ok=True)
        (project / name).write_text("trials: 2")
    with pytest.raises(RunFolderError, match="other settings"):
        prepare_project_dir(_cfg(tmp_path, max_trials=2, seed=1))
    assert set(report) <= set(_files(project))
    again = {"resume": {"max_trials": 2}, "extend": {"max_trials": 4},
             "overwrite": {"max_trials": 2, "overwrite": True}}[how]  # fmt: skip
    prepare_project_dir(_cfg(tmp_path, **again))
    assert not set(report) & set(_files(project)) and not (project / "report_files").exists()
    assert ("summary.md" in _files(project)) == (how != "overwrite")


def test_a_search_without_validation_data_is_refused(tmp_path):
    from types import SimpleNamespace

    from conftest import make_images

    from kmnist_lab.errors import ConfigError
    from tuning.search import _search

    x, y = make_images(20)
    dataset = SimpleNamespace(
        summary=lambda: "fake", train=(x, y), val=(x[:0], y[:0]), num_classes=10, name="fake"
    )
    cfg = SearchConfig(space="a_grid", tuner="grid", dataset="mnist_5k", max_epochs=1,
                       max_trials=1, directory=str(tmp_path), verbose=0)  # fmt: skip
    with pytest.raises(ConfigError, match="needs a validation split"):
        _search(cfg.resolved(), None, dataset)
    assert not any(tmp_path.iterdir())


def test_the_tuner_id_makes_a_process_the_chief_or_a_worker(monkeypatch):
    from kmnist_lab.errors import ConfigError
    from tuning.search import distributed_role

    for name in ("KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"):
        monkeypatch.delenv(name, raising=False)
    assert distributed_role() is None
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    with pytest.raises(ConfigError, match="KERASTUNER_ORACLE_PORT is not"):
        distributed_role()
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "8000")
    with pytest.raises(ConfigError, match="KERASTUNER_TUNER_ID is not"):
        distributed_role()
    for tuner_id, role in (("chief", "chief"), ("chief-0", "chief"), ("tuner0", "worker")):
        monkeypatch.setenv("KERASTUNER_TUNER_ID", tuner_id)
        assert distributed_role() == role


@pytest.mark.parametrize(
    "tuner, max_trials, expected",
    [("random", None, 10), ("bayesian", None, 10), ("random", 3, 3), ("grid", None, None),
     ("grid", 4, 4), ("hyperband", None, None)],
)  # fmt: skip
def test_default_trial_budget_of_each_tuner(tuner, max_trials, expected, tmp_path):
    """docs: random/Bayesian default to 10 trials, grid to the whole grid and Hyperband
    to what its brackets need; summary.md's tuner line says the same."""
    from tuning.finalize import _tuner_settings
    from tuning.search import make_tuner

    cfg = SearchConfig(space="a_grid", tuner=tuner, dataset="mnist_5k", max_epochs=2,
                       max_trials=max_trials, directory=str(tmp_path), verbose=0)  # fmt: skip
    assert make_tuner(cfg, 10, 100).oracle.max_trials == expected
    settings = _tuner_settings(cfg.resolved())
    if expected is None:
        assert "max_trials" not in settings
    else:
        assert settings.endswith(f"max_trials={expected}")


def test_a_hyperband_best_trial_reports_its_models_total_epochs(tmp_path, monkeypatch):
    """The best trial continues a model: its `epochs` is the model's total (initial
    epoch + what it trained), its hyperparameters are the space's (no `tuner/...`),
    and its place in Hyperband is reported apart."""
    from types import SimpleNamespace

    from tuning import finalize

    hp = kt.HyperParameters()
    get_hypermodel("a_grid", tune_epochs=False).declare_hyperparameters(hp)
    oracle = HyperbandOracle(objective=kt.Objective("val_accuracy", "max"), hyperparameters=hp,
                             max_epochs=4, factor=2, seed=1)  # fmt: skip
    oracle._set_project_dir(str(tmp_path), "p")
    for _ in range(100):
        trial = oracle.create_trial("tuner0")
        if trial.status != "RUNNING":
            break
        v = trial.hyperparameters.values
        # Continued models score best, longer-trained ones better.
        score = v["tuner/epochs"] + ("tuner/trial_id" in v) + v["lr"]
        trained = float(v["tuner/epochs"] - v["tuner/initial_epoch"])
        oracle.update_trial(trial.trial_id,
                            {"val_accuracy": score, "val_loss": 0.0, "epochs_trained": trained})  # fmt: skip
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
    monkeypatch.setattr(finalize, "write_train_config", lambda *args: {})
    monkeypatch.setattr(finalize, "export_best", lambda *args: {})
    monkeypatch.setattr(finalize, "write_figures", lambda *args, **kwargs: [])
    cfg = SimpleNamespace(project_dir=tmp_path, project_name="p", space="a_grid",
                          tuner="hyperband", max_epochs=4, factor=2, hyperband_iterations=1,
                          max_trials=None, to_dict=lambda: {"space": "a_grid", "tuner": "hyperband"})  # fmt: skip
    tuner = SimpleNamespace(oracle=oracle, hypermodel=SimpleNamespace(summary="hb"))
    summary = finalize.finalize(tuner, cfg, SimpleNamespace(name="fake"))
    best = summary["best"]
    values = oracle.trials[best["trial_id"]].hyperparameters.values
    assert values["tuner/initial_epoch"] == 2 and values["tuner/epochs"] == 4
    assert best["epochs"] == 4  # 2 trained on top of the 2 it continued from
    assert set(best["hyperparameters"]) == {"batch_size", "lr"}
    assert best["hyperband"] == {"bracket": values["tuner/bracket"],
                                 "round": values["tuner/round"],
                                 "trial_id": values["tuner/trial_id"]}  # fmt: skip
    header = (tmp_path / "trials.csv").read_text().splitlines()[0].split(",")
    assert [c for c in header if c.startswith("hp_")] == ["hp_batch_size", "hp_lr"]


def test_trials_csv_leaves_missing_cells_empty_and_summary_lists_the_best_first(tmp_path):
    from tuning import results

    def row(i, status, acc, lr):
        return {"trial_id": str(i), "status": status, "hp_lr": lr, "val_accuracy": acc,
                "epochs": 1, "epochs_trained": 1.0, "worker": "tuner0"}  # fmt: skip

    rows = [row(0, "COMPLETED", 0.5, 0.01), row(1, "COMPLETED", 0.9, 0.02),
            row(2, "COMPLETED", "", 0.03), row(3, "FAILED", float("nan"), 0.03)]  # fmt: skip
    # A trial that reported no score is not a candidate for the best one.
    assert [r["trial_id"] for r in results.completed(rows)] == ["0", "1"]
    path = results.write_trials_csv(rows, ["trial_id", "status", "hp_lr", "val_accuracy"],
                                    tmp_path / "trials.csv")  # fmt: skip
    assert path.read_text().splitlines() == [
        "trial_id,status,hp_lr,val_accuracy", "0,COMPLETED,0.01,0.5", "1,COMPLETED,0.02,0.9",
        "2,COMPLETED,0.03,", "3,FAILED,0.03,",
    ]  # fmt: skip
    summary = {"config": {"space": "mlp", "tuner": "random"}, "dataset": "fake",
               "space_summary": "s", "tuner_settings": "t", "trials_completed": 3,
               "trials_failed": 1, "trials_other": 0, "total_epochs": 4,
               "trial_wall_time_s": 1.0, "workers": ["tuner0"]}  # fmt: skip
    lines = results.summary_markdown(summary, rows, []).splitlines()
    table = lines[lines.index("## Best trials") + 4 :]
    assert table == [
        "| 1 | 0.02 | 90.00 | 1 | 1 | tuner0 |",
        "| 0 | 0.01 | 50.00 | 1 | 1 | tuner0 |",
    ]
    best = {"trial_id": "1", "hyperparameters": {"lr": 0.02}, "epochs": 1, "val_accuracy": 0.9}
    text = results.summary_markdown({**summary, "best": best}, rows, [])
    assert "| best trial | 1: lr=0.02; 1 epoch; val accuracy **90.00%** |" in text
    best["epochs"] = 3
    assert "; 3 epochs;" in results.summary_markdown({**summary, "best": best}, rows, [])


def test_retrain_rescores_a_best_model_that_was_restored(tmp_path):
    """`--retrain` after a search that restored its best model retrains it (and scores
    it anew); without `--retrain`, or once retrained, the stored score stands."""
    import dataclasses
    from types import SimpleNamespace

    from tuning import finalize

    class Retrained(Exception):
        pass

    def build(hp):
        raise Retrained

    cfg = SearchConfig(space="a_grid", tuner="grid", dataset="mnist_5k", directory=str(tmp_path),
                       retrain=True, export=False)  # fmt: skip
    out = tmp_path / "best_model"
    out.mkdir()
    restored = {"trial_id": "0", "identity": cfg.identity(), "retrained": False,
                "artifacts": [], "test_accuracy": 0.5}  # fmt: skip
    tuner = SimpleNamespace(hypermodel=SimpleNamespace(build=build),
                            _get_checkpoint_fname=lambda trial_id: str(tmp_path / "none"))  # fmt: skip
    trial = SimpleNamespace(trial_id="0", hyperparameters=kt.HyperParameters())
    dataset = SimpleNamespace(train=(None, None), val=(None, None))
    (out / "metrics.json").write_text(json.dumps(restored))
    with pytest.raises(Retrained):
        finalize.export_best(tuner, trial, cfg, dataset, 1, out)
    (out / "metrics.json").write_text(json.dumps(restored))
    no_retrain = dataclasses.replace(cfg, retrain=False)
    assert finalize.export_best(tuner, trial, no_retrain, dataset, 1, out) == restored
    retrained = {**restored, "retrained": True}
    (out / "metrics.json").write_text(json.dumps(retrained))
    assert finalize.export_best(tuner, trial, cfg, dataset, 1, out) == retrained


def test_tune_py_defaults_reach_the_search(monkeypatch, tmp_path):
    """Hyperband factor 3 and 1 sweep, --recycle-mb 300 (0: never), -q: no tables."""
    import tuning.search

    seen = []
    monkeypatch.setattr(tuning.search, "run_search", seen.append)  # None: as a worker
    argv = ["--space", "a_grid", "--directory", str(tmp_path)]
    assert _cli.run(tune_script.main, argv) == 0
    assert _cli.run(tune_script.main, [*argv, "--recycle-mb", "0", "-q"]) == 0
    first, second = seen
    assert (first.tuner, first.factor, first.hyperband_iterations) == ("hyperband", 3, 1)
    assert (first.recycle_mb, first.verbose, first.seed, first.dataset) == (300, 1, 0, "auto")
    assert (second.recycle_mb, second.verbose) == (None, 0)


def test_bayesian_replaces_a_repeated_proposal_by_the_untried_point_it_ranks_best(
    tmp_path, monkeypatch
):
    """keras-tuner proposes a configuration already scored: ours takes the untried one
    with the best acquisition (lowest mean - beta * std of the negated score)."""
    from types import SimpleNamespace

    from tuning.tuners import BayesianOracle

    hp = kt.HyperParameters()
    get_hypermodel("a_grid", max_epochs=1).declare_hyperparameters(hp)
    oracle = BayesianOracle(objective=kt.Objective("val_accuracy", "max"), hyperparameters=hp,
                            max_trials=20, seed=0)  # fmt: skip
    oracle._set_project_dir(str(tmp_path), "p")
    oracle.verbose = 0
    (scored,) = _fake_search(oracle, 1)
    monkeypatch.setattr(kt.oracles.BayesianOptimizationOracle, "populate_space",
                        lambda self, trial_id: {"status": "RUNNING", "values": dict(scored)})  # fmt: skip
    target = {"batch_size": 256, "lr": 0.02, "epochs": 1}
    assert target != scored
    space = oracle._nonfixed_space()
    target_x = [p.value_to_prob(target[p.name]) for p in space]

    def predict(x, return_std):  # equal means; only the target is uncertain
        std = np.all(np.isclose(x, target_x), axis=1).astype(float)
        return np.zeros(len(x)), std

    oracle.gpr = SimpleNamespace(predict=predict)
    trial = oracle.create_trial("tuner0")
    assert trial.status == "RUNNING" and trial.hyperparameters.values == target


def test_a_grid_trial_row_leaves_hyperband_columns_empty(tmp_path):
    """trials.csv: outside Hyperband a model's epochs are the epochs its trial trained,
    and bracket, round, initial_epoch and from_trial are empty."""
    from tuning.results import trial_rows

    oracle = _grid_oracle(tmp_path)
    for _ in range(2):
        trial = oracle.create_trial("tuner1")
        oracle.update_trial(trial.trial_id, {"val_accuracy": 0.5, "epochs_trained": 1.0})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
    for row in trial_rows(oracle):
        assert (row["epochs"], row["epochs_trained"], row["worker"]) == (1, 1.0, "tuner1")
        assert [row[k] for k in ("bracket", "round", "initial_epoch", "from_trial")] == [""] * 4


# ---------------------------------------------------------------------- figures


def _trial_row(trial_id, acc, trained, status="COMPLETED", bracket="", rnd="", initial=0,
               from_trial="", **hps):  # fmt: skip
    """A `trials.csv` row as `tuning.results.trial_rows` makes it."""
    return {"trial_id": trial_id, "status": status, **{f"hp_{k}": v for k, v in hps.items()},
            "val_accuracy": acc, "val_loss": "", "epochs_trained": trained, "wall_time_s": 1.0,
            "worker": "", "bracket": bracket, "round": rnd, "initial_epoch": initial,
            "epochs": initial + int(trained) if trained != "" else "", "from_trial": from_trial}  # fmt: skip


def _panels(fig):
    """The heatmap panels of a figure: {title: (grid, cell texts)} (colour bar left out)."""
    return {ax.get_title(): (np.ma.filled(ax.images[0].get_array(), np.nan),
                             [t.get_text() for t in ax.texts])
            for ax in fig.axes if ax.images}  # fmt: skip


def test_an_lr_drawn_from_a_range_gets_a_scatter_not_a_heatmap(tmp_path):
    """The mlp space draws lr log-uniformly: a batch size x lr heatmap would have a column
    per trial, so its figure is val accuracy against lr, a series per batch size."""
    from tuning.figures import accuracy_vs_lr, write_figures

    rows = [
        _trial_row("0", 0.50, 1.0, batch_size=32, lr=0.00047876),
        _trial_row("1", 0.70, 1.0, batch_size=128, lr=0.0738079),
        _trial_row("2", 0.60, 1.0, batch_size=32, lr=0.0123),
        _trial_row("3", "", "", status="RUNNING", batch_size=64, lr=0.5),  # not shown
    ]
    ax = accuracy_vs_lr(rows).axes[0]
    assert ax.get_xscale() == "log"
    series = {c.get_label(): c.get_offsets().tolist() for c in ax.collections}
    assert series == {"batch 32": [[0.00047876, 50.0], [0.0123, 60.0]],
                      "batch 128": [[0.0738079, 70.0]]}  # fmt: skip
    written = write_figures(rows, tmp_path / "figures", lr_values=False)
    assert "figures/val_accuracy_vs_lr.png" in written
    assert not any("heatmap" in name for name in written)
    assert "grid/val_accuracy_heatmap.png" in write_figures(rows, tmp_path / "grid")  # lr values


def test_accuracy_heatmap_holds_each_cells_best_trial_and_its_epochs():
    from tuning.figures import accuracy_heatmap, has_heatmap

    rows = [
        _trial_row("0", 0.50, 3.0, batch_size=32, lr=0.1),
        _trial_row("1", 0.70, 2.0, batch_size=32, lr=0.1),  # the same cell, better
        _trial_row("2", 0.60, 1.0, batch_size=128, lr=0.01),
        _trial_row("3", 0.65, 1.0, batch_size=32, lr=0.01),
        _trial_row("4", "", "", status="RUNNING", batch_size=64, lr=0.5),  # not shown
    ]
    assert has_heatmap(rows) and not has_heatmap(rows[4:])
    (title, (grid, texts)), = _panels(accuracy_heatmap(rows)).items()  # fmt: skip
    assert title == "best trial per cell"
    # batch size (rows) 32, 128 x learning rate (columns) 0.01, 0.1
    np.testing.assert_allclose(grid, [[65.0, 70.0], [60.0, np.nan]])
    assert texts == ["65.0\n1 ep", "70.0\n2 ep", "60.0\n1 ep"]


def test_accuracy_heatmap_has_a_panel_per_epoch_count():
    from tuning.figures import accuracy_heatmap

    rows = [
        _trial_row("0", 0.5, 1.0, batch_size=32, lr=0.1, epochs=1),
        _trial_row("1", 0.6, 2.0, batch_size=32, lr=0.1, epochs=2),
        _trial_row("2", 0.4, 2.0, batch_size=64, lr=0.1, epochs=2),
    ]
    panels = _panels(accuracy_heatmap(rows))
    assert list(panels) == ["1 epochs", "2 epochs"]
    np.testing.assert_allclose(panels["1 epochs"][0], [[50.0], [np.nan]])
    np.testing.assert_allclose(panels["2 epochs"][0], [[60.0], [40.0]])
    assert panels["2 epochs"][1] == ["60.0", "40.0"]  # no epochs note: the panel says it
    # one epoch count: one panel of each cell's best, as without the hyperparameter
    single = [r for r in rows if r["hp_epochs"] == 2]
    assert list(_panels(accuracy_heatmap(single))) == ["best trial per cell"]


def _hyperband_rows():
    # bracket 1: 2 models x 1 epoch, the better one (1) continued to 2 epochs (trial 2);
    # bracket 0: 2 models x 2 epochs; trial 5 is still running.
    return [
        _trial_row("0", 0.40, 1.0, bracket=1, rnd=0),
        _trial_row("1", 0.50, 1.0, bracket=1, rnd=0),
        _trial_row("2", 0.80, 1.0, bracket=1, rnd=1, initial=1, from_trial="1"),
        _trial_row("3", 0.60, 2.0, bracket=0, rnd=0),
        _trial_row("4", 0.55, 2.0, bracket=0, rnd=0),
        _trial_row("5", "", "", status="RUNNING", bracket=0, rnd=0),
    ]


def test_hyperband_brackets_follow_each_model_through_its_rounds():
    from tuning.figures import hyperband_brackets

    fig = hyperband_brackets(_hyperband_rows())
    first, second = fig.axes
    assert first.get_title() == "bracket 1: 2 -> 1 models, 3 epochs"
    assert second.get_title() == "bracket 0: 2 models, 4 epochs"
    lines = [(list(ln.get_xdata()), list(ln.get_ydata())) for ln in first.lines]
    assert lines == [([1], [40.0]), ([1, 2], [50.0, 80.0])]
    assert [t.get_text() for t in first.texts] == ["80.00"]
    assert [t.get_text() for t in second.texts] == ["60.00"]
    assert first.texts[0].xy == (2, 80.0)


def test_epochs_spent_shows_the_running_total_and_the_best_so_far():
    from tuning.figures import budget_curves, epochs_spent

    rows = _hyperband_rows()
    rows.insert(3, _trial_row("2b", "", 1.0, status="FAILED", bracket=1, rnd=1))  # no score
    fig = epochs_spent(rows)
    ax_bar, ax_best, twin = fig.axes
    assert ax_bar.get_title() == "8 epochs in 6 trials"  # the running trial trained nothing yet
    assert [p.get_height() for p in ax_bar.patches] == [1, 1, 1, 1, 2, 2]
    assert list(twin.lines[0].get_ydata()) == [1, 2, 3, 4, 6, 8]
    (best,) = ax_best.lines
    assert list(best.get_xdata()) == [1, 2, 3, 4, 6, 8]
    assert list(best.get_ydata()) == [40.0, 50.0, 80.0, 80.0, 80.0, 80.0]
    curves = budget_curves({"grid": rows[3:], "hyperband": rows})
    (ax,) = curves.axes
    assert [ln.get_label() for ln in ax.lines] == ["grid", "hyperband"]
    assert list(ax.lines[0].get_xdata()) == [1, 3, 5]
    assert list(ax.lines[0].get_ydata()) == [-np.inf, 60.0, 60.0]


def test_write_figures_saves_the_figures_that_apply(tmp_path):
    from tuning.figures import write_figures

    grid = [_trial_row("0", 0.5, 1.0, batch_size=32, lr=0.1)]
    assert write_figures(grid, tmp_path / "a") == [
        "a/val_accuracy_heatmap.png",
        "a/epochs_spent.png",
    ]
    assert write_figures(_hyperband_rows(), tmp_path / "b") == [
        "b/hyperband_brackets.png",
        "b/epochs_spent.png",
    ]
    running = _trial_row("0", "", "", status="RUNNING", bracket=0, batch_size=32, lr=0.1)
    assert write_figures([running], tmp_path / "c") == []  # nothing to show yet
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "epochs_spent.png",
        "hyperband_brackets.png",
    ]


# ---------------------------------------------------------- local cluster (no processes)


class _FakeProcess:
    """A chief/worker process of `launch_local_cluster` that exits with `code` at once
    (None: runs until terminated); the chief writes the search's summary.json."""

    codes: dict = {}
    started: list = []

    def __init__(self, cmd, env, stdout, stderr, cwd):
        self.name = env["KERASTUNER_TUNER_ID"]
        self.cmd, self.env, self.cwd, self.terminated = cmd, env, cwd, False
        self.code = self.codes.get(self.name, 0)
        stdout.write(f"{self.name} says hello\n")
        if self.name == "chief" and self.code == 0:
            project = Path(json.loads(Path(cmd[-1]).read_text())["config"]["directory"])
            (project / "p" / "summary.json").write_text('{"best": 1}')
        self.started.append(self)

    def poll(self):
        return -15 if self.terminated else self.code

    def terminate(self):
        self.terminated = True

    def wait(self, timeout=None):
        return self.poll()


def _cluster(tmp_path, monkeypatch, codes, workers=3):
    from types import SimpleNamespace

    from tuning import distributed

    monkeypatch.setattr(_FakeProcess, "codes", codes)
    monkeypatch.setattr(_FakeProcess, "started", [])
    monkeypatch.setattr(distributed.subprocess, "Popen", _FakeProcess)
    sleeps = []

    def sleep(s):
        sleeps.append(s)
        assert len(sleeps) < 20, "the launcher never noticed how its processes ended"

    monkeypatch.setattr(distributed, "time", SimpleNamespace(sleep=sleep))
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(distributed, "_free_port", lambda: 54321)
    cfg = SearchConfig(space="a_grid", tuner="grid", dataset="kmnist", directory=str(tmp_path),
                       project_name="p", workers=workers, max_epochs=1, overwrite=True)  # fmt: skip
    return cfg, distributed.launch_local_cluster


def test_a_local_cluster_starts_a_chief_and_its_workers(tmp_path, monkeypatch):
    from tuning.distributed import CWD_VARIABLE
    from tuning.search import ROOT

    cfg, launch = _cluster(tmp_path, monkeypatch, {})
    result = launch(cfg)
    assert result.summary == {"best": 1}
    procs = _FakeProcess.started
    assert [p.name for p in procs] == ["chief", "tuner0", "tuner1", "tuner2"]
    config = tmp_path / "p" / "logs" / "launch.json"
    for p in procs:
        assert p.cmd == [sys.executable, "-m", "tuning", str(config)] and p.cwd == str(ROOT)
        assert p.env["KERASTUNER_ORACLE_IP"] == "127.0.0.1"
        assert p.env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)
        assert p.env[CWD_VARIABLE] == str(tmp_path)
        assert p.env["OMP_NUM_THREADS"] == "4"  # 16 cores shared by 4 processes
        assert (tmp_path / "p" / "logs" / f"{p.name}.log").read_text() == f"{p.name} says hello\n"
    assert {p.env["KERASTUNER_ORACLE_PORT"] for p in procs} == {"54321"}  # a free port, for all
    child = json.loads(config.read_text())["config"]
    # each process runs its own share: no nested cluster, no second overwrite (the
    # launcher cleared the folder once); the chief waits for the 3 workers
    assert (child["workers"], child["overwrite"], child["expect_workers"]) == (0, False, 3)


def _trial_json(folder, trial_id, status, score=None, metrics=None):
    (folder / f"trial_{trial_id}").mkdir(exist_ok=True)
    state = {"trial_id": trial_id, "hyperparameters": {}, "metrics": metrics or {},
             "score": score, "best_step": 0, "status": status, "message": None}  # fmt: skip
    (folder / f"trial_{trial_id}" / "trial.json").write_text(json.dumps(state))


def test_trial_progress_reads_only_new_and_unfinished_trials(tmp_path, monkeypatch):
    from kmnist_lab import runs
    from tuning.distributed import TrialProgress

    reads = []
    read_json = runs.read_json

    def counting_read_json(path):
        reads.append(Path(path).relative_to(tmp_path).as_posix())
        return read_json(path)

    monkeypatch.setattr(runs, "read_json", counting_read_json)
    _trial_json(tmp_path, "00", "COMPLETED", 0.8125)
    _trial_json(tmp_path, "01", "RUNNING")
    (tmp_path / "trial_02").mkdir()  # created, trial.json not written yet
    (tmp_path / "trial_03").mkdir()
    (tmp_path / "trial_03" / "trial.json").write_text('{"trial_id": "03", "stat')  # half-written
    (tmp_path / "oracle.json").write_text(json.dumps({"kmnist_workers": {"00": "tuner1"}}))
    progress = TrialProgress(tmp_path, total=12)
    assert progress.resumed_line() is None
    (done,) = progress.poll()
    assert progress.line(done) == (
        "trial 00 done on tuner1: val_accuracy 0.8125 (1/12 trials; best 0.8125)"
    )
    assert sorted(reads) == ["oracle.json", "trial_00/trial.json", "trial_01/trial.json",
                             "trial_03/trial.json"]  # fmt: skip
    reads.clear()
    assert progress.poll() == []
    # Trial 00 has ended and trial 01's file is unchanged: only the unreadable one is read.
    assert reads == ["trial_03/trial.json"]

    _trial_json(tmp_path, "01", "FAILED")
    _trial_json(tmp_path, "02", "COMPLETED", 0.9)
    _trial_json(tmp_path, "03", "COMPLETED", float("nan"))
    workers = {"00": "tuner1", "01": "tuner0", "02": "tuner1"}  # 03's is not recorded yet
    (tmp_path / "oracle.json").write_text(json.dumps({"kmnist_workers": workers}))
    assert [progress.line(t) for t in progress.poll()] == [
        "trial 01 failed on tuner0, see logs/tuner0.log (2/12 trials; best 0.8125)",
        "trial 02 done on tuner1: val_accuracy 0.9000 (3/12 trials; best 0.9000)",
        "trial 03 done: val_accuracy - (4/12 trials; best 0.9000)",
    ]
    reads.clear()
    assert progress.poll() == [] and reads == []  # nothing left to read
    # A search whose total is unknown (Hyperband), resumed: the count alone.
    again = TrialProgress(tmp_path)
    again.poll()
    assert again.resumed_line() == "resuming: 4 trials done before; best val_accuracy 0.9000"
    _trial_json(tmp_path, "04", "COMPLETED", 0.5)
    # keras-tuner holds a diverged trial COMPLETED at the worst score, its metrics say so.
    diverged = {"metrics": {"diverged": {"direction": "max", "observations": []}}}
    _trial_json(tmp_path, "05", "COMPLETED", 0.0, metrics=diverged)
    assert [again.line(t) for t in again.poll()] == [
        "trial 04 done: val_accuracy 0.5000 (5 trials; best 0.9000)",
        "trial 05 diverged (non-finite loss; ranked last) (6 trials; best 0.9000)",
    ]
    assert TrialProgress(tmp_path / "missing").poll() == []


@pytest.mark.parametrize(
    "tuner, max_trials, expected",
    [("grid", None, 12), ("grid", 2, 2), ("grid", 100, 12), ("random", None, 10),
     ("random", 100, 12), ("bayesian", 3, 3), ("hyperband", 5, None)],
)  # fmt: skip
def test_expected_trials_of_a_search(tuner, max_trials, expected):
    """a_grid with --max-epochs 3: 4 batch sizes x 3 lrs x 1 epoch choice = 12 cells."""
    from tuning.distributed import expected_trials

    cfg = SearchConfig(space="a_grid", tuner=tuner, dataset="mnist_5k", max_epochs=3,
                       max_trials=max_trials)  # fmt: skip
    assert expected_trials(cfg) == expected


def test_a_worker_logs_its_memory_readably():
    from tuning.search import memory_text

    memory = {"before_search_mb": 870.45, "after_search_mb": 1029.1, "peak_mb": 1097.6,
              "peak_growth_mb": 227.15, "restarts": 0}  # fmt: skip
    assert memory_text(memory) == "memory peak 1098 MB (+227 MB during the search)"
    assert memory_text({**memory, "restarts": 2}).endswith("during the search), 2 process restarts")


def test_a_local_cluster_prints_each_trial_as_it_ends(tmp_path, monkeypatch, capsys):
    """The launcher's polling loop reports the trials the search folder records, after a
    line for those an earlier run had done; quiet (verbose 0) prints none."""
    import dataclasses

    cfg, launch = _cluster(tmp_path, monkeypatch, {"chief": None, "tuner0": None}, workers=1)
    cfg = dataclasses.replace(cfg, overwrite=False, max_trials=3)
    project = tmp_path / "p"
    project.mkdir()
    (project / "search.json").write_text(json.dumps({"identity": cfg.identity()}))
    _trial_json(project, "0", "COMPLETED", 0.5)

    class Trials(_FakeProcess):  # tuner0 ends trials 1 and 2, then everyone exits
        polls = 0

        def poll(self):
            if self.name == "tuner0":
                Trials.polls += 1
                if Trials.polls == 2:
                    _trial_json(project, "1", "COMPLETED", 0.75)
                    (project / "oracle.json").write_text('{"kmnist_workers": {"1": "tuner0"}}')
                elif Trials.polls == 3:
                    _trial_json(project, "2", "COMPLETED", 0.625)
                    (project / "summary.json").write_text('{"best": 1}')
                    return 0
            return 0 if Trials.polls >= 3 else None

    from tuning import distributed

    monkeypatch.setattr(distributed.subprocess, "Popen", Trials)
    assert launch(cfg).summary == {"best": 1}
    assert capsys.readouterr().out.splitlines() == [
        "resuming: 1/3 trials done before; best val_accuracy 0.5000",
        "trial 1 done on tuner0: val_accuracy 0.7500 (2/3 trials; best 0.7500)",
        "trial 2 done: val_accuracy 0.6250 (3/3 trials; best 0.7500)",
    ]
    for name in ("1", "2"):
        (project / f"trial_{name}" / "trial.json").unlink()
    Trials.polls = 0
    assert launch(dataclasses.replace(cfg, verbose=0)).summary == {"best": 1}
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("code", [1, -9])
def test_a_failed_worker_stops_the_cluster_naming_its_log(tmp_path, monkeypatch, code):
    from tuning.search import SearchError, _lock_project

    cfg, launch = _cluster(tmp_path, monkeypatch, {"chief": None, "tuner1": code, "tuner2": None})
    with pytest.raises(SearchError, match=rf"tuner1 exited with code {code} \(tuner1 says hello\)"):
        launch(cfg)
    # the running ones were stopped, the finished ones left alone; the folder is free
    assert [p.terminated for p in _FakeProcess.started] == [True, False, False, True]
    _lock_project(cfg).release()


def test_a_chief_that_exits_without_a_summary_is_a_search_error(tmp_path, monkeypatch):
    from tuning import distributed
    from tuning.search import SearchError

    cfg, launch = _cluster(tmp_path, monkeypatch, {})

    class NoSummary(_FakeProcess):  # every process exits 0, the chief writes nothing
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            (tmp_path / "p" / "summary.json").unlink(missing_ok=True)

    monkeypatch.setattr(distributed.subprocess, "Popen", NoSummary)
    with pytest.raises(
        SearchError, match=r"chief exited without writing .*summary\.json.*chief\.log"
    ):
        launch(cfg)


def test_a_cluster_process_moves_to_the_callers_folder_and_reports_errors_in_one_line(
    tmp_path, monkeypatch, capsys
):
    from kmnist_lab.errors import ConfigError
    from tuning import distributed

    seen = []

    def run_search(cfg):
        seen.append((os.getcwd(), cfg))
        if cfg.seed == 7:
            raise ConfigError("bad seed")

    monkeypatch.setattr(distributed, "run_search", run_search)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "caller").mkdir()
    monkeypatch.setenv(distributed.CWD_VARIABLE, str(tmp_path / "caller"))
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner1")
    cfg = SearchConfig(space="a_grid", tuner="grid", seed=3)
    (tmp_path / "c.json").write_text(json.dumps({"config": cfg.to_dict()}))
    assert distributed.child_main([str(tmp_path / "c.json")]) == 0
    assert seen == [(str(tmp_path / "caller"), cfg)]
    (tmp_path / "c.json").write_text(json.dumps({"config": {**cfg.to_dict(), "seed": 7}}))
    assert distributed.child_main([str(tmp_path / "c.json")]) == 2
    assert capsys.readouterr().err.strip() == "tuner1: error: bad seed"


@pytest.mark.parametrize("max_epochs, factor", [(1, 3), (2, 3), (3, 4), (4, 5)])
def test_hyperband_below_its_factor_says_it_trains_one_bracket(max_epochs, factor):
    """The note's model count is keras-tuner's own: one bracket, whose size it computes."""
    from tuning.search import one_bracket_note

    oracle = kt.oracles.HyperbandOracle(objective="val_accuracy", max_epochs=max_epochs,
                                        factor=factor)  # fmt: skip
    assert oracle._get_num_brackets() == 1
    models = oracle._get_size(0, 0)
    cfg = SearchConfig(space="mlp", tuner="hyperband", max_epochs=max_epochs, factor=factor)
    note = one_bracket_note(cfg.resolved())
    assert f"--max-epochs {max_epochs} below --factor {factor} has one bracket" in note
    assert f"it trains {models} model{'s' if models > 1 else ''} for {max_epochs} epoch" in note


def test_hyperband_at_or_above_its_factor_and_other_tuners_get_no_note():
    from tuning.search import one_bracket_note

    assert one_bracket_note(SearchConfig(space="mlp", tuner="hyperband", max_epochs=3)) is None
    assert one_bracket_note(SearchConfig(space="mlp", tuner="random", max_epochs=1)) is None
