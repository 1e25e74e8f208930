"""Update rules of the reports, registered by name.

Keras built-ins where Keras has them; `Rprop` and `ASGD` (which Keras lacks) are
`keras.optimizers.Optimizer` subclasses written in `keras.ops`, matching PyTorch's
`torch.optim.Rprop` and `torch.optim.ASGD` step for step (the reports' framework),
so they run on TensorFlow, JAX and PyTorch, serialize with a `.keras` model and
resume from a checkpoint. See `docs/optimizers.md`.
"""

from __future__ import annotations

import inspect
import math

import keras
from keras import ops

from kmnist_lab.errors import ConfigError, did_you_mean, is_real
from kmnist_lab.registry import Registry

OPTIMIZERS = Registry("optimizer")


@keras.saving.register_keras_serializable(package="kmnist_lab")
class Rprop(keras.optimizers.Optimizer):
    """Resilient backpropagation: sign-based steps with one adaptive size per weight.

    Per weight, with `s = sign(g) * sign(g_prev)`:
    `step = clip(step * (eta_plus if s > 0 else eta_minus if s < 0 else 1), min, max)`;
    on a sign change (`s < 0`) the gradient is taken as 0, so that weight does not move
    this step and the next step does not shrink it again; then `w -= sign(g) * step`.
    This is the variant of `torch.optim.Rprop` (Riedmiller & Braun 1993,
    https://doi.org/10.1109/ICNN.1993.298623). Rprop ignores gradient magnitudes, so it
    needs full-batch gradients: with mini-batches the signs are noise.

    Args:
        learning_rate: initial step size of every weight (PyTorch's `lr`). Only the
            value at a weight's first update is used; later steps adapt on their own.
        eta_minus: step-size factor on a sign change, in (0, 1).
        eta_plus: step-size factor while the sign holds, > 1.
        step_size_min: lower bound of the step sizes, > 0.
        step_size_max: upper bound of the step sizes, >= `step_size_min`.
        name: optimizer name.
        **kwargs: base-optimizer keywords (`clipnorm`, `use_ema`, ...).
    """

    def __init__(
        self,
        learning_rate=0.01,
        eta_minus=0.5,
        eta_plus=1.2,
        step_size_min=1e-6,
        step_size_max=50.0,
        name="rprop",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        values = (eta_minus, eta_plus, step_size_min, step_size_max)
        if not all(is_real(v) for v in values):
            raise ValueError(
                "`eta_minus`, `eta_plus`, `step_size_min` and `step_size_max` must be numbers. "
                f"Received: {values!r}"
            )
        if not 0.0 < eta_minus < 1.0 < eta_plus or not math.isfinite(eta_plus):
            raise ValueError(
                "`eta_minus` must be in (0, 1) and `eta_plus` a finite number > 1. "
                f"Received: eta_minus={eta_minus}, eta_plus={eta_plus}"
            )
        if not 0.0 < step_size_min <= step_size_max or not math.isfinite(step_size_max):
            raise ValueError(
                "`step_size_min` and `step_size_max` must satisfy 0 < min <= max < inf. "
                f"Received: step_size_min={step_size_min}, step_size_max={step_size_max}"
            )
        self.eta_minus = eta_minus
        self.eta_plus = eta_plus
        self.step_size_min = step_size_min
        self.step_size_max = step_size_max

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._prev_gradients, self._step_sizes = self.add_optimizer_variables(
            var_list, ["prev_gradient", "step_size"]
        )

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        grad = ops.cast(gradient, dtype)
        index = self._get_variable_index(variable)
        prev, step_size = self._prev_gradients[index], self._step_sizes[index]
        # Step sizes start at the learning rate of the weight's first update (not at
        # build time), so a schedule or a learning rate set after `build` is honoured.
        # An updated step size is >= step_size_min > 0, so 0 means "never updated": a
        # weight whose first gradient comes after the optimizer's first step (PyTorch
        # creates its state then) starts at the learning rate too, not at 0 (which the
        # clip below would turn into step_size_min).
        step_size_value = ops.convert_to_tensor(step_size)
        step = ops.where(step_size_value > 0, step_size_value, ops.cast(learning_rate, dtype))
        # sign(g) * sign(g_prev), not sign(g * g_prev): the product of two gradients
        # below ~1e-19 underflows to 0 in float32 (TensorFlow and XLA flush subnormals),
        # which would read as "no sign information" and neither grow nor shrink the step.
        sign = ops.sign(grad) * ops.sign(prev)
        factor = ops.where(
            sign > 0,
            ops.cast(self.eta_plus, dtype),
            ops.where(sign < 0, ops.cast(self.eta_minus, dtype), ops.cast(1.0, dtype)),
        )
        step = ops.clip(step * factor, self.step_size_min, self.step_size_max)
        grad = ops.where(sign < 0, ops.zeros_like(grad), grad)
        self.assign_sub(variable, ops.sign(grad) * step)
        self.assign(prev, grad)
        self.assign(step_size, step)

    def get_config(self):
        config = super().get_config()
        config.update(
            eta_minus=self.eta_minus,
            eta_plus=self.eta_plus,
            step_size_min=self.step_size_min,
            step_size_max=self.step_size_max,
        )
        return config


@keras.saving.register_keras_serializable(package="kmnist_lab")
class ASGD(keras.optimizers.Optimizer):
    """Averaged SGD: decaying-step SGD plus a running average of the iterates.

    At step `t` (0-based): `eta = lr / (1 + lambd * lr * t) ** alpha`,
    `mu = 1 / max(1, t - t0)`; `g += weight_decay * w`;
    `w = w * (1 - lambd * eta) - eta * g`; `ax = w if mu == 1 else ax + mu * (w - ax)`.
    This is `torch.optim.ASGD` (Polyak & Juditsky 1992,
    https://doi.org/10.1137/0330046; Bottou 2012 for the step schedule).

    The average `ax` lives in an optimizer slot per weight and is what evaluation
    and export use: `model.fit` ends by copying it into the model
    (`finalize_variable_values`, as Keras does for `use_ema`), and the
    `SwapAveragedWeights` callback swaps it in around validation. With the default
    `t0=1e6` averaging starts after a million steps, so until then `ax == w`.

    Args:
        learning_rate: base step `lr` (a float or a schedule).
        lambd: decay term, >= 0.
        alpha: power of the step decay, >= 0.
        t0: step at which averaging starts, >= 0.
        weight_decay: L2 penalty added to the gradient (coupled, as in PyTorch).
        name: optimizer name.
        **kwargs: base-optimizer keywords (`clipnorm`, ...); `use_ema` is refused.
    """

    def __init__(
        self,
        learning_rate=0.01,
        lambd=1e-4,
        alpha=0.75,
        t0=1e6,
        weight_decay=None,
        name="asgd",
        **kwargs,
    ):
        if kwargs.get("use_ema"):
            raise ValueError("ASGD keeps its own average; `use_ema` must be False.")
        super().__init__(
            learning_rate=learning_rate, weight_decay=weight_decay, name=name, **kwargs
        )
        for key, value in (("lambd", lambd), ("alpha", alpha), ("t0", t0)):
            if not (is_real(value) and math.isfinite(value) and value >= 0):
                raise ValueError(f"`{key}` must be a finite number >= 0. Received: {key}={value!r}")
        self.lambd = lambd
        self.alpha = alpha
        self.t0 = t0

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._averages = self.add_optimizer_variables(var_list, "average")

    def _apply_weight_decay(self, variables):
        # PyTorch's ASGD adds the decay to the gradient (coupled), see `update_step`;
        # the base class would instead shrink the weights by `lr * weight_decay`.
        return

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        grad = ops.cast(gradient, dtype)
        lr = ops.cast(learning_rate, "float32")
        t = ops.cast(self.iterations, "float32")
        eta = lr / ops.power(1.0 + self.lambd * lr * t, self.alpha)
        mu = 1.0 / ops.maximum(1.0, t - self.t0)
        if self.weight_decay and self._use_weight_decay(variable):
            grad = grad + ops.cast(self.weight_decay, dtype) * variable
        new = variable * ops.cast(1.0 - self.lambd * eta, dtype) - ops.cast(eta, dtype) * grad
        self.assign(variable, new)
        ax = self._averages[self._get_variable_index(variable)]
        self.assign(ax, ops.where(ops.equal(mu, 1.0), new, ax + (new - ax) * ops.cast(mu, dtype)))

    def _has_average(self) -> bool:
        return self.built and int(ops.convert_to_numpy(self.iterations)) > 0

    def _pairs(self, var_list):
        index = self._trainable_variables_indices
        for var in var_list:
            i = index.get(self._var_key(var))
            if i is not None:
                yield var, self._averages[i]

    def finalize_variable_values(self, var_list):
        """Copies the averaged weights into `var_list` (called at the end of `fit`).

        A copy, not the average's own buffer: on JAX, `assign` would otherwise make
        the weight and the average share one array, and the next compiled call that
        donates the weights (`evaluate`) would delete the average with them.
        """
        if self._has_average():
            for var, ax in self._pairs(var_list):
                var.assign(ops.copy(ax))

    def swap_averaged_weights(self, var_list=None) -> None:
        """Exchanges the model's weights and the averages in place (twice = no-op)."""
        if not self._has_average():
            return
        for var, ax in self._pairs(var_list or self._trainable_variables):
            current = ops.convert_to_numpy(var)
            var.assign(ax)
            ax.assign(current)

    def get_config(self):
        config = super().get_config()
        config.update(lambd=self.lambd, alpha=self.alpha, t0=self.t0)
        return config


class SwapAveragedWeights(keras.callbacks.Callback):
    """Evaluates and predicts with ASGD's averaged weights during `fit`.

    Swaps the averages in at `on_test_begin`/`on_predict_begin` and back out at the
    matching `*_end`, so validation metrics (and `EarlyStopping`/`ModelCheckpoint`
    monitoring them) see the weights that will be exported, while training continues
    from the raw iterate. A no-op for optimizers without averaged weights.
    """

    def __init__(self):
        super().__init__()
        self._swapped = False

    def _swap(self, want_swapped: bool) -> None:
        optimizer = getattr(self.model.optimizer, "inner_optimizer", self.model.optimizer)
        if self._swapped != want_swapped and hasattr(optimizer, "swap_averaged_weights"):
            optimizer.swap_averaged_weights()
            self._swapped = want_swapped

    def on_test_begin(self, logs=None):
        self._swap(True)

    def on_test_end(self, logs=None):
        self._swap(False)

    def on_predict_begin(self, logs=None):
        self._swap(True)

    def on_predict_end(self, logs=None):
        self._swap(False)


def averaging_callbacks(optimizer) -> list:
    """Callbacks `fit` needs so validation uses `optimizer`'s averaged weights, if any.

    `[SwapAveragedWeights()]` for ASGD (also inside a `LossScaleOptimizer`),
    `[keras.callbacks.SwapEMAWeights()]` for an optimizer with `use_ema=True`, else `[]`.
    """
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    if isinstance(optimizer, ASGD):
        return [SwapAveragedWeights()]
    if getattr(optimizer, "use_ema", False):
        return [keras.callbacks.SwapEMAWeights()]
    return []


# Factories: their keyword arguments (minus `learning_rate`) are the parameters a
# user may set, see `optimizer_params`. Defaults are Keras' unless noted.
@OPTIMIZERS.register("sgd", "plain mini-batch gradient descent")
def _sgd(learning_rate=0.01, weight_decay=None):
    return keras.optimizers.SGD(learning_rate, weight_decay=weight_decay, name="sgd")


@OPTIMIZERS.register("sgdm", "SGD with momentum (default 0.9; report C used 0.5)")
def _sgdm(learning_rate=0.01, momentum=0.9, weight_decay=None):
    return keras.optimizers.SGD(learning_rate, momentum, weight_decay=weight_decay, name="sgdm")


@OPTIMIZERS.register("nesterov", "SGD with Nesterov momentum (Sutskever et al. 2013)")
def _nesterov(learning_rate=0.01, momentum=0.9, weight_decay=None):
    return keras.optimizers.SGD(
        learning_rate, momentum, nesterov=True, weight_decay=weight_decay, name="nesterov"
    )


@OPTIMIZERS.register("adam", "Adam (Kingma & Ba 2014)")
def _adam(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None):
    return keras.optimizers.Adam(learning_rate, beta_1, beta_2, epsilon, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw", "Adam with decoupled weight decay (default 0.004)")
def _adamw(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=0.004):
    return keras.optimizers.AdamW(
        learning_rate, weight_decay, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon
    )


@OPTIMIZERS.register(
    "adagrad", "Adagrad (Duchi et al. 2011); lr 0.01 as PyTorch, Keras' accumulator"
)
def _adagrad(learning_rate=0.01, initial_accumulator_value=0.1, epsilon=1e-7, weight_decay=None):
    return keras.optimizers.Adagrad(
        learning_rate, initial_accumulator_value, epsilon, weight_decay=weight_decay
    )


@OPTIMIZERS.register("adamax", "Adamax (infinity-norm Adam)")
def _adamax(learning_rate=0.002, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None):
    return keras.optimizers.Adamax(
        learning_rate, beta_1, beta_2, epsilon, weight_decay=weight_decay
    )


@OPTIMIZERS.register("rmsprop", "RMSprop (Hinton 2012)")
def _rmsprop(learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, weight_decay=None):
    return keras.optimizers.RMSprop(
        learning_rate, rho, momentum, epsilon, weight_decay=weight_decay
    )


@OPTIMIZERS.register("nadam", "Adam with Nesterov momentum (Dozat 2016)")
def _nadam(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None):
    return keras.optimizers.Nadam(learning_rate, beta_1, beta_2, epsilon, weight_decay=weight_decay)


@OPTIMIZERS.register("adadelta", "Adadelta (Zeiler 2012); lr 1.0, rho 0.9, eps 1e-6 as PyTorch")
def _adadelta(learning_rate=1.0, rho=0.9, epsilon=1e-6, weight_decay=None):
    return keras.optimizers.Adadelta(learning_rate, rho, epsilon, weight_decay=weight_decay)


@OPTIMIZERS.register("lion", "Lion, sign of interpolated momentum (Chen et al. 2023)")
def _lion(learning_rate=0.0001, beta_1=0.9, beta_2=0.99, weight_decay=None):
    return keras.optimizers.Lion(learning_rate, beta_1, beta_2, weight_decay=weight_decay)


@OPTIMIZERS.register("rprop", "resilient propagation, full-batch (torch.optim.Rprop)")
def _rprop(learning_rate=0.01, eta_minus=0.5, eta_plus=1.2, step_size_min=1e-6, step_size_max=50.0):
    return Rprop(learning_rate, eta_minus, eta_plus, step_size_min, step_size_max)


@OPTIMIZERS.register("asgd", "averaged SGD (torch.optim.ASGD); averages used for eval")
def _asgd(learning_rate=0.01, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=None):
    return ASGD(learning_rate, lambd, alpha, t0, weight_decay=weight_decay)


def _check_range(lo, hi, lo_open=False, hi_open=True, text=None):
    def check(v):
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        return None if ok else text

    return check


_POSITIVE = "must be a positive finite number"
_VALUE_CHECKS = {
    "momentum": _check_range(0.0, 1.0, text="must be in [0, 1)"),
    "beta_1": _check_range(0.0, 1.0, text="must be in [0, 1)"),
    "beta_2": _check_range(0.0, 1.0, text="must be in [0, 1)"),
    "rho": _check_range(0.0, 1.0, text="must be in [0, 1)"),
    "weight_decay": _check_range(0.0, math.inf, text="must be a finite number >= 0"),
    "initial_accumulator_value": _check_range(0.0, math.inf, text="must be a finite number >= 0"),
    "epsilon": _check_range(0.0, math.inf, lo_open=True, text=_POSITIVE),
    "eta_minus": _check_range(0.0, 1.0, lo_open=True, text="must be in (0, 1)"),
    "eta_plus": _check_range(1.0, math.inf, lo_open=True, text="must be a finite number > 1"),
    "step_size_min": _check_range(0.0, math.inf, lo_open=True, text=_POSITIVE),
    "step_size_max": _check_range(0.0, math.inf, lo_open=True, text=_POSITIVE),
    "lambd": _check_range(0.0, math.inf, text="must be a finite number >= 0"),
    "alpha": _check_range(0.0, math.inf, text="must be a finite number >= 0"),
    "t0": _check_range(0.0, math.inf, text="must be a finite number >= 0"),
}
# Where one optimizer's range differs from the rest (Keras' Lion refuses beta_1 = 0).
_OPTIMIZER_VALUE_CHECKS = {
    ("lion", "beta_1"): _check_range(
        0.0, 1.0, lo_open=True, hi_open=False, text="must be in (0, 1]"
    ),
}


def _check_value(key, value, optimizer=None) -> None:
    if not is_real(value) or math.isnan(value):
        problem = "must be a number" if key != "learning_rate" else _POSITIVE
    elif key == "learning_rate":
        problem = None if 0 < value < math.inf else _POSITIVE
    else:
        problem = _OPTIMIZER_VALUE_CHECKS.get((optimizer, key), _VALUE_CHECKS[key])(value)
    if problem:
        raise ConfigError(f"`{key}` {problem}. Received: {key}={value!r}")


def list_optimizers() -> list[str]:
    """Names of all registered optimizers."""
    return OPTIMIZERS.names()


def optimizer_params(name: str) -> list[str]:
    """Keyword parameters `get_optimizer(name, ...)` accepts besides `learning_rate`."""
    signature = inspect.signature(OPTIMIZERS.get(name).factory)
    return [p for p in signature.parameters if p != "learning_rate"]


def optimizer_defaults(name: str) -> dict:
    """Default value of every parameter of optimizer `name`, `learning_rate` included."""
    signature = inspect.signature(OPTIMIZERS.get(name).factory)
    return {k: p.default for k, p in signature.parameters.items()}


def get_optimizer(name: str, learning_rate=None, **params) -> keras.optimizers.Optimizer:
    """Builds the optimizer registered as `name`.

    Args:
        name: registry name, see `list_optimizers()`.
        learning_rate: positive float or `keras.optimizers.schedules.LearningRateSchedule`;
            `None` keeps the optimizer's own default.
        **params: optimizer-specific keywords, see `optimizer_params(name)`;
            a `None` value means "the default".

    Returns:
        A new, unbuilt `keras.optimizers.Optimizer`.

    Raises:
        ConfigError: unknown name, a parameter the optimizer does not take, or an
            invalid value; the one-line message says which and what is valid.
    """
    factory = OPTIMIZERS.get(name).factory
    accepted = optimizer_params(name)
    params = {k: v for k, v in params.items() if v is not None}
    for key, value in params.items():
        if key not in accepted:
            users = [n for n in list_optimizers() if key in optimizer_params(n)]
            if users:
                raise ConfigError(
                    f"`{key}` does not apply to optimizer {name!r}. It applies to: "
                    f"{', '.join(users)}. Received: {key}={value!r}"
                )
            raise ConfigError(
                f"unknown optimizer parameter `{key}`.{did_you_mean(key, accepted)} Optimizer "
                f"{name!r} takes: {', '.join(['learning_rate', *accepted])}. "
                f"Received: {key}={value!r}"
            )
        _check_value(key, value, optimizer=name)
        params[key] = float(value)  # Keras type-checks for float: 1, np.float32(0.5) pass here
    if learning_rate is not None:
        if not isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
            _check_value("learning_rate", learning_rate)
            learning_rate = float(learning_rate)
        params["learning_rate"] = learning_rate
    try:
        return factory(**params)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e).strip().splitlines()[0]) from None
