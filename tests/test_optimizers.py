"""Optimizer registry, Rprop and ASGD: hand-computed steps, PyTorch golden trajectories
on every Keras backend, config round-trips, checkpoint resume and ASGD averaging."""

import importlib.util
import inspect
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

from kmnist_lab.errors import ConfigError
from kmnist_lab.optimizers import (
    ASGD,
    Rprop,
    SwapAveragedWeights,
    averaging_callbacks,
    get_optimizer,
    list_optimizers,
    optimizer_params,
)

GOLDEN_DIR = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN_DIR))
import keras_trajectories as kt  # noqa: E402
import make_optimizer_golden as mg  # noqa: E402

ISSUE_NAMES = [
    "sgd", "sgdm", "nesterov", "adam", "adamw", "adagrad", "adamax", "rmsprop",
    "nadam", "adadelta", "lion", "rprop", "asgd",
]  # fmt: skip
BACKENDS = ("tensorflow", "jax", "torch")
ATOL = 1e-5
# The subprocesses run beside this one on 2 cores: one thread each avoids thrashing.
QUIET_SINGLE_THREAD = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
}


@pytest.fixture(scope="module")
def golden():
    return kt.load_golden()


@pytest.fixture(scope="module", autouse=True)
def backend_runs(request, tmp_path_factory):
    """Starts one trajectory subprocess per other installed backend, in the background."""
    wanted = any("backend" in item.name for item in request.session.items)
    procs = {}
    if wanted:
        out = tmp_path_factory.mktemp("backends")
        for backend in BACKENDS:
            if backend == keras.backend.backend() or importlib.util.find_spec(backend) is None:
                continue
            env = {**os.environ, "KERAS_BACKEND": backend, **QUIET_SINGLE_THREAD}
            path = out / f"{backend}.json"
            cmd = [sys.executable, str(GOLDEN_DIR / "keras_trajectories.py"), str(path)]
            # stderr to a file: a full pipe would block the child.
            log = (out / f"{backend}.log").open("wb")
            procs[backend] = (subprocess.Popen(cmd, env=env, stderr=log, stdout=log), path)
    yield procs
    for proc, _ in procs.values():
        if proc.poll() is None:
            proc.kill()


def assert_close(actual, expected, what):
    for step, (a, e) in enumerate(zip(actual, expected, strict=True)):
        for a_param, e_param in zip(a, e, strict=True):
            np.testing.assert_allclose(
                np.asarray(a_param),
                np.asarray(e_param),
                rtol=0,
                atol=ATOL,
                err_msg=f"{what}, step {step + 1}",
            )


def fit_problem(model, golden, **kw):
    problem = golden["problems"]["least_squares"]
    x, y = problem["x"], problem["y"]
    return model.fit(x, y, batch_size=len(x), shuffle=False, verbose=0, **kw)


# --- registry and validation -------------------------------------------------------


def test_registry_has_every_name_of_the_issue():
    assert set(ISSUE_NAMES) <= set(list_optimizers())


@pytest.mark.parametrize("name", list_optimizers())
def test_builds_and_config_round_trips(name):
    optimizer = get_optimizer(name)
    assert isinstance(optimizer, keras.optimizers.Optimizer)
    config = optimizer.get_config()
    assert type(optimizer).from_config(config).get_config() == config
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(clone) is type(optimizer) and clone.get_config() == config


@pytest.mark.parametrize(
    "make",
    [
        lambda: Rprop(
            keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5),
            eta_minus=0.3,
            eta_plus=1.5,
            step_size_min=1e-3,
            step_size_max=2.0,
            clipnorm=1.0,
        ),
        lambda: ASGD(0.05, lambd=0.01, alpha=0.6, t0=5, weight_decay=0.01, global_clipnorm=2.0),
    ],
    ids=["rprop", "asgd"],
)
def test_custom_config_is_complete_and_round_trips(make):
    optimizer = make()
    config = optimizer.get_config()
    own = set(inspect.signature(type(optimizer).__init__).parameters) - {"self", "kwargs"}
    assert own <= set(config)
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(clone) is type(optimizer)
    assert clone.get_config() == config


# docs/optimizers.md's table: default lr and other defaults of every optimizer.
DOCUMENTED_DEFAULTS = {
    "sgd": (0.01, {"momentum": 0.0, "nesterov": False}),
    "sgdm": (0.01, {"momentum": 0.9, "nesterov": False}),
    "nesterov": (0.01, {"momentum": 0.9, "nesterov": True}),
    "adam": (0.001, {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}),
    "adamw": (0.001, {"beta_1": 0.9, "beta_2": 0.999, "weight_decay": 0.004}),
    "adagrad": (0.01, {"initial_accumulator_value": 0.1, "epsilon": 1e-7}),
    "adamax": (0.002, {"beta_1": 0.9, "beta_2": 0.999}),
    "rmsprop": (0.001, {"rho": 0.9, "momentum": 0.0}),
    "nadam": (0.001, {"beta_1": 0.9, "beta_2": 0.999}),
    "adadelta": (1.0, {"rho": 0.9, "epsilon": 1e-6}),
    "lion": (1e-4, {"beta_1": 0.9, "beta_2": 0.99}),
    "rprop": (
        0.01,
        {"eta_minus": 0.5, "eta_plus": 1.2, "step_size_min": 1e-6, "step_size_max": 50.0},
    ),
    "asgd": (0.01, {"lambd": 1e-4, "alpha": 0.75, "t0": 1e6}),
}


@pytest.mark.parametrize("name", ISSUE_NAMES)
def test_defaults_are_the_documented_ones(name):
    lr, others = DOCUMENTED_DEFAULTS[name]
    config = get_optimizer(name).get_config()
    assert config["learning_rate"] == pytest.approx(lr)
    for key, value in others.items():
        assert config[key] == pytest.approx(value), key
    if "weight_decay" not in others:  # only adamw decays unless asked to
        assert config["weight_decay"] is None


@pytest.mark.parametrize("cls", [Rprop, ASGD], ids=["rprop", "asgd"])
def test_custom_classes_built_directly_have_the_registry_defaults(cls):
    # `Rprop()` and `ASGD()` are public too: the same defaults as `get_optimizer`.
    lr, others = DOCUMENTED_DEFAULTS[cls.__name__.lower()]
    config = cls().get_config()
    assert config["learning_rate"] == pytest.approx(lr)
    for key, value in others.items():
        assert config[key] == pytest.approx(value), key
    assert config["weight_decay"] is None


def test_params_and_error_messages():
    assert optimizer_params("sgdm") == ["momentum", "weight_decay"]
    assert optimizer_params("rprop") == ["eta_minus", "eta_plus", "step_size_min", "step_size_max"]
    assert "lambd" in optimizer_params("asgd") and "weight_decay" in optimizer_params("asgd")
    with pytest.raises(ConfigError) as e:
        get_optimizer("adam", momentum=0.5)
    assert str(e.value) == (
        "`momentum` does not apply to optimizer 'adam'. It applies to: sgdm, nesterov, "
        "rmsprop. Received: momentum=0.5"
    )
    with pytest.raises(
        ConfigError,
        match=r"^`learning_rate` must be a positive finite number. "
        r"Received: learning_rate=-1$",
    ):
        get_optimizer("sgd", learning_rate=-1)
    with pytest.raises(ConfigError, match="unknown optimizer parameter `betas`"):
        get_optimizer("adam", betas=(0.9, 0.99))
    with pytest.raises(
        ConfigError, match="unknown optimizer 'adamm'. Did you mean 'adam'. Valid optimizers: sgd"
    ):
        get_optimizer("adamm")
    with pytest.raises(ConfigError, match="`momentun`. Did you mean 'momentum'. Optimizer 'sgdm'"):
        get_optimizer("sgdm", momentun=0.5)
    # None means "not set by the user".
    assert get_optimizer("adam", momentum=None, weight_decay=None).weight_decay is None
    assert get_optimizer("sgdm", 0.01, momentum=0.5).momentum == 0.5


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("sgd", {"learning_rate": 0.0}),
        ("sgd", {"learning_rate": float("nan")}),
        ("sgd", {"learning_rate": float("inf")}),
        ("sgd", {"learning_rate": "0.1"}),
        ("sgdm", {"momentum": 1.0}),
        ("sgdm", {"momentum": -0.1}),
        ("adam", {"weight_decay": -1e-4}),
        ("adam", {"beta_1": 1.0}),
        ("adam", {"epsilon": 0}),
        ("rprop", {"eta_minus": 1.5}),
        ("rprop", {"eta_plus": 0.9}),
        ("rprop", {"step_size_min": 0.0}),
        ("rprop", {"step_size_min": 1.0, "step_size_max": 0.5}),
        ("asgd", {"lambd": -1.0}),
        ("asgd", {"t0": float("nan")}),
        ("lion", {"beta_1": 0.0}),  # Keras' Lion refuses 0: caught before Keras sees it
    ],
)
def test_invalid_values_raise_one_line_config_error(name, kwargs):
    with pytest.raises(ConfigError) as e:
        get_optimizer(name, **kwargs)
    message = str(e.value)
    assert "\n" not in message and "Received:" in message
    assert next(iter(kwargs)) in message


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        ("eta_minus", 0.0, "must be in (0, 1)"),
        ("eta_minus", 1.0, "must be in (0, 1)"),
        ("eta_plus", 1.0, "must be a finite number > 1"),
    ],
)
def test_rprop_step_factors_are_refused_at_their_open_bounds(key, value, rule):
    # eta_plus = 1 never grows a step, eta_minus = 1 never shrinks one, 0 freezes it.
    with pytest.raises(ConfigError) as e:
        get_optimizer("rprop", **{key: value})
    assert str(e.value) == f"`{key}` {rule}. Received: {key}={value}"
    with pytest.raises(ValueError, match=f"Received: .*{key}={value}"):  # the class too
        Rprop(**{key: value})


def test_whole_and_numpy_numbers_are_accepted_as_floats():
    """Keras type-checks for `float`; an int from JSON or a NumPy scalar must still work."""
    assert float(get_optimizer("adadelta", learning_rate=1).learning_rate) == 1.0
    assert get_optimizer("sgdm", momentum=0).momentum == 0.0
    assert get_optimizer("sgdm", np.int64(1), momentum=np.float32(0.5)).momentum == 0.5
    assert get_optimizer("lion", beta_1=1).beta_1 == 1.0


def test_an_optimizer_chosen_without_lr_trains_at_its_own_default_lr():
    from kmnist_lab.config import TrainConfig
    from kmnist_lab.optimizers import optimizer_defaults

    # The arch's preset lr (Adam's 1e-3) goes with the arch's preset optimizer only.
    assert TrainConfig(arch="bn_mlp").resolved().lr == 1e-3
    assert TrainConfig(arch="bn_mlp", optimizer="adam").resolved().lr == 1e-3
    assert TrainConfig(arch="bn_mlp", optimizer="adadelta").resolved().lr == 1.0
    assert TrainConfig(arch="resnet18", optimizer="lion").resolved().lr == 1e-4
    assert TrainConfig(arch="bn_mlp", optimizer="sgd", lr=0.03).resolved().lr == 0.03
    for name in list_optimizers():
        lr = TrainConfig(arch="residual_cnn", optimizer=name).resolved().lr
        assert lr == optimizer_defaults(name)["learning_rate"] or name == "adam", name


def test_asgd_class_refuses_non_numbers():
    with pytest.raises(
        ValueError, match=r"`lambd` must be a finite number >= 0. Received: lambd='x'"
    ):
        ASGD(lambd="x")


def test_asgd_refuses_use_ema():
    with pytest.raises(ValueError, match="use_ema"):
        ASGD(use_ema=True)


# --- one step by hand --------------------------------------------------------------


def run_steps(optimizer, init, grads):
    var = keras.Variable(np.asarray(init, np.float32))
    out = []
    for g in grads:
        optimizer.apply([ops.convert_to_tensor(np.asarray(g, np.float32))], [var])
        out.append(ops.convert_to_numpy(var).copy())
    return out


def test_adagrad_with_pytorchs_accumulator_start_follows_torch_optim_adagrad():
    """docs/optimizers.md: `initial_accumulator_value=0, epsilon=1e-10` gives PyTorch's
    Adagrad, `G += g^2; w -= lr * g / (sqrt(G) + eps)`; Keras' default start (0.1) does not."""
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=5)
    scale = np.array([0.05, 0.3, 1.0, 3.0, 10.0])

    def torch_adagrad(steps=20, lr=0.01, eps=1e-10):
        w, acc, path = w0.copy(), np.zeros(5), []
        for _ in range(steps):
            g = (scale * w).astype(np.float32)  # gradient of sum(scale * w^2) / 2
            acc += g.astype(np.float64) ** 2
            w = w - lr * g / (np.sqrt(acc) + eps)
            path.append(w.copy())
        return np.array(path)

    def keras_path(**params):
        var = keras.Variable(w0.astype(np.float32))
        opt, path = get_optimizer("adagrad", **params), []
        for _ in range(20):
            grad = ops.convert_to_tensor(scale.astype(np.float32)) * var
            opt.apply([grad], [var])
            path.append(ops.convert_to_numpy(var).copy())
        return np.array(path)

    expected = torch_adagrad()
    same = keras_path(initial_accumulator_value=0.0, epsilon=1e-10)
    np.testing.assert_allclose(same, expected, rtol=1e-5, atol=1e-6)
    travel = np.abs(expected[-1] - w0).max()
    assert np.abs(keras_path() - expected).max() > 0.1 * travel  # the default differs


def test_rprop_steps_by_hand():
    # Step sizes start at lr=0.1; grad signs: (+, -, 0), then (+, +, +) twice.
    grads = [[0.5, -1.0, 0.0], [0.3, 2.0, 1.0], [0.3, 2.0, 1.0]]
    w = run_steps(get_optimizer("rprop", learning_rate=0.1), [1.0, -2.0, 0.5], grads)
    np.testing.assert_allclose(w[0], [0.9, -1.9, 0.5], atol=1e-7)  # w -= sign(g) * 0.1
    # Weight 2's gradient changed sign: step 0.1 * 0.5 and no move; weight 1 keeps its
    # sign: step 0.1 * 1.2; weight 3 had a zero gradient: step unchanged.
    np.testing.assert_allclose(w[1], [0.78, -1.9, 0.4], atol=1e-7)
    # The skipped move zeroed weight 2's stored gradient, so its step (0.05) holds.
    np.testing.assert_allclose(w[2], [0.636, -1.95, 0.28], atol=1e-7)


def test_rprop_reads_the_signs_of_tiny_gradients():
    # Gradients of 1e-20 (a converged full-batch loss): their product, 1e-40, is a
    # float32 subnormal that TensorFlow and XLA flush to 0. The step must still grow
    # while the sign holds and skip on a sign change, as with gradients of any size.
    tiny = 1e-20
    grads = [[tiny, -tiny], [tiny, tiny], [tiny, -tiny]]
    w = run_steps(get_optimizer("rprop", learning_rate=0.1), [1.0, 1.0], grads)
    # Weight 1: steps 0.1, 0.12, 0.144 (sign held). Weight 2: 0.1 up, a sign change
    # (step halved, no move), then the stored 0 keeps the step at 0.05.
    np.testing.assert_allclose(w, [[0.9, 1.1], [0.78, 1.1], [0.636, 1.15]], atol=1e-6)


def test_rprop_weight_first_updated_after_step_0_starts_at_the_learning_rate():
    # As torch.optim.Rprop, whose per-weight state is created at its first gradient:
    # the second weight's first step is lr = 0.1, not step_size_min = 1e-6.
    a, b = keras.Variable(np.ones(1, np.float32)), keras.Variable(np.ones(1, np.float32))
    optimizer = get_optimizer("rprop", learning_rate=0.1)
    optimizer.build([a, b])
    grad = ops.convert_to_tensor(np.ones(1, np.float32))
    optimizer.apply([grad], [a])
    optimizer.apply([grad, grad], [a, b])
    np.testing.assert_allclose(ops.convert_to_numpy(a), [0.78], atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(b), [0.9], atol=1e-6)


def test_rprop_bounds_and_schedule():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 1, 0.5)
    optimizer = Rprop(schedule, eta_plus=2.0, step_size_max=0.25)
    w = run_steps(optimizer, [0.0], [[1.0]] * 4)
    # First step = schedule(0) = 0.1, then 0.2, then capped at 0.25; the schedule's
    # later values are ignored, as in PyTorch where lr is only the initial step.
    np.testing.assert_allclose(np.ravel(w), [-0.1, -0.3, -0.55, -0.8], atol=1e-6)


def test_asgd_steps_by_hand():
    lr, lambd, alpha = 0.1, 0.01, 0.75
    optimizer = ASGD(lr, lambd=lambd, alpha=alpha, t0=0)
    g = np.array([0.5, 1.0])
    w = run_steps(optimizer, [1.0, -2.0], [g] * 3)
    # Step 1: eta = lr; w = w * (1 - lambd * eta) - eta * g.
    np.testing.assert_allclose(w[0], [0.949, -2.098], atol=1e-6)
    expected = np.array([0.949, -2.098])
    history = [expected]
    for t in (1, 2):
        eta = lr / (1 + lambd * lr * t) ** alpha
        expected = expected * (1 - lambd * eta) - eta * g
        history.append(expected)
        np.testing.assert_allclose(w[t], expected, atol=1e-6)
    # mu = 1 / max(1, t - t0) is 1 for t = 0, 1, so ax = w until step 3 averages w2, w3.
    np.testing.assert_allclose(
        ops.convert_to_numpy(optimizer._averages[0]), (history[1] + history[2]) / 2, atol=1e-6
    )


# --- golden trajectories (PyTorch) -------------------------------------------------


def test_golden_file_matches_its_generator(golden):
    assert set(golden["configs"]) == set(mg.CONFIGS)
    for name, problem in mg.make_problems().items():
        for key, value in problem.items():
            stored = golden["problems"][name][key]
            for a, b in zip(
                *(v if isinstance(v, list) else [v] for v in (stored, value)), strict=True
            ):
                np.testing.assert_array_equal(a, b)


def test_golden_matches_live_pytorch(golden):
    pytest.importorskip("torch")
    for key, expected in golden["trajectories"].items():
        config, problem = key.split("/")
        live = mg.torch_trajectory(config, problem)
        assert_close(live["params"], expected["params"], f"torch {key}")
        assert_close(live["averages"], expected["averages"], f"torch {key} averages")


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_trajectories_match_pytorch(backend, golden, backend_runs):
    if backend == keras.backend.backend():
        result = kt.all_trajectories(golden)
    elif backend in backend_runs:
        proc, path = backend_runs[backend]
        proc.wait(timeout=300)
        assert proc.returncode == 0, path.with_suffix(".log").read_text()[-3000:]
        result = json.loads(path.read_text())
    else:
        pytest.skip(f"{backend} is not installed")
    assert result["backend"] == backend
    for key, expected in golden["trajectories"].items():
        actual = result["eager"][key]
        assert_close(actual["params"], expected["params"], f"{backend} {key}")
        assert_close(actual["averages"], expected["averages"], f"{backend} {key} averages")
    for config, actual in result["fit"].items():
        expected = golden["trajectories"][f"{config}/least_squares"]
        assert_close(actual["params"], expected["params"], f"{backend} fit {config}")
        # `fit` ends by copying ASGD's averages into the model.
        final = (expected["averages"] or expected["params"])[-1]
        assert_close([actual["final"]], [final], f"{backend} fit {config} final weights")


# --- checkpoints and averaging -----------------------------------------------------


@pytest.mark.parametrize("config", ["rprop_bounded", "asgd_averaging"])
def test_checkpoint_resume_continues_the_trajectory(config, golden, tmp_path):
    path = tmp_path / "mid.keras"
    model = kt.least_squares_model(golden)
    model.compile(optimizer=kt.make_optimizer(golden, config), loss="mse")
    save = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: epoch == 9 and model.save(path)
    )
    fit_problem(model, golden, epochs=10, callbacks=[save])

    restored = keras.saving.load_model(path)
    assert type(restored.optimizer).__name__ == type(model.optimizer).__name__
    assert int(ops.convert_to_numpy(restored.optimizer.iterations)) == 10
    params = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: params.append(restored.get_weights())
    )
    fit_problem(restored, golden, initial_epoch=10, epochs=20, callbacks=[record])
    expected = golden["trajectories"][f"{config}/least_squares"]
    assert_close(params, expected["params"][10:], f"resumed {config}")
    final = (expected["averages"] or expected["params"])[-1]
    assert_close([restored.get_weights()], [final], f"resumed {config} final")


def test_asgd_validation_sees_averaged_weights(golden):
    problem = golden["problems"]["least_squares"]
    x, y = problem["x"], problem["y"]
    model = kt.least_squares_model(golden)
    optimizer = kt.make_optimizer(golden, "asgd_averaging")
    model.compile(optimizer=optimizer, loss="mse")
    callbacks = averaging_callbacks(optimizer)
    assert [type(c) for c in callbacks] == [SwapAveragedWeights]
    params = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: params.append(model.get_weights())
    )
    history = fit_problem(
        model, golden, epochs=20, validation_data=(x, y), callbacks=[*callbacks, record]
    )
    expected = golden["trajectories"]["asgd_averaging/least_squares"]
    # Training continued from the raw iterates ...
    assert_close(params, expected["params"], "asgd with swap callback")
    # ... validation used the averages, and fit ended with them in the model.
    kernel, bias = expected["averages"][-1]
    averaged_mse = np.mean((x @ np.asarray(kernel) + np.asarray(bias) - y) ** 2)
    assert math.isclose(history.history["val_loss"][-1], averaged_mse, rel_tol=1e-4)
    assert_close([model.get_weights()], [expected["averages"][-1]], "finalized")
    assert averaging_callbacks(get_optimizer("adam")) == []


def test_averaging_callbacks_see_through_loss_scaling_and_cover_ema():
    """ASGD inside a LossScaleOptimizer (mixed float16) still swaps its averages in;
    Keras' own EMA (`use_ema=True`) gets Keras' SwapEMAWeights; plain SGD gets none."""
    scaled = keras.optimizers.LossScaleOptimizer(ASGD(0.1))
    assert [type(c) for c in averaging_callbacks(scaled)] == [SwapAveragedWeights]
    ema = keras.optimizers.Adam(use_ema=True)
    assert [type(c) for c in averaging_callbacks(ema)] == [keras.callbacks.SwapEMAWeights]
    assert averaging_callbacks(keras.optimizers.LossScaleOptimizer(ema))[0].__class__ is (
        keras.callbacks.SwapEMAWeights
    )
    assert averaging_callbacks(get_optimizer("sgd")) == []


def test_asgd_that_has_not_stepped_leaves_the_weights_alone():
    # The averages start as zeros and mean nothing before the first step. A built
    # optimizer (here by hand, as in a custom loop) in a `fit` that runs no step
    # (initial_epoch == epochs) still gets `finalize_variable_values` at its end, and
    # validation swaps: neither may put those zeros into the model.
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    weights = [np.array([[0.5], [-1.0]], np.float32), np.array([0.25], np.float32)]
    model.set_weights(weights)
    optimizer = ASGD(0.1, t0=0)
    model.compile(optimizer=optimizer, loss="mse")
    optimizer.build(model.trainable_variables)
    x, y = np.ones((4, 2), np.float32), np.zeros((4, 1), np.float32)
    model.fit(x, y, epochs=1, initial_epoch=1, verbose=0)
    assert int(ops.convert_to_numpy(optimizer.iterations)) == 0
    optimizer.swap_averaged_weights()  # as `SwapAveragedWeights` does for validation
    for got, expected in zip(model.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(got, expected)


# --- convergence -------------------------------------------------------------------

# (learning rate, steps); Adadelta's unit-free steps start at ~sqrt(epsilon) and grow.
TOY_SETTINGS = {"adadelta": (1.0, 500), "adagrad": (0.5, 150), "rprop": (0.01, 150)}


@pytest.mark.parametrize("name", list_optimizers())
def test_converges_on_a_toy_quadratic(name):
    curvature = np.array([1.0, 2.0, 0.5, 1.5], np.float32)
    center = np.array([1.0, -1.0, 2.0, 0.5], np.float32)
    learning_rate, steps = TOY_SETTINGS.get(name, (0.05, 150))
    optimizer = get_optimizer(name, learning_rate=learning_rate)
    var = keras.Variable(np.zeros(4, np.float32))

    def loss():
        return float(0.5 * np.sum(curvature * (ops.convert_to_numpy(var) - center) ** 2))

    start = loss()
    for _ in range(steps):
        grad = curvature * (ops.convert_to_numpy(var) - center)
        optimizer.apply([ops.convert_to_tensor(grad)], [var])
    assert loss() < 0.05 * start, f"{name}: {start:.3f} -> {loss():.3f}"
