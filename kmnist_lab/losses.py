"""Classification and regression losses, registered by name.

Each loss is a pure per-sample function of `(y_true, y_pred)` plus a
`keras.losses.Loss` subclass whose `call` forwards to it, so reduction and
`sample_weight` are handled by Keras. `y_true` holds integer class labels of shape
`(N,)` or `(N, 1)`; `y_pred` is the head's output (`"logits"` or `"cosine"`).
Every registered loss declares the head it needs; `loss_head(name)` tells the
model builder which head to put on. `mse` is the exception: float targets and a
`"regression"` head (one linear output), for the function-fitting study.

All losses compute in float32 (the functions keep float64 inputs in float64; the `Loss`
objects return their `dtype`, float32 by default), so float16 /
bfloat16 model outputs under mixed precision are safe. See `docs/losses.md`.
"""

from __future__ import annotations

import inspect
import math

import keras
from keras import ops

from kmnist_lab.errors import ConfigError, did_you_mean, is_real
from kmnist_lab.registry import Registry

LOSSES = Registry("loss", plural="losses")

# Registers the loss classes and also the per-sample functions: a model compiled with
# `loss=focal_loss` saves the function by its registered name, and loads back only if
# Keras can find it under that name.
_serializable = keras.saving.register_keras_serializable(package="kmnist_lab")

# Floor of `1 - p_y` in the focal modulating factor: keeps `d/dp (1-p)^gamma`
# finite for gamma < 1 when p_y rounds to 1 (the loss there is 0 anyway).
_FOCAL_FLOOR = 1e-30


# --------------------------------------------------------------------------- helpers


def _compute(x):
    """`x` as a float tensor: float64 stays, everything else becomes float32."""
    x = ops.convert_to_tensor(x)
    if keras.backend.standardize_dtype(x.dtype) != "float64":
        x = ops.cast(x, "float32")
    return x


def _labels(y_true):
    """Integer labels of shape (N,) from (N,) or (N, 1).

    Raises:
        ValueError: `y_true` has a known trailing dimension other than 1, e.g.
            one-hot labels `(N, C)`, which would otherwise be flattened into `N * C`
            labels (a broadcasting error, or silently wrong values for `N = 1`).
    """
    y_true = ops.convert_to_tensor(y_true)
    if any(d is not None and d != 1 for d in y_true.shape[1:]):
        raise ValueError(
            "`y_true` must hold integer class labels of shape (N,) or (N, 1), not "
            f"one-hot or other per-class targets. Received: y_true.shape={tuple(y_true.shape)}"
        )
    if len(y_true.shape) > 1:
        y_true = ops.reshape(y_true, (-1,))
    return ops.cast(y_true, "int32")


def _one_hot(y_true, y_pred):
    """One-hot of the integer labels, with `y_pred`'s width and dtype."""
    return ops.one_hot(_labels(y_true), y_pred.shape[-1], dtype=y_pred.dtype)


def _target(onehot, values):
    """`values[i, y_i]` as shape (N, 1)."""
    return ops.sum(onehot * values, axis=-1, keepdims=True)


def _number(name, value, ok, rule):
    """Validates a numeric constructor argument; returns it as a float."""
    if not is_real(value):
        raise ConfigError(f"`{name}` must be a number {rule}. Received: {name}={value!r}")
    if math.isnan(value) or not ok(value):
        raise ConfigError(f"`{name}` must be {rule}. Received: {name}={value!r}")
    return float(value)


class _Loss(keras.losses.Loss):
    """Base: a per-sample function `fn(y_true, y_pred, **params)` plus its params."""

    head = "logits"

    def __init__(self, name, reduction, dtype, **params):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self._params = params
        for key, value in params.items():
            setattr(self, key, value)

    def call(self, y_true, y_pred):
        return type(self).fn(y_true, y_pred, **self._params)

    def get_config(self):
        return {**super().get_config(), "dtype": self.dtype, **self._params}


# --------------------------------------------------------------------- per-sample losses


@_serializable
def softmax_cross_entropy(y_true, logits):
    """Per-sample softmax cross-entropy from logits.

    `L = -log softmax(z)_y = logsumexp(z) - z_y`.

    Args:
        y_true: integer labels, shape (N,) or (N, 1).
        logits: unnormalised scores, shape (N, C).

    Returns:
        Per-sample loss, shape (N,).
    """
    z = _compute(logits)
    return ops.logsumexp(z, axis=-1) - _target(_one_hot(y_true, z), z)[:, 0]


@_serializable
def focal_loss(y_true, logits, gamma=2.0, alpha=1.0):
    """Per-sample focal loss (Lin et al. 2017, https://arxiv.org/abs/1708.02002).

    `L = -alpha * (1 - p_y)^gamma * log p_y` with `p = softmax(z)`; equals
    `keras.losses.CategoricalFocalCrossentropy(from_logits=True)` on one-hot labels
    (without its probability clipping) and softmax CE for `gamma=0, alpha=1`. For
    `p_y > 1/2`, `1 - p_y` and `log p_y` come from `r = sum_{j != y} e^{z_j - z_y}`,
    so the loss and its gradient keep their relative precision as `p_y -> 1`.

    Args:
        y_true: integer labels, shape (N,) or (N, 1).
        logits: unnormalised scores, shape (N, C).
        gamma: focusing exponent, `>= 0`.
        alpha: constant weight, `> 0`.

    Returns:
        Per-sample loss, shape (N,).
    """
    z = _compute(logits)
    onehot = _one_hot(y_true, z)
    log_p_y = _target(onehot, ops.log_softmax(z, axis=-1))[:, 0]
    one_minus_p = -ops.expm1(log_p_y)
    # Near p_y = 1, log_softmax = -log(1 + r) has rounded away the digits of
    # r = sum_{j != y} e^{z_j - z_y} (all of them for r < float eps), and with them
    # 1 - p_y and the loss. For p_y > 1/2 (r < 1) take both from r itself:
    # log p_y = -log1p(r), 1 - p_y = r / (1 + r). `minimum` keeps e^x <= 1 in the
    # branch `where` leaves out (any z_j >= z_y makes r >= 1 there).
    r = ops.sum(ops.exp(ops.minimum(z - _target(onehot, z), 0.0)) * (1.0 - onehot), axis=-1)
    confident = r < 1.0
    log_p_y = ops.where(confident, -ops.log1p(r), log_p_y)
    one_minus_p = ops.where(confident, r / (1.0 + r), one_minus_p)
    one_minus_p = ops.maximum(one_minus_p, _FOCAL_FLOOR)
    return -alpha * ops.power(one_minus_p, gamma) * log_p_y


@_serializable
def am_softmax_loss(y_true, cosines, scale=30.0, margin=0.2):
    """Per-sample AM-Softmax (Wang et al. 2018, https://arxiv.org/abs/1801.05599).

    `L = -log(e^{s(cos_y - m)} / (e^{s(cos_y - m)} + sum_{j != y} e^{s cos_j}))`,
    i.e. softmax CE on `z = s * (cos - m * onehot(y))`.

    Args:
        y_true: integer labels, shape (N,) or (N, 1).
        cosines: cosine head output in [-1, 1], shape (N, C).
        scale: `s > 0`.
        margin: additive cosine margin `m` in [0, 1).

    Returns:
        Per-sample loss, shape (N,).
    """
    c = _compute(cosines)
    onehot = _one_hot(y_true, c)
    z = scale * (c - margin * onehot)
    return ops.logsumexp(z, axis=-1) - _target(onehot, z)[:, 0]


@_serializable
def arm_softmax_loss(y_true, cosines, scale=30.0, margin=0.2):
    """Per-sample Real AM-Softmax (Li, Nai, Wang 2021, https://arxiv.org/abs/2110.09116).

    As in the authors' code: `z = s * (cos - m * onehot(y))`; every non-target
    `z_j < z_y` (a class already beyond the margin) is replaced by 0, so it adds
    the constant `e^0` and no gradient; `L = logsumexp(z') - z_y`.

    Args:
        y_true: integer labels, shape (N,) or (N, 1).
        cosines: cosine head output in [-1, 1], shape (N, C).
        scale: `s > 0`.
        margin: additive cosine margin `m` in [0, 1).

    Returns:
        Per-sample loss, shape (N,).
    """
    c = _compute(cosines)
    onehot = _one_hot(y_true, c)
    z = scale * (c - margin * onehot)
    z_y = _target(onehot, z)
    active = ops.logical_or(onehot > 0, z >= ops.stop_gradient(z_y))
    z = ops.where(active, z, ops.zeros_like(z))
    return ops.logsumexp(z, axis=-1) - z_y[:, 0]


@_serializable
def multiclass_hinge_loss(y_true, logits, delta=5.0, mode="weston_watkins"):
    """Per-sample multi-class hinge loss (Weston-Watkins, cs231n SVM).

    `L = sum_{j != y} max(0, z_j - z_y + delta)`; `mode="crammer_singer"` takes
    `max_{j != y}` instead of the sum (Crammer & Singer 2001,
    https://jmlr.org/papers/v2/crammer01a.html).

    Args:
        y_true: integer labels, shape (N,) or (N, 1).
        logits: class scores, shape (N, C).
        delta: margin, `>= 0`.
        mode: `"weston_watkins"` (sum) or `"crammer_singer"` (max).

    Returns:
        Per-sample loss, shape (N,).
    """
    z = _compute(logits)
    onehot = _one_hot(y_true, z)
    margins = ops.relu(z - _target(onehot, z) + delta) * (1.0 - onehot)
    if mode == "crammer_singer":
        return ops.max(margins, axis=-1)
    return ops.sum(margins, axis=-1)


@_serializable
def kl_divergence_loss(y_true, logits, label_smoothing=0.0):
    """Per-sample `KL(q || softmax(z))` with smoothed one-hot targets `q`.

    `q = (1 - eps) * onehot(y) + eps / C`, `L = sum_j q_j (log q_j - log p_j)`,
    with `0 log 0 = 0` (no `log(0)` is evaluated); equals softmax CE for `eps=0`.
    Label smoothing: Szegedy et al. 2016, https://arxiv.org/abs/1512.00567.

    Args:
        y_true: integer labels, shape (N,) or (N, 1).
        logits: unnormalised scores, shape (N, C).
        label_smoothing: `eps` in [0, 1].

    Returns:
        Per-sample loss, shape (N,).
    """
    z = _compute(logits)
    num_classes = z.shape[-1]
    q = (1.0 - label_smoothing) * _one_hot(y_true, z) + label_smoothing / num_classes
    positive = q > 0
    q_log_q = ops.where(positive, q * ops.log(ops.where(positive, q, ops.ones_like(q))), 0.0)
    return ops.sum(q_log_q - q * ops.log_softmax(z, axis=-1), axis=-1)


@_serializable
def mean_squared_error(y_true, y_pred):
    """Per-sample mean squared error for regression, `L = mean_k (y_k - f_k)^2`.

    Rank-1 inputs are one value per sample; `(N,)` and `(N, 1)` mix freely.

    Args:
        y_true: float targets, shape (N,) or (N, K).
        y_pred: predictions, same shape (or (N, 1) against (N,)).

    Returns:
        Per-sample loss, shape (N,).
    """
    y_pred = _compute(y_pred)
    y_true = ops.cast(ops.convert_to_tensor(y_true), y_pred.dtype)
    if len(y_true.shape) == 1:
        y_true = ops.expand_dims(y_true, -1)
    if len(y_pred.shape) == 1:
        y_pred = ops.expand_dims(y_pred, -1)
    return ops.mean(ops.square(y_pred - y_true), axis=-1)


# ------------------------------------------------------------------------ Loss classes


@LOSSES.register("ce", "softmax cross-entropy from logits", head="logits")
@_serializable
class SoftmaxCrossEntropy(_Loss):
    """Softmax cross-entropy on integer labels and logits (`ce`).

    `L = logsumexp(z) - z_y`; see `softmax_cross_entropy`.
    """

    fn = staticmethod(softmax_cross_entropy)

    def __init__(self, name="ce", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name, reduction, dtype)


@LOSSES.register(
    "focal", "focal loss -alpha (1-p_y)^gamma log p_y (Lin et al. 2017)", head="logits"
)
@_serializable
class FocalLoss(_Loss):
    """Focal loss from logits (`focal`): `-alpha * (1 - p_y)^gamma * log p_y`.

    Lin et al. 2017, https://arxiv.org/abs/1708.02002; see `focal_loss`.

    Args:
        gamma: focusing exponent, `>= 0` (0 gives `alpha * CE`).
        alpha: constant weight, `> 0`.
    """

    fn = staticmethod(focal_loss)

    def __init__(
        self, gamma=2.0, alpha=1.0, name="focal", reduction="sum_over_batch_size", dtype=None
    ):
        gamma = _number("gamma", gamma, lambda v: 0 <= v < math.inf, ">= 0 and finite")
        alpha = _number("alpha", alpha, lambda v: 0 < v < math.inf, "> 0 and finite")
        super().__init__(name, reduction, dtype, gamma=gamma, alpha=alpha)


def _scale_margin(scale, margin):
    scale = _number("scale", scale, lambda v: 0 < v < math.inf, "> 0 and finite")
    margin = _number("margin", margin, lambda v: 0 <= v < 1, "in [0, 1)")
    return {"scale": scale, "margin": margin}


@LOSSES.register(
    "am_softmax", "additive-margin softmax on a cosine head (Wang 2018)", head="cosine"
)
@_serializable
class AMSoftmax(_Loss):
    """AM-Softmax on a cosine head (`am_softmax`): CE on `s * (cos - m * onehot(y))`.

    Wang et al. 2018, https://arxiv.org/abs/1801.05599; see `am_softmax_loss`.
    `scale` is also the factor a served model multiplies the cosines by.

    Args:
        scale: `s > 0` (30, the report's value).
        margin: `m` in [0, 1) (0.2, the report's value).
    """

    head = "cosine"
    fn = staticmethod(am_softmax_loss)

    def __init__(
        self, scale=30.0, margin=0.2, name="am_softmax", reduction="sum_over_batch_size", dtype=None
    ):
        super().__init__(name, reduction, dtype, **_scale_margin(scale, margin))


@LOSSES.register(
    "arm_softmax", "Real AM-Softmax: AM-Softmax ignoring classes beyond the margin", head="cosine"
)
@_serializable
class ARMSoftmax(_Loss):
    """Real AM-Softmax on a cosine head (`arm_softmax`).

    `z = s * (cos - m * onehot(y))`, non-target `z_j < z_y` set to 0, then CE.
    Li, Nai, Wang 2021, https://arxiv.org/abs/2110.09116; see `arm_softmax_loss`.

    Args:
        scale: `s > 0`.
        margin: `m` in [0, 1).
    """

    head = "cosine"
    fn = staticmethod(arm_softmax_loss)

    def __init__(
        self,
        scale=30.0,
        margin=0.2,
        name="arm_softmax",
        reduction="sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name, reduction, dtype, **_scale_margin(scale, margin))


_HINGE_MODES = ("weston_watkins", "crammer_singer")


@LOSSES.register("hinge", "multi-class hinge sum_j max(0, z_j - z_y + delta)", head="logits")
@_serializable
class MulticlassHinge(_Loss):
    """Multi-class hinge loss on logits (`hinge`): `sum_{j != y} max(0, z_j - z_y + delta)`.

    Weston-Watkins (the cs231n SVM loss); `mode="crammer_singer"` uses the max over
    `j != y`. See `multiclass_hinge_loss`.

    Args:
        delta: margin, `>= 0` (5, report D's value).
        mode: `"weston_watkins"` or `"crammer_singer"`.
    """

    fn = staticmethod(multiclass_hinge_loss)

    def __init__(
        self,
        delta=5.0,
        mode="weston_watkins",
        name="hinge",
        reduction="sum_over_batch_size",
        dtype=None,
    ):
        delta = _number("delta", delta, lambda v: 0 <= v < math.inf, ">= 0 and finite")
        if mode not in _HINGE_MODES:
            raise ConfigError(f"`mode` must be one of {_HINGE_MODES}. Received: mode={mode!r}")
        super().__init__(name, reduction, dtype, delta=delta, mode=mode)


@LOSSES.register(
    "kld", "KL(smoothed one-hot || softmax(z)); CE when label_smoothing=0", head="logits"
)
@_serializable
class KLDivergence(_Loss):
    """KL divergence to smoothed one-hot labels (`kld`): `sum_j q_j (log q_j - log p_j)`.

    `q = (1 - eps) * onehot(y) + eps / C`; see `kl_divergence_loss`.

    Args:
        label_smoothing: `eps` in [0, 1] (0 gives softmax CE).
    """

    fn = staticmethod(kl_divergence_loss)

    def __init__(
        self, label_smoothing=0.0, name="kld", reduction="sum_over_batch_size", dtype=None
    ):
        label_smoothing = _number(
            "label_smoothing", label_smoothing, lambda v: 0 <= v <= 1, "in [0, 1]"
        )
        super().__init__(name, reduction, dtype, label_smoothing=label_smoothing)


@LOSSES.register("mse", "mean squared error for regression (float targets)", head="regression")
@_serializable
class MeanSquaredError(_Loss):
    """Mean squared error (`mse`): `mean_k (y_k - f_k)^2` per sample.

    For the regression study (fit `sin x`): float targets and a `"regression"`
    head (a linear output layer), not class labels.
    """

    head = "regression"
    fn = staticmethod(mean_squared_error)

    def __init__(self, name="mse", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name, reduction, dtype)


# ---------------------------------------------------------------------------- registry


def list_losses() -> list[str]:
    """Names of all registered losses."""
    return LOSSES.names()


def get_loss(name: str, **params) -> keras.losses.Loss:
    """Builds the loss registered as `name` with keyword `params`.

    Raises:
        ConfigError: unknown name or parameter (the message lists the valid ones),
            or a parameter value out of range.
    """
    factory = LOSSES.get(name).factory
    valid = list(inspect.signature(factory).parameters)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        received = ", ".join(f"{k}={params[k]!r}" for k in unknown)
        own = [p for p in valid if p not in ("name", "reduction", "dtype")]  # Keras' own
        takes = f"Valid parameters: {', '.join(own)}" if own else "It takes no parameters"
        raise ConfigError(
            f"unknown parameter(s) {', '.join(unknown)} for loss {name!r}."
            f"{did_you_mean(unknown[0], own)} {takes}. Received: {received}"
        )
    try:
        return factory(**params)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:  # Keras' own checks, e.g. reduction="avg"
        message = str(e).strip().splitlines()[0]
        if "Received" not in message:
            message += " Received: " + ", ".join(f"{k}={v!r}" for k, v in params.items())
        raise ConfigError(f"loss {name!r}: {message}") from None


def loss_head(name: str) -> str:
    """The model head the loss `name` needs: `"logits"`, `"cosine"` or `"regression"`."""
    return LOSSES.get(name).meta.get("head", "logits")


def serving_scale(loss: keras.losses.Loss | str) -> float:
    """Factor that turns the head's output into class scores for serving.

    Cosine heads are trained with a scale `s` inside the loss; a served model
    outputs `s * cos` so argmax and softmax read like logits. Logit and
    regression heads: 1. A registry name gives the scale of its default loss.
    """
    if isinstance(loss, str):
        loss = get_loss(loss)
    if getattr(loss, "head", "logits") != "cosine":
        return 1.0
    return float(getattr(loss, "scale", 1.0))
