"""Score a SavedModel with TensorFlow alone (no model code) and report per class.

`evaluate_saved_model(path, x, y, class_names)` loads the `serve` signature with
`tf.saved_model.load`, so any exported run (logit or cosine head) is scored the
same way, and returns accuracy, cross-entropy of the served probabilities,
per-class accuracy (report B), the confusion matrix and scikit-learn's
classification report (report C), and the most confidently wrong examples.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from kmnist_lab.errors import ModelLoadError
from kmnist_lab.runs import read_json

log = logging.getLogger(__name__)


def resolve_saved_model(path) -> tuple[Path, Path | None]:
    """Returns `(saved_model_dir, run_dir or None)` for a SavedModel or a run folder.

    Raises:
        ModelLoadError: `path` is neither.
    """
    path = Path(path)
    if (path / "saved_model" / "saved_model.pb").is_file():
        return path / "saved_model", path
    if (path / "saved_model.pb").is_file():
        parent = path.parent
        return path, parent if run_config(parent) else None
    if not path.exists():
        raise ModelLoadError(f"{path} does not exist")
    if (path / "config.json").is_file():
        from kmnist_lab.runs import run_status

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
        raise ModelLoadError(f"cannot load SavedModel {saved_dir}: {type(e).__name__}") from None
    if "serve" not in loaded.signatures:
        raise ModelLoadError(
            f"{saved_dir} has no `serve` signature (it has {sorted(loaded.signatures)}); "
            "export it with kmnist_lab.export.export_saved_model"
        )
    return loaded


def predict_scores(loaded, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Class scores (logits or `s * cos`) of raw pixel images `x`, batched."""
    import tensorflow as tf

    x = np.asarray(x)
    if x.ndim not in (3, 4) or x.shape[1:3] != (28, 28) or (x.ndim == 4 and x.shape[3] != 1):
        raise ModelLoadError(f"images must be (N, 28, 28) or (N, 28, 28, 1); got shape {x.shape}")
    serve = loaded.signatures["serve"]
    out = []
    for i in range(0, len(x), batch_size):
        batch = tf.constant(x[i : i + batch_size], dtype=tf.float32)
        out.append(serve(pixels=batch)["scores"].numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def score(y_true, scores, class_names, n_wrong: int = 24) -> dict:
    """Accuracy, cross-entropy, per-class accuracy, confusion matrix, classification report.

    Cross-entropy is `mean(-log softmax(scores)_y)`, computed stably with
    `log_softmax(s) = s - logsumexp(s)`.
    """
    from sklearn.metrics import classification_report, confusion_matrix

    y_true = np.asarray(y_true).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64)
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
    report = classification_report(
        y_true,
        pred,
        labels=labels,
        target_names=list(class_names),
        output_dict=True,
        zero_division=0,
    )
    return {
        "n": int(len(y_true)),
        "accuracy": float((pred == y_true).mean()) if len(y_true) else float("nan"),
        "cross_entropy": float(-log_probs[np.arange(len(y_true)), y_true].mean()),
        "per_class_accuracy": {name: float(a) for name, a in zip(class_names, per_class)},
        "confusion_matrix": cm.tolist(),
        "classification_report": report,
        "classification_report_text": classification_report(
            y_true, pred, labels=labels, target_names=list(class_names), digits=4, zero_division=0
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


def write_report(result: dict, x: np.ndarray, class_names, out_dir, title: str = "") -> Path:
    """Writes `evaluation.json` and the figures (confusion, per-class, wrong examples)."""
    from kmnist_lab import plots
    from kmnist_lab.runs import atomic_write_json

    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        from kmnist_lab.errors import RunFolderError

        raise RunFolderError(
            f"cannot create {out_dir}: {e.strerror}; choose another --output-dir"
        ) from None
    atomic_write_json(out_dir / "evaluation.json", result)
    plots.save(plots.confusion_matrix(result["confusion_matrix"], class_names, f"Confusion matrix {title}"),
               out_dir / "confusion.png")  # fmt: skip
    plots.save(
        plots.per_class_accuracy(
            {title or "accuracy": list(result["per_class_accuracy"].values())},
            class_names,
            f"Per-class accuracy {title}",
        ),  # fmt: skip
        out_dir / "per_class.png",
    )
    wrong = result["most_confident_wrong"]
    if wrong:
        captions = [
            f"true {class_names[w['true']]}\npred {class_names[w['pred']]} {w['confidence']:.2f}"
            for w in wrong
        ]
        images = x[[w["index"] for w in wrong]]
        plots.save(plots.image_grid(images, captions, title=f"Most confidently wrong {title}"),
                   out_dir / "wrong.png")  # fmt: skip
    return out_dir / "evaluation.json"


def run_config(run_dir: Path | None) -> dict:
    """The `config.json` of a run folder, or {}.

    A search's `best_model/` has none: its `metrics.json` names the search's data
    (`identity`: dataset, data dir, validation fraction, seed), returned in
    `config.json`'s shape, so that its model is scored on the splits it was tuned on.
    """
    if run_dir is None:
        return {}
    config = read_json(run_dir / "config.json")
    if config:
        return config
    identity = (read_json(run_dir / "metrics.json") or {}).get("identity")
    if not isinstance(identity, dict) or "space" not in identity:
        return {}
    keys = ("dataset", "data_dir", "val_fraction", "seed")
    return {"config": {k: identity.get(k) for k in keys}, "dataset": {"name": identity["dataset"]}}
