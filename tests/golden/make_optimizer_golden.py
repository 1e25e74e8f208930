"""Generates `optimizer_golden.json`: 20-step PyTorch trajectories of the update rules.

Run from the repository root (needs torch): `python tests/golden/make_optimizer_golden.py`.

Two problems with float32 NumPy gradients (so both frameworks see bit-identical
gradients and any difference is the optimizer's): a small separable quadratic with
two parameter tensors, and linear least squares `mean((X @ w + b - y) ** 2)` laid
out like a Keras `Dense(1)` (kernel `(3, 1)`, bias `(1,)`) so the same problem can
also be trained with `model.fit`. Each config pairs a `get_optimizer` call with the
`torch.optim` call it must reproduce. The problems, configs and gradients are
imported from here by the tests; torch is imported only to generate.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

STEPS = 20
GOLDEN_PATH = Path(__file__).with_name("optimizer_golden.json")

# name -> (kmnist_lab optimizer, its params, torch.optim class, its kwargs)
CONFIGS = {
    "sgd": ("sgd", {"learning_rate": 0.05}, "SGD", {"lr": 0.05}),
    "sgdm": (
        "sgdm",
        {"learning_rate": 0.05, "momentum": 0.5},
        "SGD",
        {"lr": 0.05, "momentum": 0.5},
    ),
    "rprop": ("rprop", {}, "Rprop", {"lr": 0.01}),
    "rprop_bounded": (
        "rprop",
        {
            "learning_rate": 0.1,
            "eta_minus": 0.3,
            "eta_plus": 1.5,
            "step_size_min": 0.02,
            "step_size_max": 0.3,
        },
        "Rprop",
        {"lr": 0.1, "etas": (0.3, 1.5), "step_sizes": (0.02, 0.3)},
    ),
    "asgd": ("asgd", {}, "ASGD", {"lr": 0.01}),
    "asgd_averaging": (
        "asgd",
        {"learning_rate": 0.05, "lambd": 0.01, "alpha": 0.6, "t0": 5, "weight_decay": 0.01},
        "ASGD",
        {"lr": 0.05, "lambd": 0.01, "alpha": 0.6, "t0": 5, "weight_decay": 0.01},
    ),
}


def make_problems() -> dict:
    """The two problems: initial parameters (list of arrays) and constants."""
    rng = np.random.default_rng(20240604)
    x = rng.normal(size=(16, 3)).astype(np.float32)
    y = (x @ np.array([[1.5], [-2.0], [0.5]], np.float32) + 0.3).astype(np.float32)
    y += (0.1 * rng.normal(size=y.shape)).astype(np.float32)
    return {
        "quadratic": {
            "init": [np.zeros((2, 2), np.float32), np.array([0.3, -0.2, 1.0], np.float32)],
            "curvature": [
                np.array([[1.0, 10.0], [0.1, 3.0]], np.float32),
                np.array([2.0, 0.5, 8.0], np.float32),
            ],
            "center": [
                np.array([[1.0, -2.0], [0.5, 3.0]], np.float32),
                np.array([-1.0, 0.25, 1.1], np.float32),
            ],
        },
        "least_squares": {
            "init": [np.zeros((3, 1), np.float32), np.zeros((1,), np.float32)],
            "x": x,
            "y": y,
        },
    }


def gradients(problem_name: str, problem: dict, params: list) -> list:
    """float32 gradients of the problem's loss at `params` (list of arrays)."""
    params = [np.asarray(p, np.float32) for p in params]
    if problem_name == "quadratic":
        return [
            (a * (p - c)).astype(np.float32)
            for p, a, c in zip(params, problem["curvature"], problem["center"], strict=True)
        ]
    x, y = problem["x"], problem["y"]
    kernel, bias = params
    residual = x @ kernel + bias - y
    scale = np.float32(2.0 / len(x))
    return [
        (scale * (x.T @ residual)).astype(np.float32),
        (scale * residual.sum(0)).astype(np.float32),
    ]


def torch_trajectory(config_name: str, problem_name: str, steps: int = STEPS) -> dict:
    """Runs the torch optimizer of `config_name`; returns per-step params (and averages)."""
    import torch

    _, _, cls_name, kwargs = CONFIGS[config_name]
    problem = make_problems()[problem_name]
    params = [torch.nn.Parameter(torch.tensor(p)) for p in problem["init"]]
    extra = {"foreach": False} if cls_name in ("Rprop", "ASGD", "SGD") else {}
    optimizer = getattr(torch.optim, cls_name)(params, **kwargs, **extra)
    out = {"params": [], "averages": []}
    for _ in range(steps):
        grads = gradients(problem_name, problem, [p.detach().numpy() for p in params])
        for p, g in zip(params, grads, strict=True):
            p.grad = torch.from_numpy(g.copy())
        optimizer.step()
        out["params"].append([p.detach().numpy().tolist() for p in params])
        if cls_name == "ASGD":
            out["averages"].append([optimizer.state[p]["ax"].numpy().tolist() for p in params])
    return out


def main() -> int:
    import torch

    problems = make_problems()
    golden = {
        "generator": "tests/golden/make_optimizer_golden.py",
        "torch_version": torch.__version__,
        "steps": STEPS,
        "problems": {
            name: {
                k: [a.tolist() for a in v] if isinstance(v, list) else v.tolist()
                for k, v in problem.items()
            }
            for name, problem in problems.items()
        },
        "configs": {
            name: {"optimizer": opt, "params": params, "torch": cls, "torch_kwargs": kw}
            for name, (opt, params, cls, kw) in CONFIGS.items()
        },
        "trajectories": {
            f"{config}/{problem}": torch_trajectory(config, problem)
            for config in CONFIGS
            for problem in problems
        },
    }
    GOLDEN_PATH.write_text(json.dumps(golden, indent=1) + "\n")
    print(f"wrote {GOLDEN_PATH} ({len(golden['trajectories'])} trajectories)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
