"""ResNet-18 as in report B (He et al. 2016, arXiv:1512.03385), sized for 28x28 inputs."""

from __future__ import annotations

import keras
from keras import layers

from kmnist_lab.models.blocks import (
    basic_block,
    batch_norm,
    check_augment,
    check_choice,
    classifier_head,
    image_input,
)

RESNET_ACTIVATIONS = ("relu", "sigmoid", "tanh")


def resnet(
    blocks_per_stage=(2, 2, 2, 2),
    widths=(64, 128, 256, 512),
    activation: str = "relu",
    num_classes: int = 10,
    head: str = "logits",
    augment: bool = False,
    name: str = "resnet",
) -> keras.Model:
    """Generic ResNet with basic blocks.

    Stem: 7x7 stride-2 conv (padding 3) + BN + activation, no max-pool (28 -> 14).
    Then one stage per width; stages after the first start with a stride-2 block
    whose shortcut is a 1x1 stride-2 conv + BN. Global average pooling, then the head.

    Args:
        blocks_per_stage: basic blocks in each stage.
        widths: filters of each stage.
        activation: `relu`, `sigmoid` or `tanh` (report B's activation swap).
        num_classes: output width.
        head: `"logits"` or `"cosine"`.
        augment: random translation + rotation at training time.
        name: model name.
    """
    check_choice("activation", activation, RESNET_ACTIVATIONS)
    inputs, x = image_input(channels_axis=True, augment=augment)
    x = layers.ZeroPadding2D(3, name="stem_pad")(x)
    x = layers.Conv2D(widths[0], 7, strides=2, use_bias=False, name="stem_conv")(x)
    x = batch_norm(x, "stem_bn")
    x = layers.Activation(activation, name="stem_act")(x)
    for s, (n_blocks, width) in enumerate(zip(blocks_per_stage, widths), start=1):
        for b in range(1, n_blocks + 1):
            stride = 2 if (s > 1 and b == 1) else 1
            x = basic_block(x, width, stride, activation, name=f"stage{s}_block{b}")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = classifier_head(x, num_classes, head)
    return keras.Model(inputs, outputs, name=name)


def resnet18(
    activation: str = "relu", num_classes: int = 10, head: str = "logits", augment: bool = False
) -> keras.Model:
    """Report B's ResNet-18: four stages of two basic blocks, 64-128-256-512 filters."""
    return resnet(
        (2, 2, 2, 2), (64, 128, 256, 512), activation, num_classes, head, augment, name="resnet18"
    )


def check_params(activation: str = "relu", augment: bool = False) -> None:
    """Checks `resnet18`'s settings without building it (see `mlp.check_params`).

    Raises:
        ConfigError: an activation other than `RESNET_ACTIVATIONS`, a non-bool `augment`.
    """
    check_choice("activation", activation, RESNET_ACTIVATIONS)
    check_augment(augment)
