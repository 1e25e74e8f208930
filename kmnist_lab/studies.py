"""Running the seed reports' studies (`shared/SEEDS.md`); the studies themselves are
data in `kmnist_lab.study_catalog` (re-exported here).

A study is a name, a description, the list of runs (each a `TrainConfig`'s
fields) and the original report's numbers for each run. `run_study(name)` trains
every run with `kmnist_lab.training.train` into `<output_dir>/<study>/<run>/`,
skipping runs whose folders are complete, so an interrupted study loses at most
the run in progress (and `train` itself resumes that one from its last epoch).

`<output_dir>/<study>/study.json` records the study, its settings and every run's
config and original numbers, so `kmnist_lab.report` rebuilds the tables and figures
from files alone. Runs of studies with `extras` also write `evaluation_test.json`
(and `evaluation_train.json`): per-class accuracy, confusion matrix and
classification report of the trained model.

`e_regression` is the one study that is not an image classifier: it fits `sin x`
with a small 1-D Keras model (`_run_regression`) and writes the same files
(`history.csv`, `batches.csv`, `metrics.json`) plus `fit.csv`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import math
import os
import time
from pathlib import Path

import numpy as np

from kmnist_lab import runs
from kmnist_lab.errors import ConfigError, RunFolderError
from kmnist_lab.study_catalog import STUDIES, Study, StudyRun, get_study, list_studies

__all__ = [
    "STUDIES", "Study", "StudyRun", "StudyResult", "effective_config", "get_study",
    "list_studies", "run_study", "select_runs",
]  # fmt: skip

log = logging.getLogger(__name__)

QUICK_SIZES = {"train": 128, "val": 32, "test": 64}
STUDY_FILE = "study.json"

# ---------------------------------------------------------------------------- running


@dataclasses.dataclass
class StudyResult:
    """What `run_study` returns: the study folder and each run's status."""

    study: Study
    study_dir: Path
    dataset: str
    statuses: dict
    trained: list


def effective_config(run: StudyRun, quick: bool = False, epochs_scale: float = 1.0) -> dict:
    """The run's settings after `--epochs-scale` and `--quick` (a few batches per run)."""
    if not (
        isinstance(epochs_scale, (int, float)) and math.isfinite(epochs_scale) and epochs_scale > 0
    ):
        raise ConfigError(f"`epochs_scale` must be a positive number. Received: {epochs_scale!r}")
    cfg = dict(run.config)
    # The nearest whole epoch, halves up (round() would take 2.5 to 2 but 7.5 to 8); the
    # product is rounded to 9 decimals first, so 100 * 0.145 = 14.499999999999998 is a half.
    cfg["epochs"] = max(1, math.floor(round(cfg["epochs"] * epochs_scale, 9) + 0.5))
    if quick:
        cfg["epochs"] = min(cfg["epochs"], 2 if "n_train" in cfg else 1)
        cfg["batch_size"] = min(cfg["batch_size"], 32)
        if "n_train" in cfg:
            cfg["n_train"] = min(cfg["n_train"], 128)
    return cfg


def default_output_dir(dataset: str, quick: bool) -> Path:
    """The study folder used without an output folder: `studies/<dataset>`, or
    `studies/<dataset>-quick` in quick mode (relative to the working directory)."""
    return Path("studies") / (f"{dataset}-quick" if quick else dataset)


def _subset(dataset, seed: int = 0):
    """A small random subset of each split (quick mode)."""
    rng = np.random.default_rng(seed)
    parts = {}
    for split, n in QUICK_SIZES.items():
        x, y = getattr(dataset, split)
        idx = np.sort(rng.permutation(len(y))[: min(n, len(y))])
        parts[split] = (x[idx], y[idx])
    return dataclasses.replace(dataset, **parts)


def _study_record(
    study: Study,
    dataset: str,
    quick: bool,
    epochs_scale: float,
    export: bool = True,
    data_dir=None,
) -> dict:
    """study.json: the study as run (each run's effective config), the settings a resume
    must share (dataset, its `data_dir`, quick, epochs_scale, backend, and `export` where
    runs export) and the report's command that finishes a partly run study uses."""
    import keras

    record = study.to_dict()
    record["runs"] = [
        {**dataclasses.asdict(r), "effective": effective_config(r, quick, epochs_scale)}
        for r in study.runs
    ]
    return {"study": record, "dataset": dataset, "quick": quick, "epochs_scale": epochs_scale,
            "backend": keras.backend.backend(), "export": export,
            "data_dir": None if data_dir is None else os.path.abspath(data_dir)}  # fmt: skip


def _check_settings(study_dir: Path, record: dict) -> None:
    path = study_dir / STUDY_FILE
    if not path.is_file():
        return
    old = runs.read_json(path)
    if old is None:
        return
    for key in ("dataset", "quick", "epochs_scale"):
        if old.get(key) != record[key]:
            raise ConfigError(
                f"{study_dir} holds this study with {key}={old.get(key)!r}, not {record[key]!r}; "
                "choose another --output-dir"
            )
    # Runs on two backends do not compare (other kernels and batch orders, other wall
    # times). Folders written before the backend was recorded continue on any.
    if old.get("backend", record["backend"]) != record["backend"]:
        raise ConfigError(
            f"{study_dir} holds this study trained on the {old['backend']} backend, and this "
            f"process runs {record['backend']}; pass --backend {old['backend']} to continue it "
            "or choose another --output-dir"
        )
    # Its runs must read the same files (folders written before `data_dir` was recorded
    # continue with any), and export as its finished runs did (quick runs never export).
    if old.get("data_dir", record["data_dir"]) != record["data_dir"]:
        where = old["data_dir"] or "the dataset's own location (no --data-dir)"
        flag = f"pass --data-dir {old['data_dir']}" if old["data_dir"] else "drop --data-dir"
        raise ConfigError(
            f"{study_dir} holds this study trained on files from {where}, not "
            f"{record['data_dir'] or 'the default location'}; {flag} to continue it or "
            "choose another --output-dir"
        )
    if not record["quick"] and old.get("export", record["export"]) != record["export"]:
        flag = "--no-export" if old["export"] is False else "no --no-export"
        raise ConfigError(
            f"{study_dir} holds this study run with {flag}; pass the same to continue it "
            "or choose another --output-dir"
        )


def _in_study_terms(error: RunFolderError, run_dir: Path) -> RunFolderError:
    """A run folder's refusal with advice study.py can follow (it takes no --overwrite
    and no --run-name, which `kmnist_lab.runs` suggests to train.py)."""
    head, sep, advice = str(error).rpartition("; ")
    if not sep or "--run-name" not in advice:
        return error
    if "in use by process" in head:
        advice = "wait for it to finish, then run the study again"
    else:
        advice = f"delete {run_dir} to train that run again, or choose another --output-dir"
    return RunFolderError(f"{head}; {advice}")


def _after_fit(study: Study):
    """Per-class scores of the trained model on the test split (and the train split for
    studies with `per_class_train`), written before the run is marked complete.

    A cosine head's outputs are multiplied by the loss's scale first, as the exported
    model serves them (`kmnist_lab.losses.serving_scale`), so the cross-entropy is the
    served scores' and not that of the bare cosines.
    """

    def after_fit(model, dataset, run_dir):
        from kmnist_lab.evaluation import score, write_evaluation
        from kmnist_lab.losses import serving_scale

        splits = ("test", "train") if "per_class_train" in study.extras else ("test",)
        scale = serving_scale(model.loss)
        summary = {}
        for split in splits:
            x, y = getattr(dataset, split)
            scores = model.predict(x, batch_size=512, verbose=0) * scale
            result = score(y, scores, dataset.class_names)
            result["split"] = split
            write_evaluation(Path(run_dir) / f"evaluation_{split}.json", result)
            summary[f"{split}_accuracy_eval"] = result["accuracy"]
        return summary

    return after_fit


def run_study(
    name: str,
    dataset: str = "auto",
    data_dir=None,
    epochs_scale: float = 1.0,
    quick: bool = False,
    output_dir=None,
    loaded=None,
    export: bool = True,
    only=None,
) -> StudyResult:
    """Runs every run of study `name` that is not complete yet.

    Args:
        name: one of `list_studies()`.
        dataset: dataset name (`kmnist_lab.data.list_datasets()`); ignored by `e_regression`.
        data_dir: folder with the dataset files.
        epochs_scale: multiplies every run's epochs (the nearest whole epoch, halves up;
            at least 1).
        quick: a few batches per run on a small subset (tests, smoke runs), one step per
            compiled call, so that `batches.csv` has a row per batch.
        output_dir: parent of the study folder (default `studies/<dataset>[-quick]`).
        loaded: an already loaded `Dataset` to use instead of loading `dataset`.
        export: write each run's SavedModel and model.keras (never in quick mode).
        only: shell-style patterns (`fnmatch`) of the run names to train, e.g.
            `["*_e15"]`; None: every run. The others are left as they are.

    Returns:
        A `StudyResult`; diverged runs are recorded, not raised. Its `statuses`
        hold the selected runs.
    """
    from kmnist_lab.config import TrainConfig
    from kmnist_lab.data import list_datasets, load_dataset
    from kmnist_lab.training import DivergedError, train

    study = get_study(name)
    effective_config(study.runs[0], quick, epochs_scale)  # validates epochs_scale
    selected = select_runs(study, only)
    data = None
    if study.kind == "classify":
        data = loaded if loaded is not None else load_dataset(dataset, data_dir, seed=0)
        if quick:
            data = _subset(data)
        log.info("%s", data.summary())  # once for the study, not once per run
        ds_name = data.name
    else:
        ds_name = "sin"
    study_dir = Path(output_dir) if output_dir is not None else default_output_dir(ds_name, quick)
    study_dir = study_dir / study.name
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFolderError(
            f"cannot create study folder {study_dir}: {e.strerror}; choose another --output-dir"
        ) from None
    record = _study_record(study, ds_name, quick, epochs_scale, export, data_dir)
    _check_settings(study_dir, record)
    runs.atomic_write_json(study_dir / STUDY_FILE, record)
    statuses, trained = {}, []
    for i, run in enumerate(selected, start=1):
        run_dir = study_dir / run.name
        # metrics.json is the only completion marker; a diverged run is finished too.
        status = "complete" if runs.is_complete(run_dir) else runs.run_status(run_dir)
        if status == "complete" and not runs.is_complete(run_dir):
            status = "incomplete"
        if status in ("complete", "diverged"):
            log.info("[%d/%d] %s: %s, skipped", i, len(selected), run.name, status)
            statuses[run.name] = status
            continue
        cfg = effective_config(run, quick, epochs_scale)
        epochs = cfg["epochs"]
        log.info("[%d/%d] %s: training (%d epoch%s)", i, len(selected), run.name, epochs,
                 "" if epochs == 1 else "s")  # fmt: skip
        start = time.perf_counter()
        try:
            if study.kind == "regression":
                metrics = _run_regression(cfg, run_dir)
            else:
                config = TrainConfig(
                    **cfg,
                    dataset=ds_name if ds_name in list_datasets() else dataset,
                    data_dir=record["data_dir"],  # absolute: the same however typed
                    run_name=run.name,
                    output_dir=str(study_dir),
                    export=export and not quick,
                    jit="off" if quick else "auto",
                    # The batch log gets a row per compiled call: a quick run's epoch has
                    # a few steps (4 of 32 images), which the default (10 per call, capped
                    # at an epoch's steps) ran as one call: one point per epoch to draw.
                    steps_per_execution=1 if quick else None,
                    verbose=0,
                )
                after_fit = _after_fit(study)
                metrics = train(config, dataset=data, after_fit=after_fit, plots=not quick).metrics
        except DivergedError as e:
            log.warning("[%d/%d] %s: %s", i, len(selected), run.name, e)
            statuses[run.name] = "diverged"
            continue
        except RunFolderError as e:
            raise _in_study_terms(e, run_dir) from None
        statuses[run.name] = "complete"
        trained.append(run.name)
        acc = metrics.get("test_accuracy")
        log.info(
            "[%d/%d] %s: %s in %.0f s",
            i, len(selected), run.name,
            f"test accuracy {100 * acc:.2f}%" if acc is not None
            else f"test loss {metrics['test_loss']:.3g}",
            time.perf_counter() - start,
        )  # fmt: skip
    return StudyResult(study, study_dir, ds_name, statuses, trained)


def select_runs(study: Study, only=None) -> list[StudyRun]:
    """The runs of `study` whose names match one of the `fnmatch` patterns `only`.

    Raises:
        ConfigError: a pattern matches no run (the message lists some run names).
    """
    if only is None:
        return list(study.runs)
    if isinstance(only, str):
        only = [only]
    if not only:
        raise ConfigError("`only` must hold at least one pattern (None: every run). Received: []")
    names = [r.name for r in study.runs]
    for pattern in only:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            shown = ", ".join(names[:8]) + (f", ... ({len(names)} runs)" if len(names) > 8 else "")
            raise ConfigError(
                f"`only` pattern {pattern!r} matches no run of {study.name}. Its runs: {shown}"
            )
    return [r for r in study.runs if any(fnmatch.fnmatchcase(r.name, p) for p in only)]


def _run_regression(cfg: dict, run_dir: Path) -> dict:
    """Fits `sin x` on (-pi/2, pi/2) with a small MLP; scores on the 0.01 grid."""
    import csv
    import io

    import keras

    from kmnist_lab.callbacks import (
        BatchLogger,
        DivergenceGuard,
        EpochStats,
        HistoryLogger,
        InterruptCheck,
    )
    from kmnist_lab.losses import get_loss
    from kmnist_lab.models import build_model
    from kmnist_lab.optimizers import get_optimizer
    from kmnist_lab.schedules import make_schedule
    from kmnist_lab.training import raise_if_diverged, versions

    run_dir.mkdir(parents=True, exist_ok=True)
    # InterruptCheck: a Ctrl-C that Keras swallows still stops the run (as in `train`).
    with runs.RunLock(run_dir), InterruptCheck() as interrupts:
        for stale in ("history.csv", "batches.csv", "fit.csv", "status.json"):
            (run_dir / stale).unlink(missing_ok=True)
        runs.remove_reports(run_dir)  # it described the run this one replaces
        start = time.perf_counter()
        keras.utils.set_random_seed(cfg["seed"])
        rng = np.random.default_rng(cfg["seed"])
        lo, hi = -math.pi / 2, math.pi / 2
        x = rng.uniform(lo, hi, size=(cfg["n_train"], 1)).astype("float32")
        x_val = rng.uniform(lo, hi, size=(max(32, cfg["n_train"] // 5), 1)).astype("float32")
        grid = np.arange(lo, hi, 0.01, dtype="float64")[:, None]
        model = build_model("mlp", num_classes=1, hidden=cfg["hidden"],
                            activation=cfg["activation"], input_features=1)  # fmt: skip
        steps = math.ceil(len(x) / cfg["batch_size"])
        lr = make_schedule(cfg.get("lr_schedule", "constant"), cfg["lr"], steps, cfg["epochs"])
        model.compile(
            optimizer=get_optimizer(cfg["optimizer"], learning_rate=lr), loss=get_loss("mse")
        )
        runs.atomic_write_json(
            run_dir / "config.json",
            {"config": cfg, "kind": "regression", "backend": keras.backend.backend(),
             "versions": versions(),
             "dataset": {"name": "sin", "train": int(len(x)), "test_grid": int(len(grid))},
             "parameters": int(model.count_params())},
        )  # fmt: skip
        runs.atomic_write_json(run_dir / "status.json", {"status": "running"})
        guard = DivergenceGuard()
        model.fit(
            x, np.sin(x), batch_size=cfg["batch_size"], epochs=cfg["epochs"], verbose=0,
            validation_data=(x_val, np.sin(x_val)),
            callbacks=[interrupts, EpochStats(), HistoryLogger(run_dir / "history.csv"),
                       BatchLogger(run_dir / "batches.csv", len(x), cfg["batch_size"]), guard],
        )  # fmt: skip
        raise_if_diverged(guard, run_dir, cfg["lr"])
        pred = model.predict(grid.astype("float32"), batch_size=1024, verbose=0).astype("float64")
        err = pred[:, 0] - np.sin(grid[:, 0])
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["x", "y_true", "y_pred"])
        writer.writerows(zip(grid[:, 0].round(6), np.sin(grid[:, 0]), pred[:, 0], strict=True))
        runs.atomic_write_text(run_dir / "fit.csv", buf.getvalue())
        with open(run_dir / "history.csv", newline="") as f:
            times = [float(r["epoch_time"]) for r in csv.DictReader(f)]
        steady = times[1:] or times
        metrics = {
            "status": "complete",
            "test_accuracy": None,
            "test_loss": float(np.mean(err**2)),
            "mean_error": float(np.mean(err)),
            "max_abs_error": float(np.max(np.abs(err))),
            "epochs": len(times),
            "wall_time_s": time.perf_counter() - start,
            "samples_per_s": len(x) / (sum(steady) / len(steady)) if steady else None,
            "dataset": "sin",
        }
        interrupts.check()  # a Ctrl-C swallowed while predicting
        runs.atomic_write_json(run_dir / "status.json", {"status": "complete"})
        runs.atomic_write_json(run_dir / runs.COMPLETE_MARKER, metrics)
    return metrics
