"""The same models give the same results on the TensorFlow, JAX and PyTorch backends.

Each backend runs in a subprocess (`KERAS_BACKEND` must be set before Keras is
imported); this process is the TensorFlow reference. Losses and optimizers have
their own parity tests (tests/test_losses.py, tests/test_optimizers.py).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import write_idx_dataset

from kmnist_lab.models import build_model, list_models, load_keras_model

PARITY = Path(__file__).parent / "backend_parity"
ROOT = Path(__file__).resolve().parents[1]
OTHER_BACKENDS = ["jax", "torch"]


def _child(backend, script, *args):
    pytest.importorskip(backend)
    env = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "PYTHONPATH": str(ROOT),
        "KMNIST_LAB_NO_DOWNLOAD": "1",
    }
    proc = subprocess.run([sys.executable, str(PARITY / script), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Random weights and TF outputs of every model on the same images."""
    assert keras.backend.backend() == "tensorflow"
    tmp = tmp_path_factory.mktemp("parity")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    weights, outputs = {}, {}
    for name in list_models():
        keras.utils.set_random_seed(1)
        model = build_model(name)
        for i, variable in enumerate(model.weights):
            value = variable.numpy()
            if "moving_variance" in variable.path:  # non-trivial BN statistics
                value = rng.uniform(0.5, 2.0, size=value.shape).astype(value.dtype)
            elif "moving_mean" in variable.path:
                value = rng.normal(0, 0.1, size=value.shape).astype(value.dtype)
            variable.assign(value)
            weights[f"{name}/{i}"] = value
        outputs[name] = model.predict(x, verbose=0)
    np.savez(tmp / "weights.npz", **weights)
    np.save(tmp / "x.npy", x)
    return tmp, outputs


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_every_model_forward_pass_matches_tensorflow(backend, reference):
    tmp, expected = reference
    _child(backend, "models_parity.py", tmp / "weights.npz", tmp / "x.npy", tmp / f"{backend}.npz")
    got = np.load(tmp / f"{backend}.npz")
    for name in list_models():
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_short_training_run_and_cross_backend_model_keras(backend, tmp_path):
    """Trains on `backend`; the model.keras it wrote predicts the same classes here (TF)."""
    data = write_idx_dataset(tmp_path / "data", n_train=80, n_test=30)
    _child(backend, "train_and_predict.py", data, tmp_path / "out")
    metrics = json.loads((tmp_path / "out" / "run" / "metrics.json").read_text())
    config = json.loads((tmp_path / "out" / "run" / "config.json").read_text())
    assert config["backend"] == backend and metrics["epochs"] == 2
    # JAX (and TensorFlow) train through device_fit by default (input_pipeline auto);
    # torch through Keras' fit.
    assert config["speed"]["input_pipeline"] == ("device" if backend == "jax" else "iterator")
    # Every backend exports a SavedModel (torch through a TensorFlow process).
    assert "saved_model" in metrics["artifacts"]
    from kmnist_lab.data import load_dataset

    x, y = load_dataset("kmnist", data_dir=data).test
    model = load_keras_model(tmp_path / "out" / "run" / "model.keras")
    here = np.argmax(model.predict(x, verbose=0), axis=1)
    np.testing.assert_array_equal(here, np.load(tmp_path / "out" / "classes.npy"))
    # It trains on here too, its optimizer state continuing: Keras records a torch run's
    # Adam under a torch-only subclass, whose update would call torch ops on TF variables.
    assert type(model.optimizer) is keras.optimizers.Adam, type(model.optimizer)
    steps = int(model.optimizer.iterations.numpy())
    assert steps > 0
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == steps + -(-len(x) // 16)
    if backend in ("jax", "torch"):
        # The SavedModel jax2tf (or, for torch, a TensorFlow process) wrote serves every input form a TF export serves:
        # (N, 28, 28) and (N, 28, 28, 1), float32 and uint8, and serving_default.
        import tensorflow as tf

        loaded = tf.saved_model.load(str(tmp_path / "out" / "run" / "saved_model"))
        for name, pixels in (("serve", x.astype("float32")), ("serve", x[..., None].astype("float32")),
                             ("serve_uint8", x[..., None]), ("serving_default", x.astype("float32")),
                             ("serving_default", x[..., None].astype("float32"))):  # fmt: skip
            served = loaded.signatures[name](pixels=tf.constant(pixels))["class_ids"].numpy()
            np.testing.assert_array_equal(served, here, err_msg=f"{name} {pixels.shape}")
        # An empty batch: empty outputs (jax2tf's shapes start at one image).
        empty = loaded.signatures["serve"](pixels=tf.zeros((0, 28, 28)))
        assert empty["scores"].shape == (0, 10) and empty["class_ids"].shape == (0,)
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"\(N, 784\); received"):
            loaded.signatures["serve"](pixels=tf.zeros((2, 28, 28, 3)))
