"""Search spaces: `keras_tuner.HyperModel`s built on `kmnist_lab.models.build_model`.

Each space is a small subclass of `SpaceHyperModel` whose `space(hp)` declares its
hyperparameters (every one with a default: `build(kt.HyperParameters())` gives the
default model) and returns a `TrialSpec`. `build` turns the spec into a compiled
model through the library's registries (no architecture is written twice);
`fit` picks the batch size from `hp` and the epochs from the tuner (Hyperband
passes `epochs`/`initial_epoch`) or from the `epochs` hyperparameter, and forwards
everything else to `model.fit`.

| space | what | from |
|---|---|---|
| `a_grid` | `plain_mlp`, SGD, CE: batch {32..256} x lr {.01,.02,.03} x epochs {3..15} | report A |
| `mlp` | plain/relu/bn MLP, log-uniform lr, batch size, optimizer | report A |
| `depth_width` | depth x width, activation, BatchNorm, lr, L2, batch (SGD+momentum) | report E |
| `losses` | `bn_mlp` with each loss and its parameters (margin, scale, gamma, ...) | reports A, D |
| `resnet18` | activation, optimizer, lr, batch, augmentation | report B |
| `residual_cnn` | optimizer (momentum for SGD-m), lr, batch, augmentation | report C |

The learning rate is constant in every space: Hyperband continues a model across
rounds, and a schedule tied to a fixed number of epochs would restart there.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import keras_tuner as kt

from kmnist_lab.callbacks import DivergenceGuard
from kmnist_lab.errors import ConfigError
from kmnist_lab.losses import get_loss, loss_head
from kmnist_lab.models import build_model
from kmnist_lab.optimizers import averaging_callbacks, get_optimizer
from kmnist_lab.registry import Registry
from kmnist_lab.speed import resolve_jit, resolve_steps_per_execution
from kmnist_lab.training import compile_model


@dataclasses.dataclass(frozen=True)
class TrialSpec:
    """What one point of a search space trains (the `TrainConfig` subset tuning needs)."""

    arch: str
    batch_size: int
    lr: float
    optimizer: str = "adam"
    loss: str = "ce"
    model_params: dict = dataclasses.field(default_factory=dict)
    loss_params: dict = dataclasses.field(default_factory=dict)
    optimizer_params: dict = dataclasses.field(default_factory=dict)


def steps(low: float, high: float, step: float) -> list[float]:
    """`low, low + step, ..., high` (both ends included), each rounded to 10 decimals.

    For a stepped float hyperparameter, as a `hp.Choice`: keras-tuner's `hp.Float(low,
    high, step=step)` counts `int((high - low) / step) + 1` values, and where that
    quotient falls just below a whole number (`0.5 / 0.05 = 9.999...`) it drops `high`,
    so no tuner ever tried it (the `losses` space's margin 0.5 and label smoothing 0.3);
    its values also carry float noise (`0.15000000000000002`) into
    `best_train_config.json`.

    Raises:
        ConfigError: `step` is not positive, or does not divide `high - low`.
    """
    count = round((high - low) / step) if step > 0 else 0
    if step <= 0 or count < 0 or not math.isclose(low + count * step, high, abs_tol=1e-9):
        raise ConfigError(
            f"`step` must be positive and divide `high - low`. Received: low={low!r}, "
            f"high={high!r}, step={step!r}"
        )
    return [round(low + i * step, 10) for i in range(count + 1)]


class SpaceHyperModel(kt.HyperModel):
    """Base of every search space.

    Subclasses set `name`, `summary`, `epoch_choices`, `default_epochs` and
    implement `space(hp) -> TrialSpec`.

    Args:
        num_classes: output width.
        train_size: number of training images (caps `steps_per_execution` at one
            epoch); None: no cap.
        tune_epochs: declare an `epochs` hyperparameter (grid/random/bayesian).
            False under Hyperband, which sets the epochs itself.
        max_epochs: drop `epoch_choices` above this (a single remaining value, or
            `max_epochs` when none remains, becomes a fixed hyperparameter).
        jit: XLA policy, see `kmnist_lab.speed.resolve_jit`.
        seed: seeds Keras, NumPy and Python before every build, so every trial
            starts from the same initialisation for its architecture.
        verbose: `model.fit` verbosity.
    """

    name = "base"
    summary = ""
    epoch_choices: tuple = (5, 10, 15)
    default_epochs = 10

    def __init__(
        self,
        num_classes: int = 10,
        train_size: int | None = None,
        tune_epochs: bool = True,
        max_epochs: int | None = None,
        jit: str = "auto",
        seed: int = 0,
        verbose: int = 0,
    ):
        super().__init__(name=self.name)
        if max_epochs is not None and (not isinstance(max_epochs, int) or max_epochs < 1):
            raise ConfigError(f"`max_epochs` must be a positive integer. Received: {max_epochs!r}")
        self.num_classes = num_classes
        self.train_size = train_size
        self.tune_epochs = tune_epochs
        self.max_epochs = max_epochs
        self.jit = jit
        self.seed = seed
        self.verbose = verbose
        # Set by the search while it runs: `kmnist_lab.callbacks.InterruptCheck`.
        self.interrupts = None

    # ------------------------------------------------------------------ the space

    def space(self, hp: kt.HyperParameters) -> TrialSpec:
        """Declares this space's hyperparameters in `hp`; returns the current point."""
        raise NotImplementedError

    def epochs(self, hp: kt.HyperParameters) -> int:
        """The `epochs` hyperparameter (declared when `tune_epochs`), else the default."""
        choices = list(self.epoch_choices)
        if self.max_epochs is not None:
            choices = [e for e in choices if e <= self.max_epochs] or [self.max_epochs]
        default = self.default_epochs if self.default_epochs in choices else max(choices)
        if not self.tune_epochs:
            return default
        if len(choices) == 1:
            return hp.Fixed("epochs", choices[0])
        return hp.Choice("epochs", choices, default=default)

    def declare_hyperparameters(self, hp: kt.HyperParameters) -> None:
        # Everything is declared before the first trial (fit-time ones included),
        # so every oracle sees the whole space from trial 0, in a fixed order.
        self.space(hp)
        self.epochs(hp)

    # ------------------------------------------------------------- build and fit

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        spec = self.space(hp)
        self.epochs(hp)
        keras.utils.set_random_seed(self.seed)
        loss = get_loss(spec.loss, **spec.loss_params)
        model = build_model(
            spec.arch, num_classes=self.num_classes, head=loss_head(spec.loss), **spec.model_params
        )
        optimizer = get_optimizer(spec.optimizer, learning_rate=spec.lr, **spec.optimizer_params)
        steps = math.ceil(self.train_size / spec.batch_size) if self.train_size else 10**9
        compile_model(
            model,
            loss,
            optimizer,
            jit_compile=resolve_jit(self.jit, spec.arch),
            steps_per_execution=resolve_steps_per_execution(spec.arch, steps),
        )
        return model

    def fit(self, hp, model, *args, epochs=None, callbacks=None, **kwargs):
        """Trains with the batch size from `hp`; `epochs` from the tuner or from `hp`.

        Extra keyword arguments (`validation_data`, `initial_epoch`, ...) go to
        `model.fit` unchanged. Training stops at the first non-finite loss, silently
        (Keras' `TerminateOnNaN` prints a line even under `-q`); the returned `History`
        then has `diverged_at = (epoch, step)` (the model's epoch, from 1), else None.
        """
        spec = self.space(hp)
        if epochs is None:
            epochs = self.epochs(hp)
        guard = DivergenceGuard()
        callbacks = [
            *([self.interrupts] if self.interrupts is not None else []),
            *(callbacks or []),
            *averaging_callbacks(model.optimizer),
            guard,
        ]
        kwargs.setdefault("verbose", self.verbose)
        kwargs.setdefault("shuffle", True)
        history = model.fit(
            *args, batch_size=spec.batch_size, epochs=epochs, callbacks=callbacks, **kwargs
        )
        if isinstance(history, keras.callbacks.History):
            history.diverged_at = guard.diverged_at
        return history

    def train_config(self, hp: kt.HyperParameters, epochs: int) -> dict:
        """The point `hp` as `TrainConfig` fields: `scripts/train.py --config` trains it.

        The same model, loss, optimizer, batch size and epochs as the trial, with a
        constant learning rate (tuning uses no schedule): `augment` and `momentum`,
        which a space passes in `model_params` / `optimizer_params`, become the
        config's own fields.
        """
        spec = self.space(hp)
        model_params = dict(spec.model_params)
        optimizer_params = dict(spec.optimizer_params)
        return {
            "arch": spec.arch,
            "epochs": int(epochs),
            "batch_size": int(spec.batch_size),
            "lr": float(spec.lr),
            "lr_schedule": "constant",
            "optimizer": spec.optimizer,
            "momentum": optimizer_params.pop("momentum", None),
            "optimizer_params": optimizer_params,
            "loss": spec.loss,
            "loss_params": dict(spec.loss_params),
            "augment": bool(model_params.pop("augment", False)),
            "model_params": model_params,
            "seed": self.seed,
            "jit": self.jit,
        }

    def loss_for(self, hp: kt.HyperParameters) -> keras.losses.Loss:
        """The loss of the point `hp` (its `scale` sets the serving score scale)."""
        spec = self.space(hp)
        return get_loss(spec.loss, **spec.loss_params)


# ------------------------------------------------------------------------- spaces


class AGrid(SpaceHyperModel):
    """Report A's hand grid on `plain_mlp`: SGD (no momentum), CE, constant lr.

    batch size {32, 64, 128, 256} x lr {0.01, 0.02, 0.03} x epochs {3, 5, 7, 10, 15}
    = 60 cells, 480 epochs. Defaults are the report's best cell (128, 0.03, 15).
    """

    name = "a_grid"
    summary = "report A's grid on plain_mlp (SGD): batch x lr x epochs = 60 cells"
    epoch_choices = (3, 5, 7, 10, 15)
    default_epochs = 15

    def space(self, hp):
        batch_size = hp.Choice("batch_size", [32, 64, 128, 256], default=128)
        lr = hp.Choice("lr", [0.01, 0.02, 0.03], default=0.03)
        return TrialSpec(
            "plain_mlp", batch_size, lr, optimizer="sgd", model_params={"augment": False}
        )


class MLPSpace(SpaceHyperModel):
    """Report A's three MLPs with a log-uniform lr, batch size and update rule."""

    name = "mlp"
    summary = "arch plain/relu/bn MLP, log-uniform lr, batch size, optimizer"
    epoch_choices = (5, 10, 15)
    default_epochs = 10

    def space(self, hp):
        arch = hp.Choice("arch", ["plain_mlp", "relu_mlp", "bn_mlp"], default="bn_mlp")
        optimizer = hp.Choice(
            "optimizer", ["adam", "sgd", "sgdm", "adagrad", "adamax", "rmsprop"], default="adam"
        )
        lr = hp.Float("lr", 1e-4, 1e-1, sampling="log", default=1e-3)
        batch_size = hp.Choice("batch_size", [32, 64, 128, 256], default=128)
        augment = hp.Boolean("augment", default=False)
        return TrialSpec(arch, batch_size, lr, optimizer, model_params={"augment": augment})


class DepthWidth(SpaceHyperModel):
    """Report E: depth x width of a fully-connected net, then lr, L2, batch, activation."""

    name = "depth_width"
    summary = "report E: depth x width, activation, BatchNorm, lr, L2, batch (SGD+momentum)"
    epoch_choices = (5, 10, 20)
    default_epochs = 10

    def space(self, hp):
        depth = hp.Choice("depth", [2, 4, 8, 16], default=2)
        width = hp.Choice("width", [10, 20, 30, 50, 100], default=50)
        activation = hp.Choice("activation", ["relu", "sigmoid", "tanh"], default="relu")
        batchnorm = hp.Boolean("batchnorm", default=False)
        lr = hp.Choice("lr", [0.1, 0.03, 0.01, 0.006, 0.003, 0.001], default=0.01)
        l2 = hp.Choice("l2", [0.0, 0.001, 0.01, 0.1], default=0.0)
        batch_size = hp.Choice("batch_size", [16, 32, 64, 128, 256], default=64)
        params = {
            "hidden": [width] * depth,
            "activation": activation,
            "batchnorm": batchnorm,
            "l2": l2,
            "augment": False,
        }
        return TrialSpec("mlp", batch_size, lr, optimizer="sgdm", model_params=params)


class LossSpace(SpaceHyperModel):
    """`bn_mlp` with each classification loss and that loss's own parameters."""

    name = "losses"
    summary = "bn_mlp: loss choice and its parameters (margin/scale, gamma, delta, smoothing)"
    epoch_choices = (5, 10, 15)
    default_epochs = 10

    def space(self, hp):
        loss = hp.Choice(
            "loss", ["ce", "focal", "am_softmax", "arm_softmax", "hinge", "kld"], default="ce"
        )
        params = {}
        with hp.conditional_scope("loss", ["focal"]):
            gamma = hp.Float("focal_gamma", 0.0, 5.0, step=0.5, default=2.0)
        with hp.conditional_scope("loss", ["am_softmax", "arm_softmax"]):
            margin = hp.Choice("margin", steps(0.0, 0.5, 0.05), default=0.2)
            scale = hp.Choice("scale", [10.0, 16.0, 30.0, 64.0], default=30.0)
        with hp.conditional_scope("loss", ["hinge"]):
            delta = hp.Choice("hinge_delta", [1.0, 2.0, 5.0], default=5.0)
        with hp.conditional_scope("loss", ["kld"]):
            smoothing = hp.Choice("label_smoothing", steps(0.0, 0.3, 0.05), default=0.1)
        if loss == "focal":
            params = {"gamma": gamma}
        elif loss in ("am_softmax", "arm_softmax"):
            params = {"margin": margin, "scale": scale}
        elif loss == "hinge":
            params = {"delta": delta}
        elif loss == "kld":
            params = {"label_smoothing": smoothing}
        lr = hp.Choice("lr", [3e-4, 1e-3, 3e-3], default=1e-3)
        batch_size = hp.Choice("batch_size", [64, 128, 256], default=128)
        return TrialSpec(
            "bn_mlp", batch_size, lr, "adam", loss, {"augment": False}, loss_params=params
        )


class ResNet18Space(SpaceHyperModel):
    """Report B's ResNet-18: activation swap, lr, batch size (64 vs 1000), optimizer."""

    name = "resnet18"
    summary = "report B: ResNet-18 activation, optimizer, lr, batch, augmentation"
    epoch_choices = (2, 5, 10)
    default_epochs = 5

    def space(self, hp):
        activation = hp.Choice("activation", ["relu", "tanh", "sigmoid"], default="relu")
        optimizer = hp.Choice("optimizer", ["sgdm", "sgd", "adam"], default="sgdm")
        lr = hp.Choice("lr", [0.001, 0.01, 0.1], default=0.01)
        batch_size = hp.Choice("batch_size", [64, 256, 1000], default=64)
        augment = hp.Boolean("augment", default=False)
        params = {"activation": activation, "augment": augment}
        return TrialSpec("resnet18", batch_size, lr, optimizer, model_params=params)


class ResidualCNNSpace(SpaceHyperModel):
    """Report C's residual CNN: the update rule (momentum for SGD-m), lr, batch size."""

    name = "residual_cnn"
    summary = "report C: residual CNN optimizer (+momentum), lr, batch, augmentation"
    epoch_choices = (3, 5, 10)
    default_epochs = 5

    def space(self, hp):
        optimizer = hp.Choice("optimizer", ["adagrad", "sgd", "sgdm", "adam"], default="adagrad")
        with hp.conditional_scope("optimizer", ["sgdm"]):
            momentum = hp.Choice("momentum", [0.5, 0.9], default=0.5)
        lr = hp.Choice("lr", [0.001, 0.003, 0.01, 0.03], default=0.01)
        batch_size = hp.Choice("batch_size", [32, 64, 128], default=64)
        augment = hp.Boolean("augment", default=False)
        opt_params = {"momentum": momentum} if optimizer == "sgdm" else {}
        return TrialSpec(
            "residual_cnn", batch_size, lr, optimizer, model_params={"augment": augment},
            optimizer_params=opt_params,
        )  # fmt: skip


SPACES = Registry("search space", plural="spaces")
for _space in (AGrid, MLPSpace, DepthWidth, LossSpace, ResNet18Space, ResidualCNNSpace):
    SPACES.register(_space.name, _space.summary)(_space)


def list_spaces() -> list[str]:
    """Names of all search spaces."""
    return SPACES.names()


def get_hypermodel(name: str, **kwargs) -> SpaceHyperModel:
    """Builds the search space `name` (see `SpaceHyperModel` for the keywords).

    Raises:
        ConfigError: unknown name (the message lists the valid ones).
    """
    return SPACES.get(name).factory(**kwargs)
