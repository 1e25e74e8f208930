"""One training run: config -> data -> model -> compile -> fit -> run folder.

`train(config)` writes `<output_dir>/<run_name>/`:

```
config.json   resolved config, backend, versions, dataset source + checksums, speed policy
history.csv   one row per epoch: loss, accuracy, val_*, learning_rate, epoch_time
batches.csv   one row per logged iteration: epoch, step, steps, loss
metrics.json  test metrics, wall time, samples/s (written last: the completion marker)
saved_model/  TF SavedModel, `serve` signature on raw pixels
model.keras   full Keras model (custom objects registered) for further training
plots/        learning curves
backup/       RunBackup state (weights + optimizer) while in progress (removed at the end)
```

A killed run re-run with the same config resumes from its last completed epoch.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import platform
import shutil
import time
from pathlib import Path

import keras
import numpy as np

from kmnist_lab import device_loop, runs
from kmnist_lab.callbacks import (
    BatchLogger,
    DivergenceGuard,
    EpochStats,
    HistoryLogger,
    InterruptCheck,
    RunBackup,
    precise_batchnorm,
)
from kmnist_lab.config import TrainConfig
from kmnist_lab.data import Dataset, load_dataset
from kmnist_lab.distribute import SyncReplicaState, check_even_batches, distribution_scope
from kmnist_lab.errors import ConfigError, KmnistLabError
from kmnist_lab.export import save_model_files
from kmnist_lab.losses import get_loss, loss_head
from kmnist_lab.models import build_model, model_family
from kmnist_lab.optimizers import averaging_callbacks, get_optimizer
from kmnist_lab.schedules import make_schedule
from kmnist_lab.speed import (
    check_steps_per_execution,
    dtype_policy,
    resolve_batch_shards,
    resolve_input_pipeline,
    resolve_jit,
    resolve_steps_per_execution,
)

log = logging.getLogger(__name__)


class DivergedError(KmnistLabError):
    """Training stopped at a non-finite loss (scripts exit with code 3)."""

    exit_code = 3


@dataclasses.dataclass
class RunResult:
    """What `train` returns.

    Attributes:
        run_dir: the run folder.
        config: the resolved config.
        metrics: the contents of `metrics.json`.
        history: one dict per epoch, `history.csv`'s row as numbers (`epoch` an int,
            the metrics floats).
        model: the trained Keras model.
        dataset: the dataset it was trained on.
    """

    run_dir: Path
    config: TrainConfig
    metrics: dict
    history: list
    model: keras.Model
    dataset: Dataset


def versions() -> dict:
    """Versions recorded in a run's `config.json`: Python, Keras, the backend's name, and
    TensorFlow, JAX, PyTorch, NumPy and kmnist_lab where installed (the others left out)."""
    import importlib.metadata as md

    out = {
        "python": platform.python_version(),
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
    }
    for pkg in ("tensorflow", "jax", "torch", "numpy", "kmnist_lab"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def build_for_config(cfg: TrainConfig, num_classes: int) -> tuple[keras.Model, keras.losses.Loss]:
    """The model and loss a config describes (head chosen by the loss)."""
    loss = get_loss(cfg.loss, **cfg.loss_params)
    overrides = dict(cfg.model_params)
    overrides.setdefault("augment", bool(cfg.augment))
    if cfg.l2:
        overrides.setdefault("l2", cfg.l2)
    model = build_model(cfg.arch, num_classes=num_classes, head=loss_head(cfg.loss), **overrides)
    return model, loss


def compile_model(
    model: keras.Model,
    loss: keras.losses.Loss,
    optimizer: keras.optimizers.Optimizer,
    jit_compile: bool | str,
    steps_per_execution: int,
) -> None:
    """Compiles a classifier the one way training and tuning both use.

    The metric is sparse categorical accuracy named `accuracy`, so histories,
    trials and reports all read `accuracy` / `val_accuracy`.

    Args:
        model: the model to compile (in place).
        loss: the loss object (`kmnist_lab.losses.get_loss`).
        optimizer: the optimizer object (`kmnist_lab.optimizers.get_optimizer`).
        jit_compile: `model.compile`'s value, see `kmnist_lab.speed.resolve_jit`.
        steps_per_execution: training steps per compiled call, see
            `kmnist_lab.speed.resolve_steps_per_execution`.
    """
    model.compile(
        optimizer=optimizer,
        loss=loss,
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )


def compile_for_config(model, loss, cfg: TrainConfig, steps_per_epoch: int) -> dict:
    """Compiles `model` with the config's optimizer, schedule and speed policy."""
    schedule = make_schedule(
        cfg.lr_schedule, cfg.lr, steps_per_epoch, cfg.epochs, cfg.warmup_epochs
    )
    optimizer = get_optimizer(cfg.optimizer, learning_rate=schedule, **cfg.optimizer_kwargs())
    jit = resolve_jit(cfg.jit, cfg.arch)
    spe = cfg.steps_per_execution or resolve_steps_per_execution(cfg.arch, steps_per_epoch)
    check_steps_per_execution(keras.backend.backend(), spe)
    if cfg.distribute == "data-parallel" and keras.backend.backend() == "tensorflow":
        # Keras 3.15 + MirroredStrategy: XLA steps fail to compile on CPU and
        # steps_per_execution > 1 fails ("must feed a value for placeholder").
        # Name only what was asked for and is overridden: `jit=off` and one step per
        # call are honoured, and a policy's own choice (`auto`) was not asked for.
        ignored = [f"--jit {cfg.jit}"] if cfg.jit == "on" else []
        if cfg.steps_per_execution not in (None, 1):
            ignored.append(f"--steps-per-execution {cfg.steps_per_execution}")
        if ignored:
            log.warning(
                "data-parallel on TensorFlow runs without XLA, one step per call (Keras 3.15 "
                "fails otherwise); ignoring %s",
                " and ".join(ignored),
            )
        jit, spe = False, 1
    compile_model(model, loss, optimizer, jit_compile=jit, steps_per_execution=spe)
    pipeline = resolve_input_pipeline(cfg.input_pipeline, cfg.distribute != "none")
    shards = resolve_batch_shards(
        cfg.batch_shards, model, cfg.arch, cfg.resolved().batch_size, pipeline, cfg.jit
    )
    return {
        "jit_compile": jit,
        "steps_per_execution": spe,
        "input_pipeline": pipeline,
        "batch_shards": shards,
        "family": model_family(cfg.arch),
    }


def train(
    config: TrainConfig, dataset: Dataset | None = None, after_fit=None, plots: bool = True
) -> RunResult:
    """Trains, evaluates on the test split once, exports; see the module docstring.

    Args:
        config: the run's configuration (defaults resolved here).
        dataset: use these arrays instead of loading `config.dataset` (your own
            data, tests).
        after_fit: optional `fn(model, dataset, run_dir) -> dict | None` called after
            the test evaluation and before `metrics.json` is written (so a complete
            run has its extra files, e.g. per-class scores); a returned dict is
            merged into the metrics.
        plots: draw `plots/` (skipped by quick studies: reports redraw from the CSVs).

    With `config.dataset="auto"` (and no `dataset`), the data is loaded first and the run
    is named and recorded after the dataset `auto` found (`mnist` or `mnist_5k`), as
    `tune.py` and `study.py` do: a derived run name reads `bn_mlp_mnist_5k_ce_s0`, not
    `..._auto_...`, and a run on the full MNIST never shares a folder with one on the
    subset. `config.json` keeps `"requested": "auto"` under `dataset`. A `dataset` of
    your own with `config.dataset="auto"` (the default) names the run the same way,
    after `dataset.name` (characters other than letters, digits and `. _ = + -` become
    `_`), unless `config.run_name` is set.

    Raises:
        ConfigError, DataError, RunFolderError: bad input (nothing is overwritten), or
            a `config.backend` other than the one Keras runs in this process.
        DivergedError: the loss became non-finite; history is kept, status `diverged`.
    """
    config = _with_process_backend(config)
    requested = config.dataset
    if dataset is None and config.dataset == "auto":
        dataset = load_dataset(config.dataset, config.data_dir, config.val_fraction, config.seed)
        log.info("%s", dataset.summary())
        config = dataclasses.replace(config, dataset=dataset.name)
    elif config.dataset == "auto" and config.run_name is None:
        # Your own arrays: the folder takes their name (`from_arrays(..., name=...)`),
        # not `auto`, which they are not; `config.json` records both.
        config = dataclasses.replace(config, run_name=config.derived_run_name(dataset.name))
    cfg = config.resolved()
    run_dir = Path(cfg.output_dir) / cfg.run_name
    if cfg.tensorboard:
        _require_tensorboard()
    # Lock first: the folder's state cannot change between the check and the run.
    with runs.RunLock(run_dir):
        # A config.json written before a setting existed (e.g. `precise_bn`) lacks it:
        # its default stands in, so such an interrupted run still resumes.
        resume = runs.prepare_run_dir(
            run_dir, cfg.overwrite, cfg.to_dict(), TrainConfig.field_defaults()
        )
        return _train_locked(cfg, run_dir, resume, dataset, after_fit, plots, requested)


def _train_locked(
    cfg: TrainConfig,
    run_dir: Path,
    resume: bool,
    dataset: Dataset | None,
    after_fit=None,
    plots: bool = True,
    requested: str | None = None,
) -> RunResult:
    start = time.perf_counter()
    keras.utils.set_random_seed(cfg.seed)
    if dataset is None:  # (a caller that passes its own dataset describes it once)
        dataset = load_dataset(cfg.dataset, cfg.data_dir, cfg.val_fraction, cfg.seed)
        log.info("%s", dataset.summary())
    steps_per_epoch = math.ceil(len(dataset.train[1]) / cfg.batch_size)
    # Data-parallel runs build, compile, fit and evaluate inside the distribution.
    # A Ctrl-C that Keras swallows (see InterruptCheck) still stops the run, uncompleted.
    with distribution_scope(cfg.distribute) as devices, InterruptCheck() as interrupts:
        return _fit_and_export(
            cfg, run_dir, resume, dataset, steps_per_epoch, devices, start, after_fit, plots,
            requested or cfg.dataset, interrupts,
        )  # fmt: skip


def _with_process_backend(config: TrainConfig) -> TrainConfig:
    """`config` with the backend Keras runs in this process, which `config.json` records.

    Keras fixes its backend when it is first imported (`KERAS_BACKEND`), so a
    `config.backend` naming another one cannot be honoured: it is refused rather than
    recorded for a run that trained elsewhere (`train.py --config` re-runs a run on the
    backend its config.json names).
    """
    actual = keras.backend.backend()
    if config.backend is not None and config.backend != actual:
        raise ConfigError(
            f"`backend` must be the backend Keras was loaded with in this process, "
            f"{actual!r}: set KERAS_BACKEND={config.backend} before Keras is first imported "
            f"(or run scripts/train.py --backend {config.backend}). "
            f"Received: backend={config.backend!r}"
        )
    return dataclasses.replace(config, backend=actual)


# Training batches precise BatchNorm averages over (Wu & Johnson use ~200 batches).
PRECISE_BN_BATCHES = 200


def _sample(x, n: int, seed: int):
    """Up to `n` rows of `x` in a fixed random order (a copy of those rows only)."""
    return x[np.random.default_rng(seed).permutation(len(x))[:n]]


def eval_batch_size(cfg: TrainConfig) -> int:
    """The batch size of the test evaluation: the training batch, at least 256."""
    return max(cfg.batch_size, 256)


def _fit_and_export(
    cfg,
    run_dir,
    resume,
    dataset,
    steps_per_epoch,
    devices,
    start,
    after_fit,
    plots,
    requested,
    interrupts=None,
) -> RunResult:
    (x_train, y_train), val = dataset.train, dataset.val
    if devices and keras.backend.backend() == "jax":
        check_even_batches(
            {"train": (len(y_train), cfg.batch_size), "validation": (len(val[1]), cfg.batch_size),
             "test": (len(dataset.test[1]), eval_batch_size(cfg))},
            len(devices),
        )  # fmt: skip
    with dtype_policy(cfg.precision):
        model, loss = build_for_config(cfg, dataset.num_classes)
    speed = compile_for_config(model, loss, cfg, steps_per_epoch)
    speed["dtype_policy"] = model.dtype_policy.name
    speed["devices"] = len(devices) if devices else 1
    if not resume:  # a new or --overwrite run: nothing of an earlier run may survive
        for stale in ("history.csv", "batches.csv", "status.json", runs.COMPLETE_MARKER,
                      "model.keras"):  # fmt: skip
            (run_dir / stale).unlink(missing_ok=True)
        for stale in (runs.BACKUP_DIR, "saved_model", "plots", "evaluation", "tensorboard"):
            shutil.rmtree(run_dir / stale, ignore_errors=True)
    # A report `scripts/report.py RUN` wrote describes the folder as it was (an earlier
    # run, or this one interrupted): the training about to change it makes it stale.
    runs.remove_reports(run_dir)
    runs.atomic_write_json(
        run_dir / "config.json",
        {
            "config": cfg.to_dict(),
            "backend": keras.backend.backend(),
            "versions": versions(),
            "dataset": {
                "name": dataset.name,
                "requested": requested,
                "sizes": {s: int(len(getattr(dataset, s)[1])) for s in ("train", "val", "test")},
                "class_names": list(dataset.class_names),
                "source": dataset.source,
            },
            "speed": speed,
            "parameters": int(model.count_params()),
        },
    )
    runs.atomic_write_json(run_dir / "status.json", {"status": "running"})
    guard = DivergenceGuard()
    backup = RunBackup(run_dir / runs.BACKUP_DIR)
    callbacks = [
        *([interrupts] if interrupts is not None else []),
        EpochStats(),
        HistoryLogger(run_dir / "history.csv"),
        BatchLogger(run_dir / "batches.csv", len(y_train), cfg.batch_size),
        guard,
        # Last, so an epoch's CSV rows exist before its backup: a kill in between
        # re-runs that epoch and the loggers drop its rows (no duplicates, no gaps).
        backup,
    ]
    # ASGD: validate on the averaged weights (swapped in and out around validation).
    callbacks[-1:-1] = averaging_callbacks(model.optimizer)
    if devices and len(devices) > 1:
        # First: the replicas agree on their BatchNorm statistics before any validation
        # (ASGD's swap included), the test evaluation and the export.
        callbacks.insert(0, SyncReplicaState())
    if cfg.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "tensorboard")))
    if resume:
        log.info("resuming interrupted run in %s", run_dir)
    has_val = len(val[1]) > 0
    fit_start = time.perf_counter()
    device_loop.fit(
        model,
        x_train,
        y_train,
        pipeline=speed["input_pipeline"],
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        validation_data=val if has_val else None,
        shuffle=True,
        shuffle_seed=cfg.seed,  # device pipeline: epoch e's order from (seed, e), for resuming
        batch_shards=speed["batch_shards"],
        callbacks=callbacks,
        verbose=cfg.verbose,
    )
    fit_time = time.perf_counter() - fit_start
    history = _read_history(run_dir / "history.csv")
    raise_if_diverged(guard, run_dir, cfg.lr)
    val_accuracy = float(history[-1]["val_accuracy"]) if has_val and history else None
    updated = cfg.precise_bn and precise_batchnorm(
        model, _sample(x_train, PRECISE_BN_BATCHES * cfg.batch_size, cfg.seed), cfg.batch_size,
        max_batches=PRECISE_BN_BATCHES,
    )  # fmt: skip
    if cfg.precise_bn and not updated:
        log.warning("--precise-bn: %s has no BatchNormalization layer; nothing to recompute",
                    cfg.arch)  # fmt: skip
    # As training ran: with batch shards, TensorFlow runs each op on one thread.
    with device_loop.sharded_forward(model, speed["batch_shards"]):
        if updated and has_val:
            # The last epoch's validation scored the old statistics: score the model exported.
            val_accuracy = float(model.evaluate(*val, batch_size=eval_batch_size(cfg),
                                                verbose=0, return_dict=True)["accuracy"])  # fmt: skip
        x_test, y_test = dataset.test
        test = model.evaluate(
            x_test, y_test, batch_size=eval_batch_size(cfg), verbose=0, return_dict=True
        )
    artifacts = _export(model, loss, run_dir, cfg)
    if plots:
        _plot(run_dir)
    # Steady epochs: not the first one a process trained (epoch 1, and the epoch each
    # resumed process started at), whose time includes that process's compilation.
    epoch_times = [
        (int(r["epoch"]), float(r["epoch_time"])) for r in history if r.get("epoch_time")
    ]
    steady = [t for e, t in epoch_times if e not in backup.first_epochs] or [
        t for _, t in epoch_times
    ]
    metrics = {
        "status": "complete",
        "test_accuracy": float(test["accuracy"]),
        "test_loss": float(test["loss"]),
        "val_accuracy": val_accuracy,
        "train_accuracy": float(history[-1]["accuracy"]) if history else None,
        "epochs": len(history),
        "wall_time_s": time.perf_counter() - start,  # this process: see "resumed"
        "fit_time_s": fit_time,
        "resumed": bool(resume),
        "samples_per_s": len(y_train) / (sum(steady) / len(steady)) if steady else None,
        "dataset": dataset.name,
        "artifacts": artifacts,
    }
    if after_fit is not None:
        metrics.update(after_fit(model, dataset, run_dir) or {})
    if interrupts is not None:
        interrupts.check()  # a Ctrl-C swallowed during the test evaluation or export
    runs.atomic_write_json(run_dir / "status.json", {"status": "complete"})
    runs.atomic_write_json(run_dir / runs.COMPLETE_MARKER, metrics)
    shutil.rmtree(run_dir / runs.BACKUP_DIR, ignore_errors=True)
    log.debug(  # scripts/train.py prints the one-line result
        "test accuracy %.4f, loss %.4f -> %s",
        metrics["test_accuracy"],
        metrics["test_loss"],
        run_dir,
    )
    return RunResult(run_dir, cfg, metrics, history, model, dataset)


def raise_if_diverged(guard: DivergenceGuard, run_dir: Path, lr) -> None:
    """Marks the run `diverged` in `status.json` and raises, if `guard` saw a non-finite loss.

    Raises:
        DivergedError: naming the epoch and step (or steps) where the loss broke.
    """
    if guard.diverged_at is None:
        return
    epoch, step = guard.diverged_at
    first = guard.steps_window[0] if guard.steps_window else step
    step_text = f"step {step}" if first == step else f"steps {first}-{step}"
    runs.atomic_write_json(
        run_dir / "status.json", {"status": "diverged", "epoch": epoch, "step": step}
    )
    raise DivergedError(
        f"training diverged: non-finite loss at epoch {epoch}, {step_text} (lr={lr}); "
        "try a lower --lr"
    )


def _require_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--tensorboard needs the tensorboard package: pip install tensorboard "
            "(or train without --tensorboard)"
        ) from None


def _export(model, loss, run_dir: Path, cfg: TrainConfig) -> list[str]:
    """The run's model files (`export.save_model_files`); none under `--no-export`."""
    return save_model_files(model, loss, run_dir) if cfg.export else []


def _plot(run_dir: Path) -> None:
    from kmnist_lab import plots

    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    plots.save(plots.learning_curves(run_dir / "history.csv"), out / "curves.png")
    if (run_dir / "batches.csv").is_file():
        plots.save(
            plots.batch_losses({run_dir.name: run_dir / "batches.csv"}), out / "batch_loss.png"
        )


def _read_history(path: Path) -> list[dict]:
    """`history.csv`'s rows as numbers: `epoch` an int, the metrics floats (None where
    a cell is empty)."""
    import csv

    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))

    def number(key, text):
        if text in (None, ""):
            return None
        try:
            return int(float(text)) if key == "epoch" else float(text)
        except ValueError:  # a value some callback logged as text
            return text

    return [{k: number(k, v) for k, v in row.items()} for row in rows]
