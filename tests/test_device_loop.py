"""`device_fit` (dataset on the device, compiled batch loop) trains exactly like `fit`.

On JAX and on TensorFlow, each in a subprocess of its own (see
`tests/backend_parity/device_loop_check.py`): the same script, the same assertions.
"""

import atexit
import functools
import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from kmnist_lab import device_loop
from kmnist_lab.errors import ConfigError
from kmnist_lab.speed import resolve_input_pipeline

ROOT = Path(__file__).resolve().parents[1]


BACKENDS = ["jax", "tensorflow"]


@functools.cache
def _start(script: str, backend: str) -> subprocess.Popen:
    """Starts `backend_parity/SCRIPT` on `backend` (once per session)."""
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT)}
    path = Path(__file__).parent / "backend_parity" / script
    proc = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    atexit.register(proc.kill)  # one whose tests were deselected is not left running
    return proc


@functools.cache
def _check(script: str, backend: str, timeout: int) -> dict:
    """The JSON report (the last stdout line) of `backend_parity/SCRIPT` on `backend`.

    Every backend's process is started at the first request, so they run side by side:
    much of each is single-threaded tracing and compiling, which two cores overlap.
    """
    for other in BACKENDS:
        if other != "jax" or importlib.util.find_spec("jax") is not None:
            _start(script, other)
    if backend == "jax":
        pytest.importorskip("jax")
    try:
        stdout, stderr = _start(script, backend).communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _start(script, backend).kill()
        raise
    assert _start(script, backend).returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module", params=BACKENDS)
def report(request):
    return _check("device_loop_check.py", request.param, timeout=600)


def test_same_history_and_weights_as_keras_fit(report):
    """No shuffle: the same batches in the same order, so the same numbers (BN included)."""
    ours, keras_fit = report["device"], report["iterator"]
    assert set(ours["history"]) == set(keras_fit["history"]) == {
        "loss", "accuracy", "val_loss", "val_accuracy"}  # fmt: skip
    for key, values in keras_fit["history"].items():
        np.testing.assert_allclose(ours["history"][key], values, rtol=1e-5, err_msg=key)
    for got, want in zip(ours["weights"], keras_fit["weights"]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # 300 samples in batches of 32: 10 steps per epoch, the last one partial.
    assert ours["iterations"] == keras_fit["iterations"] == 20


def test_callbacks_fire_where_keras_fit_fires_them(report):
    """Batch ends every steps_per_execution (4) steps; validation is wrapped in
    on_test_begin/end; epoch logs carry the val_ metrics."""
    ours, keras_fit = report["device"]["calls"], report["iterator"]["calls"]
    assert [c[0] for c in ours] == [c[0] for c in keras_fit]

    def batch_ends(calls):
        return [c[1] for c in calls[: calls.index(["test_begin"])] if c[0] == "batch_end"]

    # 10 steps: 0-3, 4-7, then 8-9 (8 full, 9 partial). Keras reports the last group
    # as ending at step 11, where a full group would end; device_fit reports 9.
    assert batch_ends(ours) == [3, 7, 9] and batch_ends(keras_fit) == [3, 7, 11]
    np.testing.assert_allclose([c[2] for c in ours if c[0] == "batch_end"],
                               [c[2] for c in keras_fit if c[0] == "batch_end"], rtol=1e-5)  # fmt: skip
    assert ours[-1] == ["epoch_end", 1, ["accuracy", "loss", "val_accuracy", "val_loss"]]


def test_stop_training_and_initial_epoch(report):
    # A callback sets stop_training at the first batch end: one call of 4 steps, no validation.
    assert report["device_stopped"]["iterations"] == report["iterator_stopped"]["iterations"] == 4
    # ...then validates, as model.fit does (monitors of val_ metrics get a value).
    assert set(report["device_stopped"]["history"]) == set(report["iterator_stopped"]["history"])
    assert "val_loss" in report["device_stopped"]["history"]
    # Resumed after 2 of 3 epochs: only epoch index 2 runs.
    resumed = report["device_resumed"]
    assert [c[1] for c in resumed["calls"] if c[0] == "epoch_begin"] == [2]
    assert resumed["iterations"] == 10


@pytest.mark.parametrize("pipeline", ["device", "iterator"])
def test_a_resumed_run_matches_an_uninterrupted_one_with_shuffle_and_augmentation(report, pipeline):
    """Killed after epoch 2, resumed: the epochs after the restore see the same batches
    (order from (seed, epoch)) and the same random transforms (generator states in the
    backup) as the uninterrupted run. Without both (checked by reverting them), the
    resumed epoch 3 had loss 0.60 against 2.55 uninterrupted. Regression (iterator, the
    pipeline of data-parallel runs): on JAX, Keras' iterator drew each epoch's order
    from NumPy's global generator, seeded once per process, so the resumed epoch 3
    trained in the order of the uninterrupted run's epoch 1."""
    resume = report["resume" if pipeline == "device" else "resume_iterator"]
    assert resume["was_resumed"] is True and resume["pipeline"] == pipeline
    whole, resumed = resume["whole"], resume["resumed"]
    assert [r["epoch"] for r in resumed] == [r["epoch"] for r in whole] == ["1", "2", "3", "4"]
    for got, want in zip(resumed, whole, strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            np.testing.assert_allclose(float(got[key]), float(want[key]), rtol=1e-4, err_msg=key)


def test_callbacks_see_current_weights_and_their_changes_stick(report):
    """A batch-end callback reads the weights after every compiled call (they change),
    and a learning rate it sets to 0 mid-epoch is used from then on and kept."""
    for pipeline in ("device", "iterator"):
        seen = report["mid_epoch"][pipeline]
        assert len(seen["weight_sums"]) == 3, pipeline  # batch ends 3, 7, 9 (or 11)
        assert seen["weight_sums"][0] != seen["weight_sums"][1], pipeline  # trained between
        assert seen["lr_after"] == 0.0, pipeline
        assert seen["frozen_after_lr_0"], pipeline
    assert report["unsupported"] == [
        "the device input pipeline does not support sample_weight; use pipeline='iterator' "
        "(Keras' model.fit)",
        "the device input pipeline takes validation_data=(x_val, y_val). Received: a tuple "
        "of 3 items",
    ]


def test_shuffle_is_seeded_and_changes_the_order(report):
    shuffled, again = report["device_shuffled"], report["device_shuffled_again"]
    assert shuffled["history"] == again["history"]
    assert shuffled["history"]["loss"] != report["device"]["history"]["loss"]


def test_device_pipeline_backends(monkeypatch):
    assert keras.backend.backend() == "tensorflow"
    assert resolve_input_pipeline("auto") == "device"
    assert resolve_input_pipeline("iterator") == "iterator"
    assert resolve_input_pipeline("auto", distributed=True) == "iterator"
    with pytest.raises(ConfigError, match="without distribute. Received: distribute="):
        resolve_input_pipeline("device", distributed=True)
    with pytest.raises(ConfigError, match="input_pipeline` must be one of auto, device, iterator"):
        resolve_input_pipeline("tfdata")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(loss="mse")
    with pytest.raises(ConfigError, match="Received: pipeline='gpu'"):
        device_loop.fit(model, np.zeros((4, 2)), np.zeros(4), pipeline="gpu")
    # TensorFlow's device loop is measured on CPUs only: a GPU keeps Keras' iterator
    # (unless asked for), and JAX keeps the device loop there.
    from kmnist_lab import speed

    monkeypatch.setattr(speed, "has_accelerator", lambda: True)
    assert resolve_input_pipeline("auto") == "iterator"
    assert resolve_input_pipeline("device") == "device"
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    assert resolve_input_pipeline("auto") == "device"
    # Keras' torch backend runs its steps eagerly, one per call: no device loop there.
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    assert resolve_input_pipeline("auto") == "iterator"
    with pytest.raises(ConfigError, match="needs the jax or tensorflow backend.*'torch'"):
        resolve_input_pipeline("device")
    with pytest.raises(ConfigError, match="needs the jax or tensorflow backend.*'torch'"):
        device_loop.device_fit(model, np.zeros((4, 2)), np.zeros(4))


def test_device_fit_refuses_a_tf_distribute_strategy():
    """A model built under a strategy's scope has mirrored variables; the device loop
    does not shard batches across replicas, so it refuses (Keras' iterator does)."""
    import tensorflow as tf

    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile(loss="mse")
    with pytest.raises(ConfigError, match="does not shard data.*tf.distribute strategy"):
        device_loop.device_fit(model, np.zeros((4, 2)), np.zeros(4))


def test_an_exception_mid_epoch_leaves_the_trained_state_in_the_model(report):
    """Regression: on JAX, a Ctrl-C (or any callback's error) 8 steps into an epoch left
    the model at the epoch's starting weights, iteration 0, where `model.fit` leaves the
    weights of step 8 (it syncs the state in a `finally`)."""
    ours, keras_fit = report["interrupted"]["device"], report["interrupted"]["iterator"]
    assert ours["iterations"] == keras_fit["iterations"] == 8
    assert ours["moved"] and keras_fit["moved"]
    for got, want in zip(ours["weights"], keras_fit["weights"]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_asgd_averages_survive_evaluate(report):
    """Regression: ASGD's final weights shared the average's buffer, and evaluate's
    buffer donation deleted it ("Array has been deleted" when the run was saved)."""
    device, iterator = report["asgd_device"], report["asgd_iterator"]
    assert np.isfinite(device).all() and np.isfinite(iterator).all()
    np.testing.assert_allclose(device, iterator, rtol=1e-5)


def test_device_fit_errors(report):
    uncompiled, mismatched = report["errors"]
    assert uncompiled == "compile the model (model.compile) before training it"
    assert mismatched == ("x and y need the same, non-zero number of samples. Received: 300 and 5")


@pytest.fixture(scope="module", params=BACKENDS)
def compiled_report(request):
    return _check("device_loop_compiled_check.py", request.param, timeout=300)


def test_a_model_trained_on_the_device_pipeline_can_be_freed(compiled_report):
    """Regression: the cache of compiled functions (a WeakKeyDictionary keyed by the
    model) held `model.train_step`, a strong reference to its own key, so every model
    trained with `device_fit` (each trial of a search, each run of a study) stayed in
    memory with its optimizer state until the process ended."""
    assert compiled_report["model_freed"] is True


def test_a_recompiled_model_trains_with_its_new_loss(compiled_report):
    """The compiled calls are cached per model and `compile()`: a recompile with
    another loss (and a state of the same structure, so no new trace is forced on JAX)
    trains with that loss, not the one the cached calls were traced with."""
    assert compiled_report["recompiled_new_loss"] is True


def test_validation_runs_with_the_weights_a_callback_swaps_in_at_test_begin(compiled_report):
    """ASGD's and EMA's weight swaps happen at `on_test_begin`: the validation state is
    read after it. A callback that zeroes the weights there makes every logit 0, and
    the validation loss ln 10 (on JAX, a state read before it scored the trained weights)."""
    np.testing.assert_allclose(compiled_report["val_loss_zeroed"], np.log(10), rtol=1e-6)


def test_a_one_step_call_runs_no_loop(compiled_report):
    """Regression: with steps_per_execution 1 (the CNNs' default) every call was a
    one-step `lax.scan` (it now runs no loop), a while loop in which XLA:CPU ran residual_cnn's convolutions
    5-10x slower than the same step called directly (146-232 against 1,335-1,412
    samples/s, batch 16, 2 cores), so `--backend jax --arch residual_cnn` with the
    default `--input-pipeline auto` trained several times slower than Keras' iterator."""
    assert compiled_report["while_loops"] == {"1": 0, "3": 1}


def test_an_epoch_compiles_two_calls(compiled_report):
    """The loop's trip count is traced (a tensor on TensorFlow, a traced int on a JAX
    CPU): an epoch's last group of full batches (1 of 4 here) runs in the same compiled
    call as the others, and only the partial batch needs its own. With a static count
    (`lax.scan`, JAX off a CPU) that group compiles a third call, in training and in
    validation, and trains the same."""
    calls = compiled_report["compiled_calls"]
    assert (calls["traced"]["train"], calls["traced"]["test"]) == (2, 2)
    if "static" in calls:
        assert (calls["static"]["train"], calls["static"]["test"]) == (3, 3)
        np.testing.assert_allclose(calls["static"]["losses"], calls["traced"]["losses"],
                                   rtol=1e-6)  # fmt: skip


def test_xla_compiles_the_step_not_the_loop_on_tensorflow():
    """Regression: the whole call under XLA (the loop and the batch gathers included)
    trained bn_mlp at ~1.3k samples/s on 2 CPU cores, against 38-53k with only the
    step compiled by XLA inside TensorFlow's loop, as Keras' `fit` compiles it."""
    report = _check("device_loop_compiled_check.py", "tensorflow", timeout=300)
    assert report["xla"] == {"graph": 1, "loop_body": 1, "whole_call": False}


def _tiny_model():
    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(),
                              keras.layers.Rescaling(1 / 255), keras.layers.Dense(10)])  # fmt: skip
    model.compile(optimizer="sgd", steps_per_execution=4,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip
    return model


def test_tensorflow_traces_are_bounded():
    """300 samples in batches of 32 at 4 steps per call: the training function traces
    once for its full batches (calls of 4 steps and the epoch's last call of 1: the
    number of steps is a tensor) and once for the partial batch of 12, no more, epoch
    after epoch; validation (70 samples) for 2 full steps and the partial batch of 6."""
    x = np.random.default_rng(0).integers(0, 256, size=(300, 28, 28), dtype=np.uint8)
    y = np.arange(300) % 10
    for _ in range(2):
        model = _tiny_model()
        device_loop.device_fit(model, x, y, batch_size=32, epochs=3, verbose=0,
                               validation_data=(x[:70], y[:70]))  # fmt: skip
        train_chunk, test_chunk = device_loop._tf_compiled(model)
        assert train_chunk.experimental_get_tracing_count() == 2
        assert test_chunk.experimental_get_tracing_count() == 2


def _orders_of(monkeypatch):
    """The `order` of each training call `device_fit` makes on TensorFlow, recorded."""
    seen = []

    class Recording(device_loop._TensorFlowCalls):
        def train(self, x, y, order, parts):
            seen.append(np.asarray(order).tolist())
            return super().train(x, y, order, parts)

    monkeypatch.setitem(device_loop.DEVICE_BACKENDS, "tensorflow", Recording)
    return seen


def test_each_epoch_trains_in_the_order_of_its_seed_and_epoch(monkeypatch):
    """With `shuffle_seed`, epoch e trains in `default_rng([seed, e]).permutation(n)`: a
    new order every epoch, the same for a run resumed at that epoch (`initial_epoch`)."""
    seen = _orders_of(monkeypatch)
    x, y = np.zeros((20, 28, 28), np.uint8), np.arange(20) % 10
    device_loop.device_fit(_tiny_model(), x, y, batch_size=20, epochs=3, verbose=0,
                           shuffle_seed=7)  # fmt: skip
    expected = [np.random.default_rng([7, e]).permutation(20).tolist() for e in range(3)]
    assert seen == expected and expected[0] != expected[1]
    seen.clear()
    device_loop.device_fit(_tiny_model(), x, y, batch_size=20, epochs=3, verbose=0,
                           shuffle_seed=7, initial_epoch=2)  # fmt: skip
    assert seen == expected[2:]
    seen.clear()
    device_loop.device_fit(_tiny_model(), x, y, batch_size=20, epochs=2, verbose=0,
                           shuffle=False, shuffle_seed=7)  # fmt: skip
    assert seen == [list(range(20))] * 2


def test_an_epochs_calls_cover_every_sample_once_in_groups_of_steps_per_execution():
    """300 samples, batch 32, 4 steps per call: steps 0-3, 4-7, then 8 (full) and 9 (the
    partial batch of 12, a call of its own); callbacks see the groups' first and last
    steps. Calls of full batches loop over their steps when there are several per call
    (the last one too, of 1 step: the same trace); the partial batch's does not."""
    assert list(device_loop._calls(300, 32, 4)) == [
        (0, 3, [(4, 32, 0, True)]),
        (4, 7, [(4, 32, 128, True)]),
        (8, 9, [(1, 32, 256, True), (1, 12, 288, False)]),
    ]
    assert list(device_loop._calls(64, 32, 4)) == [(0, 1, [(2, 32, 0, True)])]  # no partial
    assert list(device_loop._calls(5, 32, 1)) == [(0, 0, [(1, 5, 0, False)])]  # only partial
    assert list(device_loop._calls(64, 32, 1)) == [(0, 0, [(1, 32, 0, False)]),
                                                   (1, 1, [(1, 32, 32, False)])]  # fmt: skip
    for n, batch, per_call in [(300, 32, 1), (300, 32, 10), (257, 16, 3), (96, 32, 3)]:
        covered, step = [], 0
        for first, last, parts in device_loop._calls(n, batch, per_call):
            assert first == step and last - first < per_call
            for steps, size, offset, _ in parts:
                covered += [range(offset + i * size, offset + (i + 1) * size) for i in range(steps)]
            step = last + 1
        assert step == -(-n // batch)
        assert [i for r in covered for i in r] == list(range(n)), (n, batch, per_call)


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("tensorflow", logging.WARNING, "x.py", 1, message, None, None)


def test_the_expected_retracing_warning_is_dropped_and_no_other():
    """TensorFlow counts the traces of every function made from the same code together
    (the train and test functions of every model: each run of a study, each trial of a
    search) and warns about "retracing" after a few models (seen in studies and
    searches). Our traces are bounded (above): that warning is dropped, for
    `_tf_compiled`'s functions only."""
    advice = (" triggered tf.function retracing. Tracing is expensive and the excessive "
              "number of tracings could be due to (1) creating @tf.function repeatedly")  # fmt: skip
    ours = ("5 out of the last 6 calls to <function _tf_compiled.<locals>.make.<locals>.chunk "
            "at 0x7f168e738e00>" + advice)  # fmt: skip
    keras_own = ("5 out of the last 20 calls to <function TensorFlowTrainer._make_function."
                 "<locals>.multi_step_on_iterator at 0x7f16560b0220>" + advice)  # fmt: skip
    check = device_loop._EXPECTED_RETRACING.filter
    assert check(_record(ours)) is False
    assert check(_record(keras_own)) is True
    assert check(_record("_tf_compiled: some other warning")) is True
    device_loop.device_fit(_tiny_model(), np.zeros((8, 28, 28), np.uint8), np.zeros(8), verbose=0)
    assert logging.getLogger("tensorflow").filters.count(device_loop._EXPECTED_RETRACING) == 1


def test_validation_arrays_must_match():
    model = _tiny_model()
    x, y = np.zeros((40, 28, 28), np.uint8), np.zeros(40, np.int32)
    with pytest.raises(ConfigError, match="x_val and y_val of the same.*Received: 40 and 39"):
        device_loop.device_fit(model, x, y, validation_data=(x, y[:39]))


def test_labels_reach_jax_as_int32():
    # JAX computes in 32 bits and (jax 0.11) warns when it narrows int64 arrays, the
    # label arrays NumPy and the data loaders make; narrower labels are kept as they are.
    assert device_loop._as_int32(np.array([0, 9], dtype=np.int64)).dtype == np.int32
    assert device_loop._as_int32([3, 1]).tolist() == [3, 1]
    assert device_loop._as_int32(np.array([7], dtype=np.uint8)).dtype == np.uint8


def test_without_a_shuffle_seed_the_order_follows_keras_global_seed(monkeypatch):
    """`shuffle_seed=None` draws the seed from NumPy's global generator: a run
    repeated under the same `keras.utils.set_random_seed` trains in the same orders,
    one under another seed in other orders."""
    seen = _orders_of(monkeypatch)
    x, y = np.zeros((20, 28, 28), np.uint8), np.arange(20) % 10
    runs = []
    for seed in (1, 1, 2):
        keras.utils.set_random_seed(seed)
        device_loop.device_fit(_tiny_model(), x, y, batch_size=20, epochs=2, verbose=0)
        runs.append(seen[:])
        seen.clear()
    assert runs[0] == runs[1] and runs[0][0] != runs[0][1]
    assert runs[2][0] != runs[0][0] and runs[2][1] != runs[0][1]


class _GlobalDraw(keras.callbacks.Callback):
    """Draws from NumPy's global generator as each epoch begins (Keras' JAX iterator
    draws its shuffle there, after `on_epoch_begin`)."""

    def __init__(self):
        super().__init__()
        self.draws = []

    def on_epoch_begin(self, epoch, logs=None):
        self.draws.append(int(np.random.randint(2**31)))


def _draws_seeded_by(seed, epochs):
    """What `_GlobalDraw` sees when each epoch begins with `SeedEachEpoch(seed)`."""
    draws = []
    for epoch in range(epochs):
        np.random.seed(int(np.random.default_rng([seed, epoch]).integers(2**32)))
        draws.append(int(np.random.randint(2**31)))
    return draws


def test_the_iterator_pipeline_seeds_each_epoch_from_the_seed_and_the_epoch():
    """`fit(pipeline="iterator", shuffle_seed=s)` seeds NumPy's global generator from
    `(s, epoch)` before the callbacks' (and so the iterator's) draws of each epoch:
    also when `shuffle` is left to its default (True, as in `model.fit`) and when the
    callbacks come as a `CallbackList`; not with `shuffle=False`."""
    x, y = np.zeros((8, 28, 28), np.uint8), np.arange(8) % 10
    expected = _draws_seeded_by(5, 2)
    assert expected[0] != expected[1]
    for wrap in (list, keras.callbacks.CallbackList):
        model, draw = _tiny_model(), _GlobalDraw()
        callbacks = [draw] if wrap is list else wrap([draw], add_history=True, model=model)
        device_loop.fit(model, x, y, pipeline="iterator", shuffle_seed=5, epochs=2, verbose=0,
                        callbacks=callbacks)  # fmt: skip
        assert draw.draws == expected, wrap
    draw = _GlobalDraw()
    device_loop.fit(_tiny_model(), x, y, pipeline="iterator", shuffle_seed=5, shuffle=False,
                    epochs=1, verbose=0, callbacks=[draw])  # fmt: skip
    assert draw.draws != expected[:1]


class _Steps(keras.callbacks.Callback):
    """Records the `steps` callbacks are told of, and the test batch ends."""

    def __init__(self):
        super().__init__()
        self.test_batch_ends = []

    def on_train_begin(self, logs=None):
        self.steps = self.params["steps"]

    def on_test_batch_end(self, batch, logs=None):
        self.test_batch_ends.append(batch)


def test_callbacks_are_told_the_steps_of_an_epoch_partial_batch_included():
    """20 samples in batches of 8: 3 steps (as `fit` tells them, for progress bars and
    per-step schedules). Validation (18 samples: 3 steps) fires its batch ends every
    steps_per_execution (2) steps, as training does: after steps 1 and 2."""
    x, y = np.zeros((20, 28, 28), np.uint8), np.arange(20) % 10
    model, steps = _tiny_model(), _Steps()
    model.compile(optimizer="sgd", steps_per_execution=2,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip
    history = device_loop.device_fit(model, x, y, batch_size=8, verbose=0, callbacks=[steps],
                                     validation_data=(x[:18], y[:18]))  # fmt: skip
    assert steps.steps == history.params["steps"] == 3
    assert steps.test_batch_ends == [1, 2]


def test_validation_scores_the_whole_validation_set_with_the_epochs_weights():
    """With shuffling and more training than validation samples, each epoch's `val_`
    metrics are those of `model.evaluate` on `(x_val, y_val)` with the weights the
    epoch ended on: every validation sample once (13, in batches of 4 and a partial 1),
    whatever the training order."""
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 256, (40, 28, 28), np.uint8), rng.integers(0, 10, 40)
    x_val, y_val = rng.integers(0, 256, (13, 28, 28), np.uint8), rng.integers(0, 10, 13)
    model = _tiny_model()
    model.compile(optimizer="sgd", steps_per_execution=2, metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip
    history = device_loop.device_fit(model, x, y, batch_size=4, epochs=2, verbose=0,
                                     shuffle_seed=1, validation_data=(x_val, y_val))  # fmt: skip
    loss, accuracy = model.evaluate(x_val, y_val, batch_size=4, verbose=0)
    np.testing.assert_allclose(history.history["val_loss"][-1], loss, rtol=1e-5)
    np.testing.assert_allclose(history.history["val_accuracy"][-1], accuracy, rtol=1e-6)
    assert history.history["val_loss"][0] != history.history["val_loss"][1]


def test_device_fit_refuses_empty_data():
    x, y = np.zeros((8, 28, 28), np.uint8), np.zeros(8, np.int32)
    with pytest.raises(ConfigError, match="same, non-zero number of samples. Received: 0 and 0"):
        device_loop.device_fit(_tiny_model(), x[:0], y[:0])
    with pytest.raises(ConfigError, match="x_val and y_val of the same, non-zero.*0 and 0"):
        device_loop.device_fit(_tiny_model(), x, y, validation_data=(x[:0], y[:0]))


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "batch_size must be a positive integer. Received: batch_size=0"),
    ({"batch_size": 8.0}, "batch_size must be a positive integer. Received: batch_size=8.0"),
    ({"epochs": -1}, "epochs must be an integer >= 0. Received: epochs=-1"),
    ({"initial_epoch": True}, "initial_epoch must be an integer >= 0"),
])  # fmt: skip
def test_device_fit_refuses_bad_batch_sizes_and_epochs(kwargs, message):
    x, y = np.zeros((8, 28, 28), np.uint8), np.zeros(8, np.int32)
    with pytest.raises(ConfigError, match=message):
        device_loop.device_fit(_tiny_model(), x, y, verbose=0, **kwargs)


def test_device_fit_takes_numpy_integers():
    """A batch size or epoch count computed with NumPy trains as its Python value would
    (TensorFlow refused to add an `np.int64` batch size to its int32 step counter)."""
    x, y = np.random.default_rng(0).integers(0, 256, (16, 28, 28), np.uint8), np.arange(16) % 10
    history = device_loop.device_fit(_tiny_model(), x, y, batch_size=np.int64(8),
                                     epochs=np.int32(2), verbose=0)  # fmt: skip
    assert len(history.history["loss"]) == 2


def test_a_recompiled_model_trains_with_its_new_optimizer():
    """The compiled calls are cached per model and `compile()`: after a recompile with a
    learning rate of 0 (and calls of the shapes already traced), the weights stay where
    the first training left them."""
    x, y = np.random.default_rng(0).integers(0, 256, (16, 28, 28), np.uint8), np.arange(16) % 10
    model = _tiny_model()
    device_loop.device_fit(model, x, y, batch_size=8, verbose=0)
    trained = [w.copy() for w in model.get_weights()]
    model.compile(optimizer=keras.optimizers.SGD(0.0), steps_per_execution=4,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip
    device_loop.device_fit(model, x, y, batch_size=8, verbose=0)  # calls of the same shapes
    for got, want in zip(model.get_weights(), trained, strict=True):
        np.testing.assert_array_equal(got, want)


def test_training_ends_with_the_optimizers_final_weights_as_model_fit_does():
    """ASGD averaging from its first step (t0=0): `device_fit` ends, as `model.fit`
    does, by copying the optimizer's averages into the model (`finalize_variable_values`),
    so both leave the same weights, not the last iterate."""
    from kmnist_lab.optimizers import ASGD

    rng = np.random.default_rng(4)
    x, y = rng.integers(0, 256, (24, 28, 28), np.uint8), rng.integers(0, 10, 24)
    weights = {}
    for pipeline in ("device", "iterator"):
        keras.utils.set_random_seed(0)
        model = _tiny_model()
        model.compile(optimizer=ASGD(learning_rate=0.1, t0=0),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip
        device_loop.fit(model, x, y, pipeline=pipeline, batch_size=8, epochs=2, shuffle=False,
                        verbose=0)  # fmt: skip
        weights[pipeline] = model.get_weights()
        averages = [np.asarray(a) for a in model.optimizer._averages]
    for got, want, average in zip(weights["device"], weights["iterator"], averages, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(want, average, rtol=1e-6)


# --- Batch shards (`sharded_forward`): the same function, split into independent passes.


class _BatchSizes(keras.layers.Layer):
    """Identity that records the (static) batch size of every input it is traced with."""

    def __init__(self, seen, **kwargs):
        super().__init__(**kwargs)
        self.record = seen.append  # a bound method: Keras would copy a list attribute

    def call(self, x):
        self.record(x.shape[0])
        return x


def _conv_model(seen=None, extra=None):
    keras.utils.set_random_seed(3)
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    if seen is not None:
        x = _BatchSizes(seen)(x)
        seen.clear()  # building the model traced it once, symbolically
    x = keras.layers.Conv2D(4, 5, activation="relu")(x)
    x = keras.layers.MaxPooling2D(4)(x)
    if extra is not None:
        x = extra(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def _train_sharded(shards, seen=None):
    model = _conv_model(seen)
    model.compile(optimizer=keras.optimizers.SGD(0.1), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=2)  # fmt: skip
    x = np.random.default_rng(0).integers(0, 256, (38, 28, 28, 1), dtype=np.uint8)
    y = np.arange(38) % 10
    history = device_loop.device_fit(
        model, x, y, batch_size=12, epochs=2, shuffle_seed=5, verbose=0,
        validation_data=(x[:14], y[:14]), batch_shards=shards,
    )  # fmt: skip
    return model, history.history


def test_batch_shards_train_the_function_one_pass_trains():
    """38 samples in batches of 12 (a last batch of 2, fewer samples than shards):
    3 shards give the weights and logs of one pass, to float32 rounding; the model
    keeps no trace of the override."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("batch shards are implemented on TensorFlow")
    seen = []
    whole, logs = _train_sharded(1)
    sharded, sharded_logs = _train_sharded(3, seen)
    # Traced as 12 -> 4 + 4 + 4 (training and validation) and 2 -> 1 + 1; 12 once only,
    # by Keras' symbolic build before training.
    assert sorted(set(seen)) == [1, 4, 12] and seen.count(12) == 1
    for a, b in zip(whole.get_weights(), sharded.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for key, values in logs.items():
        np.testing.assert_allclose(values, sharded_logs[key], rtol=1e-4, err_msg=key)
    assert "call" not in sharded.__dict__


def test_sharded_forward_pads_a_batch_of_unknown_size_and_drops_the_padding():
    """Keras' `predict`/`evaluate` trace batches of unknown size: 7 images in batches of
    3 (a last batch of 1) as 2 padded shards give `predict`'s scores, and the override
    is undone (a pre-existing instance `call` is put back)."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("batch shards are implemented on TensorFlow")
    seen = []
    model = _conv_model(seen)
    x = np.random.default_rng(1).integers(0, 256, (7, 28, 28, 1), dtype=np.uint8)
    expected = model.predict(x, batch_size=3, verbose=0)  # cached by Keras, unsharded
    # Keras traces its first batch's static size, then an unknown one.
    assert seen == [3, None]
    own = model.call
    model.call = own  # an instance attribute, as a caller's own override would be
    with device_loop.sharded_forward(model, 2):
        got = model.predict(x, batch_size=3, verbose=0)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # Traced again inside: 3 -> 2 + 1, and an unknown size as two padded equal shards.
    assert seen[2:] == [2, 1, None, None]
    assert model.__dict__["call"] is own
    model.predict(x, batch_size=3, verbose=0)  # traced again after, unsharded
    assert seen[6:] == [3, None]


@pytest.mark.parametrize("extra, message", [
    (keras.layers.BatchNormalization(name="bn"), "layer bn: BatchNormalization would use"),
    (keras.layers.Activation("relu", activity_regularizer="l2", name="act"),
     "layer act: its activity regularizer would count once per shard"),
])  # fmt: skip
def test_batch_shards_refuse_models_whose_function_they_would_change(extra, message):
    model = _conv_model(extra=extra)
    with pytest.raises(ConfigError, match=message):
        device_loop.check_shardable(model)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x, y = np.zeros((4, 28, 28, 1), np.uint8), np.zeros(4)
    if keras.backend.backend() == "tensorflow":
        with pytest.raises(ConfigError, match=message):
            device_loop.device_fit(model, x, y, batch_size=2, verbose=0, batch_shards=2)
    device_loop.check_shardable(_conv_model())  # no error


@pytest.mark.parametrize("shards, pipeline, message", [
    (0, "device", r"batch_shards must be a positive integer. Received: batch_shards=0"),
    (True, "device", r"positive integer. Received: batch_shards=True"),
    (2.0, "device", r"positive integer. Received: batch_shards=2.0"),
    (2, "iterator", r"needs the device input pipeline on TensorFlow. Received: batch_shards=2"),
])  # fmt: skip
def test_batch_shards_refuse_bad_counts_and_keras_iterator(shards, pipeline, message):
    model = _conv_model()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x, y = np.zeros((4, 28, 28, 1), np.uint8), np.zeros(4)
    with pytest.raises(ConfigError, match=message):
        device_loop.fit(model, x, y, pipeline=pipeline, batch_size=2, verbose=0,
                        batch_shards=shards)  # fmt: skip
