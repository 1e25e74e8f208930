"""Multi-layer perceptrons: report A's three 784-512-128-10 nets and a configurable `mlp`."""

from __future__ import annotations

import inspect
import math

import keras
from keras import layers

from kmnist_lab.errors import ConfigError, is_int, is_real
from kmnist_lab.models.blocks import (
    ACTIVATIONS,
    check_augment,
    check_choice,
    classifier_head,
    image_input,
    regularizer,
)


def mlp(
    hidden=(512, 128),
    activation: str | None = "relu",
    batchnorm: bool = False,
    dropout: float = 0.0,
    l2: float = 0.0,
    init_std: float | None = None,
    num_classes: int = 10,
    head: str = "logits",
    augment: bool = False,
    input_features: int | None = None,
    name: str = "mlp",
) -> keras.Model:
    """Fully-connected classifier `784 -> hidden... -> num_classes`.

    Each hidden layer is `Dense -> [BatchNorm] -> activation -> [Dropout]`
    (BatchNorm: Ioffe & Szegedy 2015, arXiv:1502.03167).

    Args:
        hidden: widths of the hidden layers (report D: `(128,)`; report E: depth x width).
        activation: one of `ACTIVATIONS`, or None for none (report A's `plain_mlp`).
            Through `build_model` a None override means the arch's default (ReLU
            for `mlp`); ask for `"linear"` there.
        batchnorm: BatchNorm after each hidden Dense (report A's `bn_mlp`).
        dropout: dropout rate after each hidden layer, in [0, 1).
        l2: L2 penalty `l2 * sum(w**2)` on every kernel.
        init_std: if set, every kernel, the output layer's included, starts from
            N(0, init_std^2) (report D: 0.01);
            default Glorot uniform.
        num_classes: output width.
        head: `"logits"` or `"cosine"` (for margin losses).
        augment: random translation + rotation at training time.
        input_features: None: the input is a 28x28 image (rescaled here, see
            `image_input`). An integer k: a vector of k float features used as they
            are; with `num_classes=1` and `head="logits"` the net is a regressor
            (report E's fit of sin x).
        name: model name.
    """
    hidden = check_params(
        hidden, activation, batchnorm, dropout, l2, init_std, augment, input_features
    )

    def init():
        # A new initializer per layer: an unseeded Keras initializer fixes its seed when
        # it is built, so one instance shared by every layer gives each kernel the same
        # draws (dense2 a copy of dense1's first rows, the head a copy of its first values).
        return keras.initializers.RandomNormal(stddev=init_std) if init_std else "glorot_uniform"

    if input_features is None:
        inputs, x = image_input(channels_axis=False, augment=augment)
    else:
        inputs = x = keras.Input(shape=(int(input_features),), name="features")
    for i, width in enumerate(hidden, start=1):
        x = layers.Dense(
            width, kernel_initializer=init(), kernel_regularizer=regularizer(l2), name=f"dense{i}"
        )(x)
        if batchnorm:
            x = layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=f"bn{i}")(x)
        if activation is not None:
            x = layers.Activation(activation, name=f"act{i}")(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"dropout{i}")(x)
    outputs = classifier_head(x, num_classes, head, l2, kernel_initializer=init())
    return keras.Model(inputs, outputs, name=name)


def check_params(
    hidden=(512, 128),
    activation: str | None = "relu",
    batchnorm: bool = False,
    dropout: float = 0.0,
    l2: float = 0.0,
    init_std: float | None = None,
    augment: bool = False,
    input_features: int | None = None,
) -> tuple[int, ...]:
    """Checks `mlp`'s settings without building anything; returns the hidden widths.

    Config validation calls it (through `check_overrides`) so a bad `--model-param`
    value is refused before any run folder or data is looked at.

    Raises:
        ConfigError: the first setting `mlp` would refuse.
    """
    widths = tuple(hidden) if isinstance(hidden, (list, tuple)) else (hidden,)
    if not widths or not all(_is_width(h) for h in widths):
        raise ConfigError(
            f"`hidden` must be a non-empty list of positive widths. Received: hidden={hidden!r}"
        )
    if activation is not None:
        check_choice("activation", activation, ACTIVATIONS)
    if not is_real(dropout) or not (0.0 <= dropout < 1.0) or math.isnan(dropout):
        raise ConfigError(f"`dropout` must be a number in [0, 1). Received: dropout={dropout!r}")
    if not is_real(l2) or l2 < 0 or not math.isfinite(l2):
        raise ConfigError(f"`l2` must be a finite number >= 0. Received: l2={l2!r}")
    if init_std is not None and not (is_real(init_std) and 0 < init_std < math.inf):
        raise ConfigError(f"`init_std` must be a positive number. Received: init_std={init_std!r}")
    if not isinstance(batchnorm, bool):
        raise ConfigError(f"`batchnorm` must be true or false. Received: batchnorm={batchnorm!r}")
    if input_features is None:
        check_augment(augment)
    elif not _is_width(input_features):
        raise ConfigError(
            "`input_features` must be None (28x28 images) or a positive integer. "
            f"Received: input_features={input_features!r}"
        )
    elif augment is not False:
        raise ConfigError(
            "`augment` needs images: with `input_features` it must be false. "
            f"Received: augment={augment!r}, input_features={input_features!r}"
        )
    return tuple(int(h) for h in widths)


def variant(base, name: str, doc: str, **fixed):
    """A named thin variant of a generic builder with some arguments fixed.

    The variant accepts every other keyword of `base`; `base_params` records them
    for the registry (so `build_model` can validate overrides).
    """

    def builder(**kw):
        clash = sorted(set(kw) & set(fixed))
        if clash:
            raise ConfigError(
                f"arch {name!r} fixes {', '.join(clash)}; use arch 'mlp' to change them"
            )
        return base(name=name, **fixed, **kw)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = doc
    builder.base_params = [
        p for p in inspect.signature(base).parameters if p not in fixed and p != "name"
    ]
    return builder


plain_mlp = variant(
    mlp, "plain_mlp", "Report A's 784-512-128-10 with no activation (a linear model in three layers).",
    hidden=(512, 128), activation=None, batchnorm=False,
)  # fmt: skip
relu_mlp = variant(
    mlp, "relu_mlp", "Report A's 784-512-128-10 with ReLU.",
    hidden=(512, 128), activation="relu", batchnorm=False,
)  # fmt: skip
bn_mlp = variant(
    mlp, "bn_mlp", "Report A's 784-512-128-10 with BatchNorm + ReLU.",
    hidden=(512, 128), activation="relu", batchnorm=True,
)  # fmt: skip


def _is_width(value) -> bool:
    return is_int(value) and value > 0
