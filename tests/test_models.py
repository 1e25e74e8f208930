"""Every registered model: shape, parameter count, a training step, save/load round-trips.

Parametrized over `list_models()`, so a newly registered architecture is covered
(and must add its reference parameter count below).
"""

import keras
import numpy as np
import pytest

from kmnist_lab.errors import ConfigError
from kmnist_lab.models import build_model, list_models, model_params

# Trainable parameters of the same networks in PyTorch (the reports' framework):
# e.g. bn_mlp = 784*512+512 + 2*512 + 512*128+128 + 2*128 + 128*10+10.
TORCH_TRAINABLE = {
    "plain_mlp": 468_874,
    "relu_mlp": 468_874,
    "bn_mlp": 470_154,
    "mlp": 468_874,
    "resnet18": 11_175_370,  # torchvision resnet18 with a 1-channel stem and 10 classes
    "residual_cnn": 41_514,
}


@pytest.fixture(scope="module", params=list_models())
def model_name(request):
    return request.param


def _images(n=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


def test_output_shape_and_parameter_count(model_name):
    model = build_model(model_name)
    assert model.output_shape == (None, 10)
    assert model_name in TORCH_TRAINABLE, "add the reference parameter count of the new model"
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == TORCH_TRAINABLE[model_name]


def test_accepts_uint8_float_and_channel_axis(model_name):
    model = build_model(model_name, num_classes=7)
    x = _images(3)
    a = model.predict(x, verbose=0)
    b = model.predict(x.astype("float32")[..., None], verbose=0)
    assert a.shape == (3, 7)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_cosine_head_outputs_cosines(model_name):
    """The output is cos(features, class weight) per class: checked against NumPy on the
    features the head receives (a range check alone would pass the head's clipping)."""
    from kmnist_lab.layers import CosineDense

    model = build_model(model_name, head="cosine")
    head = model.get_layer("head")
    assert isinstance(head, CosineDense)
    x = _images(4)
    out = model.predict(x, verbose=0)
    features = keras.Model(model.inputs, head.input).predict(x, verbose=0).astype(np.float64)
    kernel = keras.ops.convert_to_numpy(head.kernel).astype(np.float64)
    cosines = (features / np.linalg.norm(features, axis=-1, keepdims=True)) @ (
        kernel / np.linalg.norm(kernel, axis=0, keepdims=True)
    )
    assert out.shape == (4, 10)
    np.testing.assert_allclose(out, cosines, atol=1e-4)


def test_one_training_step_changes_weights_and_gives_finite_loss(model_name):
    keras.utils.set_random_seed(0)
    model = build_model(model_name)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = [w.numpy().copy() for w in model.trainable_weights]
    logs = model.train_on_batch(_images(8), np.arange(8) % 10, return_dict=True)
    assert np.isfinite(logs["loss"])
    after = [w.numpy() for w in model.trainable_weights]
    assert any(not np.allclose(a, b) for a, b in zip(before, after))


def test_keras_and_savedmodel_round_trips_predict_the_same(model_name, tmp_path):
    import tensorflow as tf

    from kmnist_lab.export import export_saved_model

    model = build_model(model_name)
    x = _images(5)
    expected = model.predict(x, verbose=0)
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(restored.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-5)
    export_saved_model(model, tmp_path / "sm")
    served = tf.saved_model.load(str(tmp_path / "sm"))
    for name, batch in (
        ("serve", tf.constant(x, tf.float32)),
        ("serve_uint8", tf.constant(x[..., None])),
        # TF-Serving's default is `serve`: float32 pixels, with or without the channel.
        ("serving_default", tf.constant(x[..., None], tf.float32)),
    ):
        out = served.signatures[name](pixels=batch)
        np.testing.assert_allclose(out["scores"].numpy(), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(out["class_ids"].numpy(), expected.argmax(1))


def test_savedmodel_serves_flat_rows_and_refuses_other_shapes(tmp_path):
    """(N, 784) rows are images; (N, 28, 28, 3) would be reshaped into 3N grey images
    and scored silently, so the SavedModel itself refuses it (and any other shape)."""
    import tensorflow as tf

    from kmnist_lab.export import export_saved_model

    model = build_model("mlp", hidden=[16], augment=False)
    x = _images(4)
    expected = model.predict(x, verbose=0)
    served = tf.saved_model.load(str(export_saved_model(model, tmp_path / "sm")))
    for name in ("serve", "serve_uint8"):
        rows = x.reshape(4, 784).astype("uint8" if name == "serve_uint8" else "float32")
        out = served.signatures[name](pixels=tf.constant(rows))
        np.testing.assert_allclose(out["scores"].numpy(), expected, rtol=1e-5, atol=1e-5)
    for shape in [(2, 28, 28, 3), (28, 28), (784,), (2, 28, 28, 1, 1), (2, 785), (3, 28, 14)]:
        pixels = tf.zeros(shape, tf.float32)
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"or \(N, 784\); received"):
            served.signatures["serve"](pixels=pixels)


@pytest.mark.parametrize(("loss", "scale"), [("ce", 1.0), ("am_softmax", 16.0)])
def test_savedmodel_serves_scores_scaled_by_the_loss_and_their_softmax(loss, scale, tmp_path):
    """A cosine head's SavedModel serves `s * cos` (the margin loss's scale), so its
    probabilities are `softmax(s * cos)`, not the nearly uniform `softmax(cos)`."""
    import tensorflow as tf

    from kmnist_lab.export import save_model_files
    from kmnist_lab.losses import get_loss, loss_head

    params = {"scale": scale} if loss == "am_softmax" else {}
    model = build_model("mlp", hidden=[16], head=loss_head(loss), augment=False)
    x = _images(6)
    raw = model.predict(x, verbose=0).astype("float64")
    assert save_model_files(model, get_loss(loss, **params), tmp_path) == [
        "model.keras",
        "saved_model",
    ]
    served = tf.saved_model.load(str(tmp_path / "saved_model"))
    out = served.serve_uint8(tf.constant(x))
    expected = scale * raw
    np.testing.assert_allclose(out["scores"].numpy(), expected, rtol=1e-5, atol=1e-5)
    softmax = np.exp(expected - expected.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)
    np.testing.assert_allclose(out["probabilities"].numpy(), softmax, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(out["class_ids"].numpy(), raw.argmax(1))


def test_predict_scores_in_batches_gives_every_image_its_scores(tmp_path):
    """evaluate.py's batched inference: 9 images in batches of 4 (a last batch of 1)."""
    import tensorflow as tf

    from kmnist_lab.evaluation import predict_scores
    from kmnist_lab.export import export_saved_model

    model = build_model("mlp", hidden=[16], augment=False)
    x = _images(9)
    export_saved_model(model, tmp_path / "sm")
    served = tf.saved_model.load(str(tmp_path / "sm"))
    expected = model.predict(x, verbose=0)
    for batch_size in (4, 9, 1024):
        scores = predict_scores(served, x, batch_size=batch_size)
        np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5, err_msg=batch_size)
        np.testing.assert_allclose(predict_scores(served, x[..., None], batch_size), scores)
        # Flattened rows, which the `serve` signature takes as well.
        np.testing.assert_allclose(predict_scores(served, x.reshape(9, 784), batch_size), scores)


@pytest.mark.parametrize("arch", ["bn_mlp", "residual_cnn"])
def test_a_saved_model_serves_an_empty_batch(arch, tmp_path):
    """An empty batch failed in oneDNN's fused convolution (`input depth must be evenly
    divisible by filter depth: 1 vs 16`); it gets empty outputs, and a batch its scores."""
    import tensorflow as tf

    from kmnist_lab.export import export_saved_model

    model = build_model(arch)
    served = tf.saved_model.load(str(export_saved_model(model, tmp_path / "sm")))
    for name, pixels in (("serve", tf.zeros((0, 28, 28))), ("serve_uint8", tf.zeros((0, 784), tf.uint8)),
                         ("serve", tf.zeros((0, 28, 28, 1))),):  # fmt: skip
        out = served.signatures[name](pixels=pixels)
        assert out["scores"].shape == (0, 10) and out["probabilities"].shape == (0, 10)
        assert out["class_ids"].shape == (0,) and out["class_ids"].dtype == tf.int32
    x = _images(3)
    np.testing.assert_allclose(served.signatures["serve"](pixels=tf.constant(x, tf.float32))["scores"],
                               model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)  # fmt: skip


@pytest.mark.parametrize("shape", [(2, 28, 28, 3), (2, 32, 32), (2, 785), (2, 28, 28, 1, 1)])
def test_predict_scores_refuses_images_that_are_not_28x28_grey(shape):
    """Served as-is, 3-channel images would be reshaped into three times as many
    grey images (and scored silently)."""
    from kmnist_lab.errors import ModelLoadError
    from kmnist_lab.evaluation import predict_scores

    with pytest.raises(
        ModelLoadError, match=r"images must be \(N, 28, 28\), \(N, 28, 28, 1\) or \(N, 784\)"
    ):
        predict_scores(None, np.zeros(shape, np.uint8))


def test_resnet18_small_maps_compute_what_conv2d_computes(monkeypatch):
    """Stage 4's 2x2 maps use SmallMapConv2D: same weights, same predictions as Conv2D."""
    from kmnist_lab.layers import SmallMapConv2D
    from kmnist_lab.models import blocks

    model = build_model("resnet18")
    small = [layer.name for layer in model.layers if isinstance(layer, SmallMapConv2D)]
    assert small == [f"stage4_block{b}_conv{c}" for b, c in ((1, 1), (1, 2), (2, 1), (2, 2))], (
        "the layers on maps of <= SMALL_MAP_PIXELS pixels"
    )
    monkeypatch.setattr(blocks, "SMALL_MAP_PIXELS", 0)
    reference = build_model("resnet18")
    assert not any(isinstance(layer, SmallMapConv2D) for layer in reference.layers)
    reference.set_weights(model.get_weights())
    x = _images(4)
    np.testing.assert_allclose(
        model.predict(x, verbose=0), reference.predict(x, verbose=0), rtol=1e-4, atol=1e-5
    )


def test_resnet18_fused_batchnorm_trains_as_keras_batchnorm(monkeypatch):
    """Every BatchNorm is FusedBatchNormalization; one SGD step moves the same weights.

    tanh, not ReLU: float rounding differences of ~1e-5 flip the odd ReLU whose input is
    ~0, and one flipped unit moves a 2x2-map BatchNorm's beta gradient by a few percent.
    """
    from kmnist_lab import layers as kmnist_layers

    fused = kmnist_layers.FusedBatchNormalization
    keras.utils.set_random_seed(3)  # a seed whose ReLU version flips units (see above)
    model = build_model("resnet18", activation="tanh")
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 20  # stem + 2 per block x 8 + 3 downsampling shortcuts
    assert all(isinstance(layer, fused) for layer in bns)
    monkeypatch.setattr(kmnist_layers, "FusedBatchNormalization", keras.layers.BatchNormalization)
    reference = build_model("resnet18", activation="tanh")
    assert not any(isinstance(layer, fused) for layer in reference.layers)
    reference.set_weights(model.get_weights())
    x, y = _images(8), np.arange(8) % 10
    for m in (model, reference):
        m.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip
        m.train_on_batch(x, y)
    for got, expected in zip(model.weights, reference.weights):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5,
                                   err_msg=got.path)  # fmt: skip


def test_augmentation_is_inactive_at_inference():
    model = build_model("bn_mlp", augment=True)
    x = _images(4)
    np.testing.assert_allclose(model(x, training=False), model(x, training=False))
    assert not np.allclose(model(x, training=True), model(x, training=False))


def test_augmentation_is_the_documented_rotation_and_translation():
    """README: "a random rotation (up to 10 degrees) and translation (up to 10%)"."""
    from kmnist_lab.layers import RandomAffine

    layer = build_model("bn_mlp", augment=True).get_layer("augment")
    assert isinstance(layer, RandomAffine)
    assert (layer.max_rotation, layer.max_translation) == (10.0, 0.1)


def test_mlp_options():
    model = build_model("mlp", hidden=(128,), activation="tanh", init_std=0.01)
    assert [w.shape for w in model.trainable_weights] == [(784, 128), (128,), (128, 10), (10,)]
    assert np.std(model.trainable_weights[0].numpy()) == pytest.approx(0.01, rel=0.05)
    # The output layer too (report D's init): Glorot would give std ~0.12 here.
    assert np.std(model.trainable_weights[2].numpy()) == pytest.approx(0.01, rel=0.15)
    cosine = build_model("mlp", hidden=(128,), head="cosine", init_std=0.01)
    assert np.std(cosine.get_layer("head").kernel.numpy()) == pytest.approx(0.01, rel=0.15)


def test_mlp_init_std_draws_each_kernel_independently():
    # One shared unseeded RandomNormal instance repeats its draws: every kernel was a
    # copy of the start of the first one (dense2 == dense1[:128], head == its first values).
    keras.utils.set_random_seed(0)
    model = build_model("mlp", hidden=(128, 128), init_std=0.01)
    w1, w2, head = (model.get_layer(n).kernel.numpy() for n in ("dense1", "dense2", "head"))
    assert abs(np.corrcoef(w2.ravel(), w1[:128].ravel())[0, 1]) < 0.05
    assert abs(np.corrcoef(head.ravel(), w1.ravel()[: head.size])[0, 1]) < 0.1
    keras.utils.set_random_seed(0)
    again = build_model("mlp", hidden=(128, 128), init_std=0.01)
    np.testing.assert_array_equal(again.get_layer("dense2").kernel.numpy(), w2)  # still seeded


def test_mlp_on_feature_vectors_is_a_regressor():
    # Report E's sin(x) fit: 1 float feature in, 1 linear output, no pixel rescaling.
    model = build_model("mlp", num_classes=1, hidden=[50, 50, 50], activation="tanh",
                        input_features=1)  # fmt: skip
    assert model.input_shape == (None, 1) and model.output_shape == (None, 1)
    assert [w.shape for w in model.trainable_weights][::2] == [(1, 50), (50, 50), (50, 50), (50, 1)]
    x = np.array([[0.5]], "float32")
    w = [v.numpy() for v in model.trainable_weights]
    h = x
    for kernel, bias in zip(w[0:6:2], w[1:6:2], strict=True):
        h = np.tanh(h @ kernel + bias)
    np.testing.assert_allclose(model(x), h @ w[6] + w[7], rtol=1e-5)  # the input used as is


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("nope", {}, "unknown arch 'nope'. Valid archs: plain_mlp"),  # like none: no guess
        ("bnmlp", {}, "unknown arch 'bnmlp'. Did you mean 'bn_mlp'. Valid archs: plain_mlp"),
        ("mlp", {"hiden": [8]}, "does not take hiden. Did you mean 'hidden'. It takes: hidden,"),
        (
            "mlp",
            {"input_features": 0},
            r"`input_features` must be None .* Received: input_features=0",
        ),
        ("mlp", {"input_features": 1, "augment": True}, "`augment` needs images"),
        ("bn_mlp", {"hidden": (3,)}, "does not take hidden"),
        # The keywords a user may set, not those kmnist_lab sets (num_classes, head, ...).
        (
            "bn_mlp",
            {"width": 3},
            r"does not take width\. It takes: dropout, l2, init_std, augment$",
        ),
        ("resnet18", {"l2": 0.1}, r"does not take l2\. It takes: activation, augment$"),
        ("mlp", {"hidden": ()}, "`hidden` must be a non-empty"),
        ("mlp", {"activation": "swishy"}, "`activation` must be one of"),
        ("mlp", {"dropout": 1.0}, r"`dropout` must be a number in \[0, 1\)"),
        ("resnet18", {"activation": "selu"}, "`activation` must be one of relu, sigmoid, tanh"),
        ("bn_mlp", {"head": "arcface"}, "`head` must be one of logits, cosine"),
        ("bn_mlp", {"num_classes": 0}, r"`num_classes` must be a positive integer. .*=0$"),
        ("relu_mlp", {"num_classes": "10"}, r"Received: num_classes='10'$"),
        ("resnet18", {"num_classes": 2.5}, r"Received: num_classes=2\.5$"),
    ],
)
def test_invalid_builds_raise_config_error(name, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        build_model(name, **kwargs)


def test_every_model_documents_its_keywords():
    for name in list_models():
        assert {"num_classes", "head", "augment"} <= set(model_params(name))


def _inputs_of(model) -> dict:
    """Layer name -> the names of the layers feeding it, read from the model's config."""

    def names(arg):
        if isinstance(arg, dict) and "keras_history" in arg.get("config", {}):
            return [arg["config"]["keras_history"][0]]
        if isinstance(arg, (list, tuple)):
            return [n for a in arg for n in names(a)]
        return []

    return {
        layer["name"]: [n for node in layer["inbound_nodes"] for n in names(node["args"])]
        for layer in model.get_config()["layers"]
    }


def test_pixels_are_rescaled_to_minus_one_one():
    """Report A's `Normalize(0.5, 0.5)` after `ToTensor`: 0 -> -1, 127.5 -> 0, 255 -> 1."""
    model = build_model("mlp", hidden=[4])
    rescale = keras.Model(model.input, model.get_layer("rescale").output)
    pixels = np.array([0.0, 127.5, 255.0], "float32").repeat(262)[:784].reshape(1, 28, 28)
    out = rescale.predict(pixels, verbose=0).ravel()
    np.testing.assert_allclose(out, pixels.ravel() / 127.5 - 1.0, atol=1e-6)
    assert out.min() == -1.0 and out.max() == 1.0


def test_bn_mlp_hidden_layers_are_dense_batchnorm_relu_as_in_pytorch():
    model = build_model("bn_mlp")
    inputs = _inputs_of(model)
    for i in (1, 2):
        assert inputs[f"bn{i}"] == [f"dense{i}"] and inputs[f"act{i}"] == [f"bn{i}"]
        bn = model.get_layer(f"bn{i}")
        assert (bn.epsilon, bn.momentum) == (1e-5, 0.9)  # PyTorch's eps, momentum=0.1
    assert inputs["dense2"] == ["act1"] and inputs["head"] == ["act2"]


def test_mlp_dropout_is_active_in_training_only():
    model = build_model("mlp", hidden=[256], dropout=0.5)
    x = _images(4)
    np.testing.assert_array_equal(model(x, training=False), model(x, training=False))
    assert not np.allclose(model(x, training=True), model(x, training=False))


def test_mlp_l2_penalises_kernels_not_biases():
    model = build_model("mlp", hidden=[8], l2=0.01)
    for layer in (model.get_layer("dense1"), model.get_layer("head")):
        layer.bias.assign(np.ones(layer.bias.shape, "float32"))  # zeros would hide a bias term
    kernels = [model.get_layer(n).kernel.numpy() for n in ("dense1", "head")]
    expected = 0.01 * sum(float(np.sum(k.astype("float64") ** 2)) for k in kernels)
    assert float(sum(model.losses)) == pytest.approx(expected, rel=1e-5)


def test_resnet_blocks_follow_the_pytorch_basic_block():
    """conv-BN-act-conv-BN, + shortcut, act, with a 1x1 conv + BN shortcut exactly where
    the shape changes: here stage 2's stride-2 block, at an unchanged width."""
    from kmnist_lab.models.resnet import resnet

    model = resnet(blocks_per_stage=(2, 1), widths=(4, 4))
    inputs = _inputs_of(model)
    assert inputs["stem_conv"] == ["stem_pad"] and inputs["stem_act"] == ["stem_bn"]
    for block, shortcut in (
        ("stage1_block1", "stem_act"),
        ("stage1_block2", "stage1_block1_out"),
        ("stage2_block1", "stage2_block1_down_bn"),
    ):
        assert inputs[f"{block}_bn1"] == [f"{block}_conv1"]
        assert inputs[f"{block}_act1"] == [f"{block}_bn1"]
        assert inputs[f"{block}_bn2"] == [f"{block}_conv2"]
        assert inputs[f"{block}_add"] == [f"{block}_bn2", shortcut]
        assert inputs[f"{block}_out"] == [f"{block}_add"]
    assert inputs["stage2_block1_down_bn"] == ["stage2_block1_down_conv"]
    assert not any("down" in name for name in inputs if name.startswith("stage1"))
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 1 + 2 * 3 + 1
    assert {(bn.epsilon, bn.momentum) for bn in bns} == {(1e-5, 0.9)}


def test_residual_cnn_blocks_add_then_activate():
    inputs = _inputs_of(build_model("residual_cnn"))
    for block, x in (("res1", "pool1"), ("res2", "pool2")):
        assert inputs[f"{block}_conv1"] == [x] and inputs[f"{block}_conv2"] == [f"{block}_act1"]
        assert inputs[f"{block}_add"] == [x, f"{block}_conv2"]
        assert inputs[f"{block}_out"] == [f"{block}_add"]


def test_stride_2_convs_pad_one_pixel_on_every_side_as_pytorch():
    """An all-ones kernel on an all-ones map counts the real pixels under each window:
    PyTorch's `padding=1` puts a zero row above the map, Keras' `"same"` would not."""
    from kmnist_lab.models.blocks import conv3x3

    x = keras.Input((14, 14, 1))
    conv = keras.Model(x, conv3x3(x, 1, 2, name="t_conv", use_bias=False))
    conv.get_layer("t_conv").kernel.assign(np.ones((3, 3, 1, 1), "float32"))
    out = conv.predict(np.ones((1, 14, 14, 1), "float32"), verbose=0)[0, :, :, 0]
    assert out.shape == (7, 7)
    assert (out[0, 0], out[0, 3], out[6, 6]) == (4.0, 6.0, 9.0)


def test_resnet_stem_pads_three_pixels_on_every_side_as_pytorch():
    from kmnist_lab.models.resnet import resnet

    model = resnet(blocks_per_stage=(1,), widths=(1,))
    model.get_layer("stem_conv").kernel.assign(np.ones((7, 7, 1, 1), "float32"))
    stem = keras.Model(model.input, model.get_layer("stem_conv").output)
    out = stem.predict(np.full((1, 28, 28), 255, np.uint8), verbose=0)[0, :, :, 0]
    assert out.shape == (14, 14)
    # Rows -3..3 hold 4 real pixels, rows 23..29 hold 5: 4x4, 4x7 and 5x5 pixels of 1.0.
    np.testing.assert_allclose((out[0, 0], out[0, 5], out[13, 13]), (16.0, 28.0, 25.0))
