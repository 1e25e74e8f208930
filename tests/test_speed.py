"""The compile policy (`kmnist_lab.speed`) and `--backend auto`: the measured defaults.

The numbers behind each rule are in docs/performance.md; these tests pin the rules
themselves, on CPU and, with the accelerator check patched, on a GPU.
"""

import importlib.util
import os

import keras
import pytest

from kmnist_lab import speed
from kmnist_lab.config import auto_backend
from kmnist_lab.errors import ConfigError


@pytest.fixture
def on(monkeypatch):
    """`on(backend, gpu)`: makes the policy see that Keras backend, with or without a GPU."""

    def set_machine(backend, gpu=False):
        monkeypatch.setattr(keras.backend, "backend", lambda: backend)
        monkeypatch.setattr(speed, "has_accelerator", lambda: gpu)

    return set_machine


@pytest.mark.parametrize("backend, gpu, arch, steps_per_epoch, expected", [
    ("tensorflow", False, "bn_mlp", 430, 10),      # CPU: 10 steps per call
    ("tensorflow", False, "resnet18", 430, 10),
    ("jax", False, "relu_mlp", 430, 10),
    ("jax", False, "residual_cnn", 430, 1),        # CPU, JAX, CNN: XLA is slow in loops
    ("jax", False, "relu_mlp", 4, 4),              # never more than one epoch's steps
    ("jax", True, "resnet18", 860, 10),            # GPU: every family 10
    ("jax", True, "residual_cnn", 3, 3),
    ("torch", True, "bn_mlp", 430, 1),             # Keras' torch backend: one step per call
])  # fmt: skip
def test_steps_per_execution_defaults(on, backend, gpu, arch, steps_per_epoch, expected):
    on(backend, gpu)
    assert speed.resolve_steps_per_execution(arch, steps_per_epoch) == expected


@pytest.mark.parametrize("policy, backend, gpu, arch, expected", [
    ("auto", "tensorflow", False, "bn_mlp", True),     # XLA measured faster for MLPs on CPU
    ("auto", "tensorflow", False, "resnet18", False),  # and slower for CNNs
    ("auto", "tensorflow", True, "resnet18", True),    # a GPU: XLA for every model
    ("auto", "jax", False, "resnet18", True),          # JAX always compiles
    ("off", "jax", False, "bn_mlp", True),
    ("auto", "torch", True, "bn_mlp", False),          # torch runs eagerly
    ("on", "torch", False, "bn_mlp", True),
    ("off", "tensorflow", True, "bn_mlp", False),
])  # fmt: skip
def test_jit_policy(on, policy, backend, gpu, arch, expected):
    on(backend, gpu)
    assert speed.resolve_jit(policy, arch) is expected


def test_jit_policy_refuses_unknown_values():
    with pytest.raises(ConfigError, match=r"one of auto, on, off. Received: jit='xla'"):
        speed.resolve_jit("xla", "bn_mlp")


def test_torch_takes_one_step_per_call_or_the_default():
    """Keras' torch backend runs one step per call: K > 1 is refused there, while the
    default (None: the policy's) and 1 are valid, and other backends take any K."""
    from kmnist_lab.config import TrainConfig

    for steps in (None, 1):
        speed.check_steps_per_execution("torch", steps)
        TrainConfig(backend="torch", steps_per_execution=steps)
    for backend in ("jax", "tensorflow", None):
        speed.check_steps_per_execution(backend, 10)
    with pytest.raises(ConfigError, match=r"must be 1 there. Received: steps_per_execution=2$"):
        TrainConfig(backend="torch", steps_per_execution=2)


@pytest.fixture
def machine(monkeypatch):
    """`machine(nvidia, installed, **env)`: an NVIDIA device node or not, the installed
    packages, and environment variables (CUDA_VISIBLE_DEVICES, JAX_PLATFORMS)."""

    def set_machine(nvidia, installed, **env):
        for name in ("CUDA_VISIBLE_DEVICES", "JAX_PLATFORMS"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        real_exists = os.path.exists
        monkeypatch.setattr(
            os.path, "exists", lambda p: nvidia if p == "/dev/nvidiactl" else real_exists(p)
        )
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda name: object() if name in installed else None
        )

    return set_machine


@pytest.mark.parametrize("nvidia, installed, arch, expected", [
    (False, {"tensorflow", "jax"}, "bn_mlp", "jax"),            # CPU: the measured table
    (False, {"tensorflow", "jax"}, "resnet18", "tensorflow"),
    (True, {"tensorflow", "jax", "jax_cuda12_plugin"}, "resnet18", "jax"),  # GPU: JAX, all
    (True, {"jax", "jax_cuda13_plugin"}, "residual_cnn", "jax"),
    (True, {"tensorflow", "jax"}, "bn_mlp", "tensorflow"),      # JAX here would run on the CPU
    (False, {"jax", "torch"}, "resnet18", "jax"),               # TensorFlow not installed
    (False, {"torch"}, "bn_mlp", "torch"),
    (False, set(), "bn_mlp", "tensorflow"),                     # nothing: Keras' own error
])  # fmt: skip
def test_auto_backend(machine, nvidia, installed, arch, expected):
    machine(nvidia, installed)
    assert auto_backend(arch) == expected


@pytest.mark.parametrize("installed, expected", [
    ({"tensorflow", "jax"}, "tensorflow"),
    ({"jax", "torch"}, "jax"),   # a GPU image without TensorFlow: the scripts still start
    ({"torch"}, "torch"),
    (set(), "tensorflow"),
])  # fmt: skip
def test_scripts_default_to_an_installed_backend(machine, installed, expected):
    # study.py, tune.py and evaluate.py default to TensorFlow, Keras' own default.
    from kmnist_lab.config import installed_backend

    machine(False, installed)
    assert installed_backend("tensorflow") == expected


@pytest.mark.parametrize("env, arch, expected", [
    ({}, "resnet18", "jax"),                                   # the GPU: JAX for every arch
    ({"CUDA_VISIBLE_DEVICES": "0"}, "resnet18", "jax"),
    ({"CUDA_VISIBLE_DEVICES": ""}, "resnet18", "tensorflow"),  # GPU hidden: the CPU table
    ({"CUDA_VISIBLE_DEVICES": "-1"}, "resnet18", "tensorflow"),
    ({"CUDA_VISIBLE_DEVICES": "-1"}, "bn_mlp", "jax"),
    ({"JAX_PLATFORMS": "cpu"}, "bn_mlp", "tensorflow"),        # JAX kept off the GPU
    ({"JAX_PLATFORMS": "cuda,cpu"}, "resnet18", "jax"),
])  # fmt: skip
def test_auto_backend_follows_a_hidden_gpu(machine, env, arch, expected):
    # A GPU hidden from CUDA, or JAX limited to the CPU, must not put the CNNs on JAX's
    # CPU convolutions (~3x slower than TensorFlow's, docs/performance.md).
    machine(True, {"tensorflow", "jax", "jax_cuda12_plugin"}, **env)
    assert auto_backend(arch) == expected


def test_train_help_names_the_gpu_rule():
    # `--backend auto` picks JAX for every arch on an NVIDIA GPU (`auto_backend`): the
    # help text says so, not only the CPU table.
    import train

    (action,) = [a for a in train.build_parser()._actions if "--backend" in a.option_strings]
    assert "NVIDIA GPU" in action.help and "every arch" in action.help


@pytest.mark.parametrize("requested, backend, gpu, arch, batch, pipeline, jit, cores, expected", [
    (None, "tensorflow", False, "residual_cnn", 128, "auto", "auto", 2, 2),    # one per core
    (None, "tensorflow", False, "residual_cnn", 128, "device", "off", 16, 4),  # >= 32 each
    (None, "tensorflow", False, "residual_cnn", 48, "auto", "auto", 2, 1),     # 24 < 32
    (None, "tensorflow", False, "residual_cnn", 128, "auto", "auto", 1, 1),    # one core
    (None, "tensorflow", True, "residual_cnn", 128, "auto", "auto", 2, 1),     # a GPU
    (None, "tensorflow", False, "resnet18", 128, "auto", "auto", 2, 1),        # BatchNorm
    (None, "tensorflow", False, "relu_mlp", 128, "auto", "auto", 2, 1),        # unmeasured
    (None, "jax", False, "residual_cnn", 128, "auto", "auto", 2, 1),
    (None, "tensorflow", False, "residual_cnn", 128, "iterator", "auto", 2, 1),
    (None, "tensorflow", False, "residual_cnn", 128, "auto", "on", 2, 1),      # XLA
    (3, "tensorflow", False, "resnet18", 128, "auto", "auto", 2, 3),           # asked for
])  # fmt: skip
def test_batch_shards_plan(on, monkeypatch, requested, backend, gpu, arch, batch, pipeline, jit,
                           cores, expected):  # fmt: skip
    on(backend, gpu)
    monkeypatch.setattr(speed, "cpu_cores", lambda: cores)
    planned = speed.planned_batch_shards(requested, arch, backend, batch, pipeline, jit)
    assert planned == expected


def _shardable_model():
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Flatten()(keras.layers.Conv2D(2, 3)(inputs))
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def test_batch_shards_resolve_to_one_where_the_threads_were_not_set(on, monkeypatch, caplog):
    """This test process started TensorFlow with its default threads: auto falls back to
    1 shard (the plan would be 2), an explicit count is kept with a warning (the same
    function, no faster), and refused where it cannot run."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the threads are TensorFlow's")
    on("tensorflow", False)
    monkeypatch.setattr(speed, "cpu_cores", lambda: 2)
    model = _shardable_model()
    model.compile(optimizer="sgd", loss="mse")
    assert speed.configure_batch_shards(2) is False  # the runtime has started
    assert speed.configure_batch_shards(1) is True
    assert speed.resolve_batch_shards(None, model, "residual_cnn", 128, "device") == 1
    with caplog.at_level("WARNING", logger="kmnist_lab.speed"):
        assert speed.resolve_batch_shards(2, model, "residual_cnn", 128, "device") == 2
    assert "batch_shards=2 without 1 intra-op and >= 2 inter-op TensorFlow threads" in caplog.text
    with pytest.raises(ConfigError, match=r"Received: batch_shards=2 with backend='tensorflow', "
                                          r"input_pipeline='iterator'"):  # fmt: skip
        speed.resolve_batch_shards(2, model, "residual_cnn", 128, "iterator")
    with_bn = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(name="bn")])
    with pytest.raises(ConfigError, match="layer bn: BatchNormalization"):
        speed.resolve_batch_shards(2, with_bn, "mlp", 128, "device")
    assert speed.resolve_batch_shards(None, with_bn, "residual_cnn", 128, "device") == 1


def test_batch_shards_set_tensorflows_threads_before_it_starts():
    """In a fresh process: 1 intra-op thread, one inter-op thread per shard; once the
    runtime has started the threads stay, and a count they do not suit says so."""
    pytest.importorskip("tensorflow")
    code = (
        "from kmnist_lab import speed; import tensorflow as tf\n"
        "print(speed.configure_batch_shards(2), tf.config.threading.get_intra_op_parallelism_threads(),"
        " tf.config.threading.get_inter_op_parallelism_threads())\n"
        "tf.constant(1.0) + 1\n"
        "print(speed.configure_batch_shards(2), speed.configure_batch_shards(3))\n"
    )
    import subprocess
    import sys

    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout.split("\n")  # fmt: skip
    assert out[:2] == ["True 1 2", "True False"]


@pytest.mark.parametrize("kwargs, received", [
    ({"backend": "jax"}, "backend='jax'"),
    ({"input_pipeline": "iterator"}, "input_pipeline='iterator'"),
    ({"distribute": "data-parallel", "backend": "tensorflow"}, "distribute='data-parallel'"),
])  # fmt: skip
def test_config_refuses_batch_shards_where_they_cannot_run(kwargs, received):
    from kmnist_lab.config import TrainConfig

    TrainConfig(batch_shards=1, **kwargs)  # one shard: runs anywhere
    with pytest.raises(ConfigError, match=rf"Received: batch_shards=2 with {received}$"):
        TrainConfig(batch_shards=2, **kwargs)
