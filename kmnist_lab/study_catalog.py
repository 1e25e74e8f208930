"""The lab reports' studies as data (`shared/SEEDS.md`): the catalog `STUDIES`.

Each `Study` is a name, a description, its runs (each a `TrainConfig`'s fields,
every training setting explicit) and the original report's numbers for each run.
Nothing here trains: `kmnist_lab.studies.run_study` does, and `kmnist_lab.report`
reads what it wrote. Adding a study means adding one `Study(...)` below and its
name to `STUDIES`.
"""

from __future__ import annotations

import dataclasses

from kmnist_lab.registry import Registry


@dataclasses.dataclass(frozen=True)
class StudyRun:
    """One run of a study.

    Attributes:
        name: run folder name.
        config: `TrainConfig` fields (every training setting explicit).
        original: the report's numbers, e.g. `{"test_accuracy": 0.9225, "test_loss": 0.272}`;
            `test_accuracy_range: [lo, hi]` where the report gave a range.
        factors: the settings that vary across the study (table columns, heatmap axes).
        group: runs of a group share a curve figure.
    """

    name: str
    config: dict
    original: dict = dataclasses.field(default_factory=dict)
    factors: dict = dataclasses.field(default_factory=dict)
    group: str = ""


@dataclasses.dataclass(frozen=True)
class Study:
    """A named study.

    Attributes:
        name: citable name (`a_models`, ...).
        report: the seed report (A-E).
        description: one paragraph: what it asks and the settings.
        runs: the runs, in table order.
        extras: `"confusion"` (confusion matrix + classification report of the test
            split), `"per_class_train"` (per-class accuracy on train and test) and/or
            `"epoch_loss"` (a table of each run's training loss per epoch).
        heatmap: `(row_factor, col_factor)` for two-factor studies.
        heatmap_where: `((factor, value), ...)` a run must match to enter the heatmap.
        grid: `(row_factor, col_factor, panel_factor)` for three-factor grids: the
            report tabulates test accuracy, test loss and val accuracy with a row per
            (row, col) pair and a column per panel value, marks the cell with the best
            val accuracy, and draws one heatmap panel per panel value.
        kind: `"classify"` (image runs via `train`) or `"regression"`.
        notes: assumptions where the report is silent.
    """

    name: str
    report: str
    description: str
    runs: tuple
    extras: tuple = ()
    heatmap: tuple | None = None
    heatmap_where: tuple = ()
    grid: tuple = ()
    kind: str = "classify"
    notes: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Every training field a study sets; `TrainConfig`'s per-arch defaults (adam, cosine,
# augmentation) are never relied upon.
def _cfg(arch, *, epochs, batch_size, optimizer, lr, loss="ce", model_params=None,
         momentum=None, weight_decay=None, l2=0.0, augment=False, lr_schedule="constant",
         loss_params=None):  # fmt: skip
    return {
        "arch": arch, "epochs": epochs, "batch_size": batch_size, "optimizer": optimizer, "lr": lr,
        "lr_schedule": lr_schedule, "warmup_epochs": 0, "loss": loss,
        "loss_params": dict(loss_params or {}), "model_params": dict(model_params or {}),
        "momentum": momentum, "weight_decay": weight_decay, "l2": l2, "augment": augment, "seed": 0,
        # The reports trained in PyTorch: its Adagrad starts the accumulator at 0 (Keras: 0.1).
        "optimizer_params": dict(_TORCH_ADAGRAD) if optimizer == "adagrad" else {},
    }  # fmt: skip


_TORCH_ADAGRAD = {"initial_accumulator_value": 0.0, "epsilon": 1e-10}


def _acc(acc, loss=None, **more):
    out = {"test_accuracy": acc / 100.0}
    if loss is not None:
        out["test_loss"] = loss
    return {**out, **more}


# ------------------------------------------------------------------------- report A
_A = {"epochs": 15, "batch_size": 128, "optimizer": "sgd", "lr": 0.03}
_A_DESC = (
    "Report A: 784-512-128-10 MLPs, mini-batch SGD lr 0.03, batch 128, 15 epochs, constant lr, "
    "no augmentation, inputs normalised to mean 0.5 / std 0.5; validation split held out."
)
A_MODELS = Study(
    "a_models",
    "A",
    "Plain vs ReLU vs BatchNorm MLP at the report's best hand-grid cell. " + _A_DESC,
    runs=tuple(
        StudyRun(arch, _cfg(arch, **_A), _acc(acc, loss), {"model": arch})
        for arch, acc, loss in (
            ("plain_mlp", 92.25, 0.272),
            ("relu_mlp", 97.14, 0.093),
            ("bn_mlp", 98.18, 0.058),
        )
    ),  # fmt: skip
)
A_LOSSES = Study(
    "a_losses",
    "A",
    "CE vs AM-Softmax vs ARM-Softmax (m=0.2, s=30) on bn_mlp. " + _A_DESC,
    runs=tuple(
        StudyRun(
            loss, _cfg("bn_mlp", loss=loss, loss_params=params, **_A), _acc(acc), {"loss": loss}
        )
        for loss, params, acc in (
            ("ce", {}, 98.18),
            ("am_softmax", {"margin": 0.2, "scale": 30.0}, 76.24),
            ("arm_softmax", {"margin": 0.2, "scale": 30.0}, 75.93),
        )
    ),  # fmt: skip
    notes="The report's margin-loss numbers are a failure to beat: on a cosine head they should "
    "reach CE-level accuracy.",
)
_A_GRID = [(bs, lr, ep) for bs in (32, 64, 128, 256) for lr in (0.01, 0.02, 0.03)
           for ep in (3, 5, 7, 10, 15)]  # fmt: skip
A_GRID = Study(
    "a_grid",
    "A",
    "Report A's hand grid on plain_mlp: batch size {32, 64, 128, 256} x lr {0.01, 0.02, 0.03} "
    "x epochs {3, 5, 7, 10, 15}, mini-batch SGD, constant lr, CE, no augmentation; 60 runs, "
    "each trained from scratch (480 epochs in all), with a loss-vs-iteration curve, test "
    "accuracy and test loss per cell.",
    runs=tuple(
        StudyRun(
            f"bs{bs}_lr{lr:g}_e{ep}",
            _cfg("plain_mlp", epochs=ep, batch_size=bs, optimizer="sgd", lr=lr),
            _acc(92.25, 0.272) if (bs, lr, ep) == (128, 0.03, 15) else {},
            {"batch_size": bs, "lr": lr, "epochs": ep},
            f"batch {bs}",
        )
        for bs, lr, ep in _A_GRID
    ),  # fmt: skip
    grid=("batch_size", "lr", "epochs"),
    notes="The report chose its best cell (batch 128, lr 0.03, 15 epochs: 92.25 %, test loss "
    "0.272) by test accuracy; here the cell with the best validation accuracy is marked and the "
    "test split only reports. Every run starts from the same seed, so with a constant lr a "
    "cell's curve is the start of the same (batch, lr) pair's longer cells. The same grid as a "
    "keras-tuner search, scored on validation only: `python scripts/tune.py --space a_grid "
    "--tuner grid`.",
)
_A_OPT = (
    ("mbgd", "sgd", 0.03, 128, 15, _acc(98.18)),
    ("adam", "adam", 1e-3, 128, 15, _acc(98.04)),
    ("adagrad", "adagrad", 1e-2, 128, 15, _acc(98.49)),
    ("adamax", "adamax", 2e-3, 128, 15, _acc(98.05)),
    ("asgd", "asgd", 1e-2, 128, 15, _acc(98.21)),
    ("rprop", "rprop", 1e-2, 128, 15, _acc(93.00, 4.18)),
    # Rprop is a full-batch method: one batch of the whole training set, more epochs.
    ("rprop_fullbatch", "rprop", 1e-2, 60000, 100, {}),
    # The same, with BatchNorm's moving statistics recomputed at the end (precise BN):
    # 100 large full-batch steps leave the moving averages behind the weights.
    ("rprop_fullbatch_precise_bn", "rprop", 1e-2, 60000, 100, {}),
)
A_OPTIMIZERS = Study(
    "a_optimizers",
    "A",
    "Update rules on bn_mlp + CE, 15 epochs, batch 128, constant lr, no augmentation; "
    "plus Rprop on full batches (100 epochs), the way it is meant to be used, with and without "
    "BatchNorm's statistics recomputed at the end (precise BN).",
    runs=tuple(
        StudyRun(
            name,
            {
                **_cfg("bn_mlp", epochs=ep, batch_size=bs, optimizer=opt, lr=lr),
                "precise_bn": name.endswith("precise_bn"),
            },
            orig,
            {
                "optimizer": opt,
                "lr": lr,
                "batch_size": bs,
                "precise_bn": name.endswith("precise_bn"),
            },
        )
        for name, opt, lr, bs, ep, orig in _A_OPT
    ),  # fmt: skip
    notes="The reports' summary gives no per-optimizer learning rate except MBGD's 0.03; the others use "
    "PyTorch's defaults (Adam 1e-3, Adagrad 1e-2, Adamax 2e-3, ASGD 1e-2, Rprop 1e-2). Adagrad "
    "runs as torch.optim.Adagrad does (accumulator from 0, eps 1e-10; Keras' default starts "
    "at 0.1).",
)

# ------------------------------------------------------------------------- report B
_B = {"epochs": 10, "batch_size": 64, "optimizer": "adam", "lr": 0.01}
B_RESNET = Study(
    "b_resnet",
    "B",
    "Report B: ResNet-18 (7x7/2 stem, 4 stages of 2 basic blocks), 10 epochs, batch 64, "
    "lr 0.01, no augmentation; activation swap (sigmoid, tanh), lr 0.1, batch 1000. "
    "Per-class accuracy on train and test.",
    runs=(
        StudyRun(
            "baseline",
            _cfg("resnet18", **_B),
            _acc(99.05, train_accuracy=0.9948),
            {"change": "baseline"},
        ),
        StudyRun(
            "sigmoid",
            _cfg("resnet18", model_params={"activation": "sigmoid"}, **_B),
            {},
            {"change": "sigmoid"},
        ),
        StudyRun(
            "tanh",
            _cfg("resnet18", model_params={"activation": "tanh"}, **_B),
            {},
            {"change": "tanh"},
        ),
        StudyRun(
            "lr_0.1", _cfg("resnet18", **{**_B, "lr": 0.1}), _acc(93.80), {"change": "lr 0.1"}
        ),
        StudyRun(
            "batch_1000",
            _cfg("resnet18", **{**_B, "batch_size": 1000}),
            _acc(99.27),
            {"change": "batch 1000"},
        ),
    ),  # fmt: skip
    extras=("confusion", "per_class_train", "epoch_loss"),
    notes="The reports' summary does not name report B's optimizer; we use Adam (lr 0.01 as reported). "
    "Sigmoid and tanh were reported only as slower-converging epoch-loss tables.",
)

# ------------------------------------------------------------------------- report C
C_OPTIMIZERS = Study(
    "c_optimizers",
    "C",
    "Report C: residual CNN (conv5x5-16, residual block, conv5x5-32, residual block, dense) "
    "with SGD, SGD + momentum 0.5, Adagrad and Adam at lr 0.01; 10 epochs, batch 64, constant lr, "
    "no augmentation. Wall time, confusion matrix and classification report of each.",
    runs=tuple(
        StudyRun(
            name,
            _cfg("residual_cnn", epochs=10, batch_size=64, optimizer=opt, lr=0.01, momentum=mom),
            {**orig, "wall_time_s": wall},
            {"optimizer": name},
        )
        for name, opt, mom, wall, orig in (
            ("sgd", "sgd", None, 1726, {}),
            ("sgd_momentum", "sgdm", 0.5, 1746, {}),
            ("adagrad", "adagrad", None, 1826, {}),
            ("adam", "adam", None, 2002, _acc(97.0)),
        )
    ),  # fmt: skip
    extras=("confusion",),
    notes="Report C's wall times are on a GPU with full MNIST and an unreported number of epochs; "
    "only its Adam run has an accuracy (97% in the classification report). Batch 64 is our "
    "choice (unreported). Adagrad runs as torch.optim.Adagrad does (accumulator from 0, eps "
    "1e-10).",
)

# ------------------------------------------------------------------------- report D
_D = {
    "epochs": 10,
    "batch_size": 100,
    "optimizer": "sgdm",
    "lr": 1e-4,
    "momentum": 0.9,
    "weight_decay": 1e-5,
}
_D_ORIG = {
    "ce": {}, "kld": {},
    "hinge": {"test_accuracy_range": [0.9728, 0.9743]},
    "focal": {"test_accuracy": 0.91},
}  # fmt: skip
_D_LONG = {"ce": 97.86, "hinge": 97.93, "kld": 97.85, "focal": 98.02}


def _d_run(act, loss, long=False):
    settings = {**_D, "lr": 0.01, "epochs": 50} if long else _D
    model = {"hidden": [128], "activation": act, "init_std": 0.01}
    name = f"{act}_{loss}" + ("_lr0.01_50ep" if long else "")
    orig = _acc(_D_LONG[loss]) if long else _D_ORIG[loss]
    group = "tanh, lr 0.01, 50 epochs" if long else f"{act}, lr 1e-4, 10 epochs"
    factors = {"activation": act, "loss": loss, "lr": settings["lr"], "epochs": settings["epochs"]}
    return StudyRun(
        name, _cfg("mlp", loss=loss, model_params=model, **settings), orig, factors, group
    )


D_LOSSES_ACTIVATIONS = Study(
    "d_losses_activations",
    "D",
    "Report D: 784-128-10 MLP (init std 0.01), activations tanh / SELU / HardSwish x losses "
    "CE / hinge (margin 5) / KL divergence / focal; SGD lr 1e-4, momentum 0.9, weight decay 1e-5, "
    "batch 100, 10 epochs. Then tanh x the four losses at lr 0.01 for 50 epochs.",
    runs=tuple(
        _d_run(a, lo)
        for a in ("tanh", "selu", "hard_swish")
        for lo in ("ce", "hinge", "kld", "focal")
    )
    + tuple(_d_run("tanh", lo, long=True) for lo in ("ce", "hinge", "kld", "focal")),
    heatmap=("activation", "loss"),
    heatmap_where=(("epochs", 10),),
    notes="Report D gave hinge as a range over activations (97.28-97.43%) and focal as ~91%; "
    "CE and KLD at lr 1e-4 were not given.",
)

# ------------------------------------------------------------------------- report E
_E = {"epochs": 10, "batch_size": 64, "optimizer": "sgdm", "lr": 0.01, "momentum": 0.9}
_E_NOTE = (
    "Report E's solver settings are not in the reports' summary; "
    "we use SGD + momentum 0.9, lr 0.01, batch 64, 10 epochs."
)


def _mlp(hidden, activation="relu", batchnorm=False):
    return {"hidden": list(hidden), "activation": activation, "batchnorm": batchnorm}


E_REGRESSION = Study(
    "e_regression",
    "E",
    "Report E: fit sin(x) on (-pi/2, pi/2) with 3 hidden layers of 50 tanh units and MSE; "
    "test on a 0.01 grid; mean error and max absolute error.",
    runs=(
        StudyRun(
            "sin_3x50",
            {
                "hidden": [50, 50, 50],
                "activation": "tanh",
                "optimizer": "adam",
                "lr": 3e-3,
                "lr_schedule": "cosine",
                "epochs": 300,
                "batch_size": 32,
                "n_train": 1000,
                "seed": 0,
            },
            {"mean_error": -0.00019},
            {"hidden": "50-50-50"},
        ),
    ),  # fmt: skip
    kind="regression",
    notes="The report's solver and activation are not in the reports' summary; "
    "we use tanh units and Adam with a cosine-decayed lr.",
)
E_DEPTH_WIDTH = Study(
    "e_depth_width",
    "E",
    "Report E: fully-connected ReLU nets, depth {2, 4, 8, 16} hidden layers x width "
    "{10, 20, 30, 50, 100}.",
    runs=tuple(
        StudyRun(
            f"d{d}_w{w}",
            _cfg("mlp", model_params=_mlp([w] * d), **_E),
            {},
            {"depth": d, "width": w},
            f"depth {d}",
        )
        for d in (2, 4, 8, 16)
        for w in (10, 20, 30, 50, 100)
    ),  # fmt: skip
    heatmap=("depth", "width"),
    notes=_E_NOTE + " The report gave no numbers for this grid.",
)
_SWEEP_NET = _mlp([50, 50, 50])
E_SWEEPS = Study(
    "e_sweeps",
    "E",
    "Report E: one-factor sweeps on a 3-hidden-layer 50-unit ReLU net: constant lr, L2 penalty, "
    "batch size (with wall time) and activation.",
    runs=tuple(
        StudyRun(
            f"lr_{lr:g}",
            _cfg("mlp", model_params=_SWEEP_NET, **{**_E, "lr": lr}),
            {},
            {"lr": lr},
            "lr",
        )
        for lr in (1e-1, 3e-2, 1e-2, 6e-3, 3e-3, 1e-3)
    )
    + tuple(
        StudyRun(
            f"l2_{l2:g}", _cfg("mlp", model_params=_SWEEP_NET, l2=l2, **_E), {}, {"l2": l2}, "l2"
        )
        for l2 in (1e-1, 1e-2, 1e-3, 0.0)
    )
    + tuple(
        StudyRun(
            f"bs_{bs}",
            _cfg("mlp", model_params=_SWEEP_NET, **{**_E, "batch_size": bs}),
            {},
            {"batch_size": bs},
            "batch_size",
        )
        for bs in (16, 32, 64, 128, 256)
    )
    + tuple(
        StudyRun(
            f"act_{a}",
            _cfg("mlp", model_params=_mlp([50, 50, 50], a), **_E),
            {},
            {"activation": a},
            "activation",
        )
        for a in ("sigmoid", "relu", "tanh")
    ),  # fmt: skip
    notes=_E_NOTE + " The report gave no numbers for the sweeps.",
)
_DEEP = [100] * 8
E_BATCHNORM = Study(
    "e_batchnorm",
    "E",
    "Report E: a deep sigmoid net (8 hidden layers of 100 units) with and without BatchNorm.",
    runs=(
        StudyRun(
            "without_bn",
            _cfg("mlp", model_params=_mlp(_DEEP, "sigmoid", False), **_E),
            _acc(28.4),
            {"batchnorm": False},
        ),
        StudyRun(
            "with_bn",
            _cfg("mlp", model_params=_mlp(_DEEP, "sigmoid", True), **_E),
            _acc(90.6),
            {"batchnorm": True},
        ),
    ),  # fmt: skip
    notes=_E_NOTE + " The report's depth and width are not in the reports' summary.",
)
_AUG = {**_E, "epochs": 30}
E_AUGMENTATION = Study(
    "e_augmentation",
    "E",
    "Report E: a 2-hidden-layer ReLU net (100-100) with and without data augmentation (random "
    "translation up to 10% plus rotation up to 10 degrees, no flips), 30 epochs.",
    runs=(
        StudyRun(
            "no_augment", _cfg("mlp", model_params=_mlp([100, 100]), **_AUG), {}, {"augment": False}
        ),
        StudyRun(
            "augment",
            _cfg("mlp", model_params=_mlp([100, 100]), augment=True, **_AUG),
            {},
            {"augment": True},
        ),
    ),  # fmt: skip
    notes=_E_NOTE.replace("10 epochs", "30 epochs") + " The report gave no numbers.",
)

# A study is data, not a factory: each entry registers the `Study` object itself.
STUDIES = Registry("study", plural="studies")
for _study in (
    A_MODELS, A_GRID, A_LOSSES, A_OPTIMIZERS, B_RESNET, C_OPTIMIZERS, D_LOSSES_ACTIVATIONS,
    E_REGRESSION, E_DEPTH_WIDTH, E_SWEEPS, E_BATCHNORM, E_AUGMENTATION,
):  # fmt: skip
    STUDIES.register(_study.name, _study.description)(_study)


def list_studies() -> list[str]:
    """Names of all studies."""
    return STUDIES.names()


def get_study(name: str) -> Study:
    """The study `name`; raises `ConfigError` listing the valid names."""
    return STUDIES.get(name).factory
