"""Learning-rate schedules: values at the first step, the boundaries, the end and past it."""

import math
import re

import keras
import numpy as np
import pytest

from kmnist_lab.schedules import make_schedule

STEPS, EPOCHS, LR = 10, 4, 0.1  # 40 steps in all


def lr_at(schedule, step):
    if isinstance(schedule, float):
        return schedule
    return float(keras.ops.convert_to_numpy(schedule(step)))


def lrs(schedule, steps):
    return np.array([lr_at(schedule, t) for t in steps])


@pytest.mark.parametrize("warmup", [0, 1])
def test_step_schedule_divides_by_10_from_the_first_step_after_50_and_75_percent(warmup):
    schedule = make_schedule("step", LR, STEPS, EPOCHS, warmup_epochs=warmup)
    # `iterations` = steps already taken: step 20 is the first of the second half.
    np.testing.assert_allclose(lrs(schedule, [19, 20, 29, 30]), [LR, LR / 10, LR / 10, LR / 100])
    np.testing.assert_allclose(lrs(schedule, [39, 40, 1000]), LR / 100)
    first = LR / STEPS if warmup else LR  # warm-up: peak / warmup_steps at step 0
    np.testing.assert_allclose(lr_at(schedule, 0), first, rtol=1e-6)
    np.testing.assert_allclose(lr_at(schedule, STEPS - 1 if warmup else 10), LR, rtol=1e-6)


def test_step_schedule_is_well_formed_for_tiny_runs():
    """With 2 or 3 steps in all, the second step starts the second half (lr / 10) and
    the third the last quarter (lr / 100); the boundaries never collapse into one."""
    for total in (1, 2, 3):
        schedule = make_schedule("step", LR, total, 1)
        np.testing.assert_allclose(
            lrs(schedule, [0, 1, 2, total + 5]), [LR, LR / 10, LR / 100, LR / 100], rtol=1e-6
        )


def test_constant_schedule_with_warm_up_ramps_then_holds():
    assert make_schedule("constant", LR, STEPS, EPOCHS) == LR
    schedule = make_schedule("constant", LR, STEPS, EPOCHS, warmup_epochs=1)
    np.testing.assert_allclose(
        lrs(schedule, [0, 4, 9, 10, 39, 40, 1000]), [LR / 10, LR / 2, LR, LR, LR, LR, LR], 1e-6
    )


@pytest.mark.parametrize("warmup", [0, 1])
def test_cosine_schedule_from_lr_to_1_percent_and_flat_past_the_end(warmup):
    schedule = make_schedule("cosine", LR, STEPS, EPOCHS, warmup_epochs=warmup)
    w = warmup * STEPS
    decay = STEPS * EPOCHS - w
    for t in (w, w + 7, w + decay // 2, STEPS * EPOCHS, 1000):
        frac = min(t - w, decay) / decay
        expected = LR * (0.99 * (1 + math.cos(math.pi * frac)) / 2 + 0.01)
        assert lr_at(schedule, t) == pytest.approx(expected, rel=1e-5)
    assert lr_at(schedule, 0) == pytest.approx(0.0 if warmup else LR)


@pytest.mark.parametrize("kind", ["step", "cosine", "constant"])
def test_schedules_serialize_and_give_the_same_values(kind):
    schedule = make_schedule(kind, LR, STEPS, EPOCHS, warmup_epochs=1)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    steps = [0, 5, 15, 25, 35, 45]
    np.testing.assert_allclose(lrs(restored, steps), lrs(schedule, steps))


def test_step_warm_up_of_half_the_epochs_reaches_the_peak_before_the_first_decay():
    # 4 epochs of 10 steps, warm-up 2: the ramp must end at LR (step 19), and the
    # first decay applies from step 20 (50% of the epochs), not a ramp to LR / 10.
    schedule = make_schedule("step", LR, STEPS, EPOCHS, warmup_epochs=2)
    np.testing.assert_allclose(
        lrs(schedule, [0, 19, 20, 30]), [LR / 20, LR, LR / 10, LR / 100], rtol=1e-6
    )


def test_step_warm_up_past_the_first_decay_is_refused():
    from kmnist_lab.config import TrainConfig
    from kmnist_lab.errors import ConfigError

    with pytest.raises(ConfigError, match="at most half"):
        make_schedule("step", LR, STEPS, EPOCHS, warmup_epochs=3)
    with pytest.raises(ConfigError, match="at most half"):
        TrainConfig(lr_schedule="step", epochs=4, warmup_epochs=3)
    TrainConfig(lr_schedule="cosine", epochs=4, warmup_epochs=3)  # cosine decays after it


@pytest.mark.parametrize("kind", ["constant", "step", "cosine"])
def test_warm_up_as_long_as_the_run_is_refused(kind):
    # A warm-up of all the epochs never trains at the peak lr (cosine: Keras' CosineDecay
    # raised a bare ValueError for its 0 decay steps); one epoch fewer is valid for cosine.
    from kmnist_lab.errors import ConfigError

    message = "`warmup_epochs` must be smaller than `epochs`. Received: warmup_epochs=4, epochs=4"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        make_schedule(kind, LR, STEPS, EPOCHS, warmup_epochs=EPOCHS)
    if kind == "cosine":
        schedule = make_schedule(kind, LR, STEPS, EPOCHS, warmup_epochs=EPOCHS - 1)
        assert lr_at(schedule, 30) == pytest.approx(LR, rel=1e-5)  # the peak, then decay
        assert lr_at(schedule, 40) == pytest.approx(LR / 100, rel=1e-5)
