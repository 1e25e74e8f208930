"""Learning-rate schedules: constant, step and cosine, each with optional linear warm-up."""

from __future__ import annotations

import math

import keras
from keras import ops

from kmnist_lab.config import LR_SCHEDULES
from kmnist_lab.errors import ConfigError, is_int, is_real


@keras.saving.register_keras_serializable(package="kmnist_lab")
class Warmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up over `warmup_steps` up to the schedule's value there, then `schedule`.

    `lr(t) = schedule(warmup_steps - 1) * (t + 1) / warmup_steps` for `t < warmup_steps`
    (Goyal et al. 2017, arXiv:1706.02677), else `schedule(t)`: the last warm-up step
    trains at the schedule's own value for that step (the peak, when the schedule has
    not decayed yet). The first step already moves (`lr(0) = peak / warmup_steps`),
    unlike Keras' `CosineDecay` warm-up, which starts at 0 and is the one the cosine
    schedule uses.

    Args:
        schedule: the `keras.optimizers.schedules.LearningRateSchedule` after the ramp.
        warmup_steps: optimizer steps of the ramp, a positive integer.

    Raises:
        ConfigError: `schedule` is not a `LearningRateSchedule` (a constant rate is
            `PiecewiseConstantDecay([n], [lr, lr])`), or `warmup_steps` is not a
            positive integer.
    """

    def __init__(self, schedule, warmup_steps: int):
        if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            raise ConfigError(
                "`schedule` must be a keras.optimizers.schedules.LearningRateSchedule. "
                f"Received: schedule={schedule!r}"
            )
        if not is_int(warmup_steps) or warmup_steps < 1:
            raise ConfigError(
                "`warmup_steps` must be a positive integer. "
                f"Received: warmup_steps={warmup_steps!r}"
            )
        self.schedule = schedule
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warm = ops.cast(self.warmup_steps, "float32")
        after = self.schedule(step)
        ramp = self.schedule(warm - 1.0) * (step + 1.0) / warm
        return ops.where(step < warm, ramp, after)

    def get_config(self):
        return {
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "warmup_steps": self.warmup_steps,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)


def check_warmup(warmup_epochs: int, epochs: int, kind: str | None = None) -> None:
    """Raises `ConfigError` unless the warm-up ends before the last epoch (or is 0), and,
    for the `step` schedule (`kind`), by its first decay at 50% of the epochs (a longer
    warm-up would ramp to an already decayed rate and never train at the peak `lr`)."""
    if warmup_epochs and warmup_epochs >= epochs:
        raise ConfigError(
            "`warmup_epochs` must be smaller than `epochs`. "
            f"Received: warmup_epochs={warmup_epochs}, epochs={epochs}"
        )
    if kind == "step" and 2 * warmup_epochs > epochs:
        raise ConfigError(
            "with `lr_schedule` step, `warmup_epochs` must be at most half of `epochs` (the "
            "warm-up must end by the first decay, or the peak lr is never reached). "
            f"Received: warmup_epochs={warmup_epochs}, epochs={epochs}"
        )


def make_schedule(kind: str, lr: float, steps_per_epoch: int, epochs: int, warmup_epochs: int = 0):
    """Returns a float (constant) or a `LearningRateSchedule`.

    - `constant`: `lr`.
    - `step`: `lr` x 0.1 after 50% and again after 75% of the epochs.
    - `cosine`: `lr * ((1 - a) * (1 + cos(pi * t / T)) / 2 + a)` with `a = 0.01`, so
      from `lr` down to 1% of `lr` at `t = T` (Keras' `CosineDecay` with `alpha`;
      Loshchilov & Hutter 2016, arXiv:1608.03983).

    `warmup_epochs` adds a linear ramp over that many epochs (counted within `epochs`);
    with `step` it must end by the first decay (at most half the epochs).

    Args:
        kind: one of `constant`, `step`, `cosine`.
        lr: the peak learning rate, a positive finite number.
        steps_per_epoch: optimizer steps per epoch, a positive integer.
        epochs: epochs of the run, a positive integer.
        warmup_epochs: epochs of linear warm-up, an integer >= 0.

    Raises:
        ConfigError: an unknown `kind`, a value out of range, or a warm-up that does not
            end before the last epoch (for `step`: by the first decay).
    """
    if kind not in LR_SCHEDULES:
        raise ConfigError(
            f"`lr_schedule` must be one of {', '.join(LR_SCHEDULES)}. "
            f"Received: lr_schedule={kind!r}"
        )
    if not is_real(lr) or not 0 < lr < math.inf:
        raise ConfigError(f"`lr` must be a positive finite number. Received: lr={lr!r}")
    for arg, value, low in (("steps_per_epoch", steps_per_epoch, 1), ("epochs", epochs, 1),
                            ("warmup_epochs", warmup_epochs, 0)):  # fmt: skip
        if not is_int(value) or value < low:
            rule = "a positive integer" if low else "an integer >= 0"
            raise ConfigError(f"`{arg}` must be {rule}. Received: {arg}={value!r}")
    check_warmup(warmup_epochs, epochs, kind)
    total = steps_per_epoch * epochs
    warmup = steps_per_epoch * warmup_epochs
    if kind == "cosine":
        if warmup:
            return keras.optimizers.schedules.CosineDecay(
                0.0, total - warmup, alpha=0.01, warmup_target=lr, warmup_steps=warmup
            )
        return keras.optimizers.schedules.CosineDecay(lr, total, alpha=0.01)
    if kind == "step":
        # PiecewiseConstantDecay keeps value i while `step <= bounds[i]`, and `step` is
        # the number of updates already made: the first step of the second half is
        # `total // 2`, so the boundary is one before it.
        bounds = sorted({max(0, int(total * 0.5) - 1), max(1, int(total * 0.75) - 1)})
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
            bounds, [lr, lr * 0.1, lr * 0.01][: len(bounds) + 1]
        )
    else:
        if not warmup:
            return lr
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay([total], [lr, lr])
    return Warmup(schedule, warmup) if warmup else schedule
