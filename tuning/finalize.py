"""After a search: tables, the best model (test split used once), figures, summary."""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path

import keras
import keras_tuner as kt

from kmnist_lab import runs
from kmnist_lab.training import DivergedError
from tuning import results
from tuning.figures import write_figures
from tuning.tuners import divergence

log = logging.getLogger(__name__)


def _tuner_settings(cfg) -> str:
    if cfg.tuner == "hyperband":
        text = f"max_epochs={cfg.max_epochs}, factor={cfg.factor}"
        if cfg.hyperband_iterations != 1:
            text += f", iterations={cfg.hyperband_iterations}"
        return text + (f", max_trials={cfg.max_trials}" if cfg.max_trials else "")
    text = f"epochs <= {cfg.max_epochs}"
    if cfg.max_trials or cfg.tuner != "grid":
        text += f", max_trials={cfg.max_trials or 10}"
    return text


def finalize(tuner, cfg, dataset, elapsed_s: float = 0.0, memory: dict | None = None) -> dict:
    """Writes trials.csv, best_hyperparameters.json, best_train_config.json, best_model/,
    figures/, summary.*.

    Returns:
        The contents of `summary.json`.
    """
    project = Path(cfg.project_dir)
    oracle = tuner.oracle
    rows = results.trial_rows(oracle)
    results.write_trials_csv(rows, results.columns(oracle), project / "trials.csv")
    done = results.completed(rows)
    broken = results.diverged(rows)
    best = best_model = None
    if broken and done:
        log.info(
            "%d of %d trials diverged (non-finite loss), never candidates for the "
            "best: %s", len(broken), len(rows), ", ".join(r["trial_id"] for r in broken),
        )  # fmt: skip
    elif rows and not done:
        # A diverged trial scores the worst possible val accuracy for keras-tuner, so it
        # could have come out "best"; the best of nothing is nothing.
        stale = _remove_best(project)
        (log.warning if broken else log.info)(
            "search %s: %s: no best trial, no model exported%s%s",
            cfg.project_name, results.no_best_reason(rows),
            " (try lower learning rates)" if broken else "",
            f"; removed the earlier {', '.join(stale)}" if stale else "",
        )  # fmt: skip
    if done:
        # Ties go to the earliest trial (rows are in id order and `max` keeps the
        # first): keras-tuner's order of equal scores depends on file load order.
        row = max(done, key=lambda r: r["val_accuracy"])
        trial = oracle.trials[row["trial_id"]]
        values = trial.hyperparameters.values
        best = {
            "trial_id": trial.trial_id,
            "hyperparameters": {n: values[n] for n in results.hp_names(oracle) if n in values},
            "val_accuracy": row["val_accuracy"],
            "val_loss": row["val_loss"],
            "epochs": int(row["epochs"]),
        }
        if "tuner/bracket" in values:
            best["hyperband"] = {
                k.split("/", 1)[1]: values[k]
                for k in ("tuner/bracket", "tuner/round", "tuner/trial_id")
                if k in values
            }
        runs.atomic_write_json(project / "best_hyperparameters.json", best)
        write_train_config(tuner, trial, cfg, dataset, best["epochs"], project)
        try:
            best_model = export_best(
                tuner, trial, cfg, dataset, best["epochs"], project / "best_model"
            )
        except DivergedError as e:  # a retraining that diverged: the rest still holds
            log.warning("search %s: %s", cfg.project_name, e)
    # lr from a range (a Float), or one of a set of values (a Choice): scatter or heatmap
    lr_range = any(isinstance(h, kt.engine.hyperparameters.Float) and h.name == "lr"
                   for h in oracle.hyperparameters.space)  # fmt: skip
    figures = write_figures(
        rows, project / "figures", label=f"{cfg.space}/{cfg.tuner}", lr_values=not lr_range
    )
    statuses = [r["status"] for r in rows]
    failed = sum(s in ("FAILED", "INVALID") for s in statuses)
    summary = {
        "config": cfg.to_dict(),
        "backend": keras.backend.backend(),
        "dataset": dataset.name,
        "space_summary": tuner.hypermodel.summary,
        "tuner_settings": _tuner_settings(cfg),
        "trials": len(rows),
        "trials_completed": len(done),
        "trials_diverged": len(broken),
        "trials_failed": failed,
        "trials_other": len(rows) - len(done) - len(broken) - failed,
        "total_epochs": results.total_epochs(rows),
        "trial_wall_time_s": float(sum(r["wall_time_s"] for r in rows if r["wall_time_s"] != "")),
        "session_elapsed_s": elapsed_s,
        "session_memory_mb": memory or {},
        "workers": sorted({r["worker"] for r in rows if r["worker"]}),
        "best": best,
        "best_model": best_model,
        "figures": figures,
    }
    runs.atomic_write_json(project / "summary.json", summary)
    runs.atomic_write_text(project / "summary.md", results.summary_markdown(summary, rows, figures))
    best_text = (
        f", best val accuracy {100 * best['val_accuracy']:.2f}% (trial {best['trial_id']})"
        if best
        else ""
    )
    log.debug(  # scripts/tune.py prints the one-line result (it was printed twice)
        "search %s: %d trials, %d epochs trained in total%s -> %s",
        cfg.project_name, len(rows), summary["total_epochs"], best_text, project,
    )  # fmt: skip
    return summary


def write_train_config(tuner, trial, cfg, dataset, epochs: int, project: Path) -> dict:
    """Writes `best_train_config.json`: the best trial as a `scripts/train.py --config`.

    The search's data (dataset, split, seed) and backend, and a run named
    `<project>_best`; the file is validated as a `TrainConfig` before it is written.
    """
    from kmnist_lab.config import TrainConfig

    config = {
        **tuner.hypermodel.train_config(trial.hyperparameters, epochs),
        "dataset": dataset.name,
        "data_dir": cfg.data_dir,
        "val_fraction": cfg.val_fraction,
        "backend": keras.backend.backend(),
        "run_name": f"{cfg.project_name}_best",
    }
    TrainConfig.from_dict(config)  # raises ConfigError if train.py could not read it
    runs.atomic_write_json(project / "best_train_config.json", config)
    return config


def export_best(tuner, trial, cfg, dataset, epochs: int, out: Path) -> dict:
    """Restores (or retrains) the best trial's model, scores it on val and test, exports it.

    The test split is evaluated here only, once per best model: an existing
    `metrics.json` of the same trial and search is returned as it is.
    """
    metrics_path = out / "metrics.json"
    if metrics_path.is_file():
        old = runs.read_json(metrics_path) or {}
        same = old.get("trial_id") == trial.trial_id and not cfg.identity_differences(
            old.get("identity")
        )
        if same and (old.get("retrained") or not cfg.retrain):
            if not cfg.export or old.get("artifacts"):
                return old
            checkpoint = Path(tuner._get_checkpoint_fname(trial.trial_id))
            if not old.get("retrained") and checkpoint.is_file():
                # Scored before under --no-export: export the same restored model now
                # and keep its test score (the test split is used once).
                model = _restore(tuner, trial)
                old["artifacts"] = _export(
                    model, tuner.hypermodel.loss_for(trial.hyperparameters), out
                )
                runs.atomic_write_json(metrics_path, old)
                log.info("exported the best model (trial %s) -> %s", trial.trial_id, out)
                return old
        metrics_path.unlink()
    # Scoring another model (a new best, or retrained): the files of the one exported
    # before, and evaluate.py's reports of it, must go, or `--no-export` would leave
    # them beside the new metrics.json.
    _remove_artifacts(out)
    out.mkdir(parents=True, exist_ok=True)
    hp = trial.hyperparameters
    checkpoint = Path(tuner._get_checkpoint_fname(trial.trial_id))
    (x_train, y_train), (x_val, y_val) = dataset.train, dataset.val
    retrained = cfg.retrain or not checkpoint.is_file()
    if retrained:
        log.info("retraining trial %s's configuration for %d epochs", trial.trial_id, epochs)
        keras.backend.clear_session()
        model = tuner.hypermodel.build(hp)
        history = tuner.hypermodel.fit(
            hp, model, x_train, y_train, validation_data=(x_val, y_val), epochs=epochs
        )
        broke = divergence(history)
        if broke:  # its trial trained, but this run of it did not: no NaN model as the best
            advice = (
                "re-run without --retrain to export the trial's own checkpoint"
                if checkpoint.is_file()
                else "train it with scripts/train.py --config on best_train_config.json "
                "(another seed or a lower --lr)"
            )
            raise DivergedError(
                f"retraining trial {trial.trial_id}'s configuration diverged (non-finite loss "
                f"at epoch {broke[0]}): no model exported; {advice}"
            )
        origin = f"retrained from scratch ({epochs} epochs)"
    else:
        model = _restore(tuner, trial)
        origin = f"restored from trial {trial.trial_id}'s checkpoint"
    batch = max(256, int(hp.values.get("batch_size", 256)))
    val = model.evaluate(x_val, y_val, batch_size=batch, verbose=0, return_dict=True)
    x_test, y_test = dataset.test
    test = model.evaluate(x_test, y_test, batch_size=batch, verbose=0, return_dict=True)
    artifacts = _export(model, tuner.hypermodel.loss_for(hp), out) if cfg.export else []
    metrics = {
        "trial_id": trial.trial_id,
        "origin": origin,
        "retrained": retrained,
        "epochs": epochs,
        "val_accuracy": float(val["accuracy"]),
        "val_loss": float(val["loss"]),
        "test_accuracy": float(test["accuracy"]),
        "test_loss": float(test["loss"]),
        "dataset": dataset.name,
        "test_size": int(len(y_test)),
        "hyperparameters": {
            n: hp.values[n] for n in results.hp_names(tuner.oracle) if n in hp.values
        },
        "identity": cfg.identity(),
        "artifacts": artifacts,
    }
    runs.atomic_write_json(metrics_path, metrics)
    log.debug(  # scripts/tune.py prints the one-line result
        "best model (%s): val accuracy %.4f, test accuracy %.4f -> %s",
        origin, metrics["val_accuracy"], metrics["test_accuracy"], out,
    )  # fmt: skip
    return metrics


def _remove_best(project: Path) -> list[str]:
    """Deletes the best-trial files of `project` (written for a best trial that is none
    now: one that diverged, scored before divergence was recorded); returns their names."""
    names = ("best_hyperparameters.json", "best_train_config.json", "best_model")
    removed = [name for name in names if (project / name).exists()]
    (project / names[0]).unlink(missing_ok=True)
    (project / names[1]).unlink(missing_ok=True)
    shutil.rmtree(project / names[2], ignore_errors=True)
    return removed


def _remove_artifacts(out: Path) -> None:
    """Deletes what describes `out`'s previous model: its exported files (`model.keras`,
    `saved_model/`) and `scripts/evaluate.py`'s reports of it (`evaluation/`)."""
    (out / "model.keras").unlink(missing_ok=True)
    shutil.rmtree(out / "saved_model", ignore_errors=True)
    shutil.rmtree(out / "evaluation", ignore_errors=True)


def _restore(tuner, trial):
    """The trial's checkpointed model. Unless the trial continued another (Hyperband),
    its optimizer is not built here, so Keras skips the checkpoint's optimizer
    variables and warns; the model is only evaluated and exported, so that warning is
    noise and is silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        return tuner.load_model(trial)


def _export(model, loss, out: Path) -> list[str]:
    """`save_model_files` into `out`; names as the search folder lists them (`best_model/...`)."""
    from kmnist_lab.export import save_model_files

    return [f"best_model/{name}" for name in save_model_files(model, loss, out)]
