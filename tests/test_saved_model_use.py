"""The exported SavedModel as its consumer sees it: served with TensorFlow alone, or
scored by `scripts/evaluate.py`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import _cli
import evaluate as evaluate_script
import numpy as np
import pytest
from conftest import make_images
from helpers import write_idx_dataset

ROOT = Path(__file__).resolve().parents[1]

# Exports a small BatchNorm MLP (non-trivial moving statistics) from the JAX backend and
# saves Keras' predictions of the images given.
_EXPORT_ON_JAX = """
import sys
import keras
import numpy as np
from kmnist_lab.export import export_saved_model
from kmnist_lab.models import build_model

keras.utils.set_random_seed(0)
model = build_model("mlp", hidden=[16], batchnorm=True)
rng = np.random.default_rng(0)
for variable in model.non_trainable_variables:
    if "moving_variance" in variable.path:
        variable.assign(rng.uniform(0.5, 2.0, variable.shape).astype("float32"))
    elif "moving_mean" in variable.path:
        variable.assign(rng.normal(0.0, 0.5, variable.shape).astype("float32"))
x = np.load(sys.argv[1])
np.save(sys.argv[2], keras.ops.convert_to_numpy(model(x[..., None].astype("float32"))))
export_saved_model(model, sys.argv[3])
"""


def _xla_module_platforms(saved_model_dir: Path) -> list[set[str]]:
    """The platforms each jax2tf `XlaCallModule` op of a SavedModel is lowered for."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((saved_model_dir / "saved_model.pb").read_bytes())
    return [
        {p.decode() for p in node.attr["platforms"].list.s}
        for graph in proto.meta_graphs
        for function in graph.graph_def.library.function
        for node in function.node_def
        if node.op == "XlaCallModule"
    ]


def test_a_model_exported_on_jax_serves_on_cpus_and_on_nvidia_gpus(tmp_path):
    """TensorFlow runs a jax2tf module only on the platforms it was lowered for: one
    exported on this CPU must also serve on a GPU server, and one trained and exported
    on a GPU (JAX's default there) on a CPU, so both are in every module."""
    pytest.importorskip("jax")
    import tensorflow as tf

    x, _ = make_images(7)
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", _EXPORT_ON_JAX, str(tmp_path / "x.npy"),
         str(tmp_path / "keras.npy"), str(tmp_path / "sm")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    platforms = _xla_module_platforms(tmp_path / "sm")
    assert platforms, "a JAX export holds jax2tf's XlaCallModule ops"
    for module in platforms:
        assert {"CPU", "CUDA"} <= module, platforms

    # And on this CPU it serves what Keras predicted, one image or all at once.
    served = tf.saved_model.load(str(tmp_path / "sm"))
    expected = np.load(tmp_path / "keras.npy")
    scores = served.signatures["serve_uint8"](pixels=tf.constant(x))["scores"].numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    one = served.signatures["serve"](pixels=tf.constant(x[:1], tf.float32))["scores"].numpy()
    np.testing.assert_allclose(one, expected[:1], rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_idx_dataset(tmp_path_factory.mktemp("data"), n_train=60, n_test=30)


@pytest.fixture(scope="module")
def bare_saved_model(tmp_path_factory):
    """A SavedModel outside any run folder (an untrained 10-class linear model)."""
    import keras

    from kmnist_lab.export import export_saved_model

    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs)))
    return export_saved_model(model, tmp_path_factory.mktemp("bare") / "sm")


def test_evaluate_takes_the_saved_model_pb_file_for_its_folder(
    bare_saved_model, data_dir, tmp_path, capsys
):
    """`evaluate.py .../saved_model/saved_model.pb` scores that SavedModel, as its folder
    does, instead of saying that there is no saved_model.pb."""
    common = ["--dataset", "kmnist", "--data-dir", str(data_dir)]
    by_file = [str(bare_saved_model / "saved_model.pb"), *common, "--output-dir",
               str(tmp_path / "by_file")]  # fmt: skip
    assert _cli.run(evaluate_script.main, by_file) == 0, capsys.readouterr().err
    by_folder = [str(bare_saved_model), *common, "--output-dir", str(tmp_path / "by_folder")]
    assert _cli.run(evaluate_script.main, by_folder) == 0, capsys.readouterr().err
    scored = [
        json.loads((tmp_path / name / "evaluation.json").read_text())
        for name in ("by_file", "by_folder")
    ]
    assert scored[0]["saved_model"] == str(bare_saved_model)
    assert scored[0]["confusion_matrix"] == scored[1]["confusion_matrix"]


def test_a_scoring_without_wrong_images_leaves_no_earlier_wrong_png(tmp_path):
    """wrong.png shows the scored model's most confidently wrong images: one model's
    must not stay beside the evaluation.json of another that got every image right
    (scripts/report.py shows whatever wrong.png the folder holds)."""
    from kmnist_lab.evaluation import score, write_report

    names = [str(i) for i in range(10)]
    x, y = make_images(20)
    right = np.eye(10, dtype=np.float32)[y] * 5.0
    wrong = np.roll(right, 1, axis=1)
    write_report(score(y, wrong, names), x, names, tmp_path)
    assert (tmp_path / "wrong.png").is_file()

    write_report(score(y, right, names), x, names, tmp_path)
    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    assert evaluation["accuracy"] == 1.0 and evaluation["most_confident_wrong"] == []
    assert not (tmp_path / "wrong.png").exists()


def test_evaluate_says_how_to_score_a_run_trained_on_arrays_of_its_own(tmp_path, capsys):
    """A run of `training.train(config, dataset=from_arrays(...))` records the dataset's
    own name, which no --dataset loads: the error says so and what to do, instead of
    calling that name, which the user never typed, an unknown --dataset."""
    from kmnist_lab.config import TrainConfig
    from kmnist_lab.data import from_arrays
    from kmnist_lab.training import train

    x, y = make_images(60, num_classes=3)
    x_test, y_test = make_images(15, seed=1, num_classes=3)
    dataset = from_arrays(x, y, x_test, y_test, class_names=["cat", "dog", "bird"], name="pets")
    config = TrainConfig(arch="mlp", model_params={"hidden": [8]}, epochs=1, batch_size=16,
                         output_dir=str(tmp_path), run_name="pets", verbose=0)  # fmt: skip
    run_dir = train(config, dataset=dataset, plots=False).run_dir
    capsys.readouterr()

    code = _cli.run(evaluate_script.main, [str(run_dir)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "unknown dataset" not in err, err
    assert f"{run_dir} trained on 'pets', arrays of its own" in err, err
    assert "kmnist_lab.evaluation" in err and "--dataset kmnist --data-dir" in err, err
