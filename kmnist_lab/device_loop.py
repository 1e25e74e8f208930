"""`fit` with the dataset resident on the device and the batch loop compiled (JAX, TensorFlow).

Keras' `model.fit` feeds in-memory arrays through an iterator: on JAX a Python
one (every step slices, and with `shuffle` gathers, a batch in NumPy, converts it
to a JAX array and calls the compiled step; `steps_per_execution = K` only groups
K such calls between two callback rounds), on TensorFlow a `tf.data` pipeline
whose background threads share the CPU with the step's own. For the MLPs on JAX,
whose steps take ~2 ms on a CPU, the Python work is 10-15 % of the step; on
TensorFlow, `residual_cnn` trained at 5.9-9k samples/s through Keras' iterator
and at ~10k with its step called on resident tensors (2 cores, batch 128; see
docs/performance.md, "Input path").

`device_fit` instead copies the uint8 images and the labels to the device once,
draws each epoch's shuffle as one index permutation, and runs K steps per call
(a `jax.lax.fori_loop`, a `lax.scan` on a GPU, or a `tf.while_loop` inside one
`tf.function`) whose body gathers its batch by index and calls Keras' own
`model.train_step`: the same loss, regularisation, optimizer update and metrics as
`model.fit`, with no Python between the K steps. Validation runs the same way with
`model.test_step`. Callbacks see what `model.fit` shows them: the current weights
(on JAX through Keras' own `jax_state_sync`; TensorFlow's variables are updated in
place), batch-end logs every K steps (the last group's end is its true last step,
where `fit` reports the step K would end on), epoch logs with `val_` metrics,
`on_test_begin/end` around validation (so ASGD/EMA weight swaps work),
`model.stop_training`, and `model._initial_epoch` set by a restoring callback.

Keras has no public hook for this: it uses `Model._symbolic_build` (building the
metrics and optimizer before the first step), as `model.fit` itself does.
"""

from __future__ import annotations

import contextlib
import logging
import math
import weakref

import keras
import numpy as np

from kmnist_lab.errors import ConfigError, is_int

_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fit(
    model: keras.Model,
    x,
    y,
    *,
    pipeline: str = "iterator",
    shuffle_seed=None,
    batch_shards: int = 1,
    **kwargs,
):
    """`model.fit(x, y, **kwargs)` through `pipeline`: `"device"` or `"iterator"` (Keras').

    `batch_shards` > 1 (the `device` pipeline on TensorFlow only) splits every batch,
    see `device_fit`.

    `shuffle_seed` makes the order of each epoch a function of the seed and the epoch
    alone, so that a run resumed at epoch `e` sees the batches an uninterrupted one would:
    `device_fit`'s own (see there); on Keras' iterator, the global generator it draws
    each epoch's shuffle from (NumPy's on JAX, torch's on PyTorch) is seeded from
    `(shuffle_seed, epoch)` as the epoch begins (`SeedEachEpoch`). TensorFlow's
    iterator shuffles in its `tf.data` pipeline, the same order every epoch.
    """
    if pipeline == "device":
        return device_fit(model, x, y, shuffle_seed=shuffle_seed, batch_shards=batch_shards,
                          **kwargs)  # fmt: skip
    if pipeline != "iterator":
        raise ConfigError(
            f"`pipeline` must be 'device' or 'iterator'. Received: pipeline={pipeline!r}"
        )
    if batch_shards != 1:
        raise ConfigError(
            "batch_shards > 1 needs the device input pipeline on TensorFlow. Received: "
            f"batch_shards={batch_shards!r} with pipeline='iterator'"
        )
    if shuffle_seed is not None and kwargs.get("shuffle", True):
        seeder, callbacks = SeedEachEpoch(shuffle_seed), kwargs.get("callbacks")
        if isinstance(callbacks, keras.callbacks.CallbackList):
            seeder.set_model(model)
            callbacks.callbacks.insert(0, seeder)
        else:
            kwargs["callbacks"] = [seeder, *(callbacks or [])]
    return model.fit(x, y, **kwargs)


class SeedEachEpoch(keras.callbacks.Callback):
    """Seeds the global generators Keras' iterator shuffles with from `(seed, epoch)`.

    On JAX, Keras 3.15 draws each epoch's order with `np.random.permutation`, and on
    PyTorch a `RandomSampler` seeded from torch's global generator, both as the epoch's
    first batch is read, after `on_epoch_begin`. Left alone, a resumed process draws
    at its first epoch `e` the order the uninterrupted one drew at epoch 1 (the
    generators are seeded once, by `keras.utils.set_random_seed`), and its history
    differs from epoch `e` on (bn_mlp on JAX: loss 0.131 against 0.155 at the resumed
    epoch 2).

    Args:
        seed: a non-negative integer.
    """

    def __init__(self, seed: int):
        super().__init__()
        self.seed = seed

    def on_epoch_begin(self, epoch, logs=None):
        rng = np.random.default_rng([self.seed, epoch])
        np.random.seed(int(rng.integers(2**32)))
        if keras.backend.backend() == "torch":
            import torch

            torch.manual_seed(int(rng.integers(2**62)))


def _traced_trip_count() -> bool:
    """Whether JAX's looped calls trace their number of steps: on a CPU. An epoch's
    last group of full batches (9 of 10 steps, say) then runs in the same compiled
    call as the others. Elsewhere the number stays static: XLA's GPU while loop with
    an unknown trip count copies the loop condition to the host after every step
    (unmeasured here; the GPU numbers in docs/performance.md were taken with a static
    count)."""
    import jax

    return jax.default_backend() == "cpu"


def _compiled(model: keras.Model):
    """`(train_chunk, test_chunk)`, jitted once per model and compile() call.

    A `looped` call runs `length` steps in a loop. On a CPU its trip count is traced
    (a `lax.fori_loop`), so an epoch compiles at most two calls, as on TensorFlow
    (`_tf_compiled`): its full batches (K per call, any number at the end) and its
    partial last batch. (With a static `length` in a `lax.scan`, still used on a GPU,
    an epoch whose full batches are not a multiple of K compiles a third call for its
    last group, in training and in validation.)
    """
    import jax

    key = (id(model.optimizer), id(model._compile_loss), id(model._compile_metrics))
    cached = _COMPILED.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]

    # The functions reach the model through a weak reference: `_COMPILED` holds them
    # strongly, and a strong reference (a bound `model.train_step`) from a value of a
    # WeakKeyDictionary to its key keeps every model trained here alive for good.
    ref = weakref.ref(model)

    traced_length = _traced_trip_count()

    def make(name):
        def chunk(state, x, y, order, start, length, batch, looped):
            step = getattr(ref(), name)

            def run(state, i):
                index = jax.lax.dynamic_slice_in_dim(order, start + i * batch, batch)
                return step(state, (x[index], y[index]))

            if not looped:
                # One step (steps_per_execution 1, the CNNs' default; an epoch's last
                # partial batch): no loop. XLA:CPU runs a convolution inside a while
                # loop's body several times slower (residual_cnn on 2 cores: ~200
                # samples/s in a one-step scan, ~1,400 called directly).
                return run(state, 0)
            if not traced_length:
                state, logs = jax.lax.scan(
                    lambda state, i: run(state, i)[::-1], state, np.arange(length, dtype=np.int32)
                )
                return jax.tree_util.tree_map(lambda v: v[-1], logs), state
            # The loop carries the last step's logs, zeros until the first step.
            shapes = jax.eval_shape(run, state, 0)[0]
            logs = jax.tree_util.tree_map(lambda a: jax.numpy.zeros(a.shape, a.dtype), shapes)
            return jax.lax.fori_loop(0, length, lambda i, carry: run(carry[1], i), (logs, state))

        static = ("batch", "looped") if traced_length else ("batch", "looped", "length")
        return jax.jit(chunk, static_argnames=static)

    functions = (make("train_step"), make("test_step"))
    _COMPILED[model] = (key, functions)
    return functions


def _tf_compiled(model: keras.Model, shards: int = 1):
    """`(train_chunk, test_chunk)`: `tf.function`s, traced once per model, compile() call
    and number of batch shards (`sharded_forward`).

    One call runs `length` steps: the first on its own, the rest in a `tf.while_loop`
    that carries the logs. `length` is a tensor for calls of full batches at K > 1
    steps per call, else the Python int 1 (no loop: the step traced once), see
    `tf_call_length`; `batch` is a Python int, part of the trace (`sharded_forward`
    splits a static batch). An epoch traces at most two calls: its full batches (K
    per call, any number at the end) and its partial last batch. (With `length` a
    Python int, the end of an epoch traced a call of its own: about 1 s more in
    `residual_cnn`'s first epoch, and no faster afterwards.) With the model's
    `jit_compile`, XLA compiles the step alone, as Keras' `fit` does: the whole call
    under XLA, loop and gathers included, trained `bn_mlp` at ~1.3k samples/s on 2
    CPU cores, against 38-53k for the XLA step in TensorFlow's loop.
    """
    import tensorflow as tf

    key = (id(model.optimizer), id(model._compile_loss), id(model._compile_metrics), shards)
    cached = _COMPILED.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    ref = weakref.ref(model)  # as in `_compiled`: no strong reference to the key
    tf_logger = logging.getLogger("tensorflow")
    if _EXPECTED_RETRACING not in tf_logger.filters:
        tf_logger.addFilter(_EXPECTED_RETRACING)

    def make(name):
        def step(x, y):
            model = ref()
            with sharded_forward(model, shards):
                return getattr(model, name)((x, y))

        if model.jit_compile:
            step = tf.function(step, jit_compile=True)

        def chunk(x, y, order, start, length, batch):
            def one(i):
                # A static batch size (`batch` is a Python int): `sharded_forward`
                # splits it into shards of known sizes.
                index = tf.ensure_shape(order[start + i * batch : start + (i + 1) * batch], [batch])
                return step(tf.gather(x, index), tf.gather(y, index))

            logs = one(0)
            if not isinstance(length, int):  # a tensor; the int 1 runs no loop
                for i in tf.range(1, length):
                    logs = one(i)
            return logs

        return tf.function(chunk, reduce_retracing=True)

    functions = (make("train_step"), make("test_step"))
    _COMPILED[model] = (key, functions)
    return functions


@contextlib.contextmanager
def sharded_forward(model: keras.Model, shards: int):
    """Within the context, `model(x)` runs as `shards` independent forward passes.

    `x`'s batch of B samples is split into `shards` consecutive parts, the model runs on
    each, and the outputs are concatenated in order. A static B (`device_fit`'s steps)
    gives parts of `B // shards` or one more samples (no more parts than samples); a
    batch whose size is known only at run time (as Keras' `evaluate` and `predict`
    trace them after their first batch) is padded with zeros to `shards` equal parts,
    whose extra outputs are dropped. For a model whose layers treat samples
    independently (`check_shardable`) this is the same function, and Keras'
    `train_step` (loss over the whole batch, one gradient, one optimizer update,
    metrics) and `test_step` are unchanged around it. What changes is the graph: `shards` chains of ops with no
    data between them until the loss, which TensorFlow's inter-op threads run side by
    side. On a CPU, with one intra-op thread per op, that uses the cores better than
    oneDNN splitting each small convolution across them (`residual_cnn`, 2 cores,
    batch 128: docs/performance.md, "Batch shards").

    The override is an attribute of the model instance (`model.call`), put back as it
    was on exit. Keras' cached `fit`/`evaluate`/`predict` functions are dropped on
    entry and on exit, so that those called inside trace the shards and those called
    after trace the model as it is (those of `device_fit` are cached per shard count).
    """
    if shards <= 1:
        yield
        return
    import tensorflow as tf

    call = model.call

    def split_call(inputs, *args, **kwargs):
        batch = inputs.shape[0]
        if batch is not None:
            n = min(shards, batch)
            parts = tf.split(inputs, [batch // n + (i < batch % n) for i in range(n)])
            outputs = [call(part, *args, **kwargs) for part in parts]
            return keras.tree.map_structure(lambda *o: tf.concat(o, 0), *outputs)
        # Equal parts of a padded batch: no empty part (TensorFlow's CPU convolutions
        # fail on an empty batch), the padding's outputs are dropped.
        size = tf.shape(inputs)[0]
        pad = -size % shards
        padded = tf.pad(inputs, [[0, pad]] + [[0, 0]] * (len(inputs.shape) - 1))
        outputs = [call(part, *args, **kwargs) for part in tf.split(padded, shards)]
        return keras.tree.map_structure(lambda *o: tf.concat(o, 0)[:size], *outputs)

    def drop_keras_functions():
        for name in ("train_function", "test_function", "predict_function"):
            if getattr(model, name, None) is not None:
                setattr(model, name, None)

    own = model.__dict__.get("call")  # an instance attribute to put back, if any
    model.call = split_call
    drop_keras_functions()
    try:
        yield
    finally:
        if own is None:
            del model.call
        else:
            model.call = own
        drop_keras_functions()


def check_shardable(model: keras.Model) -> None:
    """Raises `ConfigError` when `sharded_forward` would change what `model` computes.

    BatchNormalization normalises with the statistics of its (now smaller) batch, and
    activity regularizers add one loss per shard.
    """
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            why = "BatchNormalization would use the statistics of each shard"
        elif getattr(layer, "activity_regularizer", None) is not None:
            why = "its activity regularizer would count once per shard"
        else:
            continue
        raise ConfigError(
            f"batch shards would change what {model.name} computes: layer {layer.name}: {why}; "
            "use batch_shards=1 (train.py: --batch-shards 1)"
        )


class _ExpectedRetracing(logging.Filter):
    """Drops TensorFlow's "triggered tf.function retracing" warning for `_tf_compiled`'s
    functions, and only for them.

    Their traces are bounded by design (at most two per function and model), but
    TensorFlow counts the traces of every function made from the same Python code
    together: the train and test functions of every model trained in the process
    (each run of a study, each trial of a search). After a few models it warns, with
    advice (pass tensors, use `reduce_retracing`) that does not apply.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("triggered tf.function retracing" in message and "_tf_compiled" in message)


_EXPECTED_RETRACING = _ExpectedRetracing()


class _JaxCalls:
    """Runs `device_fit`'s compiled calls on JAX.

    Keras' JAX protocol, as `model.fit` runs it: the state lives outside the
    variables during the epoch; a callback that touches `callback.model` calls
    `model.jax_state_sync()`, which writes it back (so it sees current weights) and
    marks it synced, and the next call re-reads the variables (so what the callback
    changed, a learning rate or a weight, is trained with).
    """

    def __init__(self, model: keras.Model, shards: int = 1):  # one: `device_fit` checks
        import jax.numpy as jnp

        self.model, self.asarray = model, jnp.asarray
        self.train_chunk, self.test_chunk = _compiled(model)

    def put(self, array, dtype=None):
        return self.asarray(array, dtype=dtype)

    def begin_epoch(self) -> None:
        self.variables = _train_variables(self.model)
        self.model._jax_state_synced = True

    def train(self, x, y, order, parts):
        model = self.model
        if model._jax_state_synced:
            self.state = _read(self.variables)
            model._jax_state_synced = False
        for steps, batch, offset, looped in _checked(parts):
            logs, self.state = self.train_chunk(
                self.state, x, y, order, offset, steps, batch, looped
            )
        model._jax_state = dict(zip(_STATE_KEYS, self.state, strict=True))
        return logs

    def end_epoch(self) -> None:
        self.model.jax_state_sync()
        self.model._jax_state = None

    def begin_test(self) -> None:
        self.test_state = _read(_test_variables(self.model))

    def test(self, x, y, order, parts):
        for steps, batch, offset, looped in _checked(parts):
            logs, self.test_state = self.test_chunk(self.test_state, x, y, order, offset,
                                                    steps, batch, looped)  # fmt: skip
        return logs

    def end_test(self) -> None:
        _write(_test_variables(self.model)[2:], self.test_state[2:])  # only the metrics changed


class _TensorFlowCalls:
    """Runs `device_fit`'s compiled calls on TensorFlow (variables updated in place)."""

    def __init__(self, model: keras.Model, shards: int = 1):
        import tensorflow as tf

        self.tf = tf
        self.train_chunk, self.test_chunk = _tf_compiled(model, shards)

    def put(self, array, dtype=None):
        return self.tf.convert_to_tensor(array, dtype=dtype)

    def begin_epoch(self) -> None:
        pass

    def _run(self, chunk, x, y, order, parts):
        for steps, batch, offset, looped in parts:
            offset = self.tf.constant(offset, self.tf.int32)
            logs = chunk(x, y, order, offset, tf_call_length(steps, looped), batch)
        return logs

    def train(self, x, y, order, parts):
        return self._run(self.train_chunk, x, y, order, parts)

    def test(self, x, y, order, parts):
        return self._run(self.test_chunk, x, y, order, parts)

    end_epoch = begin_test = end_test = begin_epoch


DEVICE_BACKENDS = {"jax": _JaxCalls, "tensorflow": _TensorFlowCalls}


def _checked(parts):
    """`parts` of `_calls`, refusing a call that is not looped but runs several steps
    (on JAX it would run one of them silently)."""
    for part in parts:
        steps, _, _, looped = part
        if not looped and steps != 1:
            raise ValueError(f"a call that is not looped runs 1 step. Received: steps={steps}")
        yield part


def tf_call_length(steps: int, looped: bool):
    """The `length` argument of a `_tf_compiled` call of `steps` steps: an int32 tensor
    for a `looped` call (one trace for every number of steps), else the Python int 1
    (a call of one step, traced with no loop)."""
    import tensorflow as tf

    if looped:
        return tf.constant(steps, tf.int32)
    if steps != 1:
        raise ValueError(f"a call that is not looped runs 1 step. Received: steps={steps}")
    return 1


def _as_int32(labels):
    """`labels` as a NumPy array, int64 narrowed to int32 (class indices fit)."""
    labels = np.asarray(labels)
    return labels.astype(np.int32) if labels.dtype == np.int64 else labels


def _calls(n: int, batch_size: int, per_call: int):
    """`(first_step, last_step, parts)` for each group of `per_call` steps of one epoch.

    Callbacks fire once per group, as `model.fit` fires them once per
    `steps_per_execution` steps. `parts` are the compiled calls of the group,
    `(steps, batch, offset, looped)`: its full batches in one call, and the epoch's
    last partial batch (a different shape) in a call of its own. `looped`: a call of
    full batches when `per_call` > 1, which runs its steps in a loop (any number of
    them, one trace on TensorFlow: `tf_call_length`).
    """
    full, partial = divmod(n, batch_size)
    total = full + (partial > 0)
    for first in range(0, total, per_call):
        last = min(first + per_call, total) - 1
        parts = []
        if first < full:
            steps = min(last + 1, full) - first
            parts.append((steps, batch_size, first * batch_size, per_call > 1))
        if last == full:  # only when there is a partial batch
            parts.append((1, partial, full * batch_size, False))
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
    batch_shards: int = 1,
    **unsupported,
):
    """Trains a compiled Keras model like `model.fit`, the batch loop on the device.

    Args:
        model: a compiled model; its `steps_per_execution` (K) sets how many steps
            each compiled call runs (callbacks fire every K steps, as with `fit`).
        x, y: in-memory arrays (NumPy, JAX or TensorFlow): images and integer labels.
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
        batch_shards: on TensorFlow, run each batch (training and validation) as this
            many independent forward passes (`sharded_forward`): the same function, a
            graph whose shards TensorFlow's inter-op threads run side by side. It pays
            with one intra-op thread (`kmnist_lab.speed.configure_batch_shards`).

    Returns:
        The `keras.callbacks.History` of the run (also `model.history`).

    Raises:
        ConfigError: on a backend other than JAX and TensorFlow, under a
            `keras.distribution` or a `tf.distribute` strategy, for an uncompiled
            model, when `x` and `y` differ in length or are empty, for
            `validation_data` other than `(x_val, y_val)`, and for `model.fit`
            arguments it does not implement (`sample_weight`, `class_weight`,
            `validation_split`, `steps_per_epoch`, ...); `batch_shards` > 1 on JAX or
            for a model `check_shardable` refuses.
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
    if validation_data is not None and (
        len(validation_data[0]) != len(validation_data[1]) or len(validation_data[1]) == 0
    ):
        raise ConfigError(
            "validation_data needs x_val and y_val of the same, non-zero number of samples. "
            f"Received: {len(validation_data[0])} and {len(validation_data[1])}"
        )
    backend = keras.backend.backend()
    if backend not in DEVICE_BACKENDS:
        raise ConfigError(
            f"the device input pipeline needs the {' or '.join(DEVICE_BACKENDS)} backend. "
            f"Received: backend={backend!r}"
        )
    if _distributed(model):
        raise ConfigError(
            "the device input pipeline does not shard data; use pipeline='iterator' "
            "with a keras.distribution or a tf.distribute strategy"
        )
    if getattr(model, "optimizer", None) is None:
        raise ConfigError("compile the model (model.compile) before training it")
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
    for name, value, low in (("batch_size", batch_size, 1), ("epochs", epochs, 0),
                             ("initial_epoch", initial_epoch, 0),
                             ("batch_shards", batch_shards, 1)):  # fmt: skip
        if not is_int(value) or value < low:
            rule = "a positive integer" if low else "an integer >= 0"
            raise ConfigError(f"{name} must be {rule}. Received: {name}={value!r}")
    # As Python ints: TensorFlow's ops refuse to mix an `np.int64` with its int32 steps.
    batch_size, epochs, initial_epoch, batch_shards = map(
        int, (batch_size, epochs, initial_epoch, batch_shards)
    )
    if batch_shards > 1:
        if backend != "tensorflow":
            raise ConfigError(
                "batch_shards > 1 is implemented for the tensorflow backend only. "
                f"Received: batch_shards={batch_shards} on backend={backend!r}"
            )
        check_shardable(model)
    per_call = max(1, int(model.steps_per_execution or 1))
    steps_per_epoch = math.ceil(n / batch_size)
    model._symbolic_build(data_batch=(x[:batch_size], y[:batch_size]))
    calls = DEVICE_BACKENDS[backend](model, batch_shards)
    x_dev, y_dev = calls.put(x), calls.put(y)
    if validation_data is not None:
        x_val, y_val = (calls.put(a) for a in validation_data)
        val_order = calls.put(np.arange(len(validation_data[1])), "int32")
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
    try:
        for epoch in range(initial_epoch, epochs):
            model.reset_metrics()
            callbacks.on_epoch_begin(epoch)
            if shuffle:
                order = np.random.default_rng([shuffle_seed, epoch]).permutation(n)
            else:
                order = np.arange(n)
            order = calls.put(order, "int32")
            calls.begin_epoch()
            for first, last, parts in _calls(n, batch_size, per_call):
                callbacks.on_train_batch_begin(first)
                logs = calls.train(x_dev, y_dev, order, parts)
                callbacks.on_train_batch_end(last, logs)
                if model.stop_training:
                    break
            calls.end_epoch()
            epoch_logs = dict(model.get_metrics_result())
            if validation_data is not None:  # also after stop_training, as `model.fit` does
                val = (x_val, y_val, val_order, batch_size, per_call)
                val_logs = _validate(model, calls, *val, callbacks)
                epoch_logs.update({f"val_{k}": v for k, v in val_logs.items()})
            callbacks.on_epoch_end(epoch, epoch_logs)
            if model.stop_training:
                break
    finally:
        # As `model.fit`, also when an exception (Ctrl-C, a callback's error) ends
        # training: on JAX, the state trained so far goes back into the variables (the
        # model otherwise kept the epoch's starting weights and iteration count, the
        # trained state left behind in `model._jax_state`).
        calls.end_epoch()
        if epochs > 0:
            model.optimizer.finalize_variable_values(model.trainable_weights)
    callbacks.on_train_end(logs=epoch_logs)
    return model.history


def _distributed(model: keras.Model) -> bool:
    """Whether `model` trains under a `keras.distribution` or a `tf.distribute` strategy."""
    # A TensorFlow model built inside a strategy's scope keeps it (Keras' trainer
    # stores `tf.distribute.get_strategy()` only when a strategy is active).
    return (keras.distribution.distribution() is not None
            or getattr(model, "_distribute_strategy", None) is not None)  # fmt: skip


def _validate(model, calls, x, y, order, batch_size, per_call, callbacks) -> dict:
    """The metrics of `(x, y)`, computed like `model.evaluate` inside `fit`."""
    callbacks.on_test_begin()  # may swap in averaged weights: read the state after it
    model.reset_metrics()
    calls.begin_test()
    for first, last, parts in _calls(len(y), batch_size, per_call):
        callbacks.on_test_batch_begin(first)
        logs = calls.test(x, y, order, parts)
        callbacks.on_test_batch_end(last, logs)
    calls.end_test()
    logs = dict(model.get_metrics_result())
    callbacks.on_test_end(logs)
    return logs
