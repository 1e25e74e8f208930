"""The paths users pick by flag, not by default: another backend, precision, XLA policy,
steps per call, input pipeline, data-parallel training, and Ctrl-C then resume.

The defaults (MLPs on JAX, CNNs on TensorFlow) are covered by tests/test_training.py,
tests/test_backends.py and tests/test_distribute.py; this file holds what a walk
through the flags found.
"""

from __future__ import annotations

import logging

import keras
import pytest

from kmnist_lab.config import TrainConfig
from kmnist_lab.training import build_for_config, compile_for_config


def _tf_data_parallel_warning(tmp_path, caplog, **settings) -> str:
    """The warnings `compile_for_config` logs for a TensorFlow data-parallel run."""
    cfg = TrainConfig(arch="mlp", dataset="mnist", epochs=1, batch_size=16, verbose=0,
                      output_dir=str(tmp_path), run_name="run", distribute="data-parallel",
                      **settings).resolved()  # fmt: skip
    model, loss = build_for_config(cfg, 10)
    with caplog.at_level(logging.WARNING, logger="kmnist_lab.training"):
        speed = compile_for_config(model, loss, cfg, steps_per_epoch=8)
    assert (speed["jit_compile"], speed["steps_per_execution"]) == (False, 1)
    return caplog.text


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's strategy")
def test_tf_data_parallel_names_only_the_flags_it_overrides(tmp_path, caplog):
    """MirroredStrategy runs without XLA, one step per call: the warning names what the
    user asked for and does not get, not a setting that is honoured or was never asked."""
    text = _tf_data_parallel_warning(tmp_path, caplog, jit="off", steps_per_execution=7)
    assert "ignoring --steps-per-execution 7" in text
    assert "jit" not in text.split("ignoring")[-1]  # --jit off is honoured

    caplog.clear()
    text = _tf_data_parallel_warning(tmp_path, caplog, jit="on")
    assert "ignoring --jit on" in text
    assert "steps-per-execution" not in text and "steps_per_execution" not in text

    caplog.clear()
    text = _tf_data_parallel_warning(tmp_path, caplog, steps_per_execution=1)  # jit auto
    assert "ignoring" not in text
