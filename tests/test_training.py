"""Training runs end to end on tiny synthetic data: the run folder is the contract."""

import csv
import json
import logging

import numpy as np
import pytest
from conftest import make_images

from kmnist_lab import callbacks, data
from kmnist_lab.config import TrainConfig
from kmnist_lab.errors import ConfigError, RunFolderError
from kmnist_lab.training import DivergedError, train


@pytest.fixture(scope="module")
def tiny_dataset():
    x, y = make_images(90, seed=0)
    xt, yt = make_images(30, seed=1)
    return data.from_arrays(x, y, xt, yt, val_fraction=0.2, name="tiny")


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _config(tmp_path, **kw):
    base = dict(arch="bn_mlp", epochs=3, batch_size=16, output_dir=str(tmp_path), run_name="run",
                verbose=0, steps_per_execution=1, augment=False)  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def test_run_folder_holds_every_artifact(tmp_path, tiny_dataset):
    seen = []

    def after_fit(model, dataset, run_dir):  # before the run is marked complete
        seen.append((run_dir / "metrics.json").exists())
        return {"extra": 1.5}

    result = train(_config(tmp_path), dataset=tiny_dataset, after_fit=after_fit)
    run = tmp_path / "run"
    assert seen == [False] and result.metrics["extra"] == 1.5
    assert json.loads((run / "status.json").read_text()) == {"status": "complete"}
    for name in ("config.json", "history.csv", "batches.csv", "metrics.json", "model.keras",
                 "saved_model/saved_model.pb", "plots/curves.png", "plots/batch_loss.png"):  # fmt: skip
        assert (run / name).exists(), name
    assert not (run / "backup").exists() and not (run / ".lock").exists()
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["config"]["lr"] == 1e-3 and cfg["config"]["optimizer"] == "adam"  # resolved defaults
    assert cfg["backend"] == "tensorflow" and cfg["dataset"]["sizes"] == {
        "train": 70,
        "val": 20,
        "test": 30,
    }
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics == pytest.approx(result.metrics)
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["samples_per_s"] > 0
    history = _rows(run / "history.csv")
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    assert metrics["train_accuracy"] == pytest.approx(float(history[-1]["accuracy"]))
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_time"} <= set(
        history[0]
    )


def test_batches_csv_recovers_every_step_loss(tmp_path, tiny_dataset):
    train(_config(tmp_path, epochs=2), dataset=tiny_dataset)
    batches = _rows(tmp_path / "run" / "batches.csv")
    history = _rows(tmp_path / "run" / "history.csv")
    assert [int(b["step"]) for b in batches] == [1, 2, 3, 4, 5] * 2  # ceil(70 / 16) steps
    # The batch losses, weighted by batch size, average to the epoch's reported loss.
    sizes = np.array([16, 16, 16, 16, 6])
    for epoch in (1, 2):
        losses = np.array([float(b["loss"]) for b in batches if int(b["epoch"]) == epoch])
        expected = float(history[epoch - 1]["loss"])
        assert (losses * sizes).sum() / sizes.sum() == pytest.approx(expected, rel=1e-4)


def test_steps_per_execution_rows_cover_all_steps(tmp_path, tiny_dataset):
    train(_config(tmp_path, epochs=1, steps_per_execution=2), dataset=tiny_dataset)
    batches = _rows(tmp_path / "run" / "batches.csv")
    assert [int(b["step"]) for b in batches] == [2, 4, 5]
    assert sum(int(b["steps"]) for b in batches) == 5


def test_learns_the_synthetic_task(tmp_path, tiny_dataset):
    result = train(_config(tmp_path, epochs=8, lr=3e-3), dataset=tiny_dataset)
    assert result.metrics["test_accuracy"] >= 0.8


def test_a_training_set_smaller_than_one_batch_trains_one_partial_step_per_epoch(
    tmp_path, tiny_dataset, monkeypatch
):
    """Steps per epoch round up: 70 images at batch 128 make one step, and the cosine
    schedule spans the 2 steps of 2 epochs (lr, then halfway down to 1% of lr)."""
    original = callbacks.EpochStats.on_epoch_end

    def marked(self, epoch, logs=None):  # epoch e validates at 0.1 * e (told apart)
        original(self, epoch, logs)
        logs["val_accuracy"] = 0.1 * (epoch + 1)

    monkeypatch.setattr(callbacks.EpochStats, "on_epoch_end", marked)
    cfg = _config(tmp_path, epochs=2, batch_size=128, lr=0.01, lr_schedule="cosine",
                  export=False)  # fmt: skip
    result = train(cfg, dataset=tiny_dataset, plots=False)
    rates = [float(r["learning_rate"]) for r in result.history]
    assert rates == pytest.approx([0.01, 0.01 * (0.99 * 0.5 + 0.01)], rel=1e-5)
    assert [int(b["step"]) for b in _rows(tmp_path / "run" / "batches.csv")] == [1, 1]
    # The run's metrics are those of its last epoch.
    last = result.history[-1]
    assert result.metrics["epochs"] == 2
    assert result.metrics["val_accuracy"] == pytest.approx(0.2) == float(last["val_accuracy"])
    assert result.metrics["train_accuracy"] == pytest.approx(float(last["accuracy"]))


def test_a_dataset_without_validation_images_trains_without_validation(tmp_path):
    """Your own arrays split with `val_fraction=0` hold no validation images: the run
    trains without validating and records no validation score."""
    x, y = make_images(40, seed=0)
    xt, yt = make_images(20, seed=1)
    dataset = data.from_arrays(x, y, xt, yt, val_fraction=0.0, name="noval")
    result = train(_config(tmp_path, epochs=1, export=False), dataset=dataset, plots=False)
    assert result.metrics["val_accuracy"] is None
    assert "val_loss" not in result.history[0] and "accuracy" in result.history[0]


def test_existing_complete_run_is_refused_and_kept(tmp_path, tiny_dataset):
    train(_config(tmp_path, epochs=1), dataset=tiny_dataset)
    before = (tmp_path / "run" / "metrics.json").read_text()
    with pytest.raises(RunFolderError, match="--overwrite"):
        train(_config(tmp_path, epochs=1), dataset=tiny_dataset)
    assert (tmp_path / "run" / "metrics.json").read_text() == before
    train(_config(tmp_path, epochs=2, overwrite=True), dataset=tiny_dataset)
    assert len(_rows(tmp_path / "run" / "history.csv")) == 2


def test_tensorboard_logs_hold_the_history_of_the_run(tmp_path, tiny_dataset):
    """`--tensorboard`: each epoch's training and validation loss, as history.csv has them."""
    pytest.importorskip("tensorboard")  # in the `dev` extra
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    train(_config(tmp_path, epochs=2, tensorboard=True, export=False), dataset=tiny_dataset)
    rows = _rows(tmp_path / "run" / "history.csv")
    for folder, column in (("train", "loss"), ("validation", "val_loss")):
        events = EventAccumulator(str(tmp_path / "run" / "tensorboard" / folder))
        events.Reload()
        logged = [(e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
                  for e in events.Tensors("epoch_loss")]  # fmt: skip
        assert [step for step, _ in logged] == [0, 1], folder
        np.testing.assert_allclose([v for _, v in logged], [float(r[column]) for r in rows],
                                   rtol=1e-6, err_msg=folder)  # fmt: skip


def test_divergence_stops_with_status_and_history(tmp_path, tiny_dataset):
    cfg = _config(tmp_path, arch="plain_mlp", optimizer="sgd", lr=1e12, lr_schedule="constant")
    with pytest.raises(
        DivergedError, match=r"non-finite loss at epoch 1, step \d+.*lower --lr"
    ) as e:
        train(cfg, dataset=tiny_dataset)
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    # Step 1's loss is taken before its update; lr 1e12 makes step 2's loss overflow.
    assert status == {"status": "diverged", "epoch": 1, "step": 2}
    assert "step 2 " in str(e.value)  # the step the message names
    assert (tmp_path / "run" / "history.csv").exists()
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize("pipeline", ["iterator", "device"])
def test_divergence_in_the_last_partial_batch_names_a_step_of_the_epoch(pipeline):
    """Regression: with Keras' iterator and 4 steps per call, a loss that broke in the
    last (partial) batch of a 10-step epoch was reported at "steps 9-12"."""
    import keras

    from kmnist_lab import device_loop

    x = np.random.default_rng(0).normal(size=(300, 8)).astype("float32")
    x[-1, 0] = np.nan  # the 10th and last batch, of 12 samples
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(10)])
    model.compile(optimizer="sgd", steps_per_execution=4,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip
    guard = callbacks.DivergenceGuard()
    device_loop.fit(model, x, np.arange(300) % 10, pipeline=pipeline, batch_size=32,
                    shuffle=False, verbose=0, callbacks=[guard])  # fmt: skip
    assert guard.diverged_at == (1, 10) and guard.steps_window == (9, 10)


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_divergence_guard_stops_at_the_first_non_finite_loss_and_only_there(bad):
    """inf is as diverged as NaN; a loss of 1e30 is large but finite and trains on."""
    from types import SimpleNamespace

    guard = callbacks.DivergenceGuard()
    guard.set_model(SimpleNamespace(stop_training=False))
    guard.on_epoch_begin(0)
    for batch, loss in enumerate([2.0, 1e30, 3e38]):  # 3e38: near float32's largest
        guard.on_train_batch_end(batch, {"loss": loss})
    guard.on_epoch_end(0, {"loss": 3e38})
    assert guard.diverged_at is None and not guard.model.stop_training
    guard.on_epoch_begin(1)
    guard.on_train_batch_end(0, {"loss": 1.0})
    guard.on_train_batch_end(1, {"loss": bad})
    assert guard.diverged_at == (2, 2) and guard.steps_window == (2, 2)
    assert guard.model.stop_training
    # No batch logs at all: the epoch's loss alone says so, at step 1.
    late = callbacks.DivergenceGuard()
    late.set_model(SimpleNamespace(stop_training=False))
    late.on_epoch_begin(0)
    late.on_epoch_end(0, {"loss": 1e30})
    assert late.diverged_at is None
    late.on_epoch_begin(1)
    late.on_epoch_end(1, {"loss": bad})
    assert late.diverged_at == (2, 1) and late.model.stop_training


def test_history_learning_rate_is_the_rate_each_epoch_trained_at(tmp_path):
    """The step schedule decays between epochs here (2 steps per epoch, 4 epochs: from
    step 4 and step 6), so every step of an epoch trains at its row's learning_rate."""
    import keras

    from kmnist_lab.schedules import make_schedule

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(make_schedule("step", 0.1, 2, 4)), loss="mse")
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    stats, history = callbacks.EpochStats(), callbacks.HistoryLogger(tmp_path / "history.csv")
    model.fit(x, x[:, :2], batch_size=4, epochs=4, verbose=0, shuffle=False,
              callbacks=[stats, history])  # fmt: skip
    rows = _rows(tmp_path / "history.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    np.testing.assert_allclose(
        [float(r["learning_rate"]) for r in rows], [0.1, 0.1, 0.01, 0.001], rtol=1e-6
    )


def _kill_as_epoch_ends(cfg, dataset, monkeypatch, epoch: int) -> None:
    """Trains `cfg` and kills it (KeyboardInterrupt) as its epoch `epoch` (1-based) ends:
    after that epoch's CSV rows, before its backup (epoch `epoch - 1`'s exists, if any)."""
    original = callbacks.DivergenceGuard.on_epoch_end

    def crash(self, index, logs=None):
        if index + 1 == epoch:
            raise KeyboardInterrupt("simulated kill")
        return original(self, index, logs)

    monkeypatch.setattr(callbacks.DivergenceGuard, "on_epoch_end", crash, raising=False)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, dataset=dataset)
    monkeypatch.undo()


def test_interrupted_run_resumes_without_duplicate_epochs(tmp_path, tiny_dataset, monkeypatch):
    _kill_as_epoch_ends(_config(tmp_path, epochs=4), tiny_dataset, monkeypatch, 2)
    assert (tmp_path / "run" / "backup").is_dir() and not (
        tmp_path / "run" / "metrics.json"
    ).exists()
    result = train(_config(tmp_path, epochs=4), dataset=tiny_dataset)
    assert result.metrics["resumed"] is True  # its wall time covers this process only
    assert [int(r["epoch"]) for r in _rows(tmp_path / "run" / "history.csv")] == [1, 2, 3, 4]
    assert sorted({int(b["epoch"]) for b in _rows(tmp_path / "run" / "batches.csv")}) == [
        1,
        2,
        3,
        4,
    ]
    assert len(_rows(tmp_path / "run" / "batches.csv")) == 4 * 5
    # Resumed from epoch 1's backup: epochs 2-4 trained again, none skipped (the killed
    # process's epoch-2 rows looked complete, so only the step count shows a skip).
    assert int(result.model.optimizer.iterations.numpy()) == 4 * 5


def test_run_killed_before_its_first_backup_starts_afresh(tmp_path, tiny_dataset, monkeypatch):
    """Killed in epoch 1, before any backup: nothing to resume, so the re-run is a new run
    (`resumed` false) and keeps no row of the killed process."""
    _kill_as_epoch_ends(_config(tmp_path, epochs=2), tiny_dataset, monkeypatch, 1)
    assert (tmp_path / "run" / "config.json").is_file()
    assert not (tmp_path / "run" / "backup").exists()
    result = train(_config(tmp_path, epochs=2), dataset=tiny_dataset)
    assert result.metrics["resumed"] is False
    assert [int(r["epoch"]) for r in _rows(tmp_path / "run" / "history.csv")] == [1, 2]


def test_interrupted_run_with_other_config_is_refused(tmp_path, tiny_dataset, monkeypatch):
    (tmp_path / "run").mkdir()
    earlier = _config(tmp_path, epochs=1, lr=0.5).resolved().to_dict()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"config": earlier}))
    # The message names what changed, so the user can tell a typo from a new experiment.
    with pytest.raises(RunFolderError, match=r"different config \(lr 0\.5 -> 0\.001\); pass"):
        train(_config(tmp_path, epochs=1), dataset=tiny_dataset)
    (tmp_path / "run" / "config.json").write_text(json.dumps({"config": {"arch": "relu_mlp"}}))
    with pytest.raises(RunFolderError, match=r"\(arch 'relu_mlp' -> 'bn_mlp', .* and \d+ more\)"):
        train(_config(tmp_path, epochs=1), dataset=tiny_dataset)


def test_locked_run_folder_is_refused(tmp_path, tiny_dataset):
    import os
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / ".lock").write_text(str(holder.pid))
        with pytest.raises(RunFolderError, match=f"in use by process {holder.pid}"):
            train(_config(tmp_path, epochs=1), dataset=tiny_dataset)
    finally:
        holder.kill()
        holder.wait()
    assert os.path.exists(tmp_path / "run" / ".lock")  # someone else's lock is not removed


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epochs": 0}, "`epochs` must be a positive integer"),
        ({"batch_size": -4}, "`batch_size` must be a positive integer"),
        ({"lr": float("nan")}, "`lr` must be a positive finite number"),
        ({"arch": "vgg"}, "unknown arch 'vgg'"),
        ({"optimizer": "sgdx"}, "unknown optimizer 'sgdx'"),
        ({"loss": "l3"}, "unknown loss 'l3'"),
        ({"jit": "maybe"}, "`jit` must be one of auto, on, off"),
        ({"momentum": 1.5}, r"`momentum` must be in \[0, 1\)"),
        ({"run_name": "../escape"}, "`run_name` may contain only"),
        ({"run_name": "."}, r"`run_name` must name a folder inside `output_dir`, and '\.' is"),
        ({"run_name": ".."}, r"`run_name` must name a folder inside `output_dir`, and '\.\.' is"),
        ({"loss": "mse"}, r"loss 'mse' is a regression loss .*needs one of ce, focal"),
        # Caught here, before a run folder is locked or any data loads:
        ({"optimizer": "adam", "momentum": 0.9}, "`momentum` does not apply to optimizer 'adam'"),
        ({"optimizer_params": {"bogus": 1}}, "unknown optimizer parameter `bogus`"),
        ({"optimizer_params": [1]}, "`optimizer_params` must be an object of KEY: VALUE pairs"),
        ({"arch": "resnet18", "l2": 0.01}, "arch 'resnet18' does not take l2"),
        ({"epochs": 2, "warmup_epochs": 5}, "`warmup_epochs` must be smaller than `epochs`"),
        ({"model_params": {"width": 3}}, "arch 'bn_mlp' does not take width. It takes: dropout"),
        ({"loss": "focal", "loss_params": {"gamma": -1}}, "`gamma` must be >= 0"),
        # At the bounds: the first value past each is refused.
        ({"seed": 2**32}, r"`seed` must be an integer in \[0, 2\*\*32 - 1\]"),
        ({"seed": -1}, r"`seed` must be an integer in \[0, 2\*\*32 - 1\]"),
        ({"optimizer": "sgdm", "momentum": 1.0}, r"`momentum` must be in \[0, 1\)"),
        ({"weight_decay": -1e-6}, "`weight_decay` must be a finite number >= 0"),
        ({"val_fraction": 1.0}, r"`val_fraction` must be in \(0, 1\)"),
        ({"val_fraction": 0.0}, r"`val_fraction` must be in \(0, 1\)"),
        ({"steps_per_execution": 0}, "`steps_per_execution` must be a positive integer"),
        ({"warmup_epochs": -1}, "`warmup_epochs` must be an integer >= 0"),
        # Types and bounds of the other fields (each check on its own):
        ({"epochs": True}, "`epochs` must be a positive integer"),
        ({"lr": 0.0}, "`lr` must be a positive finite number"),
        ({"l2": float("inf")}, "`l2` must be a finite number >= 0"),
        ({"warmup_epochs": 1.5}, "`warmup_epochs` must be an integer >= 0"),
        (
            {"lr_schedule": "step", "epochs": 4, "warmup_epochs": 3},
            "with `lr_schedule` step, `warmup_epochs` must be at most half of `epochs`",
        ),
        ({"export": "yes"}, "`export` must be true or false"),
        ({"output_dir": ""}, "`output_dir` must be a non-empty string"),
        ({"verbose": 3}, "`verbose` must be 0, 1 or 2"),
    ],
)
def test_bad_config_values(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**kwargs)


def test_config_values_at_their_bounds_are_valid():
    TrainConfig(seed=0)
    TrainConfig(seed=2**32 - 1)
    TrainConfig(optimizer="sgdm", momentum=0.0)
    TrainConfig(optimizer="sgdm", momentum=0.999, weight_decay=0.0, l2=0.0)
    TrainConfig(val_fraction=1e-3, steps_per_execution=1, warmup_epochs=0)


def test_numpy_scalars_are_stored_as_python_numbers_and_train(tmp_path, tiny_dataset):
    """A seed or batch size drawn with NumPy is an integer like any other. The config
    stores it as a Python number: TensorFlow's device loop refuses an `np.int64` batch
    size (`AddV2` int64 vs int32) and Keras an `np.int64` seed."""
    from fractions import Fraction

    cfg = TrainConfig(seed=np.int64(7), epochs=np.int32(3), batch_size=np.uint16(64),
                      lr=np.float32(0.5), val_fraction=Fraction(1, 4))  # fmt: skip
    assert (cfg.seed, cfg.epochs, cfg.batch_size, cfg.val_fraction) == (7, 3, 64, 0.25)
    assert [type(v) for v in (cfg.seed, cfg.epochs, cfg.batch_size)] == [int] * 3
    assert type(cfg.lr) is float and type(cfg.val_fraction) is float
    d = cfg.to_dict()
    assert TrainConfig.from_dict(json.loads(json.dumps(d))) == cfg
    with pytest.raises(ConfigError, match="`epochs` must be a positive integer"):
        TrainConfig(epochs=np.float64(3.0))
    with pytest.raises(ConfigError, match="`seed` must be an integer"):
        TrainConfig(seed=np.bool_(True))
    # NumPy values in a parameter dict are written as Python numbers too.
    params = TrainConfig(loss="focal", loss_params={"gamma": np.float32(2.0)}).to_dict()
    assert params["loss_params"] == {"gamma": 2.0}
    result = train(_config(tmp_path, seed=np.int64(3), batch_size=np.int64(16), epochs=1),
                   dataset=tiny_dataset)  # fmt: skip
    assert len(result.history) == 1 and np.isfinite(float(result.history[-1]["loss"]))


def test_run_folder_is_named_after_arch_dataset_loss_and_seed(tmp_path):
    """A plain re-run of the same command finds its run again; `run_name` overrides."""
    cfg = TrainConfig(arch="resnet18", dataset="kmnist", loss="focal", seed=7,
                      output_dir=str(tmp_path))  # fmt: skip
    assert cfg.run_dir == tmp_path / "resnet18_kmnist_focal_s7"
    assert cfg.resolved().run_name == "resnet18_kmnist_focal_s7"
    assert TrainConfig(output_dir=str(tmp_path), run_name="mine").run_dir == tmp_path / "mine"
    # A folder may be a pathlib.Path; the config holds (and config.json records) its text.
    assert TrainConfig(output_dir=tmp_path, run_name="p").output_dir == str(tmp_path)
    # Dataset `auto` names its folder after the dataset it finds when training loads it.
    with pytest.raises(ConfigError, match="named after the dataset 'auto' finds"):
        _ = TrainConfig(output_dir=str(tmp_path)).run_dir


def test_a_run_records_the_backend_it_trained_on_and_refuses_another(tmp_path, tiny_dataset):
    """Keras' backend is fixed when Keras is imported: a config naming another one is
    refused before anything is written, not recorded for a run that trained elsewhere
    (`train.py --config` would re-run it there)."""
    import keras

    other = "jax" if keras.backend.backend() != "jax" else "torch"
    with pytest.raises(ConfigError, match=rf"set KERAS_BACKEND={other} before .*"
                       rf"Received: backend='{other}'"):  # fmt: skip
        train(_config(tmp_path, backend=other), dataset=tiny_dataset, plots=False)
    assert not (tmp_path / "run").exists()
    result = train(_config(tmp_path, epochs=1, export=False), dataset=tiny_dataset, plots=False)
    recorded = json.loads((result.run_dir / "config.json").read_text())
    assert recorded["config"]["backend"] == recorded["backend"] == keras.backend.backend()
    # The history comes back as numbers, as Keras' History holds them.
    assert result.history[0]["epoch"] == 1 and isinstance(result.history[0]["loss"], float)


def test_config_file_round_trip_and_unknown_keys(tmp_path):
    cfg = TrainConfig(arch="resnet18", epochs=3, loss="am_softmax", loss_params={"margin": 0.1})
    (tmp_path / "c.json").write_text(json.dumps({"config": cfg.to_dict()}))
    assert TrainConfig.from_json(tmp_path / "c.json") == cfg
    with pytest.raises(
        ConfigError, match="unknown config keys \\['epoch'\\]. Did you mean 'epochs'"
    ):
        TrainConfig.from_dict({"epoch": 3})
    # A model parameter at the top level: where it belongs, not a spelling guess.
    with pytest.raises(
        ConfigError, match="`hidden` is a model parameter: put it under model_params"
    ):
        TrainConfig.from_dict({"hidden": [12]})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read config file"):
        TrainConfig.from_json(tmp_path / "bad.json")


def test_mixed_precision_computes_in_bfloat16_with_float32_head_and_loss(tmp_path, tiny_dataset):
    import keras

    result = train(_config(tmp_path, precision="mixed", epochs=2), dataset=tiny_dataset)
    model = result.model
    assert model.get_layer("dense1").compute_dtype == "bfloat16"
    assert model.get_layer("dense1").kernel.dtype == "float32"  # float32 master weights
    assert model.get_layer("head").compute_dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    x = tiny_dataset.test[0][:4]
    assert keras.backend.standardize_dtype(model(x).dtype) == "float32"
    assert np.isfinite(result.metrics["test_loss"])
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (
        cfg["config"]["precision"] == "mixed" and cfg["speed"]["dtype_policy"] == "mixed_bfloat16"
    )
    # The SavedModel serves float32 scores whatever the compute dtype.
    import tensorflow as tf

    loaded = tf.saved_model.load(str(tmp_path / "run" / "saved_model"))
    served = loaded.serve_uint8(tf.constant(x))
    assert served["scores"].dtype == tf.float32


def test_precision_is_validated():
    with pytest.raises(ConfigError, match="precision.*float32, mixed.*fp16"):
        TrainConfig(precision="fp16")


def test_overwrite_leaves_nothing_of_the_earlier_run(tmp_path, tiny_dataset):
    """An overwritten run without export must not keep the old model for evaluate.py."""
    train(_config(tmp_path, epochs=1), dataset=tiny_dataset)
    run = tmp_path / "run"
    (run / "evaluation" / "tiny-test").mkdir(parents=True)
    assert (run / "saved_model").is_dir() and (run / "model.keras").is_file()
    result = train(_config(tmp_path, epochs=1, overwrite=True, export=False), dataset=tiny_dataset)
    assert result.metrics["artifacts"] == [] and result.metrics["resumed"] is False
    for stale in ("saved_model", "model.keras", "evaluation"):
        assert not (run / stale).exists(), stale


@pytest.mark.parametrize(
    "state, backend, message",
    [
        (
            {"status": "diverged"},
            "jax",
            "training diverged: retrain it with --overwrite and a lower",
        ),
        ({"status": "running"}, "jax", "no saved_model/ yet; an interrupted run: re-run"),
        (
            None,
            "torch",
            "on the torch backend a TensorFlow process exports it, and that could "
            "not run .is tensorflow installed..; load its model.keras",
        ),
        (
            None,
            "tensorflow",
            r"has no saved_model/ \(trained with --no-export, or in a --quick study\?\)",
        ),
    ],
)
def test_evaluate_says_why_a_run_has_no_saved_model(tmp_path, state, backend, message):
    """Each reason gets its own advice (a dead "running" run is an interrupted one)."""
    from kmnist_lab.errors import ModelLoadError
    from kmnist_lab.evaluation import resolve_saved_model

    config = {"config": {"arch": "bn_mlp"}, "backend": backend}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.keras").write_bytes(b"")  # written on every backend
    if state is not None:
        (tmp_path / "status.json").write_text(json.dumps(state))
    else:
        (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(ModelLoadError, match=message):
        resolve_saved_model(tmp_path)


@pytest.mark.parametrize(
    "exported, backend, message",
    [
        (True, "tensorflow", r"is a search folder: evaluate its best model with evaluate.py .*best_model"),
        (False, "tensorflow", r"its best model was not exported: re-run the search's command without --no-export"),
        (False, "torch", r"ran on the torch backend, where a TensorFlow process exports the SavedModel, and that could not run .is tensorflow installed..; load best_model/model.keras"),
    ],
)  # fmt: skip
def test_evaluate_points_a_search_folder_at_its_best_model(tmp_path, exported, backend, message):
    """A search folder (or its unexported best_model/) is not a bare "not a SavedModel"."""
    from kmnist_lab.errors import ModelLoadError
    from kmnist_lab.evaluation import resolve_saved_model

    (tmp_path / "search.json").write_text(json.dumps({"identity": {}, "backend": backend}))
    best = tmp_path / "best_model"
    best.mkdir()
    (best / "metrics.json").write_text(json.dumps({"identity": {"space": "losses"}}))
    (best / "model.keras").write_bytes(b"")
    if exported:
        (best / "saved_model").mkdir()
        (best / "saved_model" / "saved_model.pb").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=message):
        resolve_saved_model(tmp_path)
    if not exported:
        with pytest.raises(ModelLoadError, match="is a search's best model without saved_model/"):
            resolve_saved_model(best)


def test_a_config_with_tuples_resumes(tmp_path, tiny_dataset, monkeypatch):
    """`build_model`'s own example passes `hidden=(128,)`; config.json reads it back as a
    list, and the interrupted run must still count as the same config."""
    cfg = _config(tmp_path, arch="mlp", model_params={"hidden": (16,)}, epochs=3)
    assert cfg.to_dict()["model_params"] == {"hidden": [16]}
    _kill_as_epoch_ends(cfg, tiny_dataset, monkeypatch, 2)
    assert train(cfg, dataset=tiny_dataset).metrics["resumed"] is True


def test_precise_batchnorm_sets_moving_statistics_to_the_average_of_batch_statistics():
    import keras

    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, name="dense")(inputs)
    model = keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(hidden))
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(50, 3)).astype("float32")
    h = x @ model.get_layer("dense").kernel.numpy() + model.get_layer("dense").bias.numpy()
    batches = [h[i : i + 16] for i in range(0, 48, 16)]  # max_batches=3: rows 0-47
    assert callbacks.precise_batchnorm(model, x, batch_size=16, max_batches=3) == 1
    bn = model.get_layer("bn")
    np.testing.assert_allclose(
        bn.moving_mean.numpy(), np.mean([b.mean(0) for b in batches], 0), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        bn.moving_variance.numpy(), np.mean([b.var(0) for b in batches], 0), rtol=1e-4
    )
    assert bn.momentum == 0.99  # restored
    no_bn = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert callbacks.precise_batchnorm(no_bn, x, batch_size=16) == 0


def test_precise_batchnorm_leaves_out_a_trailing_partial_batch():
    """33 rows in batches of 16: the 1-row remainder (variance 0) must not weigh as much as
    a full batch (it cut the moving variance by a third and pulled the mean to one row)."""
    import keras

    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, name="dense")(inputs)
    model = keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(hidden))
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(33, 3)).astype("float32")
    h = x @ model.get_layer("dense").kernel.numpy() + model.get_layer("dense").bias.numpy()
    callbacks.precise_batchnorm(model, x, batch_size=16)
    bn = model.get_layer("bn")
    full = [h[0:16], h[16:32]]
    np.testing.assert_allclose(
        bn.moving_mean.numpy(), np.mean([b.mean(0) for b in full], 0), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        bn.moving_variance.numpy(), np.mean([b.var(0) for b in full], 0), rtol=1e-4
    )
    # Less than one batch: all rows, as one batch.
    callbacks.precise_batchnorm(model, x[:10], batch_size=16)
    np.testing.assert_allclose(bn.moving_mean.numpy(), h[:10].mean(0), rtol=1e-5, atol=1e-5)


def test_precise_bn_run_records_the_validation_accuracy_of_the_model_it_exports(
    tmp_path, tiny_dataset
):
    import keras

    # Full-batch steps, the case precise BN is for: the moving averages lag the weights.
    plain = train(_config(tmp_path, batch_size=72, run_name="plain"), dataset=tiny_dataset)
    result = train(_config(tmp_path, batch_size=72, precise_bn=True), dataset=tiny_dataset)
    model = keras.saving.load_model(tmp_path / "run" / "model.keras", compile=False)
    x_val, y_val = tiny_dataset.val
    val = float(np.mean(np.argmax(model.predict(x_val, verbose=0), -1) == y_val))
    assert result.metrics["val_accuracy"] == pytest.approx(val)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["precise_bn"]
    # The same weights; only BatchNorm's moving statistics were recomputed.
    for name in ("dense1", "bn1"):
        ours, theirs = result.model.get_layer(name), plain.model.get_layer(name)
        if name.startswith("dense"):
            np.testing.assert_allclose(ours.kernel.numpy(), theirs.kernel.numpy(), atol=1e-6)
        else:
            assert np.abs(ours.moving_mean.numpy() - theirs.moving_mean.numpy()).max() > 1e-2
    with pytest.raises(ConfigError, match="precise_bn` runs on one device"):
        _config(tmp_path, precise_bn=True, distribute="data-parallel")


def test_a_run_interrupted_before_a_setting_existed_resumes(tmp_path, tiny_dataset, monkeypatch):
    """A run interrupted under the previous version has no `precise_bn` in config.json
    (and, started from Python, a null backend); resuming it with the new default
    (false) is the same run, not "a different config (precise_bn None -> False)"."""
    cfg = _config(tmp_path, arch="mlp", epochs=3)
    _kill_as_epoch_ends(cfg, tiny_dataset, monkeypatch, 2)
    path = tmp_path / "run" / "config.json"
    recorded = json.loads(path.read_text())
    del recorded["config"]["precise_bn"]  # as the previous version wrote it
    # Runs started from Python used to record no backend.
    recorded["config"]["backend"] = None
    path.write_text(json.dumps(recorded))
    assert train(cfg, dataset=tiny_dataset).metrics["resumed"] is True


def test_an_interrupted_run_resumes_in_its_folder_however_the_folder_is_reached(
    tmp_path, tiny_dataset, monkeypatch
):
    """`output_dir` says where the run folder is, not what trains in it: the same folder
    written another way (a trailing slash, a relative path) or moved elsewhere resumes,
    where it was refused as "a different config (output_dir ...)"."""
    cfg = _config(tmp_path / "a", arch="mlp", epochs=3, export=False)
    _kill_as_epoch_ends(cfg, tiny_dataset, monkeypatch, 3)
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "run").rename(tmp_path / "b" / "run")
    monkeypatch.chdir(tmp_path)
    moved = _config("b/", arch="mlp", epochs=3, export=False)
    assert train(moved, dataset=tiny_dataset, plots=False).metrics["resumed"] is True


def test_precise_bn_on_a_model_without_batchnorm_says_so(tmp_path, tiny_dataset, caplog):
    """`--precise-bn` on `mlp` (no BatchNormalization) used to do nothing, silently."""
    with caplog.at_level(logging.WARNING, logger="kmnist_lab.training"):
        train(_config(tmp_path, arch="mlp", epochs=1, precise_bn=True), dataset=tiny_dataset,
              plots=False)  # fmt: skip
    assert "--precise-bn: mlp has no BatchNormalization layer" in caplog.text


def test_samples_per_s_of_a_resumed_run_leaves_out_each_process_first_epoch(
    tmp_path, tiny_dataset, monkeypatch
):
    """Throughput is measured on steady epochs: the first epoch each process trains
    (epoch 1, and the one a resumed process restarts at, each compiling the model) is
    left out, so a run resumed twice reports the rate of its steady epochs."""
    original = callbacks.EpochStats.on_epoch_end
    guard_end = callbacks.DivergenceGuard.on_epoch_end

    def timed(self, epoch, logs=None):  # a process's first epoch takes 100 s, others 1 s
        original(self, epoch, logs)
        logs["epoch_time"] = 1.0 if getattr(self, "_seen", False) else 100.0
        self._seen = True

    def kill_at(stop):
        def crash(self, epoch, logs=None):
            if epoch + 1 == stop:  # after this epoch's CSV rows, before its backup
                raise KeyboardInterrupt("simulated kill")
            return guard_end(self, epoch, logs)

        return crash

    cfg = _config(tmp_path, epochs=6)
    monkeypatch.setattr(callbacks.EpochStats, "on_epoch_end", timed)
    for stop in (3, 5):  # first process: epochs 1-3, killed; second: 3-5, killed
        with monkeypatch.context() as m:
            m.setattr(callbacks.DivergenceGuard, "on_epoch_end", kill_at(stop), raising=False)
            with pytest.raises(KeyboardInterrupt):
                train(cfg, dataset=tiny_dataset)
    result = train(cfg, dataset=tiny_dataset)  # third: epochs 5-6
    times = {int(r["epoch"]): float(r["epoch_time"]) for r in result.history}
    assert times == {1: 100.0, 2: 1.0, 3: 100.0, 4: 1.0, 5: 100.0, 6: 1.0}
    assert result.metrics["resumed"] is True
    assert result.metrics["samples_per_s"] == pytest.approx(70 / 1.0)  # 70 training images


@pytest.mark.parametrize("how", ["overwrite", "resume"])
def test_a_report_of_the_earlier_run_state_does_not_survive_training(
    tmp_path, tiny_dataset, monkeypatch, how
):
    """`report.py RUN` writes report.md/.html and report_files/ into the run folder; once
    the folder is trained again (replaced with --overwrite, or an interrupted run
    resumed) they describe a run that no longer exists, and are removed."""
    from kmnist_lab.report import write_report

    run = tmp_path / "run"
    if how == "overwrite":
        train(_config(tmp_path, epochs=1), dataset=tiny_dataset)
        cfg = _config(tmp_path, epochs=1, overwrite=True)
    else:
        cfg = _config(tmp_path, epochs=3)
        _kill_as_epoch_ends(cfg, tiny_dataset, monkeypatch, 2)
    write_report(run)
    assert (run / "report.md").is_file() and (run / "report_files").is_dir()
    train(cfg, dataset=tiny_dataset)
    for stale in ("report.md", "report.html", "report_files"):
        assert not (run / stale).exists(), stale


def test_a_ctrl_c_that_keras_swallows_still_stops_the_run(
    tmp_path, tiny_dataset, monkeypatch, python_sigint
):
    """Keras converts each step's logs inside a bare `except:` (`pythonify_logs`); on JAX
    that is where the host waits for the device, so a Ctrl-C raised there was dropped and
    the run trained to the end. A swallowed Ctrl-C must still interrupt: the run stops,
    incomplete and resumable, and says so in status.json."""
    import signal

    from helpers import swallow_a_ctrl_c_after_the_first_epoch

    swallow_a_ctrl_c_after_the_first_epoch(monkeypatch, callbacks.EpochStats)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tmp_path, epochs=3), dataset=tiny_dataset)
    run = tmp_path / "run"
    assert not (run / "metrics.json").exists()
    assert json.loads((run / "status.json").read_text())["status"] == "interrupted"
    assert len(_rows(run / "history.csv")) == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_a_ctrl_c_that_a_library_turns_into_another_error_is_still_a_ctrl_c(python_sigint):
    """study.py, Ctrl-C while TensorFlow traced a step: TensorFlow raised `TypeError:
    Failed to convert elements ...` instead, and the script exited 1 with a traceback."""
    import signal

    with pytest.raises(KeyboardInterrupt), callbacks.InterruptCheck():
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            raise TypeError("Failed to convert elements of (None, 784) to Tensor") from None
    with pytest.raises(TypeError), callbacks.InterruptCheck():  # no Ctrl-C: left alone
        raise TypeError("a real error")


def test_augment_and_l2_given_as_model_params_are_the_ones_recorded():
    """`--model-param augment=false` builds the model without augmentation: config.json's
    `augment` must say so; a field contradicting its model_params twin is refused."""
    from kmnist_lab.config import TrainConfig
    from kmnist_lab.errors import ConfigError

    assert TrainConfig(model_params={"augment": False}).resolved().augment is False
    assert TrainConfig(augment=False, model_params={"augment": False}).resolved().augment is False
    assert TrainConfig().resolved().augment is True
    with pytest.raises(ConfigError, match="given twice"):
        TrainConfig(augment=True, model_params={"augment": False})
    with pytest.raises(ConfigError, match="given twice"):
        TrainConfig(augment=False, model_params={"augment": True})
    with pytest.raises(ConfigError, match="given twice"):
        TrainConfig(l2=0.1, model_params={"l2": 0.5})
    TrainConfig(l2=0.1, model_params={"l2": 0.1})


def test_the_augment_and_l2_fields_reach_the_model():
    """`augment` and `l2` set as fields (--augment, --l2) build the model with them."""
    from kmnist_lab.training import build_for_config

    def built(**kw):
        cfg = TrainConfig(arch="mlp", model_params={"hidden": [8]}, **kw).resolved()
        model, _ = build_for_config(cfg, 10)
        return model, {layer.name for layer in model.layers}

    model, names = built(l2=0.01, augment=True)
    assert "augment" in names
    assert float(model.get_layer("dense1").kernel_regularizer.l2) == pytest.approx(0.01)
    model, names = built(augment=False)
    assert "augment" not in names and model.get_layer("dense1").kernel_regularizer is None


def test_optimizer_kwargs_join_the_momentum_and_weight_decay_fields_and_optimizer_params():
    """`optimizer_kwargs`: the fields when set, and `optimizer_params`; a key in both must
    agree, or config.json would record a value the optimizer did not use."""
    from kmnist_lab.errors import ConfigError

    assert TrainConfig(optimizer="sgdm").optimizer_kwargs() == {}
    cfg = TrainConfig(optimizer="sgdm", momentum=0.9, weight_decay=0.01,
                      optimizer_params={"momentum": 0.9})  # fmt: skip
    assert cfg.optimizer_kwargs() == {"momentum": 0.9, "weight_decay": 0.01}
    with pytest.raises(ConfigError, match=r"`momentum` is given twice .*momentum=0\.5 and "
                       r"optimizer_params momentum=0\.9; give it once"):  # fmt: skip
        TrainConfig(optimizer="sgdm", momentum=0.5, optimizer_params={"momentum": 0.9})
    with pytest.raises(ConfigError, match="`weight_decay` is given twice"):
        TrainConfig(optimizer="sgdm", weight_decay=0.0, optimizer_params={"weight_decay": 0.01})


def test_learning_rate_as_an_optimizer_param_is_a_config_error_not_a_crash():
    """`--optimizer-param learning_rate=0.1` passed validation and then crashed in
    compile with a TypeError (two learning_rate keywords); the lr is `lr`'s."""
    from kmnist_lab.config import TrainConfig
    from kmnist_lab.errors import ConfigError

    with pytest.raises(ConfigError, match="optimizer_params.*learning_rate.*lr"):
        TrainConfig(optimizer_params={"learning_rate": 0.1})


# --------------------------------------------------------------------- --overwrite


def _user_folder(folder):
    """A folder of someone's own files, named like a run's (and a config.json of
    another tool): what `--overwrite` must never delete."""
    for name, text in (("report.md", "my notes"), ("plots/mine.png", "png"),
                       ("evaluation/scores.txt", "0.9"), ("config.json", '{"foo": 1}')):  # fmt: skip
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return {str(p.relative_to(folder)): p.read_text() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_that_is_not_a_run_is_refused_even_with_overwrite(
    tmp_path, tiny_dataset, overwrite
):
    """--overwrite replaces a run, not a folder of other files: the refusal says so
    instead of suggesting --overwrite, and every file stays."""
    before = _user_folder(tmp_path / "run")
    with pytest.raises(RunFolderError) as refused:
        train(_config(tmp_path, epochs=1, overwrite=overwrite), dataset=tiny_dataset)
    assert str(refused.value) == (
        f"{tmp_path / 'run'} exists and is not a kmnist_lab run folder, and --overwrite "
        "replaces only a run; choose another --run-name or --output-dir"
    )
    after = {str(p.relative_to(tmp_path / "run")): p.read_text()
             for p in (tmp_path / "run").rglob("*") if p.is_file()}  # fmt: skip
    assert after == before


def test_a_metrics_json_without_a_run_config_is_not_a_finished_run(tmp_path):
    """Training writes config.json before anything else, so a metrics.json alone is not
    a run of kmnist_lab's, and --overwrite does not replace its folder."""
    from kmnist_lab import runs

    (tmp_path / "metrics.json").write_text('{"accuracy": 0.9}')
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="is not a kmnist_lab run folder"):
        runs.prepare_run_dir(tmp_path, True, {"arch": "bn_mlp"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "notes.txt"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_empty_folder_takes_a_new_run(tmp_path, overwrite):
    from kmnist_lab import runs

    assert runs.prepare_run_dir(tmp_path / "run", overwrite, {"arch": "bn_mlp"}) is False
    (tmp_path / "run" / runs.LOCK_NAME).write_text("1\n")  # its own lock is not content
    assert runs.prepare_run_dir(tmp_path / "run", overwrite, {"arch": "bn_mlp"}) is False
    # A run killed while it wrote its first config.json leaves that write's temporary file.
    (tmp_path / "run" / ".config.json.k2x9.tmp").write_text('{"conf')
    assert runs.prepare_run_dir(tmp_path / "run", overwrite, {"arch": "bn_mlp"}) is False


@pytest.mark.parametrize(
    "state, refusal",
    [
        ({"metrics.json": "{}"}, "already holds a finished run; pass --overwrite"),
        ({"status.json": '{"status": "diverged", "epoch": 1}'}, "diverged at epoch 1"),
        ({"history.csv": "epoch,loss\n1,0.5\n"}, r"interrupted run with a different config"),
    ],
    ids=["complete", "diverged", "interrupted-other-config"],
)
def test_overwrite_still_replaces_a_run_folder_in_every_state(tmp_path, state, refusal):
    """A run folder (config.json with its "config") is refused without --overwrite and
    replaced with it, as before: complete, diverged, or interrupted with another config."""
    from kmnist_lab import runs

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {"arch": "relu_mlp"}}))
    for name, text in state.items():
        (run / name).write_text(text)
    with pytest.raises(RunFolderError, match=refusal):
        runs.prepare_run_dir(run, False, {"arch": "bn_mlp"})
    assert runs.prepare_run_dir(run, True, {"arch": "bn_mlp"}) is False  # a new run


def test_a_run_folder_that_links_back_to_its_output_dir_is_refused(tmp_path):
    """`OUT/run -> .` (or `..`) would make the run folder the folder that holds it."""
    import os

    from kmnist_lab import runs

    (tmp_path / "keep.txt").write_text("mine")
    for name, target in (("here", "."), ("up", "..")):
        os.symlink(target, tmp_path / name)
        with pytest.raises(RunFolderError, match=f"{name} leads to .*; choose another --run-name"):
            runs.prepare_run_dir(tmp_path / name, True, {"arch": "bn_mlp"})
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_a_name_of_dots_only_beyond_two_is_an_ordinary_folder(tmp_path):
    assert TrainConfig(output_dir=str(tmp_path), run_name="...").run_dir == tmp_path / "..."
