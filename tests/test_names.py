"""`kmnist_lab.names`: the command lines' choices, without Keras, equal the registries."""

import subprocess
import sys
from pathlib import Path

from kmnist_lab import names
from kmnist_lab.losses import list_losses, loss_head
from kmnist_lab.models import list_models
from kmnist_lab.models.blocks import ACTIVATIONS
from kmnist_lab.models.resnet import RESNET_ACTIVATIONS
from kmnist_lab.optimizers import list_optimizers
from tuning.hypermodels import SPACES
from tuning.search import TUNER_NAMES


def test_every_snapshot_equals_its_registry():
    expected = {
        "ARCHS": tuple(list_models()),
        "CLASSIFICATION_LOSSES": tuple(n for n in list_losses() if loss_head(n) != "regression"),
        "OPTIMIZERS": tuple(list_optimizers()),
        "ACTIVATIONS": tuple(ACTIVATIONS),
        "RESNET_ACTIVATIONS": tuple(RESNET_ACTIVATIONS),
        "SEARCH_SPACES": {n: SPACES.get(n).summary for n in SPACES.names()},
        "TUNERS": tuple(TUNER_NAMES),
    }
    for name, value in expected.items():
        assert getattr(names, name) == value, (
            f"kmnist_lab/names.py is out of date: set {name} = {value!r}"
        )


def test_the_parsers_build_without_importing_keras():
    """`--help` and choice errors come before any backend is imported."""
    scripts = Path(__file__).resolve().parents[1] / "scripts"
    code = (
        f"import sys; sys.path.insert(0, {str(scripts)!r}); import train, tune; "
        "train.build_parser(); tune.build_parser(); "
        "print(sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch', 'keras_tuner') "
        "if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)  # fmt: skip
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr[-2000:]
