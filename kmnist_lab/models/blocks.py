"""Building blocks shared by every architecture: input + preprocessing, heads, conv blocks.

Blocks are module-level functions taking a tensor and a `name` prefix, so layer
names read like `stage2_block1_conv1` (the keras.applications convention).
"""

from __future__ import annotations

import keras
from keras import layers

from kmnist_lab.errors import ConfigError

HEADS = ("logits", "cosine")
ACTIVATIONS = ("relu", "sigmoid", "tanh", "selu", "gelu", "elu", "silu", "hard_swish", "linear")

# Report A normalised with mean 0.5, std 0.5: x/255 -> (x - 0.5) / 0.5 = x/127.5 - 1.
PIXEL_SCALE = 1.0 / 127.5
PIXEL_OFFSET = -1.0


def check_choice(arg: str, value, allowed) -> None:
    """Raises `ConfigError` unless `value` is one of `allowed`."""
    if value not in allowed:
        raise ConfigError(
            f"`{arg}` must be one of {', '.join(map(str, allowed))}. Received: {arg}={value!r}"
        )


def check_augment(augment) -> None:
    """Raises `ConfigError` unless `augment` is a bool."""
    if not isinstance(augment, bool):
        raise ConfigError(f"`augment` must be true or false. Received: augment={augment!r}")


def image_input(channels_axis: bool, augment: bool = False, name: str = "pixels"):
    """Model input taking raw pixels (uint8 or float 0-255) and owning the preprocessing.

    The input is (28, 28, 1); Keras functional models also accept (N, 28, 28) and
    add the channel axis themselves. Pixels are rescaled to [-1, 1]. With `augment`,
    a random translation (up to 10%) and rotation (up to 10 degrees, no flips)
    follow; both are inactive at inference.

    Returns:
        `(inputs, x)`: the `keras.Input` and the preprocessed tensor, (28, 28, 1)
        when `channels_axis` else flattened to (784,).
    """
    check_augment(augment)
    inputs = keras.Input(shape=(28, 28, 1), name=name)
    x = layers.Rescaling(PIXEL_SCALE, offset=PIXEL_OFFSET, name="rescale")(inputs)
    if augment:
        from kmnist_lab.layers import RandomAffine

        x = RandomAffine(max_rotation=10.0, max_translation=0.1, fill_value=-1.0, name="augment")(x)
    if not channels_axis:
        x = layers.Flatten(name="flatten_input")(x)
    return inputs, x


def classifier_head(
    x,
    num_classes: int,
    head: str = "logits",
    l2: float = 0.0,
    name: str = "head",
    kernel_initializer="glorot_uniform",
):
    """Final layer: a dense layer giving logits, or a `CosineDense` giving cosines."""
    check_choice("head", head, HEADS)
    if head == "cosine":
        from kmnist_lab.layers import CosineDense

        return CosineDense(num_classes, kernel_initializer=kernel_initializer,
                           kernel_regularizer=regularizer(l2), name=name)(x)  # fmt: skip
    # Mixed precision: logits in float32, so the softmax and the loss see no bfloat16.
    half = keras.config.dtype_policy().compute_dtype in ("float16", "bfloat16")
    return layers.Dense(
        num_classes,
        kernel_initializer=kernel_initializer,
        kernel_regularizer=regularizer(l2),
        name=name,
        dtype="float32" if half else None,
    )(x)


def regularizer(l2: float):
    """L2 weight penalty `l2 * sum(w**2)`, or None when `l2 == 0`."""
    return keras.regularizers.L2(l2) if l2 else None


def activation(x, name: str, kind: str = "relu"):
    """The Keras activation `kind` (e.g. "relu") applied to `x` as a layer named `name`."""
    return layers.Activation(kind, name=name)(x)


def batch_norm(x, name: str):
    """BatchNorm over the channels, as report B's PyTorch `BatchNorm2d`.

    epsilon 1e-5 and momentum 0.9 (PyTorch's `momentum=0.1` counts the other way).
    `FusedBatchNormalization` is Keras' `BatchNormalization` that trains through
    TensorFlow's fused kernel there (docs/performance.md, "Fused BatchNorm").
    """
    from kmnist_lab.layers import FusedBatchNormalization

    return FusedBatchNormalization(epsilon=1e-5, momentum=0.9, name=name)(x)


# Convolutions whose output map has at most this many pixels use `SmallMapConv2D` (one
# matrix product per output pixel) instead of `Conv2D`: measured faster there
# (docs/performance.md, "Small feature maps").
SMALL_MAP_PIXELS = 4


def conv3x3(x, filters: int, stride: int, name: str, use_bias: bool = True):
    """3x3 convolution padding one pixel on every side, as PyTorch's `padding=1`.

    Stride 1 is Keras' `"same"`; stride 2 pads explicitly first (`{name}` with
    `conv` replaced by `pad`), since Keras' `"same"` would pad the bottom/right only.
    Output maps of at most `SMALL_MAP_PIXELS` pixels use `SmallMapConv2D`, which
    computes the same function with the same kernel.
    """
    out_pixels = ((x.shape[1] - 1) // stride + 1) * ((x.shape[2] - 1) // stride + 1)
    if out_pixels <= SMALL_MAP_PIXELS:
        from kmnist_lab.layers import SmallMapConv2D

        return SmallMapConv2D(
            filters, 3, strides=stride, zero_padding=1, use_bias=use_bias, name=name
        )(x)
    if stride != 1:
        x = layers.ZeroPadding2D(1, name=name.replace("conv", "pad"))(x)
    return layers.Conv2D(
        filters, 3, strides=stride, padding="valid" if stride != 1 else "same",
        use_bias=use_bias, name=name,
    )(x)  # fmt: skip


def basic_block(x, filters: int, stride: int, act: str, name: str):
    """ResNet basic block (He et al. 2016, arXiv:1512.03385), PyTorch layout.

    `y = act(bn(conv3x3(act(bn(conv3x3_s(x))))) + shortcut(x))`, where the shortcut
    is a 1x1 stride-`s` conv + BN when the shape changes, identity otherwise.
    Stride-2 convs pad one pixel on every side, as PyTorch's `padding=1` does.
    """
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(
            filters, 1, strides=stride, use_bias=False, name=f"{name}_down_conv"
        )(x)
        shortcut = batch_norm(shortcut, f"{name}_down_bn")
    y = conv3x3(x, filters, stride, name=f"{name}_conv1", use_bias=False)
    y = batch_norm(y, f"{name}_bn1")
    y = activation(y, f"{name}_act1", act)
    y = conv3x3(y, filters, 1, name=f"{name}_conv2", use_bias=False)
    y = batch_norm(y, f"{name}_bn2")
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return activation(y, f"{name}_out", act)


def residual_block(x, name: str, act: str = "relu"):
    """Report C's residual block: `act(x + conv3x3(act(conv3x3(x))))`, same width."""
    filters = x.shape[-1]
    y = conv3x3(x, filters, 1, name=f"{name}_conv1")
    y = activation(y, f"{name}_act1", act)
    y = conv3x3(y, filters, 1, name=f"{name}_conv2")
    y = layers.Add(name=f"{name}_add")([x, y])
    return activation(y, f"{name}_out", act)
