"""Data-parallel training on the engines the Keras backends already have.

`distribution_scope("data-parallel")` wraps model building and compilation:

- JAX: `keras.distribution.DataParallel` over every device of the process; each
  global batch is sharded across devices and gradients are all-reduced inside the
  compiled step (BatchNorm statistics are those of the global batch).
- TensorFlow: `tf.distribute.MirroredStrategy` over the GPUs, or over the logical
  CPU devices when the CPU has been split (`split_cpu`); gradients are all-reduced
  across replicas. BatchNorm batch statistics are per replica (as in PyTorch DDP without
  SyncBatchNorm); the first replica's moving statistics are copied to the others before
  every evaluation and at the end (`SyncReplicaState`, DDP's `broadcast_buffers`), so the
  recorded accuracies are those of the exported model.
- PyTorch: not supported. Keras' torch backend has no built-in data-parallel
  trainer; use `torchrun` with your own DDP loop, or the JAX/TensorFlow backends.

On one machine, the same flag uses every GPU; across machines, combine it with
keras-tuner's chief/worker mode (one search, one trial per machine) or JAX's
multi-process runtime (`jax.distributed.initialize`, then the same DataParallel).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

import keras
import numpy as np

from kmnist_lab.config import DISTRIBUTE_MODES
from kmnist_lab.errors import ConfigError

log = logging.getLogger(__name__)


def split_cpu(n: int) -> None:
    """Splits the host CPU into `n` logical devices (tests, or trying the flag on a laptop).

    Must run before the backend initialises its devices: for JAX it sets
    `XLA_FLAGS=--xla_force_host_platform_device_count=n` (before JAX is imported);
    for TensorFlow it calls `tf.config.set_logical_device_configuration`.
    """
    if n < 2:
        return
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend == "jax":
        flag = f"--xla_force_host_platform_device_count={n}"
        if flag not in os.environ.get("XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
        if "jax" in sys.modules:  # its CPU devices may exist already (then the flag is ignored)
            import jax

            if len(jax.devices("cpu")) < n:
                log.warning("JAX devices were already initialised; CPU not split")
    elif backend == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * n
            )
        except RuntimeError:
            log.warning("TensorFlow devices were already initialised; CPU not split")


def device_count() -> int:
    """Devices data parallelism can use: JAX's devices; TensorFlow's logical GPUs, else its
    logical CPUs (several after `split_cpu`); 1 on other backends."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.device_count()
    if backend == "tensorflow":
        import tensorflow as tf

        return len(tf.config.list_logical_devices("GPU")) or len(
            tf.config.list_logical_devices("CPU")
        )
    return 1


def check_even_batches(splits: dict, n: int) -> None:
    """Refuses a JAX data-parallel run whose batches cannot be sharded evenly.

    `keras.distribution.DataParallel` splits every batch into `n` equal shards, so each
    batch size a split produces (the full one and its last, partial one) must be a
    multiple of `n`; JAX would otherwise stop mid-run with an `IndivisibleError`.

    Args:
        splits: `{name: (number of samples, batch size)}`.
        n: number of devices.

    Raises:
        ConfigError: naming the first split whose batches do not divide by `n`.
    """
    for name, (size, batch) in splits.items():
        sizes = ([batch] if size >= batch else []) + ([size % batch] if size % batch else [])
        for b in sizes:
            if b % n:
                raise ConfigError(
                    f"JAX data-parallel over {n} devices shards every batch evenly, but the "
                    f"{name} split ({size} samples in batches of {batch}) has a batch of {b}, "
                    f"not a multiple of {n}. Choose a batch size and device count that divide "
                    "every split (e.g. --batch-size a multiple of the devices and splits whose "
                    "remainders are too), or --backend tensorflow"
                )


@contextlib.contextmanager
def distribution_scope(mode: str | None):
    """Context in which to build and compile a model for `mode` (`none`/`data-parallel`).

    Raises:
        ConfigError: unknown mode, or data-parallel on the torch backend.
    """
    mode = mode or "none"
    if mode not in DISTRIBUTE_MODES:
        raise ConfigError(
            f"`distribute` must be one of {', '.join(DISTRIBUTE_MODES)}. Received: {mode!r}"
        )
    if mode == "none":
        yield None
        return
    backend = keras.backend.backend()
    if backend == "torch":
        raise ConfigError(
            "--distribute data-parallel needs the jax or tensorflow backend: Keras' torch backend "
            "has no built-in data-parallel trainer (use --backend jax or tensorflow)"
        )
    if backend == "jax":
        devices = keras.distribution.list_devices()
        _warn_if_one(devices)
        log.info("data-parallel over %d JAX devices", len(devices))
        previous = keras.distribution.distribution()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        try:
            yield devices
        finally:
            keras.distribution.set_distribution(previous)
        return
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    _warn_if_one(devices)
    strategy = tf.distribute.MirroredStrategy(devices=devices)
    log.info(
        "data-parallel over %d TensorFlow devices (MirroredStrategy)", strategy.num_replicas_in_sync
    )
    with strategy.scope():
        yield devices


def _warn_if_one(devices) -> None:
    """Data-parallel over one device trains as `distribute none` would, with the
    strategy's overhead: say so, and how to get more devices."""
    if len(devices) == 1:
        log.warning(
            "--distribute data-parallel found one device (%s): the run trains as "
            "--distribute none would. Split a CPU with --cpu-devices N, or run on a "
            "machine with several GPUs",
            devices[0],
        )


class SyncReplicaState(keras.callbacks.Callback):
    """TensorFlow `MirroredStrategy`: gives every replica the first replica's
    non-trainable state (BatchNorm moving statistics) before each evaluation and
    when training ends.

    Each replica updates its copy of a moving statistic from its own share of the
    batch, and nothing reconciles the copies: the model that is saved and exported
    holds the first replica's values, while an evaluation inside the strategy scores
    each share of the data with its own replica's, so the recorded validation and test
    accuracy described no model that exists. Copying the first replica's values is
    what PyTorch DDP does (`broadcast_buffers`, rank 0's buffers); the validation,
    the test score, the backup and the export then all use one model. A no-op for
    variables that are not replicated (JAX, one device).
    """

    def _sync(self):
        for variable in self.model.non_trainable_variables:
            value = getattr(variable, "value", variable)
            replicas = getattr(value, "values", None)
            if replicas is None or len(replicas) < 2:
                continue
            first = keras.ops.convert_to_numpy(replicas[0])
            if any(not np.array_equal(first, keras.ops.convert_to_numpy(r)) for r in replicas[1:]):
                variable.assign(first)

    def on_test_begin(self, logs=None):
        self._sync()

    def on_train_end(self, logs=None):
        self._sync()
