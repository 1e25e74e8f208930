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
