"""Export a trained Keras model as a TF SavedModel that takes raw pixels.

This is the one module of the library that uses TensorFlow directly (serving
signatures need `tf.TensorSpec`); it needs the `tensorflow` package whatever the
Keras backend is, and Keras can export from the TensorFlow and JAX backends.

The SavedModel has two signatures:

- `serve`: float32 pixels in [0, 255], shape (N, 28, 28), (N, 28, 28, 1) or (N, 784).
- `serve_uint8`: the same as uint8.

Any other shape fails inside the SavedModel (`InvalidArgumentError` naming the
shapes it takes): reshaped as they come, (N, 28, 28, 3) images would be scored as
3N grey ones. An empty batch (N = 0) gets empty outputs.

(From the JAX backend, jax2tf converts the model once for (N, 28, 28) float32,
kept as a third signature `serve_3d`; the two above wrap it. Its XLA module is
lowered for CPUs and NVIDIA GPUs (`SERVING_PLATFORMS`), whichever the model was
exported on: TensorFlow runs such a module only on the platforms it was lowered for.)

Both return `scores` (logits, or `s * cos` for cosine heads, so argmax and
softmax work as for logits), `probabilities` (softmax of the scores) and
`class_ids` (argmax).

`save_model_files` writes a run's `model.keras` and `saved_model/` (training and
the tuner's best model both use it).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import keras
from keras import ops

from kmnist_lab.errors import ConfigError
from kmnist_lab.losses import serving_scale

log = logging.getLogger(__name__)

# Where a SavedModel exported from JAX runs: jax2tf lowers the model once for each
# (its default, JAX's own platform alone, would serve a GPU-trained model on GPUs only).
SERVING_PLATFORMS = ("cpu", "cuda")


def can_export_saved_model() -> bool:
    """True when this backend can write a SavedModel (TensorFlow, or JAX with TF installed)."""
    if keras.backend.backend() not in ("tensorflow", "jax"):
        return False
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def export_saved_model(model: keras.Model, path, score_scale: float = 1.0) -> Path:
    """Writes `model` as a SavedModel with `serve` and `serve_uint8` signatures.

    Args:
        model: a Keras model taking (N, 28, 28, 1) raw pixels.
        path: output folder; replaced atomically (written next to it, then renamed).
        score_scale: factor applied to the model output (the margin loss's `s` for
            cosine heads; 1 for logits).

    Returns:
        The folder written.

    Raises:
        ConfigError: this backend cannot produce a SavedModel (torch); save
            `model.keras` instead.
    """
    if not can_export_saved_model():
        raise ConfigError(
            f"SavedModel export needs the tensorflow or jax backend with tensorflow installed; "
            f"backend is {keras.backend.backend()}. Use model.keras instead."
        )
    import tensorflow as tf

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)

    scale = float(score_scale)

    def images(pixels):
        """(N, 28, 28) float32 from (N, 28, 28), (N, 28, 28, 1) or (N, 784); else fails."""
        rank = tf.rank(pixels)
        tail = tf.concat([tf.shape(pixels)[1:], [1, 1, 1]], 0)[:3]  # padded with 1s
        ok = tf.logical_or(
            tf.logical_and(tf.equal(rank, 2), tf.reduce_all(tf.equal(tail, [784, 1, 1]))),
            tf.logical_and(
                tf.logical_or(tf.equal(rank, 3), tf.equal(rank, 4)),
                tf.reduce_all(tf.equal(tail, [28, 28, 1])),
            ),
        )
        x = tf.cast(pixels, tf.float32)

        def refuse():
            message = "pixels must be (N, 28, 28), (N, 28, 28, 1) or (N, 784); received shape"
            tf.debugging.Assert(False, [message, tf.shape(pixels)], summarize=5)
            return tf.zeros([0, 28, 28])

        # A branch, not a control dependency: Grappler merges this reshape with the
        # model's own and would drop the dependency (measured: TF's reshape error came
        # first for (2, 785)).
        return tf.cond(ok, lambda: tf.reshape(x, [-1, 28, 28]), refuse)

    def outputs(pixels):
        # keras.ops, not tf.*: on JAX this function is traced by JAX, then converted.
        x = ops.reshape(ops.cast(pixels, "float32"), (-1, 28, 28, 1))
        scores = ops.cast(model(x, training=False), "float32") * scale
        return {
            "scores": scores,
            "probabilities": ops.softmax(scores, axis=-1),
            "class_ids": ops.cast(ops.argmax(scores, axis=-1), "int32"),
        }

    def served(outputs_of, x):
        """`outputs_of(x)`, empty for an empty batch: a JAX export's shapes start at one
        image and oneDNN's fused convolution refuses none, so an empty batch runs as one
        blank image whose outputs are then dropped (the padding adds no image to a batch
        that has one)."""
        n = tf.shape(x)[0]
        padded = tf.concat([x, tf.zeros([tf.maximum(1 - n, 0), 28, 28], x.dtype)], 0)
        return {name: value[:n] for name, value in outputs_of(padded).items()}

    archive = keras.export.ExportArchive()
    archive.track(model)
    if keras.backend.backend() == "tensorflow":
        # TensorFlow traces the signature for inputs of any rank; `images` checks them.
        for name, dtype in (("serve", tf.float32), ("serve_uint8", tf.uint8)):
            archive.add_endpoint(
                name,
                lambda pixels: served(outputs, images(pixels)),
                input_signature=[tf.TensorSpec(None, dtype, name="pixels")],
            )
    else:
        # JAX (through jax2tf) needs a known rank: convert once for (N, 28, 28) float32,
        # then serve any rank and uint8 through small TensorFlow wrappers around it.
        core = archive.add_endpoint(
            "serve_3d",
            outputs,
            input_signature=[tf.TensorSpec([None, 28, 28], tf.float32)],
            # Not JAX's default platform alone: TensorFlow refuses to run the module on
            # another (a CPU-exported model on a GPU server, a GPU-exported one on a CPU).
            jax2tf_kwargs={"native_serialization_platforms": SERVING_PLATFORMS},
        )
        for name, dtype in (("serve", tf.float32), ("serve_uint8", tf.uint8)):
            wrapper = tf.function(
                lambda pixels: served(core, images(pixels)),
                input_signature=[tf.TensorSpec(None, dtype, name="pixels")],
            )
            wrapper.get_concrete_function()
            archive.add_endpoint(name, wrapper)
            if name == "serve":  # TF-Serving's default: `serve`, as from TensorFlow
                archive.add_endpoint("serving_default", wrapper)
    archive.write_out(str(tmp), verbose=False)
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path


def save_model_files(model: keras.Model, loss: keras.losses.Loss, out_dir) -> list[str]:
    """Writes `model.keras` and, where the backend can, `saved_model/` into `out_dir`.

    Each is written under a temporary name and then renamed, so a kill mid-write
    leaves the previous files intact. On a backend that cannot write a SavedModel
    (torch), a TensorFlow process exports the `model.keras` just written.

    Args:
        model: the trained model.
        loss: its loss; sets the SavedModel's score scale (`losses.serving_scale`).
        out_dir: an existing folder.

    Returns:
        The names written, relative to `out_dir`: `model.keras`, then `saved_model`.
    """
    out_dir = Path(out_dir)
    tmp = out_dir / ".model.tmp.keras"
    model.save(tmp)
    tmp.replace(out_dir / "model.keras")
    written = ["model.keras"]
    if can_export_saved_model():
        export_saved_model(model, out_dir / "saved_model", score_scale=serving_scale(loss))
        written.append("saved_model")
    elif _export_in_tensorflow(out_dir / "model.keras", out_dir / "saved_model",
                               serving_scale(loss)):  # fmt: skip
        written.append("saved_model")
    return written


# Loads a model.keras on the TensorFlow backend and exports it (`_export_in_tensorflow`).
_EXPORT_CODE = """
import sys
from kmnist_lab.export import export_saved_model
from kmnist_lab.models import load_keras_model
export_saved_model(load_keras_model(sys.argv[1]), sys.argv[2], score_scale=float(sys.argv[3]))
"""


def _export_in_tensorflow(keras_file: Path, path: Path, score_scale: float) -> bool:
    """Exports `keras_file` as a SavedModel from a TensorFlow-backend process.

    The torch backend cannot trace a TensorFlow graph itself; the weights in
    `model.keras` are the backend-independent model, so a TensorFlow process loads
    them and writes the same `serve` signatures (a few seconds: TensorFlow's import and
    one trace). Returns False, with a warning, where TensorFlow is not installed or the
    export fails: `model.keras` is there either way.
    """
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("tensorflow") is None:
        log.warning("backend %s cannot write a TF SavedModel and tensorflow is not installed; "
                    "model.keras was saved (kmnist_lab.models.load_keras_model loads it)",
                    keras.backend.backend())  # fmt: skip
        return False
    package_root = str(Path(__file__).resolve().parents[1])  # kmnist_lab's folder's parent
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join(filter(None, (package_root,
                                                       os.environ.get("PYTHONPATH"))))}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", _EXPORT_CODE, str(keras_file), str(path), repr(score_scale)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        log.warning("the SavedModel export in a TensorFlow process failed (%s); model.keras "
                    "was saved", tail)  # fmt: skip
        return False
    return True
