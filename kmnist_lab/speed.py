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
# times slower inside a loop (`lax.scan`), so one step per call there.
CPU_LOOP_AVERSE = {("jax", "cnn")}  # (backend, family)


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
