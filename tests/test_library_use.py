"""kmnist_lab used as a library, from a user's own Python code (not through scripts/).

What a user does after reading the README and docs/: build a model, compile it with
`get_loss` / `get_optimizer` and a schedule from `kmnist_lab.schedules`, train it,
save it, and load it back in another process; and what they get for a wrong argument.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import make_images

from kmnist_lab.errors import ConfigError
from kmnist_lab.losses import get_loss
from kmnist_lab.models import build_model
from kmnist_lab.optimizers import get_optimizer
from kmnist_lab.schedules import Warmup, make_schedule

ROOT = Path(__file__).resolve().parents[1]

# Every class a `.keras` file written by kmnist_lab can name.
CUSTOM_OBJECTS = [
    "CosineDense",
    "RandomAffine",
    "SmallMapConv2D",
    "FusedBatchNormalization",
    "SoftmaxCrossEntropy",
    "FocalLoss",
    "AMSoftmax",
    "ARMSoftmax",
    "MulticlassHinge",
    "KLDivergence",
    "MeanSquaredError",
    "Rprop",
    "ASGD",
    "Warmup",
]


def _python(code: str) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh Python process on this process's Keras backend."""
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend(), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_a_fresh_process_that_imports_kmnist_lab_models_loads_a_saved_model_with_keras(
    tmp_path,
):
    """`import kmnist_lab.models` (what building a model needs) registers every custom
    object, so `keras.saving.load_model` alone loads a model with a cosine head and
    augmentation, compiled with AM-Softmax, Rprop and a warm-up schedule: the same
    predictions, the same loss and optimizer, and it trains on."""
    x, y = make_images(32)
    loss = get_loss("am_softmax", scale=20.0, margin=0.3)
    model = build_model("mlp", hidden=(16,), head="cosine", augment=True)
    schedule = make_schedule("constant", 0.01, steps_per_epoch=2, epochs=2, warmup_epochs=1)
    model.compile(optimizer=get_optimizer("rprop", learning_rate=schedule), loss=loss)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    np.save(tmp_path / "x.npy", x[:8])
    np.save(tmp_path / "expected.npy", model.predict(x[:8], verbose=0))
    model.save(tmp_path / "model.keras")

    proc = _python(
        "import sys, keras, numpy as np\n"
        "import kmnist_lab.models\n"
        f"names = {CUSTOM_OBJECTS!r}\n"
        "missing = [n for n in names\n"
        "           if keras.saving.get_registered_object('kmnist_lab>' + n) is None]\n"
        "assert not missing, f'not registered: {missing}'\n"
        f"folder = {str(tmp_path)!r}\n"
        "model = keras.saving.load_model(folder + '/model.keras')\n"
        "x = np.load(folder + '/x.npy')\n"
        "np.testing.assert_array_equal(model.predict(x, verbose=0),\n"
        "                              np.load(folder + '/expected.npy'))\n"
        "assert type(model.loss).__name__ == 'AMSoftmax', model.loss\n"
        "assert (model.loss.scale, model.loss.margin) == (20.0, 0.3)\n"
        "assert type(model.optimizer).__name__ == 'Rprop', model.optimizer\n"
        "lr = model.optimizer.get_config()['learning_rate']\n"
        "assert lr['registered_name'] == 'kmnist_lab>Warmup', lr\n"
        "model.fit(x, np.arange(8) % 10, epochs=1, verbose=0)\n"
        "print('loaded')\n"
    )
    assert "loaded" in proc.stdout


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="Cosine"), "`lr_schedule` must be one of constant, step, cosine. "
                              "Received: lr_schedule='Cosine'"),
        (dict(lr=-0.1), "`lr` must be a positive finite number. Received: lr=-0.1"),
        (dict(lr=0), "`lr` must be a positive finite number. Received: lr=0"),
        (dict(lr="0.1"), "`lr` must be a positive finite number. Received: lr='0.1'"),
        (dict(steps_per_epoch=0),
         "`steps_per_epoch` must be a positive integer. Received: steps_per_epoch=0"),
        (dict(steps_per_epoch=2.5),
         "`steps_per_epoch` must be a positive integer. Received: steps_per_epoch=2.5"),
        (dict(epochs=0), "`epochs` must be a positive integer. Received: epochs=0"),
        (dict(warmup_epochs=-1),
         "`warmup_epochs` must be an integer >= 0. Received: warmup_epochs=-1"),
    ],
)  # fmt: skip
def test_make_schedule_refuses_values_out_of_range_saying_what_it_received(kwargs, message):
    """A negative warm-up used to give a cosine schedule that silently started below
    `lr`, a zero `epochs` a step schedule, and zero steps Keras' error about
    `decay_steps`: each is now one `ConfigError` naming the argument."""
    args = dict(kind="cosine", lr=0.1, steps_per_epoch=10, epochs=4, warmup_epochs=0)
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        make_schedule(**{**args, **kwargs})


def test_make_schedule_takes_numpy_numbers_like_python_ones():
    schedule = make_schedule("cosine", np.float32(0.1), np.int64(10), np.int64(4))
    assert float(schedule(0)) == pytest.approx(0.1)


def test_warmup_refuses_a_constant_rate_or_a_ramp_of_no_steps():
    """`Warmup` wraps a `LearningRateSchedule`: a float used to fail only when the
    optimizer first called it (`'float' object is not callable`)."""
    with pytest.raises(ConfigError, match=r"`schedule` must be a .*Received: schedule=0\.1$"):
        Warmup(0.1, 10)
    constant = keras.optimizers.schedules.PiecewiseConstantDecay([100], [0.1, 0.1])
    for steps in (0, -3, 2.0):
        with pytest.raises(ConfigError, match=rf"Received: warmup_steps={steps!r}$"):
            Warmup(constant, steps)
    assert float(Warmup(constant, 4)(0)) == pytest.approx(0.025)


@pytest.mark.parametrize(
    "name", ["softmax_cross_entropy", "focal_loss", "multiclass_hinge_loss", "kl_divergence_loss"]
)
def test_a_model_compiled_with_a_per_sample_loss_function_saves_and_loads(name, tmp_path):
    """docs/losses.md presents each loss as a pure function too: `compile(loss=focal_loss)`
    trains, and its `.keras` file loads back with the same function (it used to be saved
    under no registered name: `Could not locate function 'focal_loss'`)."""
    from kmnist_lab import losses

    fn = getattr(losses, name)
    x, y = make_images(16)
    model = build_model("mlp", hidden=(8,))
    model.compile(optimizer="sgd", loss=fn)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert loaded.loss is fn
    np.testing.assert_allclose(
        loaded.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0), rtol=1e-6
    )


# Columns alternate 3, 0, 3, ...; a shift of dx pixels reads the input at x - dx.
_WARP_UINT8 = """
import keras, numpy as np
from kmnist_lab.layers import RandomAffine

images = np.zeros((1, 4, 6, 1), np.uint8)
images[:, :, ::2] = 3
layer = RandomAffine(fill_value=-1.0)
zero = np.zeros((1,), np.float32)

def warp(dx):
    out = layer.transform(images, zero, np.full((1,), dx, np.float32), zero)
    assert keras.backend.standardize_dtype(out.dtype) == "uint8", out.dtype
    return keras.ops.convert_to_numpy(out)[0, 0, :, 0].tolist()

# 0.25 * 3 + 0.75 * 0 = 0.75 -> 1 and 0.25 * 0 + 0.75 * 3 = 2.25 -> 2 (not 0 and 2);
# column 0 reads 0.25 * fill + 0.75 * 3 = 2.
assert warp(0.25) == [2, 1, 2, 1, 2, 1], warp(0.25)
# Two columns from outside the image read the fill, -1, saturated to 0 (not 255).
assert warp(2.0) == [0, 0, 3, 0, 3, 0], warp(2.0)
print("ok")
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_random_affine_on_raw_uint8_pixels_rounds_and_saturates_on_every_backend(backend):
    """`RandomAffine` used on raw uint8 images (before any rescaling) keeps their dtype:
    bilinear values are rounded, not truncated, and the default `fill_value=-1` reads 0
    on every backend (PyTorch's cast used to wrap it to 255, a white border)."""
    pytest.importorskip(backend)
    if backend == keras.backend.backend():
        exec(_WARP_UINT8, {})
        return
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", _WARP_UINT8], capture_output=True,
                          text=True, env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


_LOAD_ON_TORCH = """
import sys
import numpy as np
from kmnist_lab.models import load_keras_model

model = load_keras_model(sys.argv[1])
assert (model.steps_per_execution, model.jit_compile) == (1, False)
x = np.load(sys.argv[2])
y = np.arange(len(x)) % 10
model.evaluate(x, y, verbose=0)
model.fit(x, y, epochs=1, batch_size=16, verbose=0)
print("ok")
"""


def test_a_model_keras_saved_with_ten_steps_per_call_loads_and_trains_on_torch(tmp_path):
    """train.py compiles with `steps_per_execution=10` and XLA on TensorFlow and JAX, and
    model.keras keeps both; Keras' torch trainer refuses more than one step per call."""
    pytest.importorskip("torch")
    model = build_model("relu_mlp")
    model.compile(optimizer=get_optimizer("adam"), loss=get_loss("ce"),
                  steps_per_execution=10, jit_compile=keras.backend.backend() != "torch")  # fmt: skip
    x, _ = make_images(32)
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "KERAS_BACKEND": "torch", "PYTHONPATH": str(ROOT)}
    code = [_LOAD_ON_TORCH, str(tmp_path / "model.keras"), str(tmp_path / "x.npy")]
    proc = subprocess.run([sys.executable, "-c", *code], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def test_one_model_takes_both_input_ranks_with_the_documented_workaround():
    """README, Models: on TensorFlow a second `predict` / `fit` with the other rank needs
    `make_predict_function(force=True)` / `make_train_function(force=True)` first
    (Keras issue #20573)."""
    model = build_model("relu_mlp")
    model.compile(optimizer="sgd", loss=get_loss("ce"))
    x, y = make_images(8)
    flat = model.predict(x, verbose=0)
    model.fit(x, y, epochs=1, verbose=0)
    if keras.backend.backend() == "tensorflow":
        model.make_predict_function(force=True)
        model.make_train_function(force=True)
    model.fit(x[..., None], y, epochs=1, verbose=0)
    assert model.predict(x[..., None], verbose=0).shape == flat.shape


def test_build_model_takes_a_keras_model_name_beside_the_architectures():
    # The architecture's `name` is positional only: `name=` names the Keras model (it
    # used to be Python's "got multiple values for argument 'name'").
    assert build_model("mlp", name="my_model", hidden=[8]).name == "my_model"
    assert build_model("mlp", hidden=[8]).name != "my_model"
