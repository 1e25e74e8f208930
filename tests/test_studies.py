"""Studies: every study is valid data, runs end to end in --quick mode, resumes, and reports."""

import csv
import json
import logging
import re

import _cli
import pytest
import study as study_script

from kmnist_lab import runs
from kmnist_lab.config import TrainConfig
from kmnist_lab.errors import ConfigError, RunFolderError
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
def test_every_study_runs_quick_and_its_report_lists_every_run(name, mnist_5k, tmp_path, caplog):
    only = QUICK_SUBSETS.get(name, ["*"])
    caplog.set_level(logging.INFO, logger="kmnist_lab")
    result = run_study(
        name, dataset="mnist_5k", quick=True, output_dir=tmp_path, loaded=mnist_5k, only=only
    )
    study = get_study(name)
    # The dataset is described once for the study, not once per run.
    described = [r for r in caplog.records if "train/val/test" in r.getMessage()]
    assert len(described) == (study.kind == "classify"), [r.getMessage() for r in described]
    assert set(result.statuses) == {r.name for r in select_runs(study, only)}
    # Quick mode trains every run to the end (a diverged run would be listed, not fail).
    assert all(s == "complete" for s in result.statuses.values()), result.statuses
    md, page = write_report(result.study_dir)
    text = md.read_text()
    for run in study.runs:
        assert f"`{run.name}`" in text, run.name
    # How much of the study the table holds (a_grid: 6 of its 60 runs) and what it cost.
    done = f"{len(result.statuses)}/{len(study.runs)} runs complete; sum of their wall times "
    assert done in text, text
    html = page.read_text()
    assert html.count("data:image/png;base64,") >= 2 and 'src="report_files' not in html
    if "confusion" in study.extras:
        assert "macro avg" in text and "confusion" in text
    if "per_class_train" in study.extras:
        assert (result.study_dir / study.runs[0].name / "evaluation_train.json").is_file()
    if study.heatmap:
        assert (result.study_dir / "report_files" / f"{name}_heatmap.png").is_file()
    if name == "e_sweeps":  # a factor --quick changed shows what the run trained with
        assert "| `bs_256` |  |  | 256 (ran 32) |  |" in text
        assert "| `bs_16` |  |  | 16 |  |" in text
    if name == "c_optimizers":  # a factor that labels a config (sgdm, momentum 0.5): no "ran"
        assert "| `sgd_momentum` | sgd_momentum | complete |" in text, text
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


def test_a_regression_run_that_trains_again_drops_its_stale_report(tmp_path):
    """As `train` does for a classification run: report.py's files described the run
    this one replaces (an interrupted one), so they go when it trains."""
    from kmnist_lab import studies

    run_dir = tmp_path / "sin_3x50"
    (run_dir / "report_files").mkdir(parents=True)
    (run_dir / "report.md").write_text("the interrupted run")
    (run_dir / "report.html").write_text("the interrupted run")
    cfg = studies.effective_config(get_study("e_regression").runs[0], quick=True)
    studies._run_regression(cfg, run_dir)
    assert (run_dir / "history.csv").is_file()
    assert not any((run_dir / n).exists() for n in ("report.md", "report.html", "report_files"))


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


def test_a_study_on_data_dir_files_continues_on_those_files_only(tmp_path):
    """study.json did not record `--data-dir`: the report's finishing command left it
    out, and a resume trained the remaining runs on whatever copy of the dataset was
    found (another MNIST in the Keras cache), with no warning."""
    from helpers import write_idx_dataset

    from kmnist_lab.studies import _in_study_terms

    data = write_idx_dataset(tmp_path / "data", n_train=60, n_test=20)
    other = write_idx_dataset(tmp_path / "other", n_train=60, n_test=20, seed=5)
    common = dict(dataset="kmnist", quick=True, output_dir=tmp_path / "out")
    first = run_study("e_batchnorm", data_dir=data, only=["without_bn"], **common)
    record = json.loads((first.study_dir / "study.json").read_text())
    assert record["data_dir"] == str(data)
    with pytest.raises(ConfigError, match=rf"trained on files from {data}, not {other}; "
                       rf"pass --data-dir {data} to continue it"):  # fmt: skip
        run_study("e_batchnorm", data_dir=other, **common)
    # The report's command that finishes the study names the files.
    md, _ = write_report(first.study_dir)
    assert (f"`python scripts/study.py e_batchnorm --dataset kmnist --quick --backend "
            f"{record['backend']} --data-dir {data} --output-dir {tmp_path / 'out'}` finishes them"
            in md.read_text())  # fmt: skip
    # A full study continues with the export setting its finished runs had.
    (first.study_dir / "study.json").write_text(json.dumps({**record, "quick": False,
                                                            "export": False}))  # fmt: skip
    with pytest.raises(ConfigError, match="run with --no-export; pass the same to continue"):
        run_study("e_batchnorm", data_dir=data, **{**common, "quick": False})
    # A run folder's refusal names what study.py takes (no --overwrite, no --run-name).
    refusal = RunFolderError(
        "run folder R holds an interrupted run with a different config (lr 0.1 -> 0.2); "
        "pass --overwrite to start over or choose another --run-name"
    )
    assert str(_in_study_terms(refusal, tmp_path / "R")) == (
        "run folder R holds an interrupted run with a different config (lr 0.1 -> 0.2); "
        f"delete {tmp_path / 'R'} to train that run again, or choose another --output-dir"
    )
    busy = RunFolderError("R is in use by process 7; wait for it to finish or choose another "
                          "--run-name")  # fmt: skip
    assert str(_in_study_terms(busy, tmp_path / "R")).endswith(
        "in use by process 7; wait for it to finish, then run the study again"
    )


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


# docs/results.md holds each study's report table as it was run at full settings: the
# runs in order, their factors and epochs, and the report's numbers beside ours. The
# catalog must still state the same studies (a changed grid, epoch count or reference
# number would make those tables describe something the catalog no longer runs).
def _results_doc():
    from pathlib import Path

    return (Path(__file__).resolve().parents[1] / "docs" / "results.md").read_text()


def _doc_tables():
    """{study: (header, rows)} of the first table after each full-settings command
    `python scripts/study.py NAME [--dataset mnist_5k] [--no-export]` in docs/results.md."""
    import itertools
    import re

    text = _results_doc()
    commands = list(re.finditer(r"`python scripts/study\.py ([a-e]_\w+)([^`]*)`", text))
    tables = {}
    for i, m in enumerate(commands):
        name, flags = m.groups()
        if name in tables or set(flags.split()) - {"--dataset", "mnist_5k", "--no-export"}:
            continue
        end = commands[i + 1].start() if i + 1 < len(commands) else len(text)
        lines = text[m.end() : end].splitlines()
        first = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
        if first is None:
            continue
        lines = list(itertools.takewhile(lambda line: line.startswith("|"), lines[first:]))
        cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
        tables[name] = (cells[0], [row for row in cells[2:] if not row[0].startswith("---")])
    return tables


def _doc_value(value):
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    return f"{value:g}"


def test_results_doc_states_every_studys_runs_settings_and_report_numbers():
    tables = _doc_tables()
    assert set(tables) == set(SEEDS_NAMES)
    for name, (header, rows) in tables.items():
        study = get_study(name)
        if study.grid:
            continue  # a_grid: a cell table (the next test)
        col = {h: i for i, h in enumerate(header)}
        assert [row[col["run"]] for row in rows] == [f"`{r.name}`" for r in study.runs], name
        for run, row in zip(study.runs, rows):
            where, orig = (name, run.name), run.original
            assert row[col["epochs"]] == str(run.config["epochs"]), where
            for factor in set(header) & set(run.factors) - {"epochs"}:
                assert row[col[factor]] == _doc_value(run.factors[factor]), (where, factor)
            for factor in set(header) - set(run.factors) - {"epochs"}:
                if name == "e_sweeps" and factor in ("lr", "l2", "batch_size", "activation"):
                    assert row[col[factor]] == "", (where, factor)  # the other sweeps' factor
            if "report %" not in col:
                assert not set(orig) & {"test_accuracy", "test_accuracy_range"}, where
            elif "test_accuracy_range" in orig:
                lo, hi = orig["test_accuracy_range"]
                assert row[col["report %"]] == f"{100 * lo:.2f}–{100 * hi:.2f}", where
            elif "test_accuracy" in orig:
                assert row[col["report %"]] == f"{100 * orig['test_accuracy']:.2f}", where
            else:
                assert row[col["report %"]] == "—", where
            if "report loss" in col:
                loss = orig.get("test_loss")
                assert row[col["report loss"]] == (f"{loss:.3f}" if loss else "—"), where
            if "report wall s" in col:
                assert row[col["report wall s"]] == str(orig["wall_time_s"]), where
            if "train acc %" in col and "train_accuracy" in orig:
                assert f"(report {100 * orig['train_accuracy']:.2f})" in row[col["train acc %"]]
            if "report mean error" in col:
                assert row[col["report mean error"]] == f"{orig['mean_error']:.2e}", where
        extra = {k for r in study.runs for k in r.original} - {
            "test_accuracy", "test_accuracy_range", "test_loss", "wall_time_s",
            "train_accuracy", "mean_error",
        }  # fmt: skip
        assert not extra, (name, extra)


def test_a_grid_matches_the_grid_in_the_results_doc():
    """Report A's hand grid as docs/results.md tabulates it: a row per (batch, lr), a
    column per epoch count, the report's number (92.25) in its best cell only."""
    header, rows = _doc_tables()["a_grid"]
    epochs = [int(h.split()[0]) for h in header[2:]]
    cells = {(int(row[0]), float(row[1]), e): cell for row in rows
             for e, cell in zip(epochs, row[2:])}  # fmt: skip
    study = get_study("a_grid")
    runs_ = {(r.factors["batch_size"], r.factors["lr"], r.factors["epochs"]): r for r in study.runs}
    assert list(runs_) == list(cells)  # the same cells, in the same order
    for key, run in runs_.items():
        assert run.name == "bs{}_lr{:g}_e{}".format(*key)
        assert ("(report 92.25)" in cells[key]) == bool(run.original), key
    assert runs_[(128, 0.03, 15)].original == {"test_accuracy": 0.9225, "test_loss": 0.272}


def _setting(config, key):
    """A factor's value as the run's config states it."""
    params = config.get("model_params", config)
    if key == "model":
        return config["arch"]
    if key in ("depth", "width"):
        hidden = params["hidden"]
        assert len(set(hidden)) == 1, hidden
        return len(hidden) if key == "depth" else hidden[0]
    if key == "hidden" and "model_params" not in config:
        return "-".join(map(str, config["hidden"]))
    if key in ("activation", "batchnorm"):
        return params[key]
    return config[key]


@pytest.mark.parametrize("name", SEEDS_NAMES)
def test_every_runs_factors_are_the_settings_it_trains_with(name):
    """The factors label a run in tables and heatmaps: each must be what it trains with."""
    changes = {  # b_resnet: its `change` factor names the one setting off the baseline
        "baseline": {}, "sigmoid": {"activation": "sigmoid"}, "tanh": {"activation": "tanh"},
        "lr 0.1": {"lr": 0.1}, "batch 1000": {"batch_size": 1000},
    }  # fmt: skip
    study = get_study(name)
    base = study.runs[0].config
    for run in study.runs:
        for key, value in run.factors.items():
            if key == "change":
                want = changes[value]
                cfg, params = run.config, run.config["model_params"]
                diff = {k: v for k, v in cfg.items() if k != "model_params" and base[k] != v}
                assert {**diff, **params} == want, run.name
            elif name == "c_optimizers" and key == "optimizer":
                assert value == run.name  # sgd_momentum: SGD + momentum 0.5 (report C)
                want = {"sgd_momentum": ("sgdm", 0.5)}.get(value, (value, None))
                assert (run.config["optimizer"], run.config["momentum"]) == want, run.name
            else:
                assert _setting(run.config, key) == value, (run.name, key)


def test_studies_use_the_settings_their_reports_and_docs_state():
    """Settings the reports (and docs/results.md) state, one reference value each."""

    def cfgs(name):
        return {r.name: r.config for r in get_study(name).runs}

    a = cfgs("a_losses")
    for loss in ("am_softmax", "arm_softmax"):  # "(m = 0.2, s = 30)"
        assert a[loss]["loss_params"] == {"margin": 0.2, "scale": 30.0}, loss
    assert a["ce"]["loss_params"] == {}
    opt = cfgs("a_optimizers")
    # "PyTorch's defaults (Adam 1e-3, Adagrad 1e-2, Adamax 2e-3, ASGD 1e-2, Rprop 1e-2)"
    assert {n: (c["optimizer"], c["lr"]) for n, c in opt.items() if c["batch_size"] == 128} == {
        "mbgd": ("sgd", 0.03), "adam": ("adam", 1e-3), "adagrad": ("adagrad", 1e-2),
        "adamax": ("adamax", 2e-3), "asgd": ("asgd", 1e-2), "rprop": ("rprop", 1e-2),
    }  # fmt: skip
    assert [n for n, c in opt.items() if c.get("precise_bn")] == ["rprop_fullbatch_precise_bn"]
    # Adagrad as torch.optim.Adagrad: accumulator from 0, eps 1e-10 (reports A and C).
    torch_adagrad = {"initial_accumulator_value": 0.0, "epsilon": 1e-10}
    for name in ("a_optimizers", "c_optimizers"):
        for run_name, cfg in cfgs(name).items():
            expected = torch_adagrad if cfg["optimizer"] == "adagrad" else {}
            assert cfg["optimizer_params"] == expected, (name, run_name)
    b = cfgs("b_resnet")["baseline"]  # "Adam at lr 0.01", batch 64, 10 epochs
    assert (b["arch"], b["optimizer"], b["lr"], b["batch_size"], b["epochs"]) == (
        "resnet18", "adam", 0.01, 64, 10,
    )  # fmt: skip
    # Report E's solver (ours): SGD + momentum 0.9, lr 0.01, batch 64, 10 epochs (30 with
    # augmentation), wherever a run does not vary the setting.
    for name in ("e_depth_width", "e_sweeps", "e_batchnorm", "e_augmentation"):
        for run in get_study(name).runs:
            cfg = run.config
            expected = {"optimizer": "sgdm", "momentum": 0.9, "lr": 0.01, "batch_size": 64,
                        "epochs": 30 if name == "e_augmentation" else 10, "l2": 0.0}  # fmt: skip
            got = {k: cfg[k] for k in expected if k not in run.factors}
            assert got == {k: v for k, v in expected.items() if k in got}, (name, run.name)
        # ...and what the study says it uses (in its notes, which the report prints after
        # the description) agrees (e_augmentation's description once said "10 epochs"
        # beside "30 epochs").
        study = get_study(name)
        solver = r"we use SGD \+ momentum 0.9, lr 0.01, batch 64, (\d+) epochs"
        assert re.findall(solver, study.notes) == [str(expected["epochs"])], (name, study.notes)
        assert re.findall(r"(\d+) epochs", study.description) in ([], [str(expected["epochs"])])
    bn = cfgs("e_batchnorm")  # 8 hidden sigmoid layers of 100 units
    assert {n: c["model_params"] for n, c in bn.items()} == {
        n: {"hidden": [100] * 8, "activation": "sigmoid", "batchnorm": flag}
        for n, flag in (("without_bn", False), ("with_bn", True))
    }
    # One seed for every run: a grid cell's curve is the start of its longer cells'.
    for name in SEEDS_NAMES:
        assert {r.config["seed"] for r in get_study(name).runs} == {0}, name


def test_extras_are_what_the_descriptions_promise():
    for name in SEEDS_NAMES:
        study = get_study(name)
        text = study.description.lower()
        if "confusion matrix" in text:
            assert "confusion" in study.extras, name
        assert ("per_class_train" in study.extras) == ("per-class accuracy on train" in text)
    assert get_study("b_resnet").extras == ("confusion", "per_class_train", "epoch_loss")
    assert get_study("c_optimizers").extras == ("confusion",)
    # A heatmap has one run per cell: d_losses_activations' 50-epoch tanh runs stay out.
    for name in SEEDS_NAMES:
        study = get_study(name)
        if study.heatmap:
            cells = [tuple(r.factors[f] for f in study.heatmap) for r in study.runs
                     if all(r.factors.get(k) == v for k, v in study.heatmap_where)]  # fmt: skip
            assert len(cells) == len(set(cells)) > 1, name
    d = get_study("d_losses_activations")  # the heatmap: the 10-epoch lr-1e-4 runs only
    assert d.heatmap == ("activation", "loss") and d.heatmap_where == (("epochs", 10),)


def test_a_studys_notes_do_not_repeat_its_description():
    # The report prints both, one paragraph after the other.
    for name in list_studies():
        study = get_study(name)
        sentences = [x.strip(" .") for x in re.split(r"[.;] ", study.notes or "")]
        repeated = [x for x in sentences if len(x) > 20 and x in study.description]
        assert not repeated, (name, repeated)


# Run counts as docs/results.md reports them ("60 runs", "8/8 runs complete", ...).
RUN_COUNTS = {"a_models": 3, "a_grid": 60, "a_losses": 3, "a_optimizers": 8, "b_resnet": 5,
              "c_optimizers": 4, "d_losses_activations": 16, "e_regression": 1,
              "e_depth_width": 20, "e_sweeps": 18, "e_batchnorm": 2, "e_augmentation": 2}  # fmt: skip


def test_script_list_gives_each_studys_run_count_and_report(capsys):
    assert _cli.run(study_script.main, ["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines] == [
        [name, str(n), "run" if n == 1 else "runs", "report", name[0].upper()]
        for name, n in RUN_COUNTS.items()
    ]


def test_script_lists_one_studys_runs_by_name(capsys):
    """`study.py --list` gave only run counts and refused a NAME, so the names that --only
    matches could not be listed. `study.py NAME --list` prints each run, one a line: its
    name and the settings that vary across the study; with --only, the runs it selects."""
    assert _cli.run(study_script.main, ["a_grid", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [r.name for r in get_study("a_grid").runs]
    assert lines[0].split(None, 1)[1] == "batch_size 32, lr 0.01, epochs 3"
    assert _cli.run(study_script.main, ["a_grid", "--list", "--only", "bs128_*_e15"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == [
        "bs128_lr0.01_e15", "bs128_lr0.02_e15", "bs128_lr0.03_e15"]  # fmt: skip
    assert _cli.run(study_script.main, ["e_regression", "--list"]) == 0
    assert capsys.readouterr().out == "sin_3x50  hidden 50-50-50\n"
    # Run flags other than --only would be ignored: refused, as without NAME.
    assert _cli.run(study_script.main, ["a_grid", "--list", "--quick", "--dataset", "kmnist"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        "--list lists the runs of a_grid and trains none, so --dataset, --quick would be "
        "ignored; drop --list to run a_grid with them (see --help)"
    ), err
    assert _cli.run(study_script.main, ["a_grid", "--list", "--only", "nope*"]) == 2
    assert "matches no run of a_grid" in capsys.readouterr().err


def test_script_passes_every_run_flag_and_prints_the_summary(tmp_path, monkeypatch, capsys):
    """study.py hands each flag to `run_study` (nothing trains here) and prints one
    summary line, plus the diverged runs by name."""
    from kmnist_lab import studies

    calls = []

    def fake_run_study(name, **kwargs):
        calls.append((name, kwargs))
        statuses = {"d2_w10": "complete", "d2_w20": "diverged", "d4_w10": "complete"}
        return studies.StudyResult(get_study(name), tmp_path / name, "mnist_5k", statuses,
                                   ["d2_w20"])  # fmt: skip

    monkeypatch.setattr(studies, "run_study", fake_run_study)
    argv = ["e_depth_width", "--dataset", "mnist_5k", "--data-dir", str(tmp_path / "data"),
            "--epochs-scale", "0.5", "--quick", "--only", "d2_*", "--only", "d4_w10",
            "--output-dir", str(tmp_path), "--no-export", "-q"]  # fmt: skip
    assert _cli.run(study_script.main, argv) == 0
    assert calls == [("e_depth_width", {
        "dataset": "mnist_5k", "data_dir": str(tmp_path / "data"), "epochs_scale": 0.5,
        "quick": True, "output_dir": str(tmp_path), "export": False, "only": ["d2_*", "d4_w10"],
    })]  # fmt: skip
    assert capsys.readouterr().out.splitlines() == [
        f"e_depth_width on mnist_5k: 2 complete, 1 diverged (1 trained now) -> "
        f"{tmp_path / 'e_depth_width'}",
        "diverged: d2_w20",
    ]
    calls.clear()
    assert _cli.run(study_script.main, ["e_batchnorm", "-q"]) == 0
    assert calls == [("e_batchnorm", {
        "dataset": "auto", "data_dir": None, "epochs_scale": 1.0, "quick": False,
        "output_dir": None, "export": True, "only": None,
    })]  # fmt: skip
    assert "diverged:" in capsys.readouterr().out  # the fake's d2_w20


def test_quiet_study_report_prints_the_summary_and_leaves_the_reports_warnings_to_it(
    tmp_path, monkeypatch, capsys, caplog
):
    """`study.py NAME -q --report` printed the report's warning of unfinished runs, which
    `report.py -q` leaves to the report: -q prints the summary, not the report's warnings
    (without -q they show, as with report.py)."""
    from kmnist_lab import studies
    from kmnist_lab.studies import _study_record

    study_dir = tmp_path / "e_batchnorm"
    study_dir.mkdir()
    record = _study_record(get_study("e_batchnorm"), "mnist_5k", True, 1.0)
    runs.atomic_write_json(study_dir / "study.json", record)  # neither run trained
    result = studies.StudyResult(get_study("e_batchnorm"), study_dir, "mnist_5k", {}, [])
    monkeypatch.setattr(studies, "run_study", lambda name, **kwargs: result)
    said = "0 of 2 runs finished; 2 not yet: without_bn (missing), with_bn (missing)"
    for quiet in (False, True):
        caplog.clear()
        with caplog.at_level("WARNING", logger="kmnist_lab"):
            argv = ["e_batchnorm", "--quick", "--report", *(["-q"] if quiet else [])]
            assert _cli.run(study_script.main, argv) == 0
        warnings = [r.getMessage() for r in caplog.records]
        assert warnings == ([] if quiet else [f"{study_dir}: {said}. python scripts/study.py "
                                               f"e_batchnorm --dataset mnist_5k --quick --backend "
                                               f"tensorflow --output-dir {tmp_path} finishes them, "
                                               "then re-run the report."]), warnings  # fmt: skip
        out = capsys.readouterr().out.splitlines()
        assert out[1:] == [f"report: {study_dir / 'report.md'} and {study_dir / 'report.html'}"]
        assert said in (study_dir / "report.md").read_text().replace("`", "")  # either way
    assert logging.getLogger("kmnist_lab").level == logging.NOTSET  # -q does not outlive main


def test_a_quick_runs_batch_log_has_a_row_per_step(mnist_5k, tmp_path):
    """A quick run trains 4 steps per epoch (128 images, batches of 32), which the default
    steps per compiled call (10, capped at an epoch's 4) ran as one call: batches.csv had
    one row per epoch and its loss-per-iteration figure one point. Quick runs take one
    step per call; full runs keep the default (`speed.resolve_steps_per_execution`)."""
    result = run_study("e_batchnorm", quick=True, output_dir=tmp_path, loaded=mnist_5k,
                       only="with_bn")  # fmt: skip
    run_dir = result.study_dir / "with_bn"
    with open(run_dir / "batches.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["epoch"], r["step"], r["steps"]) for r in rows] == [
        ("1", str(step), "1") for step in range(1, 5)
    ]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["config"]["steps_per_execution"] == config["speed"]["steps_per_execution"] == 1


def test_runs_summary_counts_complete_runs_and_sums_only_readable_wall_times():
    """The line under a study's table: complete runs out of all, and the time of the
    wall times that are numbers (a missing run, a damaged or NaN `wall_time_s`, add 0)."""
    from kmnist_lab.report.study import runs_summary

    entries = [
        {"status": "complete", "metrics": {"wall_time_s": 90.0}},
        {"status": "complete", "metrics": {"wall_time_s": 30}},
        {"status": "diverged", "metrics": {"wall_time_s": float("nan")}},
        {"status": "running", "metrics": {"wall_time_s": "12"}},
        {"status": "missing", "metrics": None},
    ]
    assert runs_summary(entries) == "2/5 runs complete; sum of their wall times 2.0 min."
    # Under a minute in seconds, as a quick study's runs take (not "0.0 min").
    assert runs_summary(entries[1:]) == "1/4 runs complete; sum of their wall times 30 s."
    assert runs_summary([]) == "0/0 runs complete; sum of their wall times 0 s."
