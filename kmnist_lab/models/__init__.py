"""Model registry: one path builds every model, `build_model(name, **overrides)`.

Every builder takes raw 28x28 pixels (uint8 or float 0-255, with or without the
channel axis) and owns its rescaling, so a served model needs no outside
preprocessing.

Importing this module registers every kmnist_lab class a `.keras` file can name
(layers, losses, optimizers, schedules), so a process that imports it, to build
models or to call `load_keras_model`, can also load one with
`keras.saving.load_model` directly.
"""

from __future__ import annotations

import inspect

import keras

# Registers the custom objects with Keras (`register_keras_serializable`): a model built
# here may hold `CosineDense`, `RandomAffine`, ... and be compiled with our losses,
# optimizers and schedules, and loading its `.keras` file needs them all.
from kmnist_lab import layers, losses, optimizers, schedules  # noqa: F401
from kmnist_lab.errors import ConfigError, did_you_mean, is_int
from kmnist_lab.models import mlp as _mlp
from kmnist_lab.models import residual_cnn as _cnn
from kmnist_lab.models import resnet as _resnet
from kmnist_lab.registry import Registry

# `check`: validates the user's keywords without building (Keras layers take seconds),
# so a bad value is refused with the rest of the config, before any run folder is read.
MODELS = Registry("arch")
MODELS.register("plain_mlp", family="mlp", check=_mlp.check_params)(_mlp.plain_mlp)
MODELS.register("relu_mlp", family="mlp", check=_mlp.check_params)(_mlp.relu_mlp)
MODELS.register("bn_mlp", family="mlp", check=_mlp.check_params)(_mlp.bn_mlp)
MODELS.register(
    "mlp", "Configurable MLP: hidden widths, activation, BatchNorm, dropout, L2", family="mlp",
    check=_mlp.check_params,
)(_mlp.mlp)  # fmt: skip
MODELS.register("resnet18", family="cnn", check=_resnet.check_params)(_resnet.resnet18)
MODELS.register(
    "residual_cnn", "Report C's residual CNN (conv5x5-16, res, conv5x5-32, res)", family="cnn",
    check=_cnn.check_params,
)(_cnn.residual_cnn)  # fmt: skip


def list_models() -> list[str]:
    """Names of all registered architectures."""
    return MODELS.names()


def model_family(name: str) -> str:
    """`"mlp"` or `"cnn"`: used by speed policies and per-arch defaults."""
    return MODELS.get(name).meta["family"]


def model_params(name: str) -> list[str]:
    """Keyword arguments the builder of `name` accepts."""
    factory = MODELS.get(name).factory
    return list(getattr(factory, "base_params", None) or inspect.signature(factory).parameters)


# Builder keywords kmnist_lab sets itself: the output width (from the dataset), the
# head (from the loss), the model's name, and `input_features` (training runs take
# 28x28 images; only report E's regression study builds a model on feature vectors).
RESERVED_PARAMS = frozenset({"num_classes", "head", "name", "input_features"})


def user_params(name: str) -> list[str]:
    """The keywords of arch `name` a user may set (`--model-param`, `model_params`)."""
    return [k for k in model_params(name) if k not in RESERVED_PARAMS]


def check_overrides(name: str, overrides) -> None:
    """Raises `ConfigError` for a keyword the builder of arch `name` does not take, or a
    value it would refuse (checked without building; `None` values stand for defaults,
    as in `build_model`, even for a keyword the arch does not take)."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(overrides) - set(model_params(name)))
    if unknown:
        raise ConfigError(
            f"arch {name!r} does not take {', '.join(unknown)}."
            f"{did_you_mean(unknown[0], user_params(name))} "
            f"It takes: {', '.join(user_params(name))}"
        )
    check = MODELS.get(name).meta.get("check")
    if check is not None:
        check(**{k: v for k, v in overrides.items() if k not in RESERVED_PARAMS})


def build_model(
    name: str, /, num_classes: int = 10, head: str = "logits", **overrides
) -> keras.Model:
    """Builds the registered architecture `name`.

    Args:
        name: one of `list_models()`.
        num_classes: output width.
        head: `"logits"` (dense) or `"cosine"` (`CosineDense`, for margin losses).
        **overrides: builder keywords, e.g. `hidden=(128,)`, `activation="tanh"`,
            `augment=True`, or `name=` for the Keras model's name. `None` values are
            ignored, so callers can pass optional settings through unchanged.

    Raises:
        ConfigError: unknown name, a `num_classes` that is not a positive integer, a
            `head` other than `"logits"` or `"cosine"`, a keyword the builder does not
            take, or a value it refuses (e.g. `dropout=1.0`).
    """
    factory = MODELS.get(name).factory
    if not is_int(num_classes) or num_classes < 1:
        raise ConfigError(
            f"`num_classes` must be a positive integer. Received: num_classes={num_classes!r}"
        )
    num_classes = int(num_classes)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    check_overrides(name, overrides)
    return factory(num_classes=num_classes, head=head, **overrides)


def _optimizer_classes() -> dict:
    """Keras' built-in optimizers by class name, for loading a torch run's `model.keras`
    on another backend (`load_keras_model`); none on torch, whose own subclasses those
    names already load."""
    import inspect

    if keras.backend.backend() == "torch":
        return {}
    return {
        name: cls
        for name, cls in vars(keras.optimizers).items()
        if inspect.isclass(cls)
        and issubclass(cls, keras.optimizers.Optimizer)
        and cls is not keras.optimizers.Optimizer
    }


def load_keras_model(path, compile: bool = True) -> keras.Model:
    """Loads a `model.keras` written by kmnist_lab on any backend.

    It calls `keras.saving.load_model`, which finds kmnist_lab's custom layers, losses,
    optimizers and schedules because importing this module registered them.

    On the torch backend a compiled model also runs one step per call, eagerly: a model
    trained on TensorFlow or JAX saves its `steps_per_execution` (10 by default, which
    Keras' torch trainer refuses in `fit`, `evaluate` and `predict`) and
    `jit_compile=True` (`torch.compile` on torch, measured slower: docs/performance.md).

    On TensorFlow and JAX, a model compiled on torch gets Keras' own optimizer classes
    back: Keras records a torch run's built-in optimizer under its torch-only subclass
    (`keras.src.backend.torch.optimizers.torch_adam.Adam`), whose update calls torch
    ops, so `keras.saving.load_model` alone gives a model that predicts but cannot
    `fit` there. The optimizer's state (iterations, moments) loads either way.
    """
    model = keras.saving.load_model(path, compile=compile, custom_objects=_optimizer_classes())
    if keras.backend.backend() == "torch" and getattr(model, "compiled", False):
        model.steps_per_execution = 1
        model.jit_compile = False
    return model
