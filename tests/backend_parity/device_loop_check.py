"""Runs `device_fit` and Keras' `model.fit` side by side; prints a JSON report.

`KERAS_BACKEND=jax python device_loop_check.py` (or `KERAS_BACKEND=tensorflow`):
`tests/test_device_loop.py` runs it on both backends and asserts.
"""

import json

import keras
import numpy as np

from kmnist_lab import device_loop
from kmnist_lab.models import build_model

N, BATCH, SPE = 300, 32, 4  # 9 full batches (chunks of 4, 4, 1) + a partial batch of 12
rng = np.random.default_rng(1)
X = rng.integers(0, 256, size=(N, 28, 28), dtype=np.uint8)
Y = rng.integers(0, 10, size=N)
VAL = (X[:70], Y[:70])


class Recorder(keras.callbacks.Callback):
    """Records the callback calls `fit` makes; optionally stops after `stop_after` batches."""

    def __init__(self, stop_after=None):
        super().__init__()
        self.calls, self.stop_after = [], stop_after

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(["epoch_begin", epoch])

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(["batch_end", batch, float(logs["loss"])])
        if self.stop_after is not None and len(self.calls) >= self.stop_after:
            self.model.stop_training = True

    def on_test_begin(self, logs=None):
        self.calls.append(["test_begin"])

    def on_test_end(self, logs=None):
        self.calls.append(["test_end"])

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(["epoch_end", epoch, sorted(logs)])


def run(pipeline, shuffle=False, epochs=2, stop_after=None, initial_epoch=None, seed=0):
    keras.utils.set_random_seed(seed)
    model = build_model("bn_mlp")  # BatchNorm: non-trainable state changes every step
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        steps_per_execution=SPE,
    )
    if initial_epoch is not None:
        model._initial_epoch = initial_epoch  # what a restoring callback sets
    recorder = Recorder(stop_after)
    history = device_loop.fit(model, X, Y, pipeline=pipeline, batch_size=BATCH, epochs=epochs,
                              shuffle=shuffle, validation_data=VAL, callbacks=[recorder],
                              verbose=0)  # fmt: skip
    return {
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        "weights": [w.tolist() for w in model.get_weights()],
        "calls": recorder.calls,
        "iterations": int(model.optimizer.iterations.numpy()),
    }


def interrupted(pipeline):
    """A callback raises after 8 steps (as Ctrl-C does through `InterruptCheck`), having
    not touched `callback.model` (which would sync the JAX state): what the model holds."""

    class Interrupt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch >= 7:
                raise KeyboardInterrupt

    keras.utils.set_random_seed(0)
    model = build_model("bn_mlp")
    model.compile(optimizer=keras.optimizers.SGD(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=SPE)  # fmt: skip
    start = [w.copy() for w in model.get_weights()]
    try:
        device_loop.fit(model, X, Y, pipeline=pipeline, batch_size=BATCH, shuffle=False,
                        verbose=0, callbacks=[Interrupt()])  # fmt: skip
    except KeyboardInterrupt:
        pass
    return {"iterations": int(model.optimizer.iterations.numpy()),
            "weights": [w.tolist() for w in model.get_weights()],
            "moved": any(not np.array_equal(a, b) for a, b in zip(start, model.get_weights()))}  # fmt: skip


def asgd_then_evaluate(pipeline):
    """ASGD copies its averages into the weights at the end of fit; evaluate (which
    donates the weights' buffers on JAX) must leave the averages readable."""
    from kmnist_lab.optimizers import get_optimizer

    keras.utils.set_random_seed(0)
    model = build_model("bn_mlp")
    model.compile(optimizer=get_optimizer("asgd", learning_rate=0.03),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip
    device_loop.fit(model, X, Y, pipeline=pipeline, batch_size=BATCH, epochs=1, verbose=0,
                    shuffle=False)  # fmt: skip
    loss = model.evaluate(X, Y, verbose=0)
    return [loss, sum(float(np.abs(np.asarray(v)).sum()) for v in model.optimizer.variables)]


def errors():
    """The messages device_fit gives for an uncompiled model and mismatched arrays."""
    from kmnist_lab.errors import ConfigError

    found = []
    model = build_model("bn_mlp")
    for call in (lambda: device_loop.device_fit(model, X, Y),
                 lambda: (model.compile(loss="mse"), device_loop.device_fit(model, X, Y[:5]))):  # fmt: skip
        try:
            call()
            found.append(None)
        except ConfigError as e:
            found.append(str(e))
    return found


def resumed_run_matches(pipeline):
    """`training.train` on `pipeline` (augmentation on, so shuffling and random
    transforms both matter), killed after epoch 2 and resumed, against the same run
    uninterrupted: per-epoch history rows (loss, accuracy, ...)."""
    import csv
    import tempfile

    from kmnist_lab import callbacks, data
    from kmnist_lab.config import TrainConfig
    from kmnist_lab.training import train

    dataset = data.from_arrays(X, Y, X[:60], Y[:60], val_fraction=0.2)
    out = tempfile.mkdtemp()

    def config(name):
        return TrainConfig(arch="bn_mlp", epochs=4, batch_size=32, augment=True, verbose=0,
                           input_pipeline=pipeline, output_dir=out, run_name=name,
                           export=False)  # fmt: skip

    def history(name):
        with open(f"{out}/{name}/history.csv", newline="") as f:
            return [{k: v for k, v in r.items() if k != "epoch_time"} for r in csv.DictReader(f)]

    train(config("whole"), dataset=dataset, plots=False)
    original = callbacks.DivergenceGuard.on_epoch_end

    def killed_after_second_epoch(self, epoch, logs=None):
        if epoch == 2:  # epoch 3 ends: its rows are written, its backup is not
            raise KeyboardInterrupt("simulated kill")
        return original(self, epoch, logs)

    callbacks.DivergenceGuard.on_epoch_end = killed_after_second_epoch
    try:
        train(config("resumed"), dataset=dataset, plots=False)
    except KeyboardInterrupt:
        pass
    finally:
        callbacks.DivergenceGuard.on_epoch_end = original
    result = train(config("resumed"), dataset=dataset, plots=False)
    return {"whole": history("whole"), "resumed": history("resumed"),
            "was_resumed": result.metrics["resumed"], "pipeline": result.config.input_pipeline}  # fmt: skip


def mid_epoch(pipeline):
    """Weights seen at each batch end; a learning rate set to 0 at the second batch end."""

    class Probe(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.sums, self.frozen = [], None

        def on_train_batch_end(self, batch, logs=None):
            self.sums.append(float(sum(np.abs(w).sum() for w in self.model.get_weights())))
            if len(self.sums) == 2:
                self.model.optimizer.learning_rate.assign(0.0)
                self.frozen = [w.copy() for w in self.model.get_weights()]

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(),
                              keras.layers.Rescaling(1 / 255), keras.layers.Dense(10)])  # fmt: skip
    model.compile(optimizer=keras.optimizers.SGD(0.1), steps_per_execution=SPE,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip
    probe = Probe()
    device_loop.fit(model, X, Y, pipeline=pipeline, batch_size=BATCH, epochs=1, verbose=0,
                    shuffle=False, callbacks=[probe])  # fmt: skip
    frozen = all(np.array_equal(a, b) for a, b in zip(probe.frozen, model.get_weights()))
    return {"weight_sums": probe.sums, "lr_after": float(model.optimizer.learning_rate.numpy()),
            "frozen_after_lr_0": frozen}  # fmt: skip


def unsupported():
    from kmnist_lab.errors import ConfigError

    model = build_model("bn_mlp")
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    found = []
    for kwargs in ({"sample_weight": np.ones(N)}, {"validation_data": (X, Y, np.ones(N))}):
        try:
            device_loop.device_fit(model, X, Y, verbose=0, **kwargs)
            found.append(None)
        except ConfigError as e:
            found.append(str(e))
    return found


report = {
    "mid_epoch": {p: mid_epoch(p) for p in ("device", "iterator")},
    "unsupported": unsupported(),
    "resume": resumed_run_matches("device"),
    "resume_iterator": resumed_run_matches("iterator"),
    "errors": errors(),
    "interrupted": {p: interrupted(p) for p in ("device", "iterator")},
    "asgd_device": asgd_then_evaluate("device"),
    "asgd_iterator": asgd_then_evaluate("iterator"),
    "iterator": run("iterator"),
    "device": run("device"),
    "device_shuffled": run("device", shuffle=True),
    "device_shuffled_again": run("device", shuffle=True),
    "iterator_stopped": run("iterator", stop_after=2),
    "device_stopped": run("device", stop_after=2),
    "device_resumed": run("device", epochs=3, initial_epoch=2),
}
print(json.dumps(report))
