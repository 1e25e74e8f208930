"""Replays the golden problems with kmnist_lab's Keras optimizers on the current backend.

`python tests/golden/keras_trajectories.py OUT.json` (with `KERAS_BACKEND` set) writes,
for every golden config: the eager trajectory on both problems (NumPy gradients fed
to `optimizer.apply`), and the compiled `model.fit` trajectory of the least-squares
problem as a `Dense(1)` model (Keras gradients, jit where the backend does it).
The tests run it once per installed backend and compare with `optimizer_golden.json`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
from make_optimizer_golden import GOLDEN_PATH, gradients  # noqa: E402

# `model.fit` costs an XLA compile per run on TensorFlow, so only the two custom
# rules' most demanding configs (bounds hit, averaging on) are also fitted.
FIT_CONFIGS = ("rprop_bounded", "asgd_averaging")


def load_golden() -> dict:
    """The golden file, with each problem's arrays as float32 NumPy arrays."""
    golden = json.loads(GOLDEN_PATH.read_text())
    for problem in golden["problems"].values():
        for key, value in problem.items():
            if key in ("init", "curvature", "center"):
                problem[key] = [np.asarray(v, np.float32) for v in value]
            else:
                problem[key] = np.asarray(value, np.float32)
    return golden


def make_optimizer(golden: dict, config_name: str):
    from kmnist_lab.optimizers import get_optimizer

    config = golden["configs"][config_name]
    return get_optimizer(config["optimizer"], **config["params"])


def eager_trajectory(golden: dict, config_name: str, problem_name: str, steps=None) -> dict:
    """Per-step parameters (and ASGD averages) with NumPy gradients, like the torch run."""
    import keras
    from keras import ops

    problem = golden["problems"][problem_name]
    optimizer = make_optimizer(golden, config_name)
    variables = [keras.Variable(p, dtype="float32") for p in problem["init"]]
    out = {"params": [], "averages": []}
    for _ in range(steps or golden["steps"]):
        grads = gradients(problem_name, problem, [ops.convert_to_numpy(v) for v in variables])
        optimizer.apply([ops.convert_to_tensor(g) for g in grads], variables)
        out["params"].append([ops.convert_to_numpy(v).tolist() for v in variables])
        if hasattr(optimizer, "_averages"):
            out["averages"].append([ops.convert_to_numpy(a).tolist() for a in optimizer._averages])
    return out


def least_squares_model(golden: dict):
    import keras

    problem = golden["problems"]["least_squares"]
    inputs = keras.Input((problem["x"].shape[1],))
    model = keras.Model(inputs, keras.layers.Dense(1, name="dense")(inputs))
    model.set_weights(problem["init"])
    return model


def fit_trajectory(golden: dict, config_name: str) -> dict:
    """Per-epoch weights of `model.fit` on least squares (one full batch per epoch)."""
    import keras

    problem = golden["problems"]["least_squares"]
    model = least_squares_model(golden)
    jit = keras.backend.backend() != "torch"
    model.compile(optimizer=make_optimizer(golden, config_name), loss="mse", jit_compile=jit)
    params = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: params.append([w.tolist() for w in model.get_weights()])
    )
    x, y = problem["x"], problem["y"]
    model.fit(
        x,
        y,
        batch_size=len(x),
        epochs=golden["steps"],
        shuffle=False,
        verbose=0,
        callbacks=[record],
    )
    return {"params": params, "final": [w.tolist() for w in model.get_weights()]}


def all_trajectories(golden: dict) -> dict:
    """Eager trajectories of every config and problem, fit ones of `FIT_CONFIGS`."""
    import keras

    result = {"backend": keras.backend.backend(), "eager": {}, "fit": {}}
    for config in golden["configs"]:
        for problem in golden["problems"]:
            result["eager"][f"{config}/{problem}"] = eager_trajectory(golden, config, problem)
    for config in FIT_CONFIGS:
        result["fit"][config] = fit_trajectory(golden, config)
    return result


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    Path(argv[0]).write_text(json.dumps(all_trajectories(load_golden())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
