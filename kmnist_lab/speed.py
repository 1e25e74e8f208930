"""Compile policy: when to use XLA and how many steps to run per compiled call.

Measured on a 2-core CPU (see `docs/performance.md` and `scripts/benchmark.py`):
XLA speeds the MLPs up but slows convolutional nets down on CPU, and running
several steps per compiled call removes per-step overhead (10 steps for every
model, except the CNNs on JAX's CPU backend, whose convolutions XLA runs slowly
inside a loop). On a GPU, XLA is used for every model.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os

import keras

from kmnist_lab.config import INPUT_PIPELINES, JIT_POLICIES, PRECISIONS
from kmnist_lab.device_loop import DEVICE_BACKENDS
from kmnist_lab.errors import ConfigError
from kmnist_lab.models import model_family

# Architectures for which XLA measured faster on CPU (TensorFlow backend).
XLA_ON_CPU = {"mlp"}  # families
# Steps per compiled call (capped at the steps of one epoch). On a 2-core CPU, batch
# 128, samples/s at 1 / 10 steps per call: JAX bn_mlp 58k / 60k (Keras' iterator);
# TensorFlow residual_cnn 8.9k / 10.9k, resnet18 244 / 239 (`device` pipeline). On an
# H100 one call per step leaves the GPU waiting on the host (JAX, 1 / 10 / 50: bn_mlp
# 184k / 696k / 1.19M, residual_cnn 96k / 244k / 205k, resnet18 32k / 58k / 58k).
# docs/performance.md, "The defaults" and "On a GPU".
STEPS_PER_EXECUTION = 10
# ...except the CNNs on JAX without an accelerator: XLA:CPU runs convolutions several
# times slower inside a loop, so one step per call there.
CPU_LOOP_AVERSE = {("jax", "cnn")}  # (backend, family)
# Batch shards (`kmnist_lab.device_loop.sharded_forward`), TensorFlow on a CPU: the
# architectures where they measured faster (residual_cnn, 2 cores, batch 128: see
# docs/performance.md, "Batch shards"), and the smallest shard the policy makes.
# ResNet-18 has BatchNorm, whose batch statistics shards would change.
BATCH_SHARDED_ARCHS = {"residual_cnn"}
MIN_SHARD = 32

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def has_accelerator() -> bool:
    """True when the Keras backend sees a GPU/TPU."""
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return any(d.device_type != "CPU" for d in tf.config.list_physical_devices())
        if backend == "jax":
            import jax

            return any(d.platform != "cpu" for d in jax.devices())
        if backend == "torch":
            import torch

            return torch.cuda.is_available()
    except Exception:  # a broken accelerator runtime means: no accelerator
        return False
    return False


def check_steps_per_execution(backend: str | None, steps_per_execution: int | None) -> None:
    """Raises `ConfigError` for K > 1 steps per call on torch (Keras runs one there)."""
    if backend == "torch" and steps_per_execution not in (None, 1):
        raise ConfigError(
            "Keras' torch backend runs one step per call: `steps_per_execution` must be 1 "
            f"there. Received: steps_per_execution={steps_per_execution!r}"
        )


def resolve_jit(policy: str, arch: str) -> bool | str:
    """The `jit_compile` value for `model.compile`.

    - `on`: forced. `off`: forced on TensorFlow and torch; on JAX still compiled
      (`jax.jit`), because Keras' JAX trainer without it runs op by op through Python
      (orders of magnitude slower) and the device input pipeline needs a jitted step.
    - `auto`: JAX always compiles; TensorFlow uses XLA on GPU, and on CPU only for
      the families in `XLA_ON_CPU`; torch runs eagerly (Keras' `torch.compile` path
      measured slower for these small models).
    """
    if policy not in JIT_POLICIES:
        raise ConfigError(
            f"`jit` must be one of {', '.join(JIT_POLICIES)}. Received: jit={policy!r}"
        )
    backend = keras.backend.backend()
    if policy == "on":
        return True
    if policy == "off":
        return False if backend != "jax" else True  # JAX has no eager training loop worth using
    if backend == "jax":
        return True
    if backend == "torch":
        return False
    return has_accelerator() or model_family(arch) in XLA_ON_CPU


def resolve_steps_per_execution(arch: str, steps_per_epoch: int) -> int:
    """Steps per compiled call for `arch`, never more than one epoch's steps.

    1 on torch (Keras runs one step per call there) and for `CPU_LOOP_AVERSE`
    (backend, family) pairs on a CPU; `STEPS_PER_EXECUTION` otherwise.
    """
    backend = keras.backend.backend()
    if backend == "torch":
        return 1
    if not has_accelerator() and (backend, model_family(arch)) in CPU_LOOP_AVERSE:
        return 1
    return max(1, min(STEPS_PER_EXECUTION, steps_per_epoch))


def resolve_input_pipeline(policy: str, distributed: bool = False) -> str:
    """How batches reach the model: `device` or `iterator` (see `TrainConfig.input_pipeline`).

    `auto` picks `device` (`kmnist_lab.device_loop`) on JAX, and on TensorFlow without
    a GPU, unless the run is distributed; Keras' `iterator` otherwise. Measured faster
    on both: 10-15 % for the MLPs on JAX, whose steps are short enough for Keras'
    per-batch Python work to show; on TensorFlow, where Keras' iterator is a `tf.data`
    pipeline, `residual_cnn` 8.8-11k samples/s against 6-9k and the MLPs 40-55k
    against 22-37k (docs/performance.md).
    """
    if policy not in INPUT_PIPELINES:
        raise ConfigError(
            f"`input_pipeline` must be one of {', '.join(INPUT_PIPELINES)}. "
            f"Received: input_pipeline={policy!r}"
        )
    backend = keras.backend.backend()
    supported = backend in DEVICE_BACKENDS and not distributed
    if policy == "device" and not supported:
        wrong_backend = backend not in DEVICE_BACKENDS
        why = f"backend={backend!r}" if wrong_backend else "distribute='data-parallel'"
        raise ConfigError(
            f"input_pipeline 'device' needs the {' or '.join(DEVICE_BACKENDS)} backend "
            f"without distribute. Received: {why}"
        )
    if policy == "auto":
        # TensorFlow's `device` loop is measured on CPUs only: TensorFlow on a GPU is
        # unmeasured here, and its GPU gather kernels may not take uint8 images (the
        # batches would then be gathered on the host and copied every step).
        tf_gpu = backend == "tensorflow" and has_accelerator()
        return "device" if supported and not tf_gpu else "iterator"
    return policy


def resolve_precision(precision: str) -> str:
    """The Keras dtype policy of `--precision`.

    - `float32`: everything in float32.
    - `mixed`: `mixed_bfloat16`: layers compute in bfloat16 and keep float32 weights;
      the classifier head, BatchNorm statistics and the losses stay in float32.
      bfloat16 has float32's exponent range, so no loss scaling is needed (unlike
      float16). Fast on GPUs from Ampere (A100, H100) on, TPUs, and CPUs with
      AVX-512 bf16 or AMX; emulated (slow) on older GPUs.
    """
    if precision not in PRECISIONS:
        raise ConfigError(
            f"`precision` must be one of {', '.join(PRECISIONS)}. Received: precision={precision!r}"
        )
    return "float32" if precision == "float32" else "mixed_bfloat16"


@contextlib.contextmanager
def dtype_policy(precision: str):
    """Builds models under `precision`'s dtype policy; restores the global one after.

    Layers take the global policy when they are created, so only model building
    needs to happen inside the block.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(resolve_precision(precision))
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def cpu_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def planned_batch_shards(requested: int | None, arch: str, backend: str, batch_size: int,
                         input_pipeline: str = "auto", jit: str = "auto") -> int:  # fmt: skip
    """How many shards `batch_shards` (None: auto) asks for, from the config alone.

    Decided before the backend starts, since the shards need TensorFlow's threads set
    then (`configure_batch_shards`). `auto`: on TensorFlow without an accelerator, for
    `BATCH_SHARDED_ARCHS`, with the `device` input pipeline and without XLA (the
    measured setting), one shard per CPU core, each of at least `MIN_SHARD` samples;
    1 otherwise.
    """
    if requested is not None:
        return requested
    if (backend != "tensorflow" or arch not in BATCH_SHARDED_ARCHS or input_pipeline == "iterator"
            or jit == "on" or has_accelerator()):  # fmt: skip
        return 1
    return max(1, min(cpu_cores(), batch_size // MIN_SHARD))


def planned_batch_shards_of(settings) -> int:
    """`planned_batch_shards` for TensorFlow from a run's settings (a config dict, or a
    command line's values; missing ones take `TrainConfig`'s and the arch's defaults).

    1 with `distribute` and where a value is not an integer (the config's checks
    report it later).
    """
    from kmnist_lab.config import ARCH_DEFAULTS, FALLBACK_DEFAULTS, TrainConfig

    arch = settings.get("arch") or TrainConfig.arch
    batch = settings.get("batch_size") or ARCH_DEFAULTS.get(arch, FALLBACK_DEFAULTS).batch_size
    shards = settings.get("batch_shards")
    if (settings.get("distribute") or "none") != "none" or not isinstance(batch, int):
        return 1
    if shards is not None and not isinstance(shards, int):
        return 1
    return planned_batch_shards(shards, arch, "tensorflow", batch,
                                settings.get("input_pipeline") or "auto",
                                settings.get("jit") or "auto")  # fmt: skip


def _threads() -> tuple[int, int]:
    import tensorflow as tf

    intra = tf.config.threading.get_intra_op_parallelism_threads()
    inter = tf.config.threading.get_inter_op_parallelism_threads()
    return intra, inter or cpu_cores()  # 0: TensorFlow's default, one per core


def configure_batch_shards(shards: int) -> bool:
    """Sets TensorFlow's threads for `shards` batch shards: 1 intra-op thread (each op
    on one core), `shards` inter-op threads (the shards side by side).

    TensorFlow takes thread settings only before its runtime starts (the first op or
    model): `scripts/train.py` calls this first thing. Later it changes nothing.

    Returns:
        Whether TensorFlow's threads suit `shards` (always True for 1).
    """
    if shards <= 1:
        return True
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(shards)
    except RuntimeError:  # the runtime has started; its threads stay as they are
        pass
    intra, inter = _threads()
    return intra == 1 and inter >= shards


def resolve_batch_shards(requested: int | None, model: keras.Model, arch: str, batch_size: int,
                         pipeline: str, jit: str = "auto") -> int:  # fmt: skip
    """The batch shards a compiled `model` trains with (`device_loop.sharded_forward`).

    `requested` None (auto): `planned_batch_shards`, where it is more than 1 only when
    the run can have them as measured: the `device` pipeline, TensorFlow's threads
    set for them (`configure_batch_shards`), a model they do not change
    (`device_loop.check_shardable`), no XLA; else 1. An explicit count is kept (it
    computes the same function either way) and refused with `ConfigError` where it
    cannot run or would change the model; without the threads it runs slower, with
    a warning.
    """
    from kmnist_lab.device_loop import check_shardable

    backend = keras.backend.backend()
    shards = planned_batch_shards(requested, arch, backend, batch_size, pipeline, jit)
    if shards == 1:
        return 1
    if requested is None:
        try:
            check_shardable(model)
        except ConfigError:
            return 1
        if pipeline != "device" or model.jit_compile or not configure_batch_shards(shards):
            return 1
        return shards
    if backend != "tensorflow" or pipeline != "device":
        raise ConfigError(
            "batch_shards > 1 needs the tensorflow backend and the device input pipeline. "
            f"Received: batch_shards={requested} with backend={backend!r}, "
            f"input_pipeline={pipeline!r}"
        )
    check_shardable(model)
    if not configure_batch_shards(shards):
        log.warning(
            "batch_shards=%d without 1 intra-op and >= %d inter-op TensorFlow threads (set "
            "before TensorFlow starts: kmnist_lab.speed.configure_batch_shards): same "
            "results, no faster", shards, shards,
        )  # fmt: skip
    return shards
