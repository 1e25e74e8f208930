"""Export a trained Keras model as a TF SavedModel that takes raw pixels.

This is the one module of the library that uses TensorFlow directly (serving
signatures need `tf.TensorSpec`); it needs the `tensorflow` package whatever the
Keras backend is, and Keras can export from the TensorFlow and JAX backends.

The SavedModel has two signatures:

- `serve`: float32 pixels in [0, 255], shape (N, 28, 28) or (N, 28, 28, 1).
- `serve_uint8`: the same as uint8.

Both return `scores` (logits, or `s * cos` for cosine heads, so argmax and
softmax work as for logits), `probabilities` (softmax of the scores) and
`class_ids` (argmax).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import keras

from kmnist_lab.errors import ConfigError

log = logging.getLogger(__name__)


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

    def outputs(pixels):
        x = tf.reshape(tf.cast(pixels, tf.float32), [-1, 28, 28, 1])
        scores = tf.cast(model(x, training=False), tf.float32) * scale
        return {
            "scores": scores,
            "probabilities": tf.nn.softmax(scores, axis=-1),
            "class_ids": tf.argmax(scores, axis=-1, output_type=tf.int32),
        }

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", outputs, input_signature=[tf.TensorSpec(None, tf.float32, name="pixels")])
    archive.add_endpoint(
        "serve_uint8", outputs, input_signature=[tf.TensorSpec(None, tf.uint8, name="pixels")]
    )
    archive.write_out(str(tmp), verbose=False)
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path
