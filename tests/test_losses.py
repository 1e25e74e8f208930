"""Losses: formulas, special cases, numerics, serialization and backend parity.

Tests parametrized over `list_losses()` cover a newly registered loss as soon as it
has a NumPy reference in `REFERENCES` (a missing reference fails loudly).
"""

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kmnist_lab.errors import ConfigError
from kmnist_lab.layers import CosineDense
from kmnist_lab.losses import get_loss, list_losses, loss_head, serving_scale

_PARITY_PATH = Path(__file__).parent / "backend_parity" / "losses_parity.py"
_spec = importlib.util.spec_from_file_location("losses_parity", _PARITY_PATH)
parity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(parity)
value_and_grad = parity.value_and_grad

NUM_CLASSES = 4


# ------------------------------------------------------------------ NumPy references


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _onehot(y, c):
    return np.eye(c)[np.asarray(y).reshape(-1)]


def ref_ce(y, z):
    return -(_onehot(y, z.shape[-1]) * _log_softmax(z)).sum(-1)


def ref_focal(y, z, gamma=2.0, alpha=1.0):
    p_y = (_onehot(y, z.shape[-1]) * np.exp(_log_softmax(z))).sum(-1)
    return -alpha * (1 - p_y) ** gamma * np.log(p_y)


def ref_am_softmax(y, cos, scale=30.0, margin=0.2):
    return ref_ce(y, scale * (cos - margin * _onehot(y, cos.shape[-1])))


def ref_arm_softmax(y, cos, scale=30.0, margin=0.2):
    onehot = _onehot(y, cos.shape[-1])
    z = scale * (cos - margin * onehot)
    z_y = (onehot * z).sum(-1, keepdims=True)
    z = np.where((onehot == 0) & (z < z_y), 0.0, z)
    return ref_ce(y, z)


def ref_hinge(y, z, delta=5.0, mode="weston_watkins"):
    onehot = _onehot(y, z.shape[-1])
    z_y = (onehot * z).sum(-1, keepdims=True)
    margins = np.where(onehot == 1, 0.0, np.maximum(0.0, z - z_y + delta))
    return margins.max(-1) if mode == "crammer_singer" else margins.sum(-1)


def ref_kld(y, z, label_smoothing=0.0):
    c = z.shape[-1]
    q = (1 - label_smoothing) * _onehot(y, c) + label_smoothing / c
    q_log_q = np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0)
    return (q_log_q - q * _log_softmax(z)).sum(-1)


def ref_mse(y, f):
    return ((np.reshape(f, (len(f), -1)) - np.reshape(y, (len(y), -1))) ** 2).mean(-1)


REFERENCES = {
    "ce": ref_ce,
    "focal": ref_focal,
    "am_softmax": ref_am_softmax,
    "arm_softmax": ref_arm_softmax,
    "hinge": ref_hinge,
    "kld": ref_kld,
    "mse": ref_mse,
}

# Non-default parameters checked against the references as well.
NON_DEFAULT_PARAMS = {
    "focal": [{"gamma": 0.5, "alpha": 0.25}, {"gamma": 0.0}],
    "am_softmax": [{"scale": 16.0, "margin": 0.35}],
    "arm_softmax": [{"scale": 16.0, "margin": 0.35}],
    "hinge": [{"delta": 1.0}, {"delta": 1.0, "mode": "crammer_singer"}],
    "kld": [{"label_smoothing": 0.1}, {"label_smoothing": 1.0}],
}

REFERENCE_CASES = [
    pytest.param(name, params, id=f"{name}-{params}")
    for name in list_losses()
    for params in [{}, *NON_DEFAULT_PARAMS.get(name, [])]
]


def random_inputs(name, n=8, seed=0, dtype="float64"):
    """(y_true, y_pred) suited to the loss's head."""
    rng = np.random.default_rng(seed)
    head = loss_head(name)
    if head == "regression":
        return rng.normal(size=(n, 1)).astype(dtype), rng.normal(size=(n, 1)).astype(dtype)
    labels = rng.integers(0, NUM_CLASSES, size=n)
    if head == "cosine":
        return labels, rng.uniform(-1, 1, size=(n, NUM_CLASSES)).astype(dtype)
    return labels, (3 * rng.normal(size=(n, NUM_CLASSES))).astype(dtype)


def per_sample(loss, y_true, y_pred):
    """Per-sample values of `loss` as NumPy (reduction=None on a clone)."""
    config = loss.get_config() | {"reduction": None}
    return keras.ops.convert_to_numpy(type(loss).from_config(config)(y_true, y_pred))


# ------------------------------------------------------------------------- registry


def test_every_loss_declares_a_known_head():
    assert set(list_losses()) >= {"ce", "focal", "am_softmax", "arm_softmax", "hinge", "kld"}
    heads = {name: loss_head(name) for name in list_losses()}
    assert set(heads.values()) <= {"logits", "cosine", "regression"}
    assert heads["am_softmax"] == heads["arm_softmax"] == "cosine"
    assert heads["ce"] == heads["focal"] == heads["hinge"] == heads["kld"] == "logits"


@pytest.mark.parametrize("name", list_losses())
def test_get_loss_returns_a_keras_loss_whose_class_declares_the_registry_head(name):
    loss = get_loss(name)
    assert isinstance(loss, keras.losses.Loss)
    assert loss.head == loss_head(name)


def test_defaults_are_the_documented_values():
    assert (get_loss("am_softmax").scale, get_loss("am_softmax").margin) == (30.0, 0.2)
    assert (get_loss("arm_softmax").scale, get_loss("arm_softmax").margin) == (30.0, 0.2)
    assert (get_loss("focal").gamma, get_loss("focal").alpha) == (2.0, 1.0)
    assert (get_loss("hinge").delta, get_loss("hinge").mode) == (5.0, "weston_watkins")
    assert get_loss("kld").label_smoothing == 0.0


@pytest.mark.parametrize("name", list_losses())
def test_per_sample_function_called_directly_uses_the_documented_defaults(name):
    # docs/losses.md: each loss is also a public per-sample function (`focal_loss`,
    # `am_softmax_loss`, ...). Called without parameters it must compute the same loss
    # as `get_loss(name)` (e.g. focal gamma 2, AM-Softmax s=30 m=0.2, hinge delta 5).
    y_true, y_pred = random_inputs(name, seed=5)
    direct = keras.ops.convert_to_numpy(type(get_loss(name)).fn(y_true, y_pred))
    np.testing.assert_allclose(direct, REFERENCES[name](y_true, y_pred), rtol=1e-6, atol=1e-12)


def test_serving_scale_is_the_margin_loss_scale_and_one_for_logit_heads():
    assert serving_scale(get_loss("am_softmax", scale=16.0)) == 16.0
    assert serving_scale(get_loss("arm_softmax")) == 30.0
    assert serving_scale("am_softmax") == 30.0
    for name in list_losses():
        if loss_head(name) != "cosine":
            assert serving_scale(get_loss(name)) == 1.0


def test_unknown_loss_name_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown loss 'softmax'.*am_softmax.*hinge"):
        get_loss("softmax")


def test_unknown_parameter_lists_the_valid_ones():
    with pytest.raises(
        ConfigError, match="unknown parameter.*gama.*Did you mean 'gamma'. Valid parameters: gamma"
    ):
        get_loss("focal", gama=2.0)
    with pytest.raises(ConfigError, match=r"Valid parameters: .*\. Received: gama=2\.0$"):
        get_loss("focal", gama=2.0)


def test_keras_rejections_become_one_line_config_errors():
    with pytest.raises(ConfigError, match=r"^loss 'ce': Invalid value for argument `reduction`"):
        get_loss("ce", reduction="avg")


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("am_softmax", {"margin": -1}, "`margin` must be in [0, 1). Received: margin=-1"),
        ("am_softmax", {"margin": 1.0}, "`margin` must be in [0, 1). Received: margin=1.0"),
        ("arm_softmax", {"scale": 0}, "`scale` must be > 0 and finite. Received: scale=0"),
        (
            "am_softmax",
            {"scale": "30"},
            "`scale` must be a number > 0 and finite. Received: scale='30'",
        ),
        (
            "am_softmax",
            {"margin": "abc"},
            "`margin` must be a number in [0, 1). Received: margin='abc'",
        ),
        ("focal", {"gamma": -0.5}, "`gamma` must be >= 0 and finite. Received: gamma=-0.5"),
        ("focal", {"alpha": 0.0}, "`alpha` must be > 0 and finite. Received: alpha=0.0"),
        ("hinge", {"delta": -1}, "`delta` must be >= 0 and finite. Received: delta=-1"),
        (
            "hinge",
            {"mode": "sum"},
            "`mode` must be one of ('weston_watkins', 'crammer_singer'). Received: mode='sum'",
        ),
        (
            "kld",
            {"label_smoothing": 1.5},
            "`label_smoothing` must be in [0, 1]. Received: label_smoothing=1.5",
        ),
        (
            "kld",
            {"label_smoothing": float("nan")},
            "`label_smoothing` must be in [0, 1]. Received: label_smoothing=nan",
        ),
    ],
)
def test_invalid_parameters_raise_config_error_with_one_clear_line(name, params, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        get_loss(name, **params)


# ------------------------------------------------------------------------- formulas


@pytest.mark.parametrize(("name", "params"), REFERENCE_CASES)
def test_matches_numpy_reference_in_float64(name, params):
    assert name in REFERENCES, f"add a NumPy reference for the new loss {name!r}"
    y_true, y_pred = random_inputs(name, seed=1)
    loss = get_loss(name, dtype="float64", reduction=None, **params)
    got = keras.ops.convert_to_numpy(loss(y_true, y_pred))
    np.testing.assert_allclose(
        got, REFERENCES[name](y_true, y_pred, **params), rtol=1e-6, atol=1e-12
    )


@pytest.mark.parametrize(("name", "params"), REFERENCE_CASES)
def test_gradient_matches_central_finite_differences(name, params):
    y_true, y_pred = random_inputs(name, n=3, seed=2)
    loss = get_loss(name, dtype="float64", reduction="sum", **params)
    _, grad = value_and_grad(lambda p: loss(y_true, p), y_pred)
    eps = 1e-6
    numeric = np.zeros_like(y_pred)
    for index in np.ndindex(y_pred.shape):
        step = np.zeros_like(y_pred)
        step[index] = eps
        plus = REFERENCES[name](y_true, y_pred + step, **params).sum()
        minus = REFERENCES[name](y_true, y_pred - step, **params).sum()
        numeric[index] = (plus - minus) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list_losses())
def test_labels_of_shape_n_and_n_by_1_give_the_same_loss(name):
    y_true, y_pred = random_inputs(name, dtype="float32")
    loss = get_loss(name)
    column = y_true.reshape(-1, 1)
    flat = y_true.reshape(-1)
    np.testing.assert_allclose(float(loss(flat, y_pred)), float(loss(column, y_pred)), rtol=1e-6)


@pytest.mark.parametrize("name", list_losses())
def test_sample_weight_weights_each_sample(name):
    y_true, y_pred = random_inputs(name, dtype="float32")
    loss = get_loss(name)
    values = per_sample(loss, y_true, y_pred)
    weights = np.linspace(0.0, 2.0, len(values)).astype("float32")
    expected = (weights * values).sum() / len(values)  # sum_over_batch_size
    np.testing.assert_allclose(float(loss(y_true, y_pred, sample_weight=weights)), expected, 1e-5)
    assert float(loss(y_true, y_pred, sample_weight=np.zeros_like(weights))) == 0.0


# Perfect predictions: one-hot logits 50, target cosine 1 / others -1, exact fits.
PERFECT = {
    "ce": ({}, [0, 1, 2], 50.0 * np.eye(3)),
    "focal": ({}, [0, 1, 2], 50.0 * np.eye(3)),
    "am_softmax": ({}, [0, 1, 2], 2 * np.eye(3) - 1),
    "arm_softmax": ({}, [0, 1, 2], 2 * np.eye(3) - 1),
    "hinge": ({}, [0, 1, 2], 5.0 * np.eye(3)),  # target ahead by exactly delta
    "kld": ({"label_smoothing": 0.3}, [0, 1, 2], np.log(0.7 * np.eye(3) + 0.1)),
    "mse": ({}, [[0.5], [-1.0], [2.0]], [[0.5], [-1.0], [2.0]]),
}


@pytest.mark.parametrize("name", list_losses())
def test_perfect_prediction_gives_zero_loss(name):
    assert name in PERFECT, f"add a perfect-prediction case for the new loss {name!r}"
    params, y_true, y_pred = PERFECT[name]
    value = float(get_loss(name, **params)(np.array(y_true), np.array(y_pred, "float32")))
    assert value == pytest.approx(0.0, abs=1e-6)


# -------------------------------------------------------- hand-computed 3x3 examples

LABELS_3 = np.array([0, 1, 2])


def test_ce_hand_computed():
    z = np.array([[1.0, 0, 0], [0, 2, 0], [0, 0, 0]], "float32")
    expected = [math.log(math.e + 2) - 1, math.log(math.e**2 + 2) - 2, math.log(3)]
    np.testing.assert_allclose(per_sample(get_loss("ce"), LABELS_3, z), expected, rtol=1e-6)


def test_focal_hand_computed():
    z = np.array([[1.0, 0, 0], [0, 2, 0], [0, 0, 0]], "float32")
    p_y = [math.e / (math.e + 2), math.e**2 / (math.e**2 + 2), 1 / 3]
    expected = [-0.5 * (1 - p) ** 2 * math.log(p) for p in p_y]
    loss = get_loss("focal", gamma=2.0, alpha=0.5)
    np.testing.assert_allclose(per_sample(loss, LABELS_3, z), expected, rtol=1e-6)


def test_am_softmax_hand_computed():
    # s=2, m=0.5: z = 2 * (cos - 0.5 * onehot).
    cos = np.array([[1.0, 0, 0], [0.5, 0.5, 0], [-0.5, 0, 1]], "float32")
    # z rows: [1, 0, 0] (y=0), [1, 0, 0] (y=1), [-1, 0, 1] (y=2).
    expected = [
        math.log(math.e + 2) - 1,
        math.log(math.e + 2),
        math.log(math.exp(-1) + 1 + math.e) - 1,
    ]
    loss = get_loss("am_softmax", scale=2.0, margin=0.5)
    np.testing.assert_allclose(per_sample(loss, LABELS_3, cos), expected, rtol=1e-6)


def test_arm_softmax_hand_computed():
    # Same z as above. Row 3: z_y = 1 and both others are below it, so they become 0
    # (e^0 each) instead of e^-1 and e^0. Row 2: z_y = 0, others 1 and 0 are kept.
    cos = np.array([[1.0, 0, 0], [0.5, 0.5, 0], [-0.5, 0, 1]], "float32")
    expected = [math.log(math.e + 2) - 1, math.log(math.e + 2), math.log(2 + math.e) - 1]
    loss = get_loss("arm_softmax", scale=2.0, margin=0.5)
    np.testing.assert_allclose(per_sample(loss, LABELS_3, cos), expected, rtol=1e-6)


def test_arm_softmax_keeps_a_class_exactly_at_the_margin():
    # s=4, m=0.25 (exact in binary): z = 4 * ([0.75, 0.5] - [0.25, 0]) = [2, 2]. Class 1
    # is at the margin, not beyond it (only z_j < z_y is dropped): it keeps e^2, so
    # L = log(e^2 + e^2) - 2 = log 2, not log(e^2 + e^0) - 2, and it keeps its gradient.
    cos = np.array([[0.75, 0.5]], "float32")
    y = np.array([0])
    loss = get_loss("arm_softmax", scale=4.0, margin=0.25)
    value, grad = value_and_grad(lambda c: loss(y, c), cos)
    np.testing.assert_allclose(value, math.log(2), rtol=1e-6)
    # d/dcos of log(e^{z_0} + e^{z_1}) - z_0 with p = (1/2, 1/2): s * (p - onehot).
    np.testing.assert_allclose(grad, [[-2.0, 2.0]], rtol=1e-6)


@pytest.mark.parametrize(
    ("mode", "expected"), [("weston_watkins", [0, 2, 3]), ("crammer_singer", [0, 1, 3])]
)
def test_hinge_hand_computed(mode, expected):
    # delta=1. Row 1: 3 beats 1 and 0 by >= 1. Row 2: two ties -> 1 + 1.
    # Row 3: z_y=2, class 1 (4) violates by 4-2+1=3, class 0 (0) is clear.
    z = np.array([[3.0, 1, 0], [1, 1, 1], [0, 4, 2]], "float32")
    loss = get_loss("hinge", delta=1.0, mode=mode)
    np.testing.assert_allclose(per_sample(loss, LABELS_3, z), expected, rtol=1e-6)
    assert float(loss(LABELS_3, z)) == pytest.approx(sum(expected) / 3)


def test_kld_hand_computed():
    # label_smoothing=0.3, C=3: q = 0.8 on the label, 0.1 elsewhere; z = 0 -> p = 1/3.
    z = np.zeros((3, 3), "float32")
    q = [0.8, 0.1, 0.1]
    expected = sum(qi * math.log(qi / (1 / 3)) for qi in q)
    loss = get_loss("kld", label_smoothing=0.3)
    np.testing.assert_allclose(per_sample(loss, LABELS_3, z), [expected] * 3, rtol=1e-6)


def test_mse_hand_computed():
    y_true = np.array([[1.0, 2, 3], [0, 0, 0], [1, 1, 1]], "float32")
    y_pred = np.array([[1.0, 2, 3], [1, 1, 1], [1, 1, 4]], "float32")
    np.testing.assert_allclose(per_sample(get_loss("mse"), y_true, y_pred), [0, 1, 3], rtol=1e-6)


# ----------------------------------------------------------------------- special cases


def _logits(seed=3, n=16):
    rng = np.random.default_rng(seed)
    return rng.integers(0, NUM_CLASSES, n), rng.normal(size=(n, NUM_CLASSES)).astype("float32")


def test_focal_with_gamma_0_and_alpha_1_is_cross_entropy():
    y, z = _logits()
    np.testing.assert_allclose(
        float(get_loss("focal", gamma=0.0, alpha=1.0)(y, z)), float(get_loss("ce")(y, z)), 1e-6
    )


@pytest.mark.parametrize(("gamma", "alpha"), [(2.0, 1.0), (2.0, 0.25), (0.5, 0.7)])
def test_focal_equals_keras_categorical_focal_crossentropy_on_one_hot(gamma, alpha):
    y, z = _logits()
    keras_loss = keras.losses.CategoricalFocalCrossentropy(
        alpha=alpha, gamma=gamma, from_logits=True
    )
    expected = float(keras_loss(np.eye(NUM_CLASSES)[y], z))
    np.testing.assert_allclose(
        float(get_loss("focal", gamma=gamma, alpha=alpha)(y, z)), expected, 1e-5
    )


def test_am_softmax_with_margin_0_is_cross_entropy_on_scaled_cosines():
    y, z = _logits()
    cos = np.tanh(z)
    am = float(get_loss("am_softmax", scale=30.0, margin=0.0)(y, cos))
    np.testing.assert_allclose(am, float(get_loss("ce")(y, 30.0 * cos)), rtol=1e-6)


def test_arm_softmax_equals_am_softmax_when_no_class_is_beyond_the_margin():
    # Target cosine lowest: every z_j >= z_y, nothing is masked.
    cos = np.array([[-0.9, 0.1, 0.5], [0.3, -0.2, 0.0]], "float32")
    y = np.array([0, 1])
    np.testing.assert_allclose(
        float(get_loss("arm_softmax")(y, cos)), float(get_loss("am_softmax")(y, cos)), 1e-6
    )


def test_arm_softmax_gradient_is_exactly_zero_for_classes_beyond_the_margin():
    y = np.array([0, 1, 2, 3])
    cos = np.random.default_rng(4).uniform(-1, 1, (4, NUM_CLASSES)).astype("float32")
    cos[np.arange(4), y] = 0.6  # z_y = 30 * 0.4 = 12
    cos[0, 1:] = [-0.5, 0.1, 0.39]  # all below z_y/s = 0.4: masked
    cos[1, [0, 2]] = [0.41, 0.9]  # beyond z_y: active
    loss = get_loss("arm_softmax", reduction="sum")
    _, grad = value_and_grad(lambda c: loss(y, c), cos)
    z = 30.0 * (cos - 0.2 * np.eye(NUM_CLASSES)[y])
    z_y = z[np.arange(4), y][:, None]
    masked = (np.eye(NUM_CLASSES)[y] == 0) & (z < z_y)
    assert masked.sum() >= 3 and (~masked).sum() >= 6
    assert np.all(grad[masked] == 0.0)
    assert np.all(grad[~masked] != 0.0)


def test_hinge_is_zero_exactly_when_every_margin_holds():
    z = np.array([[10.0, 4.9, 5.0], [0.0, 5.0, -3.0]], "float32")
    y = np.array([0, 1])
    assert float(get_loss("hinge")(y, z)) == 0.0
    z[0, 1] = 5.5  # 10 - 5.5 < delta: one violation of 0.5
    assert float(get_loss("hinge", reduction="sum")(y, z)) == pytest.approx(0.5)


def test_crammer_singer_never_exceeds_weston_watkins():
    y, z = _logits()
    ww = per_sample(get_loss("hinge"), y, z)
    cs = per_sample(get_loss("hinge", mode="crammer_singer"), y, z)
    assert np.all(cs <= ww + 1e-6) and np.any(cs < ww)


def test_kld_without_smoothing_is_cross_entropy():
    y, z = _logits()
    np.testing.assert_allclose(float(get_loss("kld")(y, z)), float(get_loss("ce")(y, z)), 1e-6)


# ------------------------------------------------------------------------- numerics

_EXTREME_LOGITS = hnp.arrays(
    np.float32,
    (3, NUM_CLASSES),
    elements=st.floats(-1e4, 1e4, width=32) | st.sampled_from([-1e4, 1e4, 0.0]),
)
_EXTREME_COSINES = hnp.arrays(
    np.float32,
    (3, NUM_CLASSES),
    elements=st.floats(-1.0, 1.0, width=32) | st.sampled_from([-1.0, 1.0]),
)


def _assert_finite(name, y_pred, labels, dtype="float32"):
    loss = get_loss(name, reduction="sum")
    y_true = y_pred[:, :1] if loss_head(name) == "regression" else labels
    y_pred = keras.ops.cast(y_pred, dtype)
    value, grad = value_and_grad(lambda p: loss(y_true, p), y_pred)
    assert np.all(np.isfinite(value)), (name, value)
    assert np.all(np.isfinite(np.asarray(grad, "float32"))), (name, grad)


@pytest.mark.parametrize("name", list_losses())
@settings(max_examples=25, deadline=None)
@given(
    logits=_EXTREME_LOGITS,
    cosines=_EXTREME_COSINES,
    labels=hnp.arrays(np.int64, 3, elements=st.integers(0, NUM_CLASSES - 1)),
)
def test_value_and_gradient_finite_for_extreme_inputs(name, logits, cosines, labels):
    y_pred = cosines if loss_head(name) == "cosine" else logits
    _assert_finite(name, y_pred, labels)


@pytest.mark.parametrize("name", list_losses())
def test_finite_at_cosines_exactly_plus_minus_one(name):
    # Worst case for margin losses: the target at -1, every other class at +1.
    y = np.array([0, 1, 2])
    worst = np.ones((3, NUM_CLASSES), "float32")
    worst[np.arange(3), y] = -1.0
    _assert_finite(name, worst, y)
    _assert_finite(name, -worst, y)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", list_losses())
def test_half_precision_predictions_are_computed_in_float32(name, dtype):
    y_true, y_pred = random_inputs(name, dtype="float32")
    rounded = keras.ops.cast(keras.ops.cast(y_pred, dtype), "float32")
    loss = get_loss(name)
    value = loss(y_true, keras.ops.cast(y_pred, dtype))
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    np.testing.assert_allclose(float(value), float(loss(y_true, rounded)), rtol=1e-6)
    extreme = np.where(y_pred > 0, 6e4, -6e4) if loss_head(name) == "logits" else y_pred
    _assert_finite(name, np.asarray(extreme, "float32"), y_true, dtype=dtype)


@pytest.mark.parametrize("name", ["am_softmax", "ce"])
def test_mixed_precision_model_trains_with_finite_loss(name):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        inputs = keras.Input((8,))
        hidden = keras.layers.Dense(16, activation="relu")(inputs)
        head = CosineDense(3) if loss_head(name) == "cosine" else keras.layers.Dense(3)
        model = keras.Model(inputs, head(hidden))
        model.compile(optimizer="adam", loss=get_loss(name))
        rng = np.random.default_rng(5)
        history = model.fit(
            rng.normal(size=(32, 8)), rng.integers(0, 3, 32), epochs=2, batch_size=16, verbose=0
        )
    finally:
        keras.config.set_dtype_policy(previous)
    assert np.all(np.isfinite(history.history["loss"]))


# -------------------------------------------------------------------- serialization


@pytest.mark.parametrize(("name", "params"), REFERENCE_CASES)
def test_config_round_trip(name, params):
    loss = get_loss(name, **params)
    config = loss.get_config()
    assert {"name", "reduction", "dtype"} | set(params) <= set(config)
    clone = type(loss).from_config(config)
    assert clone.get_config() == config
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss) and restored.get_config() == config
    y_true, y_pred = random_inputs(name, dtype="float32")
    assert float(restored(y_true, y_pred)) == float(loss(y_true, y_pred))


@pytest.mark.parametrize("name", list_losses())
def test_keras_save_load_of_a_model_compiled_with_the_loss(name, tmp_path):
    params = NON_DEFAULT_PARAMS.get(name, [{}])[0]
    loss = get_loss(name, **params)
    inputs = keras.Input((8,))
    head = {"cosine": CosineDense(3), "regression": keras.layers.Dense(1)}.get(
        loss_head(name), keras.layers.Dense(3)
    )
    model = keras.Model(inputs, head(inputs))
    model.compile(optimizer="sgd", loss=loss)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.loss) is type(loss)
    assert loaded.loss.get_config() == loss.get_config()
    rng = np.random.default_rng(6)
    x = rng.normal(size=(6, 8)).astype("float32")
    y = rng.normal(size=(6, 1)) if loss_head(name) == "regression" else rng.integers(0, 3, 6)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    np.testing.assert_allclose(
        loaded.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0), rtol=1e-6
    )


# ------------------------------------------------------------------- backend parity


def _parity_inputs():
    rng = np.random.default_rng(7)
    logits = 3 * rng.normal(size=(6, NUM_CLASSES))
    logits[0] = [1e4, -1e4, 3e3, -2e3]
    cosines = rng.uniform(-1, 1, size=(6, NUM_CLASSES))
    cosines[0] = [1.0, -1.0, 0.5, -0.25]
    cosines[1] = [-1.0, 1.0, 0.0, 0.75]
    return {
        "labels": [0, 0, 1, 2, 3, 1],
        "logits": logits.tolist(),
        "cosines": cosines.tolist(),
        "targets": rng.normal(size=6).tolist(),
        "predictions": rng.normal(size=(6, 1)).tolist(),
    }


_BACKEND_MODULE = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


@pytest.fixture(scope="module")
def parity_reference():
    """Values and gradients on the backend this test session runs on (in-process)."""
    return parity.compute(_parity_inputs())


# Every backend except the in-process one (the reference), which needs no comparison.
@pytest.mark.parametrize("backend", sorted(set(_BACKEND_MODULE) - {keras.backend.backend()}))
def test_every_loss_gives_the_same_values_and_gradients_on_each_backend(
    backend, parity_reference, tmp_path
):
    if importlib.util.find_spec(_BACKEND_MODULE[backend]) is None:
        pytest.skip(f"{backend} is not installed")
    in_path, out_path = tmp_path / "in.json", tmp_path / "out.json"
    in_path.write_text(json.dumps(_parity_inputs()))
    repo_root = str(Path(__file__).resolve().parents[1])
    env = os.environ | {
        "KERAS_BACKEND": backend,
        "PYTHONPATH": os.pathsep.join(filter(None, [repo_root, os.environ.get("PYTHONPATH")])),
        "CUDA_VISIBLE_DEVICES": "",
    }
    proc = subprocess.run(
        [sys.executable, str(_PARITY_PATH), str(in_path), str(out_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out_path.read_text())
    assert result["backend"] == backend
    assert set(result["cases"]) == set(parity_reference)
    for case, expected in parity_reference.items():
        got = result["cases"][case]
        np.testing.assert_allclose(
            got["values"], expected["values"], rtol=1e-5, atol=1e-5, err_msg=case
        )
        np.testing.assert_allclose(
            got["grad"], expected["grad"], rtol=1e-4, atol=1e-4, err_msg=case
        )


@pytest.mark.parametrize("gamma", [0.0, 0.25, 0.5])
def test_focal_with_gamma_below_1_is_finite_when_p_y_rounds_to_1(gamma):
    # d/dp (1 - p)^gamma is infinite at p = 1 for gamma < 1; the floor keeps it finite.
    logits = np.array([[100.0, 0.0, 0.0], [1e4, -1e4, 0.0]], "float32")
    loss = get_loss("focal", gamma=gamma, reduction="sum")
    value, grad = value_and_grad(lambda z: loss(np.array([0, 0]), z), logits)
    assert float(value) == pytest.approx(0.0, abs=1e-6)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_keeps_its_relative_precision_as_p_y_approaches_1(gamma):
    # 1 - p_y from 6e-5 down to 3e-10. Taken from log_softmax = -log(1 + r), float32
    # lost its digits: relative errors of 1e-3 (gap 12) to 100 % (gap 20: loss and
    # gradient 0). The float64 NumPy reference is good to ~1e-6 here.
    gaps = np.array([12.0, 14.0, 16.0, 20.0, 22.0])
    z = np.zeros((len(gaps), NUM_CLASSES), "float32")
    z[:, 0] = gaps
    z[:, 1] = -0.5
    y = np.zeros(len(gaps), "int64")
    loss = get_loss("focal", gamma=gamma, reduction="sum")
    values = per_sample(loss, y, z)
    np.testing.assert_allclose(values, ref_focal(y, z.astype(np.float64), gamma), rtol=1e-5)
    # Gradients against central differences of the reference, relative to each row's
    # largest entry (where float64 differences are still accurate: gaps up to 16).
    _, grad = value_and_grad(lambda p: loss(y, p), z)
    zz, eps = z[:3].astype(np.float64), 1e-4
    numeric = np.zeros(zz.shape)
    for index in np.ndindex(zz.shape):
        step = np.zeros(zz.shape)
        step[index] = eps
        diff = ref_focal(y[:3], zz + step, gamma) - ref_focal(y[:3], zz - step, gamma)
        numeric[index] = diff.sum() / (2 * eps)
    scale = np.abs(numeric).max(axis=1, keepdims=True)
    assert np.all(np.abs(np.asarray(grad)[:3] - numeric) <= 1e-4 * scale)
    assert np.all(np.asarray(grad)[3:, 0] < 0)  # the target is still pulled up


@pytest.mark.parametrize("name", [n for n in list_losses() if loss_head(n) != "regression"])
@pytest.mark.parametrize("batch", [1, 3])
def test_one_hot_labels_are_refused_with_a_clear_error(name, batch):
    # Flattened, one-hot (N, C) labels became N * C labels: a broadcasting error for
    # N > 1 and, for N = 1, C silently wrong per-sample values.
    y_true, y_pred = random_inputs(name, n=batch, dtype="float32")
    one_hot = np.eye(NUM_CLASSES)[y_true]
    message = rf"integer class labels of shape \(N,\) or \(N, 1\).*y_true.shape=\({batch}, 4\)"
    with pytest.raises(ValueError, match=message):
        get_loss(name)(one_hot, y_pred)
