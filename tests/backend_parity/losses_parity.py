"""Loss values and gradients on the current Keras backend, for backend-parity tests.

`python losses_parity.py IN.json OUT.json` (with `KERAS_BACKEND` set) reads the
inputs written by `tests/test_losses.py`, evaluates every case in `CASES` and writes
`{case: {"values": per-sample losses, "grad": d(sum of losses)/d(y_pred)}}`.
`value_and_grad` is also imported by the tests for backend-agnostic gradients.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

# Each registered loss with its defaults, plus the non-default modes.
EXTRA_CASES = {
    "focal_gamma0.5_alpha0.25": ("focal", {"gamma": 0.5, "alpha": 0.25}),
    "hinge_crammer_singer": ("hinge", {"mode": "crammer_singer"}),
    "kld_smoothing0.1": ("kld", {"label_smoothing": 0.1}),
}


def value_and_grad(fn, x):
    """`(fn(x), d sum(fn(x)) / dx)` as NumPy arrays, on the active Keras backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x)
            total = tf.reduce_sum(value)
        return np.asarray(value), np.asarray(tape.gradient(total, x))
    if backend == "jax":
        import jax

        value, vjp = jax.vjp(fn, jax.numpy.asarray(x))
        (grad,) = vjp(jax.numpy.ones_like(value))
        return np.asarray(value), np.asarray(grad)
    if backend == "torch":
        import torch

        x = x.detach().clone() if torch.is_tensor(x) else torch.tensor(np.asarray(x))
        x.requires_grad_(True)
        value = fn(x)
        value.sum().backward()

        # NumPy has no bfloat16: hand back float32 copies of half-precision tensors.
        def to_numpy(t):
            t = t.detach().cpu()
            return (t.float() if t.dtype.itemsize < 4 else t).numpy()

        return to_numpy(value), to_numpy(x.grad)
    raise NotImplementedError(f"no gradient helper for backend {backend!r}")


def cases():
    """`{case name: (loss name, params)}`: every registered loss plus `EXTRA_CASES`."""
    from kmnist_lab.losses import list_losses

    return {name: (name, {}) for name in list_losses()} | EXTRA_CASES


def compute(inputs):
    """Per-sample values and gradients of every case on the active backend.

    Args:
        inputs: `{"labels", "logits", "cosines", "targets", "predictions"}` lists.

    Returns:
        `{case: {"values": [...], "grad": [[...]]}}`.
    """
    from kmnist_lab.losses import get_loss, loss_head

    pred_key = {"logits": "logits", "cosine": "cosines", "regression": "predictions"}
    results = {}
    for case, (name, params) in cases().items():
        loss = get_loss(name, reduction=None, **params)
        head = loss_head(name)
        y_true = np.asarray(inputs["targets" if head == "regression" else "labels"])
        y_pred = np.asarray(inputs[pred_key[head]], dtype="float32")
        values, grad = value_and_grad(lambda p, loss=loss, y=y_true: loss(y, p), y_pred)
        results[case] = {"values": values.tolist(), "grad": grad.tolist()}
    return results


def main(argv=None):
    in_path, out_path = (argv if argv is not None else sys.argv[1:])[:2]
    with open(in_path) as f:
        inputs = json.load(f)
    result = {"backend": keras.backend.backend(), "cases": compute(inputs)}
    with open(out_path, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
