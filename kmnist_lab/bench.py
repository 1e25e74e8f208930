"""Throughput measurements of kmnist_lab models (used by `scripts/benchmark.py`).

Every number is measured the way training runs: `model.fit` (or, with the
`device` input pipeline on JAX and TensorFlow, `kmnist_lab.device_loop.device_fit`) on in-memory
uint8 images with the model's own rescaling, compiled under the requested policy.

- `train_samples_per_s`: steady state, after a warm-up epoch that absorbs tracing
  and compilation, over a fixed number of steps.
- `compile_s`: wall time of the warm-up epoch (with one validation pass, which
  traces validation too) minus its steady-state training share.
- `epoch_s`: one epoch of `epoch_samples` training images plus validation on
  `epoch_samples / 6` images (the 60k/10k MNIST ratio).
- `infer_samples_per_s`: `model.predict` in batches of 1024, after a first call on
  the same array (which traces and compiles).
- `batch_shards`: the shards each batch ran as (`kmnist_lab.device_loop.sharded_forward`);
  `measure` sets TensorFlow's threads for them when it runs first in its process, as
  `scripts/benchmark.py`'s workers do.
- `peak_rss_mb`: the process's peak resident memory (`ru_maxrss`; host memory only).
- `accelerator`: whether the backend trained on a GPU/TPU rather than the CPU.
"""

from __future__ import annotations

import math
import platform
import resource
import time

import keras
import numpy as np

from kmnist_lab.device_loop import fit
from kmnist_lab.models import build_model
from kmnist_lab.speed import (
    configure_batch_shards,
    dtype_policy,
    has_accelerator,
    planned_batch_shards,
    resolve_batch_shards,
    resolve_input_pipeline,
    resolve_jit,
    resolve_steps_per_execution,
)


def train_flops(model: keras.Model) -> int | None:
    """Multiply-add FLOPs of one training sample in the model's Dense and Conv2D layers.

    A layer doing `m` multiply-adds per sample forward (`m = i * o` for a Dense layer
    of fan-in `i` and fan-out `o`; `m = H_out * W_out * k_h * k_w * C_in * C_out` for a
    convolution) costs `2 m` FLOPs forward, as much again for the gradient w.r.t. its
    kernel, and as much again for the gradient w.r.t. its input, except the first
    layer, whose input (the images) needs none:

        FLOPs = 2 * (3 * sum_l m_l - m_1)

    - 784-512-128-10 (`bn_mlp`, `relu_mlp`, `plain_mlp`): 2 * (3 * 468,224 - 401,408)
      = 2.01 MFLOP per sample.
    - `residual_cnn`: 2.01 M multiply-adds forward, 11.6 MFLOP per training sample.
    - `resnet18` (28x28 input, stride-2 stem, no max-pool): 122 M multiply-adds
      forward, 0.733 GFLOP per training sample.

    BatchNorm, activations, pooling, biases and the softmax are O(activations) and left
    out, so `FLOPs x samples/s` is a lower bound of the arithmetic rate a run reaches.
    Returns None for a model with another kind of weighted layer.
    """
    costs = []
    for layer in model._flatten_layers(include_self=False):
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            continue
        size = math.prod(int(d) for d in kernel.shape)
        if len(kernel.shape) == 2:
            costs.append(size)
        elif isinstance(layer, keras.layers.Conv2D) and len(kernel.shape) == 4:
            height, width = layer.output.shape[1:3]
            costs.append(int(height) * int(width) * size)
        else:
            return None
    if not costs:
        return None
    return 2 * (3 * sum(costs) - costs[0])


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux's `ru_maxrss` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def matmul_gflops(n: int = 2048, repeats: int = 5, rounds: int = 3) -> float:
    """The machine's fp32 matmul rate with NumPy (BLAS), in GFLOP/s (`2 n^3` per product).

    The best of `rounds` timings of `repeats` products each: the machine's rate is its
    peak, and one timing on a shared virtual machine can read half of it (session 19's
    first benchmark measured 159 GFLOP/s where six calls a minute later gave 325-351).
    """
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    a @ b
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9)
    return best


def cpu_name() -> str:
    """The CPU's model name (`/proc/cpuinfo`, else `platform.processor()`), or "unknown"."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or "unknown"


def measure(
    arch: str,
    batch_size: int = 128,
    jit: str = "auto",
    steps_per_execution: int | None = None,
    steps: int = 200,
    epoch_samples: int | None = None,
    seed: int = 0,
    precision: str = "float32",
    input_pipeline: str = "auto",
    batch_shards: int | None = None,
) -> dict:
    """Measures one architecture under one compile policy; returns a flat dict."""
    backend = keras.backend.backend()
    if backend == "tensorflow":  # first: TensorFlow takes thread settings before it starts
        configure_batch_shards(
            planned_batch_shards(batch_shards, arch, backend, batch_size, input_pipeline, jit)
        )
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    n = 60 * batch_size  # one "epoch" of 60 steps, like the PyTorch reference
    x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, size=(n,))
    with dtype_policy(precision):
        model = build_model(arch)
    jit_compile = resolve_jit(jit, arch)
    spe = steps_per_execution or resolve_steps_per_execution(arch, 60)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
        steps_per_execution=spe,
    )
    pipeline = resolve_input_pipeline(input_pipeline)
    shards = resolve_batch_shards(batch_shards, model, arch, batch_size, pipeline, jit)
    epoch_n = epoch_samples or n
    val_n = max(batch_size, epoch_n // 6)
    start = time.perf_counter()
    fit(model, x, y, pipeline=pipeline, batch_size=batch_size, epochs=1, verbose=0,
        shuffle=False, validation_data=(x[:val_n], y[:val_n]), batch_shards=shards)  # fmt: skip
    warmup_s = time.perf_counter() - start
    epochs = max(1, math.ceil(steps / 60))
    start = time.perf_counter()
    fit(model, x, y, pipeline=pipeline, batch_size=batch_size, epochs=epochs, verbose=0,
        shuffle=False, batch_shards=shards)  # fmt: skip
    train_s = time.perf_counter() - start
    rate = epochs * n / train_s
    # A full epoch with validation (functions already traced for these shapes).
    xe = rng.integers(0, 256, size=(epoch_n, 28, 28), dtype=np.uint8)
    ye = rng.integers(0, 10, size=(epoch_n,))
    start = time.perf_counter()
    fit(model, xe, ye, pipeline=pipeline, batch_size=batch_size, epochs=1, verbose=0,
        validation_data=(xe[:val_n], ye[:val_n]), batch_shards=shards)  # fmt: skip
    epoch_s = time.perf_counter() - start
    xi = x[: 1024 * max(1, n // 1024)]  # whole batches only: no retracing for a remainder
    # Warm-up on the timed array itself: a call over fewer batches traces another loop.
    # Not sharded: Keras' predict overlaps its independent steps on the inter-op
    # threads (residual_cnn, 1 intra-op thread: 28k samples/s, 21k in 2 shards).
    model.predict(xi, batch_size=1024, verbose=0)
    start = time.perf_counter()
    model.predict(xi, batch_size=1024, verbose=0)
    infer = len(xi) / (time.perf_counter() - start)
    return {
        "arch": arch,
        "backend": backend,
        "batch_size": batch_size,
        "jit": jit,
        "jit_compile": bool(jit_compile),
        "precision": precision,
        "accelerator": has_accelerator(),
        "input_pipeline": pipeline,
        "steps_per_execution": spe,
        "batch_shards": shards,
        "train_samples_per_s": rate,
        "compile_s": max(0.0, warmup_s - n / rate),
        "epoch_s": epoch_s,
        "epoch_samples": epoch_n,
        "infer_samples_per_s": infer,
        "peak_rss_mb": peak_rss_mb(),
        "timed_steps": epochs * 60,
        "train_flops_per_sample": train_flops(model),
    }
