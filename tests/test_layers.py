"""kmnist_lab's layers, each against a reference.

- `CosineDense`: a bias-free head whose outputs are cosines between inputs and class
  weights (a NumPy reference, scale invariance, the zero vector, save/load, precision).
- `RandomAffine`: the documented rotation and shift, identity at inference, the XLA warp.
- `SmallMapConv2D`: equal to `Conv2D` (values and gradients) on the padded input.
- `FusedBatchNormalization`: trains as Keras' BatchNormalization, a NumPy reference.
"""

import importlib.util
import re
from pathlib import Path

import keras
import numpy as np
import pytest

from kmnist_lab.errors import ConfigError
from kmnist_lab.layers import (
    CosineDense,
    FusedBatchNormalization,
    RandomAffine,
    SmallMapConv2D,
    l2_normalize,
)

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


def test_cosines_never_exceed_one_so_arccos_of_the_head_is_finite():
    # Float rounding puts x_hat . w_hat of an input equal to its class column above 1
    # (1.0000005 for a third of these 512 columns): a margin loss's arccos is then NaN.
    layer = CosineDense(512)
    layer.build((None, 64))
    kernel = np.random.default_rng(0).normal(size=(64, 512)).astype("float32") * 100
    layer.kernel.assign(kernel)
    out = keras.ops.convert_to_numpy(layer(kernel.T))
    assert out.max() <= 1.0 and out.min() >= -1.0
    assert np.all(np.isfinite(np.arccos(out)))


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


def test_l2_normalize_adds_epsilon_under_the_root_rather_than_clipping_the_norm():
    # |x|^2 = 2.5e-7 next to epsilon = 1e-7: x / sqrt(3.5e-7), norm 0.845 (a clipped
    # norm, x / max(|x|, sqrt(eps)), would give exactly 1).
    x = np.array([[3e-4, 4e-4]], "float32")
    value = keras.ops.convert_to_numpy(l2_normalize(x))
    np.testing.assert_allclose(value, x / np.sqrt(2.5e-7 + 1e-7), rtol=1e-5)
    big = np.array([[3.0, 4.0]], "float32")  # a large epsilon shrinks any norm: 5 / sqrt(26)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(l2_normalize(big, epsilon=1.0)), big / np.sqrt(26.0), rtol=1e-6
    )


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
        ({"units": 3, "epsilon": 0}, "`epsilon` must be a finite number > 0. Received: epsilon=0"),
        (
            {"units": 3, "epsilon": "x"},
            "`epsilon` must be a finite number > 0. Received: epsilon='x'",
        ),
        (
            # x / sqrt(|x|^2 + inf) = 0: every cosine and every gradient would be 0.
            {"units": 3, "epsilon": float("inf")},
            "`epsilon` must be a finite number > 0. Received: epsilon=inf",
        ),
    ],
)
def test_invalid_arguments_raise_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        CosineDense(**kwargs)


def test_numpy_numbers_are_accepted_and_stored_as_python_numbers():
    # np.int64 units (e.g. a class count from np.unique) were refused with the
    # contradictory "`units` must be a positive integer. Received: units=10".
    layer = CosineDense(np.int64(10), epsilon=np.float32(1e-6))
    assert (layer.units, type(layer.units)) == (10, int)
    assert layer.epsilon == pytest.approx(1e-6) and type(layer.epsilon) is float
    assert CosineDense.from_config(layer.get_config()).get_config() == layer.get_config()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"max_rotation": float("inf")},
            "`max_rotation` must be a finite number >= 0 (degrees). Received: max_rotation=inf",
        ),
        (
            {"max_rotation": -1.0},
            "`max_rotation` must be a finite number >= 0 (degrees). Received: max_rotation=-1.0",
        ),
        (
            {"max_rotation": "10"},
            "`max_rotation` must be a finite number >= 0 (degrees). Received: max_rotation='10'",
        ),
        (
            {"max_translation": float("nan")},
            "`max_translation` must be a number in [0, 1). Received: max_translation=nan",
        ),
        (
            {"fill_value": float("nan")},
            "`fill_value` must be a finite number. Received: fill_value=nan",
        ),
    ],
)
def test_random_affine_refuses_values_that_give_nan_or_garbage_pixels(kwargs, message):
    # max_rotation=inf drew infinite angles: NaN source coordinates, cast to int32 gather
    # indices (TensorFlow: "indices[0,0] = -2147483612 is not in [0, 36)").
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        RandomAffine(**kwargs)


def test_random_affine_shifts_and_rotates_as_documented():
    # Output pixel p samples the input at R(-a) (p - c - t) + c, bilinear, fill outside.
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 5, 5, 2)).astype("float32")
    layer = RandomAffine(fill_value=-1.0)
    zero = np.zeros(2, "float32")
    # Integer shifts move the content by (dx, dy) pixels, the uncovered border is filled.
    shifted = keras.ops.convert_to_numpy(
        layer.transform(
            images, zero, np.array([1.0, -2.0], "float32"), np.array([0.0, 1.0], "float32")
        )
    )
    expected = np.full_like(images, -1.0)
    expected[0, :, 1:] = images[0, :, :-1]
    expected[1, 1:, :-2] = images[1, :-1, 2:]
    np.testing.assert_allclose(shifted, expected, atol=1e-6)
    # A quarter turn of a square image is a permutation: out[y, x] = in[w - 1 - x, y].
    turned = keras.ops.convert_to_numpy(
        layer.transform(images, np.full(2, np.pi / 2, "float32"), zero, zero)
    )
    np.testing.assert_allclose(turned, images[:, ::-1].transpose(0, 2, 1, 3), atol=1e-5)
    # Half a pixel right: the mean of horizontal neighbours, half fill at the left edge.
    half = keras.ops.convert_to_numpy(layer.transform(images, zero, zero + 0.5, zero))
    np.testing.assert_allclose(
        half[:, :, 1:], (images[:, :, 1:] + images[:, :, :-1]) / 2, atol=1e-6
    )
    np.testing.assert_allclose(half[:, :, 0], (images[:, :, 0] - 1.0) / 2, atol=1e-6)


def test_random_affine_is_the_identity_at_inference_only():
    images = np.random.default_rng(1).normal(size=(3, 8, 8, 1)).astype("float32")
    layer = RandomAffine(seed=0)
    assert np.array_equal(keras.ops.convert_to_numpy(layer(images)), images)
    assert np.array_equal(keras.ops.convert_to_numpy(layer(images, training=False)), images)
    trained = keras.ops.convert_to_numpy(layer(images, training=True))
    assert trained.shape == images.shape and not np.allclose(trained, images)
    still = RandomAffine(max_rotation=0.0, max_translation=0.0)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(still(images, training=True)), images, atol=1e-6
    )


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="XLA warp is TF's")
def test_random_affine_warps_with_xla_inside_a_step_that_runs_without_it():
    # On TensorFlow the warp is its own XLA cluster (`jit_compile=True`) inside a model
    # step that runs op by op; it computes bilinear_warp's function, batch size unknown
    # at tracing as in Keras' fit.
    import tensorflow as tf

    from kmnist_lab.layers import _xla_warp, bilinear_warp

    rng = np.random.default_rng(3)
    images = rng.uniform(0, 255, size=(7, 28, 28, 1)).astype("float32")
    angle = rng.uniform(-0.2, 0.2, 7).astype("float32")
    dx, dy = (rng.uniform(-3, 3, 7).astype("float32") for _ in range(2))
    layer = RandomAffine(fill_value=-1.0)
    spec = [tf.TensorSpec((None, 28, 28, 1))] + [tf.TensorSpec((None,))] * 3
    step = tf.function(layer.transform, input_signature=spec, jit_compile=False)
    warped = step(images, angle, dx, dy).numpy()
    graph = step.get_concrete_function().graph.as_graph_def()
    called = {node.op for node in graph.node}
    assert "StatefulPartitionedCall" in called or "PartitionedCall" in called
    assert not called & {"GatherV2", "Floor", "Cos"}  # none of the warp's ops run one by one
    assert any(f.attr["_XlaMustCompile"].b for f in graph.library.function)
    reference = keras.ops.convert_to_numpy(bilinear_warp(images, angle, dx, dy, -1.0))
    np.testing.assert_allclose(warped, reference, rtol=1e-5, atol=1e-3)
    assert _xla_warp() is _xla_warp()  # one compiled function per process


def test_random_affine_draws_angles_in_radians_and_shifts_in_pixels_of_width_and_height():
    # Documented draws: a ~ U(-max_rotation, max_rotation) degrees, given to `transform`
    # in radians; (dx, dy) ~ U(-max_translation, max_translation) * (W, H) pixels.
    layer = RandomAffine(max_rotation=30.0, max_translation=0.25, seed=0)
    drawn = {}

    def spy(images, angle, dx, dy):
        drawn.update(angle=angle, dx=dx, dy=dy)
        return images

    layer.transform = spy
    layer(np.zeros((4000, 4, 6, 1), "float32"), training=True)  # H = 4, W = 6
    limits = {"angle": np.pi / 6, "dx": 0.25 * 6, "dy": 0.25 * 4}
    for name, limit in limits.items():
        values = keras.ops.convert_to_numpy(drawn[name])
        assert values.shape == (4000,), name
        assert np.all(np.abs(values) <= limit * (1 + 1e-6)), name
        # Both signs, up to the limit (4000 uniform draws come within 2% of each end).
        assert values.min() < -0.98 * limit and values.max() > 0.98 * limit, name


# SmallMapConv2D: the same function as Conv2D (on the explicitly padded input), the same
# kernel, other arithmetic. Geometries: (size, channels, filters, kernel, stride, padding,
# zero_padding), ResNet-18's small stages first.
SMALL_MAP_CASES = [
    (2, 8, 6, 3, 1, "valid", 1),  # stage 4: 2x2, 3x3, padding 1 (reads 4 of 9 taps)
    (4, 5, 7, 3, 2, "valid", 1),  # stage 4's stride-2 entry, PyTorch padding=1
    (4, 3, 4, 3, 1, "same", 0),
    (4, 3, 4, 3, 2, "same", 0),  # Keras' asymmetric "same": bottom/right only
    (5, 3, 2, 3, 1, "valid", 0),  # no padding: every window complete
    (3, 2, 3, 2, 1, "same", 0),  # even kernel
    (1, 4, 3, 3, 1, "valid", 1),  # one pixel: only the centre tap
]


def _conv_pair(size, channels, filters, kernel, stride, padding, zero_padding, use_bias=True):
    rng = np.random.default_rng(size * 100 + kernel * 10 + stride)
    x = rng.normal(size=(3, size, size, channels)).astype("float32")
    small = SmallMapConv2D(filters, kernel, strides=stride, padding=padding,
                           zero_padding=zero_padding, use_bias=use_bias)  # fmt: skip
    small.build(x.shape)
    small.set_weights([rng.normal(size=w.shape).astype("float32") for w in small.get_weights()])
    conv = keras.layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=use_bias)
    pad = [(0, 0), (zero_padding, zero_padding), (zero_padding, zero_padding), (0, 0)]
    x_padded = np.pad(x, pad)
    conv.build(x_padded.shape)
    conv.set_weights(small.get_weights())
    return small, conv, x, x_padded


@pytest.mark.parametrize("case", SMALL_MAP_CASES)
def test_small_map_conv_equals_conv2d_on_the_padded_input(case):
    small, conv, x, x_padded = _conv_pair(*case)
    expected = keras.ops.convert_to_numpy(conv(x_padded))
    got = keras.ops.convert_to_numpy(small(x))
    assert got.shape == expected.shape == small.compute_output_shape(x.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("height", "width", "kernel", "strides", "padding", "zero_padding"),
    [
        (3, 5, (3, 2), (1, 2), "valid", 1),
        (4, 3, (2, 3), (2, 1), "same", 0),
    ],
)
def test_small_map_conv_equals_conv2d_on_maps_kernels_and_strides_that_are_not_square(
    height, width, kernel, strides, padding, zero_padding
):
    # Rows and columns must not be mixed up: height vs width, kh vs kw, sh vs sw.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, height, width, 3)).astype("float32")
    small = SmallMapConv2D(4, kernel, strides=strides, padding=padding,
                           zero_padding=zero_padding)  # fmt: skip
    small.build(x.shape)
    small.set_weights([rng.normal(size=w.shape).astype("float32") for w in small.get_weights()])
    conv = keras.layers.Conv2D(4, kernel, strides=strides, padding=padding)
    pad = [(0, 0), (zero_padding, zero_padding), (zero_padding, zero_padding), (0, 0)]
    x_padded = np.pad(x, pad)
    conv.build(x_padded.shape)
    conv.set_weights(small.get_weights())
    expected = keras.ops.convert_to_numpy(conv(x_padded))
    got = keras.ops.convert_to_numpy(small(x))
    assert got.shape == expected.shape == small.compute_output_shape(x.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_small_map_conv_matches_a_numpy_reference():
    # stride 2 from 4x4 with padding 1: output (i, j) reads padded rows 2i..2i+2.
    small, _, x, _ = _conv_pair(4, 5, 7, 3, 2, "valid", 1, use_bias=False)
    kernel = keras.ops.convert_to_numpy(small.kernel).astype(np.float64)
    padded = np.pad(x.astype(np.float64), [(0, 0), (1, 1), (1, 1), (0, 0)])
    expected = np.empty((3, 2, 2, 7))
    for i in range(2):
        for j in range(2):
            patch = padded[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3]
            expected[:, i, j] = np.einsum("nabc,abcf->nf", patch, kernel)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(small(x)), expected, atol=1e-5)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="GradientTape")
@pytest.mark.parametrize("case", SMALL_MAP_CASES[:2])
def test_small_map_conv_gradients_equal_conv2d_gradients(case):
    import tensorflow as tf

    small, conv, x, x_padded = _conv_pair(*case)
    seed = np.random.default_rng(7).normal(size=small.compute_output_shape(x.shape))
    grads = []
    for layer, inputs in ((small, x), (conv, x_padded)):
        inputs = tf.constant(inputs)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            loss = tf.reduce_sum(layer(inputs) * seed)
        grads.append(tape.gradient(loss, [inputs, *layer.trainable_weights]))
    pad = case[-1]
    grad_x_small, grad_x_conv = (
        grads[0][0],
        grads[1][0][:, pad : pad + case[0], pad : pad + case[0]],
    )
    np.testing.assert_allclose(grad_x_small, grad_x_conv, rtol=1e-4, atol=1e-4)
    for a, b in zip(grads[0][1:], grads[1][1:]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_small_map_conv_saves_and_loads(tmp_path):
    inputs = keras.Input((4, 4, 3))
    outputs = SmallMapConv2D(5, 3, strides=2, zero_padding=1, name="conv")(inputs)
    model = keras.Model(inputs, outputs)
    config = model.get_layer("conv").get_config()
    assert config["zero_padding"] == 1
    assert SmallMapConv2D.from_config(config).get_config() == config
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 3)).astype("float32")
    assert isinstance(loaded.get_layer("conv"), SmallMapConv2D)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"zero_padding": -1}, "`zero_padding` must be an integer >= 0. Received: zero_padding=-1"),
        ({"zero_padding": True},  # a bool was taken as 1
         "`zero_padding` must be an integer >= 0. Received: zero_padding=True"),
        ({"zero_padding": 1, "padding": "same"},
         "`zero_padding` applies to padding='valid' only. Received: padding='same', zero_padding=1"),
        ({"dilation_rate": 2},
         "SmallMapConv2D supports dilation_rate=(1, 1) only. Received: dilation_rate=(2, 2)"),
        ({"data_format": "channels_first"}, "SmallMapConv2D supports data_format='channels_last' "
         "only. Received: data_format='channels_first'"),
    ],
)  # fmt: skip
def test_small_map_conv_refuses_what_it_does_not_implement(kwargs, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        SmallMapConv2D(4, 3, **kwargs)


def test_small_map_conv_takes_a_numpy_integer_zero_padding():
    # np.int64(1) was refused: "`zero_padding` must be an integer >= 0".
    layer = SmallMapConv2D(4, 3, zero_padding=np.int64(1))
    assert (layer.zero_padding, type(layer.zero_padding)) == (1, int)


def test_small_map_conv_refuses_an_input_smaller_than_its_kernel():
    # A 1x1 input and a 3x3 valid kernel give a -1x-1 output: it failed in `call` with
    # a bare IndexError (Conv2D: "Computed output size would be zero or negative").
    message = (
        "SmallMapConv2D: a 1x1 input gives no output pixels with kernel_size=(3, 3), "
        "strides=(1, 1), padding='valid', zero_padding=0 (the output must be at least 1x1)"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        SmallMapConv2D(4, 3)(np.zeros((2, 1, 1, 3), "float32"))


def test_small_map_conv_needs_a_static_map_size():
    with pytest.raises(ConfigError, match=r"needs a static height and width"):
        SmallMapConv2D(4, 3)(keras.Input((None, None, 3)))


def test_small_map_conv_refuses_padding_that_hides_the_input():
    # 1x1 input padded by 3: output 5x5, whose border rows/columns read only zeros.
    with pytest.raises(
        ConfigError, match=r"output pixels \[0, 1, 2, 3, 4, 5, 9, .* of a 1x1 input"
    ):
        SmallMapConv2D(4, 3, zero_padding=3)(keras.Input((1, 1, 3)))
    SmallMapConv2D(4, 3, zero_padding=2)(keras.Input((1, 1, 3)))  # every window reaches it


def test_small_map_conv_under_mixed_bfloat16_computes_in_bfloat16():
    small, conv, x, x_padded = _conv_pair(2, 8, 6, 3, 1, "valid", 1)
    half = SmallMapConv2D(6, 3, zero_padding=1, dtype="mixed_bfloat16")
    half.build(x.shape)
    half.set_weights(small.get_weights())
    out = half(x)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    expected = keras.ops.convert_to_numpy(conv(x_padded))
    got = keras.ops.convert_to_numpy(keras.ops.cast(out, "float32"))
    np.testing.assert_allclose(got, expected, rtol=0.05, atol=0.1 * np.abs(expected).max())


# --- FusedBatchNormalization ---------------------------------------------------------

tensorflow_only = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="the fused kernel is TensorFlow's"
)


def _bn_pair(channels=3, **kwargs):
    """A FusedBatchNormalization and a Keras BatchNormalization with the same weights."""
    rng = np.random.default_rng(channels)
    fused = FusedBatchNormalization(epsilon=1e-5, momentum=0.9, **kwargs)
    plain = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, **kwargs)
    for layer in (fused, plain):
        layer.build((None, 5, 4, channels))
    weights = [rng.uniform(0.5, 2.0, size=w.shape).astype("float32") for w in fused.get_weights()]
    for layer in (fused, plain):
        layer.set_weights(weights)
    return fused, plain


def _train_call(layer, x, seed):
    """Output, input gradient and weight gradients of `sum(layer(x) * seed)`, training."""
    import tensorflow as tf

    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(y * seed)
    grads = tape.gradient(loss, [x, *[v.value for v in layer.trainable_variables]])
    return [y.numpy(), *[g.numpy() for g in grads]]


def _fused_ops(layer, shape, training=True, jit_compile=False):
    import tensorflow as tf

    function = tf.function(lambda x: layer(x, training=training), jit_compile=jit_compile)
    graph = function.get_concrete_function(tf.TensorSpec(shape)).graph
    return [op.type for op in graph.get_operations() if op.type.startswith("FusedBatchNorm")]


@tensorflow_only
@pytest.mark.parametrize("kwargs", [{}, {"center": False}, {"scale": False}])
def test_fused_batchnorm_trains_as_keras_batchnorm(kwargs):
    fused, plain = _bn_pair(**kwargs)
    rng = np.random.default_rng(1)
    seed = rng.normal(size=(6, 5, 4, 3)).astype("float32")
    for step in range(2):  # the second call starts from moving statistics already moved
        x = (rng.normal(size=(6, 5, 4, 3)) * 3 + step).astype("float32")
        for got, expected in zip(_train_call(fused, x, seed), _train_call(plain, x, seed)):
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
        for got, expected in zip(fused.non_trainable_weights, plain.non_trainable_weights):
            np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5)


@tensorflow_only
def test_fused_batchnorm_matches_a_numpy_reference():
    """Output `gamma (x - mean) / sqrt(var + eps) + beta`; moving variance from the biased var."""
    fused, _ = _bn_pair()
    gamma, beta, mean0, var0 = (w.astype(np.float64) for w in fused.get_weights())
    x = np.random.default_rng(2).normal(size=(2, 3, 2, 3)).astype("float32") * 5
    y = fused(x, training=True).numpy()
    mean = x.astype(np.float64).mean(axis=(0, 1, 2))
    var = x.astype(np.float64).var(axis=(0, 1, 2))  # biased: 12 values per channel
    np.testing.assert_allclose(y, gamma * (x - mean) / np.sqrt(var + 1e-5) + beta, atol=1e-4)
    np.testing.assert_allclose(fused.moving_mean.numpy(), 0.9 * mean0 + 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(fused.moving_variance.numpy(), 0.9 * var0 + 0.1 * var, rtol=1e-5)


@tensorflow_only
@pytest.mark.parametrize("jit_compile", [False, True])
def test_fused_batchnorm_runs_the_fused_op_when_training_only(jit_compile):
    fused, plain = _bn_pair()
    assert _fused_ops(fused, (6, 5, 4, 3), jit_compile=jit_compile) == ["FusedBatchNormV3"]
    assert _fused_ops(fused, (6, 5, 4, 3), training=False, jit_compile=jit_compile) == []
    assert _fused_ops(plain, (6, 5, 4, 3), jit_compile=jit_compile) == []
    dense = FusedBatchNormalization()
    assert _fused_ops(dense, (6, 3)) == [], "2-D inputs keep Keras' computation"


@tensorflow_only
def test_fused_batchnorm_under_xla_trains_as_keras_batchnorm():
    import tensorflow as tf

    fused, plain = _bn_pair()
    x = np.random.default_rng(3).normal(size=(6, 5, 4, 3)).astype("float32") * 2
    outputs = [
        tf.function(lambda x, layer=layer: layer(x, training=True), jit_compile=True)(x).numpy()
        for layer in (fused, plain)
    ]
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fused.moving_variance.numpy(), plain.moving_variance.numpy(),
                               rtol=1e-5)  # fmt: skip


def test_fused_batchnorm_inference_and_other_dtypes_are_keras_batchnorm():
    fused, plain = _bn_pair()
    x = np.random.default_rng(4).normal(size=(6, 5, 4, 3)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(fused(x, training=False)),
        keras.ops.convert_to_numpy(plain(x, training=False)),
        rtol=1e-6,
    )
    half = FusedBatchNormalization(dtype="mixed_bfloat16")
    y = half(keras.ops.cast(x, "bfloat16"), training=True)
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
    assert keras.backend.standardize_dtype(half.moving_mean.dtype) == "float32"


def test_fused_batchnorm_saves_and_loads(tmp_path):
    inputs = keras.Input((5, 4, 3))
    model = keras.Model(inputs, FusedBatchNormalization(name="bn")(inputs))
    x = np.random.default_rng(5).normal(size=(6, 5, 4, 3)).astype("float32")
    model(x, training=True)  # move the statistics away from their initial values
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.get_layer("bn"), FusedBatchNormalization)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6)  # fmt: skip
