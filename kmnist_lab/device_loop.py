"""`fit` with the dataset resident on the device and the batch loop compiled (JAX).

On the JAX backend, Keras' `model.fit` feeds NumPy arrays through a Python
iterator: every step slices (and, with `shuffle`, gathers) a batch in NumPy,
converts it to a JAX array and calls the compiled step; `steps_per_execution = K`
only groups K such calls between two callback rounds. For the MLPs, whose steps
take ~2 ms on a CPU, that Python work is 10-15 % of the step.

`device_fit` instead copies the uint8 images and the labels to the device once,
draws each epoch's shuffle as one index permutation, and runs K steps per call as
a `jax.lax.scan` whose body gathers its batch by index and calls Keras' own
`model.train_step`: the same loss, regularisation, optimizer update and metrics
as `model.fit`, with no Python between the K steps. Validation runs the same way
with `model.test_step`. Callbacks see what `model.fit` shows them: the current
weights (through Keras' own `jax_state_sync`), batch-end logs
every K steps (the last group's end is its true last step, where `fit` reports
the step K would end on), epoch logs with `val_` metrics, `on_test_begin/end` around
validation (so ASGD/EMA weight swaps work), `model.stop_training`, and
`model._initial_epoch` set by a restoring callback.

Keras has no public hook for this: it uses `Model._symbolic_build` (building the
metrics and optimizer before the first step), as `model.fit` itself does.
"""

from __future__ import annotations

import math
import weakref

import keras
import numpy as np

from kmnist_lab.errors import ConfigError

_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fit(model: keras.Model, x, y, *, pipeline: str = "iterator", shuffle_seed=None, **kwargs):
    """`model.fit(x, y, **kwargs)` through `pipeline`: `"device"` or `"iterator"` (Keras').

    `shuffle_seed` is `device_fit`'s (the order of each epoch a function of the seed and
    the epoch); Keras' iterator shuffles with its own seeded generator and ignores it.
    """
    if pipeline == "device":
        return device_fit(model, x, y, shuffle_seed=shuffle_seed, **kwargs)
    if pipeline != "iterator":
        raise ConfigError(
            f"`pipeline` must be 'device' or 'iterator'. Received: pipeline={pipeline!r}"
        )
    return model.fit(x, y, **kwargs)


def _compiled(model: keras.Model):
    """`(train_chunk, test_chunk)`, jitted once per model and compile() call."""
    import jax

    key = (id(model.optimizer), id(model._compile_loss), id(model._compile_metrics))
    cached = _COMPILED.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]

    # The functions reach the model through a weak reference: `_COMPILED` holds them
    # strongly, and a strong reference (a bound `model.train_step`) from a value of a
    # WeakKeyDictionary to its key keeps every model trained here alive for good.
    ref = weakref.ref(model)

    def make(name):
        def chunk(state, x, y, order, start, length, batch):
            step = getattr(ref(), name)

            def body(state, i):
                index = jax.lax.dynamic_slice_in_dim(order, start + i * batch, batch)
                logs, state = step(state, (x[index], y[index]))
                return state, logs

            if length == 1:
                # One step (steps_per_execution 1, the CNNs' default; an epoch's last
                # partial batch): no loop. XLA:CPU runs a convolution inside a while
                # loop's body several times slower (residual_cnn on 2 cores: ~200
                # samples/s in a one-step scan, ~1,400 called directly).
                state, logs = body(state, 0)
                return logs, state
            state, logs = jax.lax.scan(body, state, np.arange(length, dtype=np.int32))
            return jax.tree_util.tree_map(lambda v: v[-1], logs), state

        return jax.jit(chunk, static_argnames=("length", "batch"))

    functions = (make("train_step"), make("test_step"))
    _COMPILED[model] = (key, functions)
    return functions


def _as_int32(labels):
    """`labels` as a NumPy array, int64 narrowed to int32 (class indices fit)."""
    labels = np.asarray(labels)
    return labels.astype(np.int32) if labels.dtype == np.int64 else labels


def _calls(n: int, batch_size: int, per_call: int):
    """`(first_step, last_step, parts)` for each group of `per_call` steps of one epoch.

    Callbacks fire once per group, as `model.fit` fires them once per
    `steps_per_execution` steps. `parts` are the compiled calls of the group,
    `(steps, batch, offset)`: its full batches in one call, and the epoch's last
    partial batch (a different shape) in a call of its own.
    """
    full, partial = divmod(n, batch_size)
    total = full + (partial > 0)
    for first in range(0, total, per_call):
        last = min(first + per_call, total) - 1
        parts = []
        if first < full:
            parts.append((min(last + 1, full) - first, batch_size, first * batch_size))
        if last == full:  # only when there is a partial batch
            parts.append((1, partial, full * batch_size))
        yield first, last, parts


def _train_variables(model) -> tuple:
    """The variables of `model.train_step`'s state, in its order."""
    return (
        model.trainable_variables,
        model.non_trainable_variables,
        model.optimizer.variables,
        model.metrics_variables,
    )


def _test_variables(model) -> tuple:
    """The variables of `model.test_step`'s state, in its order."""
    return model.trainable_variables, model.non_trainable_variables, model.metrics_variables


_STATE_KEYS = (
    "trainable_variables",
    "non_trainable_variables",
    "optimizer_variables",
    "metrics_variables",
)  # fmt: skip  (Keras' `model._jax_state`, see `_train_variables`)


def _read(groups) -> tuple:
    return tuple([v.value for v in group] for group in groups)


def _write(groups, state) -> None:
    for group, values in zip(groups, state):
        for variable, value in zip(group, values):
            variable.assign(value)


def device_fit(
    model: keras.Model,
    x,
    y,
    *,
    batch_size: int = 32,
    epochs: int = 1,
    validation_data=None,
    shuffle: bool = True,
    callbacks=None,
    verbose="auto",
    initial_epoch: int = 0,
    shuffle_seed: int | None = None,
    **unsupported,
):
    """Trains a compiled Keras model like `model.fit`, the batch loop on the device (JAX).

    Args:
        model: a compiled model; its `steps_per_execution` (K) sets how many steps
            each compiled call runs (callbacks fire every K steps, as with `fit`).
        x, y: in-memory arrays (NumPy or JAX): images and integer labels.
        batch_size, epochs, shuffle, initial_epoch: as `model.fit`. The last
            partial batch of an epoch is trained, as `fit` does.
        validation_data: `(x_val, y_val)` or None; evaluated after every epoch.
        callbacks: Keras callbacks, or a `keras.callbacks.CallbackList`.
        verbose: Keras progress bar: 0 silent, 1 bar, 2 one line per epoch.
        shuffle_seed: with `shuffle`, epoch `e` trains in the order
            `np.random.default_rng([shuffle_seed, e]).permutation(len(x))`, which does
            not depend on what ran before, so a run resumed at epoch `e` sees the
            batches an uninterrupted one would. None: a seed drawn from NumPy's global
            generator (seeded by `keras.utils.set_random_seed`).

    Returns:
        The `keras.callbacks.History` of the run (also `model.history`).

    Raises:
        ConfigError: on a backend other than JAX, under a `keras.distribution`, for
            an uncompiled model, when `x` and `y` differ in length or are empty, for
            `validation_data` other than `(x_val, y_val)`, and for `model.fit`
            arguments it does not implement (`sample_weight`, `class_weight`,
            `validation_split`, `steps_per_epoch`, ...).
    """
    if unsupported:
        raise ConfigError(
            f"the device input pipeline does not support {', '.join(sorted(unsupported))}; "
            "use pipeline='iterator' (Keras' model.fit)"
        )
    if validation_data is not None and len(validation_data) != 2:
        raise ConfigError(
            "the device input pipeline takes validation_data=(x_val, y_val). Received: "
            f"a {type(validation_data).__name__} of {len(validation_data)} items"
        )
    if keras.backend.backend() != "jax":
        raise ConfigError(
            "the device input pipeline needs the jax backend. "
            f"Received: backend={keras.backend.backend()!r}"
        )
    if keras.distribution.distribution() is not None:
        raise ConfigError(
            "the device input pipeline does not shard data; use pipeline='iterator' "
            "with a keras.distribution"
        )
    if getattr(model, "optimizer", None) is None:
        raise ConfigError("compile the model (model.compile) before training it")
    import jax.numpy as jnp

    n = len(y)
    if len(x) != n or n == 0:
        raise ConfigError(
            f"x and y need the same, non-zero number of samples. Received: {len(x)} and {n}"
        )
    # JAX computes in 32 bits (x64 off) and narrows int64 arrays to int32; jax 0.11
    # warns each time it does so for the model's symbolic build ("Explicitly requested
    # dtype int64 requested in ShapeDtypeStruct is not available", seen on the H100
    # machine; jax 0.10 narrows silently). The labels are class indices: int32 holds them.
    y = _as_int32(y)
    if validation_data is not None:
        validation_data = (validation_data[0], _as_int32(validation_data[1]))
    per_call = max(1, int(model.steps_per_execution or 1))
    steps_per_epoch = math.ceil(n / batch_size)
    model._symbolic_build(data_batch=(x[:batch_size], y[:batch_size]))
    train_chunk, test_chunk = _compiled(model)
    x_dev, y_dev = jnp.asarray(x), jnp.asarray(y)
    if validation_data is not None:
        x_val, y_val = (jnp.asarray(a) for a in validation_data)
        val_order = jnp.arange(len(y_val), dtype=jnp.int32)
    if not isinstance(callbacks, keras.callbacks.CallbackList):
        callbacks = keras.callbacks.CallbackList(
            callbacks,
            add_history=True,
            add_progbar=verbose != 0,
            verbose=1 if verbose == "auto" else verbose,
            epochs=epochs,
            steps=steps_per_epoch,
            model=model,
        )
    model.stop_training = False
    callbacks.on_train_begin()
    initial_epoch = model._initial_epoch or initial_epoch
    if shuffle_seed is None:
        shuffle_seed = int(np.random.randint(0, 2**31 - 1))
    epoch_logs: dict = {}
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        callbacks.on_epoch_begin(epoch)
        if shuffle:
            order = np.random.default_rng([shuffle_seed, epoch]).permutation(n)
        else:
            order = np.arange(n)
        order = jnp.asarray(order, dtype=jnp.int32)
        variables = _train_variables(model)
        # Keras' JAX protocol, as `model.fit` runs it: the state lives outside the
        # variables during the epoch; a callback that touches `callback.model` calls
        # `model.jax_state_sync()`, which writes it back (so it sees current weights)
        # and marks it synced, and the next call re-reads the variables (so what the
        # callback changed, a learning rate or a weight, is trained with).
        model._jax_state_synced = True
        for first, last, parts in _calls(n, batch_size, per_call):
            callbacks.on_train_batch_begin(first)
            if model._jax_state_synced:
                state = _read(variables)
                model._jax_state_synced = False
            for steps, batch, offset in parts:
                logs, state = train_chunk(state, x_dev, y_dev, order, offset, steps, batch)
            model._jax_state = dict(zip(_STATE_KEYS, state, strict=True))
            callbacks.on_train_batch_end(last, logs)
            if model.stop_training:
                break
        model.jax_state_sync()
        model._jax_state = None
        epoch_logs = dict(model.get_metrics_result())
        if validation_data is not None:  # also after stop_training, as `model.fit` does
            val = (x_val, y_val, val_order, batch_size, per_call)
            val_logs = _validate(model, test_chunk, *val, callbacks)
            epoch_logs.update({f"val_{k}": v for k, v in val_logs.items()})
        callbacks.on_epoch_end(epoch, epoch_logs)
        if model.stop_training:
            break
    if epochs > 0:
        model.optimizer.finalize_variable_values(model.trainable_weights)
    callbacks.on_train_end(logs=epoch_logs)
    return model.history


def _validate(model, test_chunk, x, y, order, batch_size, per_call, callbacks) -> dict:
    """The metrics of `(x, y)`, computed like `model.evaluate` inside `fit`."""
    callbacks.on_test_begin()  # may swap in averaged weights: read the state after it
    model.reset_metrics()
    state = _read(_test_variables(model))
    for first, last, parts in _calls(len(y), batch_size, per_call):
        callbacks.on_test_batch_begin(first)
        for steps, batch, offset in parts:
            logs, state = test_chunk(state, x, y, order, offset, steps, batch)
        callbacks.on_test_batch_end(last, logs)
    _write(_test_variables(model)[2:], state[2:])  # only the metrics changed
    logs = dict(model.get_metrics_result())
    callbacks.on_test_end(logs)
    return logs
