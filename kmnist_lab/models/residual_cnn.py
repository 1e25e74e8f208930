"""Report C's small residual CNN."""

from __future__ import annotations

import keras
from keras import layers

from kmnist_lab.models.blocks import check_augment, classifier_head, image_input, residual_block


def residual_cnn(num_classes: int = 10, head: str = "logits", augment: bool = False) -> keras.Model:
    """Report C's net: conv5x5(16) -> ReLU -> maxpool2 -> residual(16) -> conv5x5(32)
    -> ReLU -> maxpool2 -> residual(32) -> flatten (4*4*32 = 512) -> head.

    A residual block is `relu(x + conv3x3(relu(conv3x3(x))))`.
    """
    inputs, x = image_input(channels_axis=True, augment=augment)
    x = layers.Conv2D(16, 5, name="conv1")(x)  # 28 -> 24
    x = layers.Activation("relu", name="conv1_act")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)  # -> 12
    x = residual_block(x, name="res1")
    x = layers.Conv2D(32, 5, name="conv2")(x)  # -> 8
    x = layers.Activation("relu", name="conv2_act")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)  # -> 4
    x = residual_block(x, name="res2")
    x = layers.Flatten(name="flatten")(x)
    outputs = classifier_head(x, num_classes, head)
    return keras.Model(inputs, outputs, name="residual_cnn")


def check_params(augment: bool = False) -> None:
    """Checks `residual_cnn`'s settings without building it (see `mlp.check_params`)."""
    check_augment(augment)
