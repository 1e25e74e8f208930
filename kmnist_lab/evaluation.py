"""Score a SavedModel with TensorFlow alone (no model code) and report per class.

`load_saved_model(path)` loads the `serve` signature with `tf.saved_model.load`, so
any exported run (logit or cosine head) is scored the same way: `predict_scores` runs
it in batches, and `score(y, scores, class_names)` returns accuracy, cross-entropy of
the served probabilities, per-class accuracy (report B), the confusion matrix and
scikit-learn's classification report (report C), and the most confidently wrong
examples; `write_report` saves them (evaluation.json, confusion.png, per_class.png,
wrong.png).

A model scored on another dataset than its own (transfer) predicts its own classes:
`model_class_names` names them, and `write_report` labels the predicted axis and
captions with them while the true labels keep the scored dataset's names; `score`
names each row of the classification report by both (`"Bag (pred 8)"`).
`unfinished_run` says when a run folder's SavedModel belongs to a run that has not
written its `metrics.json` (still running, or stopped after its export).
`check_split_flags` keeps `--split val`/`train` on the splits the run itself used.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from kmnist_lab.data import default_val_fraction  # noqa: F401  (evaluate.py's, re-exported)
from kmnist_lab.errors import ConfigError, DataError, ModelLoadError, RunFolderError
from kmnist_lab.runs import COMPLETE_MARKER, atomic_write_json, read_json, run_status

log = logging.getLogger(__name__)


def resolve_saved_model(path) -> tuple[Path, Path | None]:
    """Returns `(saved_model_dir, run_dir or None)` for a SavedModel or a run folder.

    `path` may also be a SavedModel's `saved_model.pb` file, which names its folder.

    Raises:
        ModelLoadError: `path` is neither.
    """
    path = Path(path)
    if path.name == "saved_model.pb" and path.is_file():
        path = path.parent
    if (path / "saved_model" / "saved_model.pb").is_file():
        return path / "saved_model", path
    if (path / "saved_model.pb").is_file():
        parent = path.parent
        try:
            return path, parent if run_config(parent) else None
        except RunFolderError:  # a config.json beside it that training did not write
            return path, None
    if not path.exists():
        raise ModelLoadError(
            f"{path} does not exist; pass a run folder (holding saved_model/), a SavedModel "
            "folder or its saved_model.pb"
        )
    if (path / "config.json").is_file():
        status = run_status(path)
        advice = {
            "incomplete": "an interrupted run: re-run its training command to resume it",
            "running": "it is still training: evaluate it when it has finished",
            "diverged": "its training diverged: retrain it with --overwrite and a lower --lr",
        }
        if status in advice:
            raise ModelLoadError(f"{path} has no saved_model/ yet; {advice[status]}")
        backend = run_config(path).get("backend")
        if backend not in (None, "tensorflow", "jax") and (path / "model.keras").is_file():
            raise ModelLoadError(
                f"{path} has no saved_model/: on the {backend} backend a TensorFlow process "
                "exports it, and that could not run (is tensorflow installed?); load its "
                "model.keras with kmnist_lab.models.load_keras_model instead"
            )
        raise ModelLoadError(
            f"{path} has no saved_model/ (trained with --no-export, or in a --quick study?)"
        )
    search_advice = _search_advice(path)
    if search_advice:
        raise ModelLoadError(search_advice)
    raise ModelLoadError(
        f"{path} is not a SavedModel (no saved_model.pb) nor a run folder with saved_model/"
    )


def _search_advice(path: Path) -> str | None:
    """What to do with a search folder, or a search's best_model/ without a SavedModel
    (they hold no saved_model/ of their own); None for anything else."""
    if (path / "search.json").is_file():
        best = path / "best_model"
        if (best / "saved_model" / "saved_model.pb").is_file():
            return f"{path} is a search folder: evaluate its best model with evaluate.py {best}"
        return f"{path} is a search folder and its best model was not exported: " + (
            _unexported_best(path)
        )
    identity = (read_json(path / "metrics.json") or {}).get("identity")
    if isinstance(identity, dict) and "space" in identity:
        return f"{path} is a search's best model without saved_model/: " + _unexported_best(
            path.parent
        )
    return None


def _unexported_best(search: Path) -> str:
    """Why a search's best model has no SavedModel, and what to do instead."""
    backend = (read_json(search / "search.json") or {}).get("backend")
    if (
        backend not in (None, "tensorflow", "jax")
        and (search / "best_model" / "model.keras").is_file()
    ):
        return (
            f"the search ran on the {backend} backend, where a TensorFlow process exports the "
            "SavedModel, and that could not run (is tensorflow installed?); load "
            "best_model/model.keras with kmnist_lab.models.load_keras_model instead"
        )
    return "re-run the search's command without --no-export to export it"


def load_saved_model(path):
    """Loads a SavedModel's `serve` function with `tf.saved_model.load`."""
    import tensorflow as tf

    saved_dir, _ = resolve_saved_model(path)
    try:
        loaded = tf.saved_model.load(str(saved_dir))
    except Exception as e:  # TF raises many types for corrupt files
        lines = str(e).strip().splitlines()
        detail = f": {lines[0][:200]}" if lines else ""
        raise ModelLoadError(
            f"cannot load SavedModel {saved_dir}: {type(e).__name__}{detail}"
        ) from None
    if "serve" not in loaded.signatures:
        raise ModelLoadError(
            f"{saved_dir} has no `serve` signature (it has {sorted(loaded.signatures)}); "
            "export it with kmnist_lab.export.export_saved_model"
        )
    return loaded


def predict_scores(loaded, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Class scores (logits or `s * cos`) of raw pixel images `x`, batched.

    `x`: (N, 28, 28), (N, 28, 28, 1) or flattened (N, 784), as the `serve` signature
    takes them.
    """
    import tensorflow as tf

    x = np.asarray(x)
    if x.ndim == 2 and x.shape[1] == 28 * 28:
        x = x.reshape(-1, 28, 28)
    if x.ndim not in (3, 4) or x.shape[1:3] != (28, 28) or (x.ndim == 4 and x.shape[3] != 1):
        raise ModelLoadError(
            f"images must be (N, 28, 28), (N, 28, 28, 1) or (N, 784); got shape {x.shape}"
        )
    serve = loaded.signatures["serve"]
    out = []
    for i in range(0, len(x), batch_size):
        batch = tf.constant(x[i : i + batch_size], dtype=tf.float32)
        out.append(serve(pixels=batch)["scores"].numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _check_scored(y_true, scores, class_names, predicted_class_names) -> None:
    """Refuses what would make `score`'s per-class numbers wrong without an error: a
    confusion matrix over fewer classes than the scores have drops the predictions of
    the others from its rows."""
    if scores.ndim != 2:
        raise ModelLoadError(
            f"`scores` must be (N, classes). Received: scores.shape={scores.shape}"
        )
    if len(y_true) != len(scores):
        raise ModelLoadError(
            f"{len(y_true)} labels for {len(scores)} rows of scores; they must match"
        )
    for what, names in (("class_names", class_names),
                        ("predicted_class_names", predicted_class_names)):  # fmt: skip
        if names is not None and len(names) != scores.shape[1]:
            raise ConfigError(
                f"{len(names)} {what} for scores with {scores.shape[1]} columns (classes); "
                "pass one name per class"
            )
    if len(y_true) and not np.issubdtype(y_true.dtype, np.integer):
        raise DataError(f"`y_true` must hold integer class ids. Received: dtype {y_true.dtype}")
    bad = y_true[(y_true < 0) | (y_true >= scores.shape[1])]
    if len(bad):
        raise DataError(
            f"`y_true` holds class ids outside [0, {scores.shape[1]}) (the scores' columns), "
            f"e.g. {int(bad[0])}"
        )


def score(y_true, scores, class_names, n_wrong: int = 24, predicted_class_names=None) -> dict:
    """Accuracy, cross-entropy, per-class accuracy, confusion matrix, classification report.

    Cross-entropy is `mean(-log softmax(scores)_y)`, computed stably with
    `log_softmax(s) = s - logsumexp(s)`.

    Args:
        class_names: the scored dataset's class names (the true labels).
        predicted_class_names: the model's class names, where they differ from
            `class_names` (a model scored on another dataset than its own). Row `k` of
            the classification report is about true class `k` (recall) and about the
            model's predictions of its class `k` (precision): it is then named by both,
            `"Bag (pred 8)"`. Default: `class_names`, rows named by them alone.

    Raises:
        ModelLoadError: `scores` is not (N, classes), or its N is not `y_true`'s.
        ConfigError: `class_names` (or `predicted_class_names`) does not name each
            column of `scores` once.
        DataError: `y_true` holds something other than integer ids of those columns.
    """
    from sklearn.metrics import classification_report, confusion_matrix

    y_true = np.asarray(y_true).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64)
    _check_scored(y_true, scores, class_names, predicted_class_names)
    labels = list(range(len(class_names)))
    pred = scores.argmax(axis=1)
    shifted = scores - scores.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    probs = np.exp(log_probs)
    cm = confusion_matrix(y_true, pred, labels=labels)
    support = cm.sum(axis=1)
    per_class = np.divide(np.diag(cm), support, out=np.full(len(labels), np.nan), where=support > 0)
    wrong = np.flatnonzero(pred != y_true)
    confidence = probs[wrong, pred[wrong]]
    worst = wrong[np.argsort(-confidence)][:n_wrong]
    rows = report_row_names(class_names, predicted_class_names)
    report = classification_report(
        y_true, pred, labels=labels, target_names=rows, output_dict=True, zero_division=0
    )
    return {
        "n": int(len(y_true)),
        "accuracy": float((pred == y_true).mean()) if len(y_true) else float("nan"),
        "cross_entropy": float(-log_probs[np.arange(len(y_true)), y_true].mean()),
        "per_class_accuracy": {name: float(a) for name, a in zip(class_names, per_class)},
        "confusion_matrix": cm.tolist(),
        "classification_report": report,
        "classification_report_text": classification_report(
            y_true, pred, labels=labels, target_names=rows, digits=4, zero_division=0
        ),
        "most_confident_wrong": [
            {
                "index": int(i),
                "true": int(y_true[i]),
                "pred": int(pred[i]),
                "confidence": float(probs[i, pred[i]]),
            }
            for i in worst
        ],
    }


def report_row_names(class_names, predicted_class_names=None) -> list[str]:
    """The classification report's row names: the true classes' names, each followed by
    the model's name of that class (`"Bag (pred 8)"`, as wrong.png's captions name a
    prediction) where the model's classes are not the scored data's."""
    class_names = [str(name) for name in class_names]
    if predicted_class_names is None:
        return class_names
    predicted = [str(name) for name in predicted_class_names]
    if len(predicted) != len(class_names):
        raise ValueError(
            f"{len(predicted)} predicted class names for {len(class_names)} classes: {predicted}"
        )
    if predicted == class_names:
        return class_names
    return [f"{true} (pred {model})" for true, model in zip(class_names, predicted)]


def write_evaluation(path, result: dict) -> None:
    """Writes `score`'s result as strict JSON: a number that is not finite (the accuracy
    of a class with no images in the scored split is NaN) becomes `null`, since
    `NaN` is no JSON value and strict readers (`jq`, JavaScript, Go) refuse the file.
    `report.common.read_evaluation` reads `null` back as NaN."""

    def strict(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: strict(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [strict(v) for v in value]
        return value

    atomic_write_json(path, strict(result))


def write_report(
    result: dict, x: np.ndarray, class_names, out_dir, title: str = "", predicted_class_names=None
) -> Path:
    """Writes `evaluation.json` and the figures (confusion, per-class, wrong examples).

    Args:
        class_names: the scored dataset's class names (the true labels).
        predicted_class_names: the model's class names (what it predicts), where they
            differ from `class_names` (a model scored on another dataset than its
            own); they label the confusion matrix's predicted axis and the `pred`
            of wrong.png's captions. Default: `class_names`.
    """
    from kmnist_lab import plots

    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFolderError(
            f"cannot create {out_dir}: {e.strerror}; choose another --output-dir"
        ) from None
    class_names = list(class_names)
    predicted = list(predicted_class_names) if predicted_class_names is not None else class_names
    if len(predicted) != len(class_names):
        raise ValueError(
            f"{len(predicted)} predicted class names for {len(class_names)} classes: {predicted}"
        )
    write_evaluation(out_dir / "evaluation.json", result)
    # Columns are the model's classes, rows the data's.
    confusion = plots.confusion_matrix(result["confusion_matrix"], class_names,
                                       f"Confusion matrix {title}", predicted)  # fmt: skip
    plots.save(confusion, out_dir / "confusion.png")
    plots.save(
        plots.per_class_accuracy(
            {"accuracy": list(result["per_class_accuracy"].values())},  # one series: no legend
            class_names,
            f"Per-class accuracy {title}",
        ),  # fmt: skip
        out_dir / "per_class.png",
    )
    wrong = result["most_confident_wrong"]
    if wrong:
        captions = [
            f"true {class_names[w['true']]}\npred {predicted[w['pred']]} {w['confidence']:.2f}"
            for w in wrong
        ]
        images = x[[w["index"] for w in wrong]]
        plots.save(plots.image_grid(images, captions, title=f"Most confidently wrong {title}"),
                   out_dir / "wrong.png")  # fmt: skip
    else:  # nothing to draw: an earlier scoring's images would pass for this model's
        (out_dir / "wrong.png").unlink(missing_ok=True)
    return out_dir / "evaluation.json"


def run_config(run_dir: Path | None) -> dict:
    """The `config.json` of a run folder, or {}.

    Raises:
        RunFolderError: the folder's `config.json` is not the one training writes
            (`report.common.run_folder_problem`: damaged, or a field of another type),
            or a run's `metrics.json` is there without it.

    A search's `best_model/` has none: its `metrics.json` names the search's data
    (`identity`: dataset, data dir, validation fraction, seed), returned in
    `config.json`'s shape, so that its model is scored on the splits it was tuned on.
    """
    if run_dir is None:
        return {}
    if (run_dir / "config.json").is_file():
        from kmnist_lab.report.common import run_folder_problem

        problem = run_folder_problem(run_dir)
        if problem:
            raise RunFolderError(
                f"{run_dir} is not a kmnist_lab run folder: {problem}; restore the "
                f"config.json train.py wrote, or pass {run_dir / 'saved_model'} to score the "
                "SavedModel on its own (with --dataset)"
            )
        return read_json(run_dir / "config.json")
    metrics = read_json(run_dir / "metrics.json")
    identity = (metrics or {}).get("identity")
    if not isinstance(identity, dict) or "space" not in identity:
        if (run_dir / "metrics.json").is_file():  # a run's, whose config.json is gone
            raise RunFolderError(
                f"{run_dir} has a metrics.json but no config.json, which names the data "
                "the run trained on (train.py writes both); restore it, or pass "
                f"{run_dir / 'saved_model'} to score the SavedModel on its own (with --dataset)"
            )
        return {}
    keys = ("dataset", "data_dir", "val_fraction", "seed")
    return {"config": {k: identity.get(k) for k in keys}, "dataset": {"name": identity["dataset"]}}


def run_complete(run_dir: Path | None) -> bool | None:
    """Whether a run folder's run finished (its `metrics.json`, written last, exists);
    None for a SavedModel outside a run folder (no `config.json` nor `metrics.json`)."""
    if run_dir is None:
        return None
    if (run_dir / COMPLETE_MARKER).is_file():
        return True
    return False if (run_dir / "config.json").is_file() else None


def unfinished_run(run_dir: Path | None) -> str | None:
    """What an unfinished training run's SavedModel is, for a warning; None otherwise.

    `training.train` exports `saved_model/` once, after the last epoch and the test
    evaluation, and writes `metrics.json` last: a run folder with the one and not the
    other stopped (or is still busy) in between, so its SavedModel is the final model
    but the run has no recorded test metrics and counts as unfinished.
    """
    if run_complete(run_dir) is not False:
        return None
    if run_status(run_dir) == "running":
        return (
            f"{run_dir} has no metrics.json yet: its training is still running, in the steps "
            "after its last epoch (saved_model/ is exported then, metrics.json written last); "
            "this scores that model, but the run is not complete"
        )
    return (
        f"{run_dir} has no metrics.json: its training stopped after exporting saved_model/ "
        "(after its last epoch) and before writing metrics.json; this scores that model, but "
        "the run is unfinished: re-run its training command to complete it"
    )


def model_class_names(run: dict) -> tuple[str, ...] | None:
    """The names of the classes a run's model predicts, or None where unknown.

    `run` is `run_config(run_dir)`: a run's config.json records them
    (`dataset.class_names`); otherwise (an older run, a search's `best_model/`) they
    are those of the dataset it trained on (`dataset.name`, else `config.dataset`).
    A SavedModel outside a run (`{}`) has none.
    """
    from kmnist_lab import data

    dataset = run.get("dataset") if isinstance(run.get("dataset"), dict) else {}
    config = run.get("config") if isinstance(run.get("config"), dict) else {}
    recorded = dataset.get("class_names")
    if isinstance(recorded, list) and recorded:
        return tuple(str(name) for name in recorded)
    name = dataset.get("name") or config.get("dataset")
    if not isinstance(name, str):
        return None
    # `auto` is MNIST or its 5k subset: digits either way.
    names = data._CLASS_NAMES.get("mnist" if name == "auto" else name)
    return tuple(names) if names else None


def check_split_flags(split: str, seed, val_fraction, run: dict | None = None) -> None:
    """Refuses a `--seed` or `--val-fraction` that does not apply or leaks training data.

    Args:
        split: the split scored, "test", "val" or "train".
        seed, val_fraction: the flags as given (None: not given, the run's apply).
        run: where the model is scored on the dataset it trained on, the split that
            training used: `{"dataset": name, "seed": int, "val_fraction": float or
            None (the dataset's default)}`; None otherwise (a SavedModel outside a run,
            or another dataset), where any values are taken.

    Raises:
        ConfigError: with `split="test"`, either flag at all (the test split is fixed;
            they would be ignored); with "val" or "train" and `run`, a value other than
            the run's: those images would not be the run's validation (training) images.
    """
    given = [f"--seed {seed}"] if seed is not None else []
    if val_fraction is not None:
        given.append(f"--val-fraction {val_fraction:g}")
    if not given:
        return
    if split == "test":
        it, chooses = ("it", "chooses") if len(given) == 1 else ("them", "choose")
        raise ConfigError(
            f"{' and '.join(given)} would be ignored: {'they' if it == 'them' else it} only "
            f"{chooses} which training images form the validation split, and --split test "
            f"scores the fixed test split; drop {it}"
        )
    if run is None:
        return
    run_fraction = run.get("val_fraction")
    default = run_fraction is None
    if default:
        run_fraction = default_val_fraction(run["dataset"])
    differ = []
    if seed is not None and seed != run["seed"]:
        differ.append(f"--seed {seed}")
    if val_fraction is not None and not math.isclose(val_fraction, run_fraction, rel_tol=1e-9):
        differ.append(f"--val-fraction {val_fraction:g}")
    if not differ:
        return
    consequence = {
        "val": "would include images the run trained on",
        "train": "would include the run's validation images and leave out some it trained on",
    }[split]
    run_split = f"seed {run['seed']} and val_fraction {run_fraction:g}"
    if default:
        run_split += f" (the {run['dataset']} default)"
    raise ConfigError(
        f"the run split {run['dataset']}'s training images with {run_split}; "
        f"{' and '.join(differ)} would split them differently, so --split {split} {consequence}: "
        f"drop {' and '.join(flag.split()[0] for flag in differ)} to score the run's own "
        f"{split} split"
    )
