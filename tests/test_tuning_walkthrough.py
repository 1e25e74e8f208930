"""The search spaces as docs/tuning.md documents them, checked value by value.

Found by walking every documented `scripts/tune.py` command on tiny searches; each test
names the behaviour a user relies on.
"""

import csv

import _cli
import h5py
import keras_tuner as kt
import pytest
import tune as tune_script
from helpers import write_idx_dataset

from kmnist_lab.errors import ConfigError
from tuning import get_hypermodel
from tuning.hypermodels import steps
from tuning.tuners import enumerate_space


def _losses_space():
    hp = kt.HyperParameters()
    hypermodel = get_hypermodel("losses", max_epochs=5)
    hypermodel.declare_hyperparameters(hp)
    return hypermodel, hp


def test_losses_space_tries_both_ends_of_each_loss_parameter_range():
    """AM/ARM margin 0 ... 0.5 and KLD label smoothing 0 ... 0.3 in steps of 0.05 (and
    focal gamma 0 ... 5 in steps of 0.5) include their upper ends: keras-tuner's stepped
    `hp.Float` counted `int(0.5 / 0.05) + 1 = 10` margins (0.5 / 0.05 = 9.999...), so
    no tuner ever tried margin 0.5 or smoothing 0.3."""
    _, hp = _losses_space()
    combos = enumerate_space(hp)
    values = {
        name: sorted({c[name] for c in combos if name in c})
        for name in ("margin", "label_smoothing", "focal_gamma")
    }
    assert values["margin"] == [round(0.05 * i, 2) for i in range(11)]
    assert values["label_smoothing"] == [round(0.05 * i, 2) for i in range(7)]
    assert values["focal_gamma"] == [0.5 * i for i in range(11)]
    # ce 1 + focal 11 + (am, arm) 2 x 11 margins x 4 scales + hinge 3 + kld 7 = 110
    # loss settings, x 3 lr x 3 batch sizes (epochs fixed by max_epochs=5).
    assert len(combos) == 110 * 9


def test_a_loss_parameter_reaches_best_train_config_as_the_value_searched():
    """The values the tuners draw are the round values the range names: a trial with
    smoothing 0.15 writes 0.15 into `best_train_config.json`, not keras-tuner's float
    noise (`0.15000000000000002`)."""
    hypermodel, hp = _losses_space()
    combos = enumerate_space(hp)
    for name in ("margin", "label_smoothing", "focal_gamma"):
        drawn = {c[name] for c in combos if name in c}
        assert drawn == {round(v, 2) for v in drawn}, name
    point = next(c for c in combos if c.get("label_smoothing", 0) > 0.14)
    hp.values.update(point)
    hp.ensure_active_values()
    assert hypermodel.train_config(hp, epochs=1)["loss_params"] == {"label_smoothing": 0.15}


def test_steps_lists_a_stepped_range_with_both_ends_and_refuses_a_step_that_does_not_fit():
    assert steps(0.0, 0.3, 0.05) == [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
    assert steps(1.0, 1.0, 0.5) == [1.0]
    for low, high, step in [(0.0, 0.5, 0.3), (0.0, 0.5, 0.0), (0.5, 0.0, 0.05)]:
        with pytest.raises(ConfigError, match="`step` must be positive and divide"):
            steps(low, high, step)


def _optimizer_steps(checkpoint) -> int:
    """The optimizer's step count (`iterations`, its first variable) in a checkpoint."""
    with h5py.File(checkpoint) as f:
        return int(f["optimizer/vars/0"][()])


def test_a_hyperband_continuation_keeps_the_optimizers_state(tmp_path, recwarn):
    """A promoted model goes on with Adam's moments and step count from its checkpoint:
    keras-tuner loaded them into an unbuilt optimizer, which Keras skipped with a
    warning, so every continued trial restarted Adam from zero."""
    data_dir = write_idx_dataset(tmp_path / "data", n_train=240, n_test=40)
    argv = ["--dataset", "kmnist", "--data-dir", str(data_dir), "--directory",
            str(tmp_path / "s"), "--jit", "off", "-q", "--space", "losses", "--tuner",
            "hyperband", "--max-epochs", "2", "--factor", "2", "--no-export"]  # fmt: skip
    assert _cli.run(tune_script.main, argv) == 0
    project = tmp_path / "s" / "losses_hyperband_kmnist"
    with open(project / "trials.csv", newline="") as f:
        continued = [r for r in csv.DictReader(f) if r["from_trial"]]
    assert continued
    for row in continued:
        before = _optimizer_steps(project / f"trial_{row['from_trial']}" / "checkpoint.weights.h5")
        after = _optimizer_steps(project / f"trial_{row['trial_id']}" / "checkpoint.weights.h5")
        # One more epoch of the same batch size: as many steps again.
        assert after == 2 * before, (row["trial_id"], before, after)
    assert not [w for w in recwarn if "Skipping variable loading" in str(w.message)]
