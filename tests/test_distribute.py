"""Data-parallel training equals single-device training with the same global batch.

The CPU is split into 2 logical devices in a subprocess per backend (device
layout must be set before the backend starts). BatchNorm is exact on JAX (global
batch statistics); on TensorFlow's MirroredStrategy BatchNorm uses per-replica
statistics, so the TF check uses a BN-free MLP.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kmnist_lab.config import TrainConfig
from kmnist_lab.errors import ConfigError

CHECK = Path(__file__).parent / "backend_parity" / "distribute_check.py"
ROOT = Path(__file__).resolve().parents[1]


def _run(backend, arch, jit):
    pytest.importorskip(backend)
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(CHECK), arch, jit],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "backend, arch, jit", [("tensorflow", "relu_mlp", "off"), ("jax", "bn_mlp", "on")]
)
def test_data_parallel_matches_single_device(backend, arch, jit):
    result = _run(backend, arch, jit)
    assert result["devices"] == 2
    assert result["moved"] > 1e-2  # training really changed the weights
    assert result["max_abs_diff"] < 1e-5


def test_torch_data_parallel_is_refused_with_a_reason():
    with pytest.raises(ConfigError, match="torch backend has no built-in data-parallel"):
        TrainConfig(distribute="data-parallel", backend="torch")
    with pytest.raises(ConfigError, match="`distribute` must be one of none, data-parallel"):
        TrainConfig(distribute="ddp")


_BN_REPLICAS = """
import json, sys
from kmnist_lab.distribute import split_cpu
split_cpu(2)
import numpy as np
import keras
sys.path.insert(0, {tests!r})
from conftest import make_images
from kmnist_lab.config import TrainConfig
from kmnist_lab.data import from_arrays
from kmnist_lab.models import load_keras_model
from kmnist_lab.training import train

x, y = make_images(256, seed=1)
xt, yt = make_images(200, seed=2)
data = from_arrays(x, y, xt, yt, val_fraction=0.25)
cfg = TrainConfig(arch="bn_mlp", epochs=2, batch_size=32, backend="tensorflow", verbose=0,
                  distribute="data-parallel", output_dir={out!r}, run_name="r", augment=True)
r = train(cfg, dataset=data, plots=False)
spread = 0.0
for v in r.model.non_trainable_variables:
    reps = getattr(getattr(v, "value", v), "values", None) or ()
    for rep in reps[1:]:
        spread = max(spread, float(np.abs(np.asarray(rep) - np.asarray(reps[0])).max()))
saved = load_keras_model({out!r} + "/r/model.keras")
acc = float((saved.predict(xt, verbose=0).argmax(1) == yt).mean())
devices = json.load(open({out!r} + "/r/config.json"))["speed"]["devices"]
print(json.dumps({{"devices": devices, "spread": spread,
                   "recorded": r.metrics["test_accuracy"], "exported": acc}}))
"""


def test_tf_data_parallel_records_the_accuracy_of_the_model_it_exports(tmp_path):
    """MirroredStrategy replicas each updated their own BatchNorm moving statistics, so
    the test accuracy recorded in metrics.json (scored per replica) differed from the
    exported model's (the first replica's statistics): 81.8% vs 80.8% on mnist_5k."""
    pytest.importorskip("tensorflow")
    code = _BN_REPLICAS.format(tests=str(Path(__file__).parent), out=str(tmp_path))
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == 2
    assert result["spread"] == 0.0
    assert result["recorded"] == pytest.approx(result["exported"], abs=1e-9)


def test_jax_data_parallel_needs_every_batch_to_shard_evenly():
    from kmnist_lab.distribute import check_even_batches

    # mnist_5k at batch 128: train 31 x 128 + 32, val 3 x 128 + 116, test 500 (< 512).
    splits = {"train": (4000, 128), "validation": (500, 128), "test": (500, 512)}
    check_even_batches(splits, 2)
    check_even_batches(splits, 4)
    with pytest.raises(ConfigError, match=r"train split \(4000 samples in batches of 128\) has a "
                       r"batch of 128, not a multiple of 3"):  # fmt: skip
        check_even_batches(splits, 3)
    # The full batches divide by 8, the last validation batch (116) does not.
    with pytest.raises(
        ConfigError, match="validation split .* a batch of 116, not a multiple of 8"
    ):
        check_even_batches(splits, 8)
    check_even_batches({"test": (0, 256)}, 8)  # an empty split has no batch


def test_a_split_of_exactly_one_batch_must_shard_evenly_too():
    from kmnist_lab.distribute import check_even_batches

    with pytest.raises(ConfigError, match=r"test split \(128 samples in batches of 128\) has a "
                       r"batch of 128, not a multiple of 3"):  # fmt: skip
        check_even_batches({"test": (128, 128)}, 3)
    with pytest.raises(ConfigError, match="a batch of 96, not a multiple of 5"):
        check_even_batches({"test": (96, 128)}, 5)  # one partial batch only
    check_even_batches({"test": (96, 128)}, 3)


def test_no_distribution_builds_in_no_scope():
    from kmnist_lab.distribute import distribution_scope

    for mode in (None, "none"):
        with distribution_scope(mode) as devices:
            assert devices is None


def test_torch_has_no_data_parallel_scope(monkeypatch):
    import keras

    from kmnist_lab.distribute import distribution_scope

    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    with pytest.raises(ConfigError, match="torch backend has no built-in data-parallel"):
        with distribution_scope("data-parallel"):
            pass


def test_jax_data_parallel_is_set_over_every_device_and_restored_after(monkeypatch):
    import keras

    from kmnist_lab.distribute import distribution_scope

    current = ["previous"]
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    monkeypatch.setattr(keras.distribution, "list_devices", lambda: ["cpu:0", "cpu:1"])
    monkeypatch.setattr(keras.distribution, "distribution", lambda: current[0])
    monkeypatch.setattr(keras.distribution, "set_distribution", lambda d: current.insert(0, d))
    monkeypatch.setattr(keras.distribution, "DataParallel", lambda devices: ("dp", devices))
    with pytest.raises(RuntimeError, match="mid-build"):
        with distribution_scope("data-parallel") as devices:
            assert devices == ["cpu:0", "cpu:1"]
            assert current[0] == ("dp", ["cpu:0", "cpu:1"])
            raise RuntimeError("mid-build")
    assert current[0] == "previous"  # restored, even after an error


def test_tensorflow_mirrors_over_the_gpus_else_the_logical_cpus(monkeypatch):
    import contextlib
    from types import SimpleNamespace

    import keras

    from kmnist_lab.distribute import device_count, distribution_scope

    tf = pytest.importorskip("tensorflow")

    strategies = []

    class Mirrored:
        def __init__(self, devices):
            strategies.append(devices)
            self.num_replicas_in_sync = len(devices)

        def scope(self):
            return contextlib.nullcontext()

    logical = {"GPU": [SimpleNamespace(name=f"/device:GPU:{i}") for i in range(3)],
               "CPU": [SimpleNamespace(name=f"/device:CPU:{i}") for i in range(2)]}  # fmt: skip
    monkeypatch.setattr(keras.backend, "backend", lambda: "tensorflow")
    monkeypatch.setattr(tf.distribute, "MirroredStrategy", Mirrored)
    monkeypatch.setattr(tf.config, "list_logical_devices", lambda kind: logical[kind])
    with distribution_scope("data-parallel") as devices:
        assert devices == ["/device:GPU:0", "/device:GPU:1", "/device:GPU:2"]
    assert device_count() == 3
    logical["GPU"] = []
    with distribution_scope("data-parallel") as devices:
        assert devices == ["/device:CPU:0", "/device:CPU:1"]
    assert device_count() == 2
    assert strategies == [
        [f"/device:GPU:{i}" for i in range(3)],
        ["/device:CPU:0", "/device:CPU:1"],
    ]


def test_replicas_get_the_first_replicas_statistics_before_evaluating_and_at_the_end():
    from types import SimpleNamespace

    import numpy as np

    from kmnist_lab.distribute import SyncReplicaState

    class Replicated:
        def __init__(self, *values):
            self.value = SimpleNamespace(values=[np.array(v, dtype="float32") for v in values])
            self.assigned = []

        def assign(self, value):
            self.assigned.append(np.asarray(value).tolist())

    for event in ("on_test_begin", "on_train_end"):
        two, three = Replicated([1, 2], [3, 4]), Replicated([5], [5], [6])
        same, single = Replicated([1], [1]), Replicated([7])
        variables = [two, three, same, single, object()]  # the last one: not replicated
        callback = SyncReplicaState()
        callback.set_model(SimpleNamespace(non_trainable_variables=variables))
        getattr(callback, event)()
        assert two.assigned == [[1.0, 2.0]]  # the first replica's, as PyTorch DDP
        assert three.assigned == [[5.0]]
        assert same.assigned == [] and single.assigned == []


def test_split_cpu_sets_the_jax_flag_once_and_leaves_one_device_alone(monkeypatch):
    import os

    from kmnist_lab.distribute import split_cpu

    monkeypatch.setenv("KERAS_BACKEND", "jax")
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_foo=1")
    monkeypatch.delitem(sys.modules, "jax", raising=False)  # JAX not started yet
    split_cpu(1)
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_foo=1"
    split_cpu(4)
    split_cpu(4)
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_foo=1 --xla_force_host_platform_device_count=4"


def test_data_parallel_over_one_device_says_it_trains_as_one_device(caplog):
    """An unsplit CPU has one device: the run trains as `distribute none` would, and the
    warning names the device and how to get more (`--cpu-devices N`)."""
    import keras

    from kmnist_lab.distribute import distribution_scope

    if keras.backend.backend() == "torch":
        pytest.skip("torch has no data-parallel scope (refused above)")
    with caplog.at_level("WARNING", logger="kmnist_lab.distribute"):
        with distribution_scope("data-parallel") as devices:
            pass
    if len(devices) > 1:
        pytest.skip(f"this process has {len(devices)} devices")
    assert "--distribute data-parallel found one device" in caplog.text
    assert "--cpu-devices N" in caplog.text
