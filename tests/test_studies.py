"""Studies: every study is valid data, runs end to end in --quick mode, resumes, and reports."""

import json

import _cli
import pytest
import study as study_script

from kmnist_lab import runs
from kmnist_lab.config import TrainConfig
from kmnist_lab.errors import ConfigError
from kmnist_lab.report import write_report
from kmnist_lab.studies import (
    effective_config,
    get_study,
    list_studies,
    run_study,
    select_runs,
)  # fmt: skip

SEEDS_NAMES = [
    "a_models", "a_grid", "a_losses", "a_optimizers", "b_resnet", "c_optimizers", "d_losses_activations",
    "e_regression", "e_depth_width", "e_sweeps", "e_batchnorm", "e_augmentation",
]  # fmt: skip


@pytest.fixture(scope="module")
def mnist_5k():
    from kmnist_lab.data import load_dataset

    return load_dataset("mnist_5k")


def test_the_studies_have_their_fixed_names():
    assert list_studies() == SEEDS_NAMES


@pytest.mark.parametrize("name", SEEDS_NAMES)
def test_every_run_is_a_valid_explicit_config(name):
    study = get_study(name)
    names = [r.name for r in study.runs]
    assert len(names) == len(set(names)), "run names must be unique"
    for run in study.runs:
        if study.kind == "regression":
            assert {"hidden", "epochs", "batch_size", "lr"} <= set(run.config)
            continue
        # Every setting explicit: per-arch defaults (adam, cosine, augment) never leak in.
        for key in ("epochs", "batch_size", "optimizer", "lr", "lr_schedule", "augment"):
            assert run.config[key] is not None, (run.name, key)
        cfg = TrainConfig(**run.config, run_name=run.name).resolved()
        assert cfg.to_dict()["lr_schedule"] == "constant"


def test_report_settings_are_reproduced():
    a = {r.name: r for r in get_study("a_models").runs}["relu_mlp"].config
    assert (a["optimizer"], a["lr"], a["batch_size"], a["epochs"], a["augment"]) == (
        "sgd",
        0.03,
        128,
        15,
        False,
    )
    d = get_study("d_losses_activations").runs[0].config
    assert (d["optimizer"], d["lr"], d["momentum"], d["weight_decay"], d["batch_size"]) == (
        "sgdm", 1e-4, 0.9, 1e-5, 100,
    )  # fmt: skip
    assert d["model_params"] == {"hidden": [128], "activation": "tanh", "init_std": 0.01}
    assert len(get_study("e_depth_width").runs) == 20
    c = {r.name: r.config for r in get_study("c_optimizers").runs}
    assert c["sgd_momentum"]["momentum"] == 0.5 and all(v["lr"] == 0.01 for v in c.values())


def test_effective_config_scales_and_shrinks():
    run = get_study("a_models").runs[0]
    assert effective_config(run, epochs_scale=0.5)["epochs"] == 8
    assert effective_config(run, epochs_scale=0.01)["epochs"] == 1
    quick = effective_config(run, quick=True)
    assert quick["epochs"] == 1 and quick["batch_size"] <= 32
    with pytest.raises(ConfigError, match="epochs_scale"):
        effective_config(run, epochs_scale=0)


def test_quick_regression_runs_train_two_epochs_on_128_points():
    """A quick regression run (the sine fits) shrinks its training set, not only its
    epochs and batch; the other settings and the catalog's own config stay as they are."""
    run = get_study("e_regression").runs[0]
    cfg = run.config
    assert (cfg["epochs"], cfg["batch_size"], cfg["n_train"]) == (300, 32, 1000)
    quick = effective_config(run, quick=True, epochs_scale=0.5)
    assert (quick["epochs"], quick["batch_size"], quick["n_train"]) == (2, 32, 128)
    assert {k: v for k, v in quick.items() if k not in ("epochs", "n_train")} == {
        k: v for k, v in run.config.items() if k not in ("epochs", "n_train")
    }
    assert run.config["n_train"] == 1000 and run.config["epochs"] == 300
    assert effective_config(run, epochs_scale=0.5) == {**run.config, "epochs": 150}


# Runs that differ from others of their study only in settings a quick run shrinks
# away or that no other code path depends on: a few stand for the rest (every
# component they use is tested on its own). The unrun ones are listed as missing.
QUICK_SUBSETS = {
    # 60 cells of batch size x lr x epochs.
    "a_grid": ["bs128_lr0.03_e*", "bs32_lr0.01_e3"],
    # Five ResNet-18s (about 50 s); quick mode trains each at batch 32 for one epoch,
    # so lr_0.1 and batch_1000 are the baseline's code path.
    "b_resnet": ["baseline", "sigmoid"],
    # 20 MLPs of depth x width: the grid's corners (its heatmap with missing cells).
    "e_depth_width": ["d2_w10", "d2_w100", "d16_w10", "d16_w100"],
    # One run per sweep, both batch-size ends, every activation.
    "e_sweeps": ["lr_0.1", "l2_0.1", "bs_16", "bs_256", "act_*"],
    # Every loss once, every activation once, and one 50-epoch variant.
    "d_losses_activations": [
        *(f"tanh_{loss}" for loss in ("ce", "hinge", "kld", "focal")),
        "selu_ce",
        "hard_swish_ce",
        "tanh_ce_lr0.01_50ep",
    ],
}


# Every study, end to end, in the default run.
@pytest.mark.parametrize("name", SEEDS_NAMES)
def test_every_study_runs_quick_and_its_report_lists_every_run(name, mnist_5k, tmp_path):
    only = QUICK_SUBSETS.get(name, ["*"])
    result = run_study(
        name, dataset="mnist_5k", quick=True, output_dir=tmp_path, loaded=mnist_5k, only=only
    )
    study = get_study(name)
    assert set(result.statuses) == {r.name for r in select_runs(study, only)}
    assert all(s in ("complete", "diverged") for s in result.statuses.values()), result.statuses
    md, page = write_report(result.study_dir)
    text = md.read_text()
    for run in study.runs:
        assert f"`{run.name}`" in text, run.name
    html = page.read_text()
    assert html.count("data:image/png;base64,") >= 2 and 'src="report_files' not in html
    if "confusion" in study.extras:
        assert "macro avg" in text and "confusion" in text
    if "per_class_train" in study.extras:
        assert (result.study_dir / study.runs[0].name / "evaluation_train.json").is_file()
    if study.heatmap:
        assert (result.study_dir / "report_files" / f"{name}_heatmap.png").is_file()
    # Smoke-test numbers are never set beside the report's.
    assert "**quick mode**" in text and "| report % |" not in text and "_vs_report" not in text
    if study.grid:
        assert (result.study_dir / "report_files" / f"{name}_grid.png").is_file()
        assert "Best validation accuracy" in text
        # Only the 6 runs that ran are counted; the 54 missing ones show no epochs.
        assert (
            "but 6 of them ran with others" in text and "`bs32_lr0.01_e3` ran with epochs 1" in text
        )
        assert "| `bs256_lr0.03_e15` | 256 | 0.03 | missing | — |" in text
    if study.kind == "regression":
        metrics = json.loads((result.study_dir / "sin_3x50" / "metrics.json").read_text())
        assert {"mean_error", "max_abs_error"} <= set(metrics)
        assert "mean error" in text


def test_report_a_hand_grid_is_sixty_cells_trained_from_scratch():
    study = get_study("a_grid")
    cells = {(r.factors["batch_size"], r.factors["lr"], r.factors["epochs"]) for r in study.runs}
    assert len(study.runs) == len(cells) == 4 * 3 * 5
    assert {c[0] for c in cells} == {32, 64, 128, 256}
    assert {c[1] for c in cells} == {0.01, 0.02, 0.03}
    assert {c[2] for c in cells} == {3, 5, 7, 10, 15}
    for run in study.runs:
        cfg, f = run.config, run.factors
        assert (cfg["arch"], cfg["optimizer"], cfg["loss"], cfg["momentum"]) == (
            "plain_mlp", "sgd", "ce", None,
        )  # fmt: skip
        assert (cfg["batch_size"], cfg["lr"], cfg["epochs"]) == (
            f["batch_size"], f["lr"], f["epochs"],
        )  # fmt: skip
    best = [r for r in study.runs if r.original]
    assert [r.name for r in best] == ["bs128_lr0.03_e15"]
    assert best[0].original == {"test_accuracy": 0.9225, "test_loss": 0.272}


def test_a_diverging_regression_run_is_recorded_not_raised(tmp_path, monkeypatch):
    import dataclasses

    from kmnist_lab import studies

    sin = get_study("e_regression")
    run = dataclasses.replace(sin.runs[0], config={**sin.runs[0].config, "optimizer": "sgd",
                                                   "lr": 1e30, "lr_schedule": "constant"})  # fmt: skip
    monkeypatch.setattr(studies, "get_study", lambda name: dataclasses.replace(sin, runs=(run,)))
    result = run_study("e_regression", quick=True, output_dir=tmp_path)
    assert result.statuses == {"sin_3x50": "diverged"} and result.trained == []
    assert runs.run_status(result.study_dir / "sin_3x50") == "diverged"
    # A re-run reports it the same way (skipped as finished, not retrained).
    assert run_study("e_regression", quick=True, output_dir=tmp_path).statuses == result.statuses


def test_a_ctrl_c_that_keras_swallows_still_stops_a_regression_run(
    tmp_path, monkeypatch, python_sigint
):
    """e_regression fits outside `train`: it carries the same InterruptCheck, so a Ctrl-C
    dropped inside Keras' `fit` leaves the run interrupted, not complete."""
    import signal

    from helpers import swallow_a_ctrl_c_after_the_first_epoch

    from kmnist_lab import callbacks

    swallow_a_ctrl_c_after_the_first_epoch(monkeypatch, callbacks.EpochStats)
    with pytest.raises(KeyboardInterrupt):
        run_study("e_regression", quick=True, output_dir=tmp_path, only=["sin_3x50"])
    run = tmp_path / "e_regression" / "sin_3x50"
    assert not (run / "metrics.json").exists()
    assert runs.run_status(run) == "incomplete"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_select_runs_by_shell_pattern():
    study = get_study("a_grid")
    assert [r.name for r in select_runs(study, "bs256_lr0.03_*")] == [
        f"bs256_lr0.03_e{e}" for e in (3, 5, 7, 10, 15)
    ]
    # Several patterns keep the study's order, each run once.
    names = [r.name for r in select_runs(study, ["*_e15", "bs32_lr0.01_*"])]
    assert names[:5] == [f"bs32_lr0.01_e{e}" for e in (3, 5, 7, 10, 15)] and len(names) == 16
    assert select_runs(study) == list(study.runs)
    with pytest.raises(ConfigError, match=r"'bs999\*' matches no run of a_grid\. Its runs: bs32_"):
        select_runs(study, ["*_e15", "bs999*"])
    with pytest.raises(ConfigError, match=r"'BS128\*' matches no run"):  # case matters
        select_runs(study, "BS128*")
    with pytest.raises(ConfigError, match="at least one pattern"):
        select_runs(study, [])


def test_rerun_skips_complete_runs_and_redoes_only_the_missing_one(mnist_5k, tmp_path):
    first = run_study("e_batchnorm", quick=True, output_dir=tmp_path, loaded=mnist_5k)
    assert first.trained == ["without_bn", "with_bn"]
    (first.study_dir / "with_bn" / runs.COMPLETE_MARKER).unlink()  # as if killed before the end
    second = run_study("e_batchnorm", quick=True, output_dir=tmp_path, loaded=mnist_5k)
    assert second.trained == ["with_bn"]
    assert runs.is_complete(first.study_dir / "with_bn")
    third = run_study("e_batchnorm", quick=True, output_dir=tmp_path, loaded=mnist_5k)
    assert third.trained == []


def test_a_study_folder_refuses_other_settings(mnist_5k, tmp_path):
    run_study("e_regression", quick=True, output_dir=tmp_path)
    with pytest.raises(ConfigError, match="epochs_scale"):
        run_study("e_regression", quick=True, output_dir=tmp_path, epochs_scale=2.0)


def test_a_study_folder_refuses_another_backend(tmp_path):
    """Runs of one study on two backends were mixed silently (c_optimizers: three runs
    on jax, one re-trained on tensorflow), and the report compared them."""
    import keras

    first = run_study("e_regression", quick=True, output_dir=tmp_path)
    record = json.loads((first.study_dir / "study.json").read_text())
    assert record["backend"] == keras.backend.backend()
    other = "torch" if keras.backend.backend() != "torch" else "jax"
    (first.study_dir / "study.json").write_text(json.dumps({**record, "backend": other}))
    with pytest.raises(ConfigError, match=f"trained on the {other} backend.*--backend {other}"):
        run_study("e_regression", quick=True, output_dir=tmp_path)
    # A folder from before the backend was recorded continues on any backend.
    del record["backend"]
    (first.study_dir / "study.json").write_text(json.dumps(record))
    run_study("e_regression", quick=True, output_dir=tmp_path)


def test_script_lists_and_runs(tmp_path, capsys):
    assert _cli.run(study_script.main, ["--list"]) == 0
    out = capsys.readouterr().out
    for name in SEEDS_NAMES:
        assert name in out
    assert "20 runs" in out
    argv = ["e_regression", "--quick", "--output-dir", str(tmp_path), "--report", "-q"]
    assert _cli.run(study_script.main, argv) == 0
    out = capsys.readouterr().out
    assert "1 complete" in out and (tmp_path / "e_regression" / "report.html").is_file()


@pytest.mark.parametrize(
    "argv, match",
    [
        (["no_such_study"], "invalid choice"),
        ([], "NAME or --list"),
        (["a_models", "--epochs-scale", "0"], "positive"),
        (["a_models", "--epochs-scale", "nan"], "finite"),
        (["a_models", "--dataset", "cifar"], "invalid choice"),
    ],
)
def test_script_bad_input_is_one_line_exit_2(argv, match, capsys):
    code = _cli.run(study_script.main, argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err and match in err, err


def test_per_class_scores_of_a_cosine_head_use_the_served_scale(tmp_path):
    """evaluation_test.json scores what the exported model serves, `s * cos`: its
    cross-entropy is that of the scaled cosines, not of the bare ones."""
    import types

    import keras
    import numpy as np

    from kmnist_lab.evaluation import score
    from kmnist_lab.losses import get_loss
    from kmnist_lab.models import build_model
    from kmnist_lab.studies import _after_fit, get_study

    keras.utils.set_random_seed(0)
    model = build_model("mlp", hidden=[16], head="cosine", augment=False)
    model.compile(optimizer="sgd", loss=get_loss("am_softmax", scale=30.0))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, 64)
    dataset = types.SimpleNamespace(test=(x, y), class_names=[str(i) for i in range(10)])
    _after_fit(get_study("a_losses"))(model, dataset, tmp_path)
    written = json.loads((tmp_path / "evaluation_test.json").read_text())
    cosines = model.predict(x, verbose=0)
    served = score(y, 30.0 * cosines, dataset.class_names)
    bare = score(y, cosines, dataset.class_names)
    assert written["cross_entropy"] == pytest.approx(served["cross_entropy"], rel=1e-5)
    assert abs(served["cross_entropy"] - bare["cross_entropy"]) > 0.1  # the test can tell
    assert written["accuracy"] == served["accuracy"] == bare["accuracy"]


def _fake_regression_study(monkeypatch, names):
    """e_regression with the runs `names` (copies of sin_3x50) and a `_run_regression`
    that records what it would train instead of fitting; returns that record."""
    import dataclasses

    from kmnist_lab import studies

    sin = get_study("e_regression")
    runs_ = tuple(dataclasses.replace(sin.runs[0], name=n) for n in names)
    monkeypatch.setattr(studies, "get_study", lambda name: dataclasses.replace(sin, runs=runs_))
    trained = []

    def fit(cfg, run_dir):
        trained.append((run_dir.name, cfg["epochs"]))
        return {"test_loss": 0.1}

    monkeypatch.setattr(studies, "_run_regression", fit)
    return trained


def test_a_rerun_skips_finished_runs_and_trains_only_the_unfinished_selected_ones(
    tmp_path, monkeypatch
):
    """Complete (metrics.json) and diverged (status.json) runs are finished: skipped, not
    retrained; an interrupted folder and a missing one are trained; runs outside `only`
    are left as they are (neither trained nor listed)."""
    names = ["done", "diverged", "interrupted", "missing", "other"]
    trained = _fake_regression_study(monkeypatch, names)
    study_dir = tmp_path / "e_regression"
    for name in ("done", "diverged", "interrupted", "other"):
        (study_dir / name).mkdir(parents=True)
    runs.atomic_write_json(study_dir / "done" / runs.COMPLETE_MARKER, {"status": "complete"})
    runs.atomic_write_json(study_dir / "diverged" / "status.json", {"status": "diverged"})
    runs.atomic_write_json(study_dir / "interrupted" / "status.json", {"status": "running"})
    result = run_study("e_regression", quick=True, output_dir=tmp_path, only=["d*", "[im]*"])
    assert trained == [("interrupted", 2), ("missing", 2)]  # quick: 2 epochs each
    assert result.trained == ["interrupted", "missing"]
    assert result.statuses == {"done": "complete", "diverged": "diverged",
                               "interrupted": "complete", "missing": "complete"}  # fmt: skip


def test_a_study_folder_refuses_a_quick_run_over_a_full_one_before_training(tmp_path, monkeypatch):
    """A --quick run of a study whose folder holds full runs (or the reverse) would mix
    smoke-test numbers into the report: refused with the setting named, nothing trained."""
    from kmnist_lab.studies import _study_record

    trained = _fake_regression_study(monkeypatch, ["sin_3x50"])
    study_dir = tmp_path / "e_regression"
    study_dir.mkdir()
    record = _study_record(get_study("e_regression"), "sin", False, 1.0)
    runs.atomic_write_json(study_dir / "study.json", record)
    before = (study_dir / "study.json").read_bytes()
    with pytest.raises(ConfigError, match=r"with quick=False, not True; choose another"):
        run_study("e_regression", quick=True, output_dir=tmp_path)
    assert trained == [] and (study_dir / "study.json").read_bytes() == before


@pytest.mark.parametrize("epochs, scale, expected", [
    (15, 0.5, 8), (5, 0.5, 3), (3, 0.5, 2), (9, 0.5, 5),  # halves round up, all alike
    (100, 0.145, 15),        # 14.499999999999998 in floats: still a half
    (10, 0.33, 3), (10, 0.36, 4),  # otherwise the nearest whole epoch
    (3, 0.1, 1), (300, 0.5, 150),  # at least one
])  # fmt: skip
def test_epochs_scale_rounds_to_the_nearest_epoch_and_halves_up(epochs, scale, expected):
    import dataclasses

    run = get_study("a_models").runs[0]
    run = dataclasses.replace(run, config={**run.config, "epochs": epochs})
    assert effective_config(run, epochs_scale=scale)["epochs"] == expected


def test_a_grid_at_half_its_epochs_keeps_five_distinct_epoch_columns():
    """Python's round() rounds halves to even: at --epochs-scale 0.5 the 3- and 5-epoch
    cells both trained 2 epochs (while 15 became 8), so two columns were one setting."""
    ran = {r.factors["epochs"]: effective_config(r, epochs_scale=0.5)["epochs"]
           for r in get_study("a_grid").runs}  # fmt: skip
    assert ran == {3: 2, 5: 3, 7: 4, 10: 5, 15: 8}


def test_quick_studies_default_to_their_own_folder():
    """Smoke-test runs never land beside full ones (whose folder they would be refused from)."""
    from pathlib import Path

    from kmnist_lab.studies import default_output_dir

    assert default_output_dir("mnist_5k", quick=False) == Path("studies/mnist_5k")
    assert default_output_dir("mnist_5k", quick=True) == Path("studies/mnist_5k-quick")
