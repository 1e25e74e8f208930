"""CosineDense: a bias-free head whose outputs are cosines between inputs and class weights."""

import importlib.util
import re
from pathlib import Path

import keras
import numpy as np
import pytest

from kmnist_lab.errors import ConfigError
from kmnist_lab.layers import CosineDense, l2_normalize

_spec = importlib.util.spec_from_file_location(
    "losses_parity", Path(__file__).parent / "backend_parity" / "losses_parity.py"
)
parity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(parity)


def reference_cosines(x, kernel, epsilon=1e-7):
    """NumPy float64 reference: `x_hat @ w_hat` with eps-regularised L2 norms."""
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    x_hat = x / np.sqrt((x**2).sum(-1, keepdims=True) + epsilon)
    w_hat = kernel / np.sqrt((kernel**2).sum(0, keepdims=True) + epsilon)
    return x_hat @ w_hat


@pytest.fixture
def layer_and_input():
    rng = np.random.default_rng(0)
    layer = CosineDense(5, name="head")
    x = rng.normal(size=(4, 8)).astype("float32") * 10
    layer.build(x.shape)
    return layer, x


def test_outputs_match_numpy_reference_and_lie_in_unit_interval(layer_and_input):
    layer, x = layer_and_input
    out = keras.ops.convert_to_numpy(layer(x))
    assert out.shape == (4, 5)
    np.testing.assert_allclose(
        out, reference_cosines(x, keras.ops.convert_to_numpy(layer.kernel)), atol=1e-6
    )
    assert np.all(np.abs(out) <= 1.0)


def test_output_is_invariant_to_input_and_weight_scale(layer_and_input):
    layer, x = layer_and_input
    before = keras.ops.convert_to_numpy(layer(x))
    layer.kernel.assign(
        keras.ops.convert_to_numpy(layer.kernel) * np.array([1, 2, 3, 4, 5], "float32")
    )
    after = keras.ops.convert_to_numpy(layer(x * 7.0))
    np.testing.assert_allclose(after, before, atol=1e-6)


def test_input_equal_to_a_class_column_gives_cosine_one(layer_and_input):
    layer, _ = layer_and_input
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    out = keras.ops.convert_to_numpy(layer(kernel.T))  # row j is class j's weight vector
    np.testing.assert_allclose(np.diag(out), 1.0, atol=1e-6)


def test_zero_input_and_zero_weights_give_finite_outputs_and_gradients(layer_and_input):
    layer, _ = layer_and_input
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    kernel[:, 0] = 0.0
    layer.kernel.assign(kernel)
    x = np.zeros((2, 8), "float32")
    x[1] = 1.0

    def out(inp):
        return layer(inp)

    value, grad = parity.value_and_grad(out, x)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
    np.testing.assert_array_equal(value[0], 0.0)  # zero features: every cosine is 0
    np.testing.assert_array_equal(value[:, 0], 0.0)  # zero class column: cosine 0


def test_l2_normalize_of_zero_vector_is_zero_with_finite_gradient():
    value, grad = parity.value_and_grad(lambda v: l2_normalize(v), np.zeros((1, 3), "float32"))
    np.testing.assert_array_equal(value, 0.0)
    np.testing.assert_allclose(grad, 1.0 / np.sqrt(1e-7), rtol=1e-5)


def test_config_round_trip():
    layer = CosineDense(3, epsilon=1e-5, kernel_initializer="he_normal", name="head")
    config = layer.get_config()
    assert {"units", "epsilon", "kernel_initializer", "kernel_regularizer"} <= set(config)
    clone = CosineDense.from_config(config)
    assert clone.get_config() == config
    assert keras.saving.get_registered_name(CosineDense) == "kmnist_lab>CosineDense"


def test_keras_save_load_gives_same_predictions(tmp_path):
    inputs = keras.Input((8,))
    outputs = CosineDense(3, name="head")(keras.layers.Dense(4)(inputs))
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(1).normal(size=(5, 8)).astype("float32")
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.get_layer("head"), CosineDense)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_head_computes_and_outputs_float32(policy):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        inputs = keras.Input((8,))
        features = keras.layers.Dense(4)(inputs)
        head = CosineDense(3)
        outputs = head(features)
    finally:
        keras.config.set_dtype_policy(previous)
    assert features.dtype == policy.split("_")[1]
    assert head.compute_dtype == "float32" and outputs.dtype == "float32"
    model = keras.Model(inputs, outputs)
    out = model.predict(np.zeros((2, 8), "float32"), verbose=0)
    assert out.dtype == np.float32 and np.all(np.isfinite(out))


def test_explicit_half_precision_policy_still_outputs_float32():
    head = CosineDense(3, dtype="mixed_float16")
    assert head(keras.Input((8,))).dtype == "float32"
    assert keras.ops.convert_to_numpy(head(np.ones((2, 8), "float32"))).dtype == np.float32


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"units": 0}, "`units` must be a positive integer. Received: units=0"),
        ({"units": 2.5}, "`units` must be a positive integer. Received: units=2.5"),
        ({"units": 3, "epsilon": 0}, "`epsilon` must be a number > 0. Received: epsilon=0"),
        ({"units": 3, "epsilon": "x"}, "`epsilon` must be a number > 0. Received: epsilon='x'"),
    ],
)
def test_invalid_arguments_raise_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        CosineDense(**kwargs)
