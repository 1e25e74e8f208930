"""Training configuration: the single home of defaults, validated on construction.

`TrainConfig` holds what a user can set; fields left `None` are resolved per
architecture by `TrainConfig.resolved()` from `ARCH_DEFAULTS`, so
`scripts/train.py --arch A` with no other flag gives a good model in reasonable
time. Invalid values raise `ConfigError` naming the field, the allowed values and
what was received.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path

from kmnist_lab.errors import ConfigError, did_you_mean, is_int, is_real

BACKENDS = ("tensorflow", "jax", "torch")
JIT_POLICIES = ("auto", "on", "off")
PRECISIONS = ("float32", "mixed")
INPUT_PIPELINES = ("auto", "device", "iterator")
LR_SCHEDULES = ("constant", "step", "cosine")
DISTRIBUTE_MODES = ("none", "data-parallel")

# The Keras backend that trains each architecture fastest, measured on the project's
# 2-core CPU with `scripts/benchmark.py` (tables in docs/performance.md): JAX runs the
# MLPs about 2x faster than TensorFlow (~60k vs ~30k samples/s for `bn_mlp` at batch
# 128: for ~2 ms steps TensorFlow's per-step overhead dominates), while TensorFlow's
# oneDNN convolutions beat XLA's (`residual_cnn`: ~7.5k samples/s on TensorFlow
# without XLA, ~2.5k on JAX). `--backend auto`, the default of `scripts/train.py`
# and `scripts/benchmark.py`, picks from this table when KERAS_BACKEND is not set
# and no GPU is there (`auto_backend`).
FAST_BACKEND = {
    "plain_mlp": "jax",
    "relu_mlp": "jax",
    "bn_mlp": "jax",
    "mlp": "jax",
    "residual_cnn": "tensorflow",
    "resnet18": "tensorflow",
}


def auto_backend(arch: str | None) -> str:
    """The backend `--backend auto` picks for `arch`.

    - On an NVIDIA machine whose JAX has its CUDA plugin: JAX for every arch (XLA on
      the GPU; measured on an H100 at about 2-15x the PyTorch eager reference,
      docs/performance.md). A GPU hidden by `CUDA_VISIBLE_DEVICES` ("" or "-1") counts
      as none; `JAX_PLATFORMS` without `cuda`/`gpu` counts as JAX lacking its plugin.
    - Otherwise `FAST_BACKEND[arch]` (TensorFlow for unknown archs), measured on CPU.
    - When the chosen backend's package is not installed, the first installed of
      TensorFlow, JAX and torch (TensorFlow when none is, for Keras' own error).

    Imports nothing heavy, so it can run before Keras is imported.
    """
    import os

    backend = FAST_BACKEND.get(arch or "", "tensorflow")
    # "" and "-1" hide every GPU from CUDA (JAX and TensorFlow alike): the CPU table.
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES", "0").strip() in ("", "-1")
    if os.path.exists("/dev/nvidiactl") and not hidden and _installed("jax"):
        # JAX uses an NVIDIA GPU only with its CUDA plugin, and not when JAX_PLATFORMS
        # leaves CUDA out; then JAX would train on the CPU while TensorFlow could use
        # the GPU.
        plugins = ("jax_cuda12_plugin", "jax_cuda13_plugin")
        platforms = os.environ.get("JAX_PLATFORMS", "").lower().replace(" ", "")
        allowed = not platforms or bool({"cuda", "gpu"} & set(platforms.split(",")))
        cuda = allowed and any(_installed(p) for p in plugins)
        backend = "jax" if cuda else "tensorflow"
    return installed_backend(backend)


def installed_backend(preferred: str) -> str:
    """`preferred` if its package is installed, else the first installed of `BACKENDS`.

    TensorFlow when none is, so that Keras raises its own error about it.
    """
    return next((b for b in (preferred, *BACKENDS) if _installed(b)), "tensorflow")


def _installed(package: str) -> bool:
    """Whether the top-level `package` can be imported (found without importing it)."""
    import importlib.util

    return importlib.util.find_spec(package) is not None


@dataclasses.dataclass(frozen=True)
class ArchDefaults:
    """Per-architecture defaults (measured on mnist_5k, 2 CPU cores; see README)."""

    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    lr_schedule: str
    augment: bool


_MLP = ArchDefaults(
    epochs=15, batch_size=128, optimizer="adam", lr=1e-3, lr_schedule="cosine", augment=True
)
_CNN = ArchDefaults(
    epochs=15, batch_size=64, optimizer="adam", lr=1e-3, lr_schedule="cosine", augment=True
)
ARCH_DEFAULTS = {
    "plain_mlp": _MLP,
    "relu_mlp": _MLP,
    "bn_mlp": _MLP,
    "mlp": _MLP,
    "residual_cnn": _CNN,
    "resnet18": _CNN,
}
FALLBACK_DEFAULTS = _MLP
_RESERVED_LOSS = frozenset({"name", "reduction", "dtype"})
_RESERVED_OPTIMIZER = frozenset({"learning_rate"})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs. `None` means "the architecture's default".

    Attributes:
        arch: architecture name (`kmnist_lab.models.list_models()`).
        dataset: dataset name (`kmnist_lab.data.list_datasets()`).
        data_dir: folder with IDX/.npz files, searched first.
        epochs, batch_size, lr, optimizer, lr_schedule: see `ARCH_DEFAULTS`.
        warmup_epochs: linear learning-rate warm-up before the schedule.
        loss: loss name (`kmnist_lab.losses.list_losses()`); it picks the head.
        loss_params: keyword arguments of the loss (e.g. `{"margin": 0.3}`).
        model_params: keyword arguments of the builder (e.g. `{"hidden": [128]}`).
        optimizer_params: other optimizer keywords (e.g. rprop's `{"eta_plus": 1.1}`).
        momentum, weight_decay: optimizer parameters, when the optimizer takes them.
        l2: L2 penalty on kernels (MLPs).
        augment: random translation + small rotation at training time.
        seed: seeds Keras, NumPy and the validation split.
        val_fraction: share of the training set held out (None: dataset default).
        run_name: folder name under `output_dir` (None: derived from the config).
        output_dir: where run folders go.
        backend: Keras backend recorded in config.json: the one Keras runs in the
            process (`KERAS_BACKEND`, set before Keras is first imported); None takes
            it, another name is refused by `training.train`.
        jit: XLA policy: `auto` (measured per model and device), `on`, `off`.
        precision: `float32`, or `mixed`: bfloat16 compute with float32 weights,
            head output and losses (Keras' `mixed_bfloat16` policy).
        steps_per_execution: training steps per compiled call (None: auto).
        input_pipeline: how batches reach the model: `device` (JAX and TensorFlow:
            the dataset copied to the device once, the batch loop compiled, see
            `kmnist_lab.device_loop`), `iterator` (Keras' own: a `tf.data`
            pipeline on TensorFlow, a Python iterator on JAX and torch), or
            `auto`: `device` on JAX, and on TensorFlow without a GPU, unless
            `distribute`; else `iterator` (`kmnist_lab.speed.resolve_input_pipeline`).
        batch_shards: on TensorFlow, run each batch as this many independent forward
            and backward passes, side by side on the CPU cores (the same function; see
            `kmnist_lab.device_loop.sharded_forward`). None: auto
            (`kmnist_lab.speed.resolve_batch_shards`: one per core for `residual_cnn`
            on a CPU, where it measured faster; 1 otherwise).
        distribute: `none` or `data-parallel` (JAX DataParallel / TF MirroredStrategy).
        precise_bn: after training, recompute BatchNorm's moving statistics over up to
            200 training batches of the final weights
            (`kmnist_lab.callbacks.precise_batchnorm`); for full-batch or other
            large-step training, whose moving averages lag the weights.
        tensorboard: also write TensorBoard logs to `<run>/tensorboard`.
        export: write the SavedModel (and model.keras).
        overwrite: replace an existing complete run folder.
        verbose: Keras progress bar: 0 silent, 1 bar, 2 one line per epoch.
    """

    arch: str = "bn_mlp"
    dataset: str = "auto"
    data_dir: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    lr_schedule: str | None = None
    warmup_epochs: int = 0
    loss: str = "ce"
    loss_params: dict = dataclasses.field(default_factory=dict)
    model_params: dict = dataclasses.field(default_factory=dict)
    optimizer_params: dict = dataclasses.field(default_factory=dict)
    momentum: float | None = None
    weight_decay: float | None = None
    l2: float = 0.0
    augment: bool | None = None
    seed: int = 0
    val_fraction: float | None = None
    run_name: str | None = None
    output_dir: str = "saved_models"
    backend: str | None = None
    jit: str = "auto"
    precision: str = "float32"
    steps_per_execution: int | None = None
    input_pipeline: str = "auto"
    batch_shards: int | None = None
    distribute: str = "none"
    precise_bn: bool = False
    tensorboard: bool = False
    export: bool = True
    overwrite: bool = False
    verbose: int = 1

    def __post_init__(self):
        # A NumPy scalar (a seed drawn with NumPy) or a Fraction is stored as the Python
        # number it is: TensorFlow's ops and Keras' seed checks refuse `np.int64`.
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if is_int(value) and type(value) is not int:
                object.__setattr__(self, field.name, int(value))
            elif is_real(value) and not is_int(value) and type(value) is not float:
                object.__setattr__(self, field.name, float(value))
        # A folder may be a `pathlib.Path`; config.json records it as the string it is.
        for name in ("data_dir", "output_dir"):
            if isinstance(getattr(self, name), os.PathLike):
                object.__setattr__(self, name, os.fspath(getattr(self, name)))
        self.validate()

    @classmethod
    def field_defaults(cls) -> dict:
        """Every field's default, without building (and validating) an instance."""
        return {
            f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        }

    def check_batch_shards(self) -> None:
        """Refuses `batch_shards` > 1 where the shards cannot run (they need TensorFlow's
        `device` input pipeline, which `distribute` replaces)."""
        if self.batch_shards in (None, 1) or not isinstance(self.batch_shards, int):
            return  # None, 1, or a bad value the positive-integer check reports
        where = [f"{name}={getattr(self, name)!r}" for name, bad in (
            ("backend", self.backend not in (None, "tensorflow")),
            ("input_pipeline", self.input_pipeline == "iterator"),
            ("distribute", self.distribute != "none"),
        ) if bad]  # fmt: skip
        if where:
            raise ConfigError(
                "`batch_shards` > 1 needs the tensorflow backend, the device input pipeline "
                f"and no distribute. Received: batch_shards={self.batch_shards} with "
                + ", ".join(where)
            )

    def validate(self) -> None:
        """Checks every field; raises `ConfigError` on the first bad one."""
        from kmnist_lab.data import list_datasets
        from kmnist_lab.losses import LOSSES, get_loss, loss_head
        from kmnist_lab.models import MODELS, RESERVED_PARAMS, check_overrides, model_params
        from kmnist_lab.optimizers import OPTIMIZERS, get_optimizer
        from kmnist_lab.schedules import check_warmup
        from kmnist_lab.speed import check_steps_per_execution

        MODELS.get(self.arch)
        LOSSES.get(self.loss)
        if loss_head(self.loss) == "regression":
            classifiers = [name for name in LOSSES.names() if loss_head(name) != "regression"]
            raise ConfigError(
                f"loss {self.loss!r} is a regression loss (float targets); training a "
                f"classifier needs one of {', '.join(classifiers)}"
            )
        if self.optimizer is not None:
            OPTIMIZERS.get(self.optimizer)
        _choice("dataset", self.dataset, list_datasets())
        _choice("jit", self.jit, JIT_POLICIES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("input_pipeline", self.input_pipeline, INPUT_PIPELINES)
        _choice("distribute", self.distribute, DISTRIBUTE_MODES)
        if self.distribute != "none" and self.backend == "torch":
            raise ConfigError(
                "`distribute` data-parallel needs the jax or tensorflow backend; Keras' torch "
                "backend has no built-in data-parallel trainer. Received: backend='torch'"
            )
        check_steps_per_execution(self.backend, self.steps_per_execution)
        self.check_batch_shards()
        if self.lr_schedule is not None:
            _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if self.backend is not None:
            _choice("backend", self.backend, BACKENDS)
        for name in ("epochs", "batch_size", "steps_per_execution", "batch_shards"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value <= 0):
                raise ConfigError(
                    f"`{name}` must be a positive integer. Received: {name}={value!r}"
                )
        _positive_float("lr", self.lr)
        for name in ("momentum", "weight_decay", "l2"):
            value = getattr(self, name)
            if value is not None and (not is_real(value) or not math.isfinite(value) or value < 0):
                raise ConfigError(
                    f"`{name}` must be a finite number >= 0. Received: {name}={value!r}"
                )
        if self.momentum is not None and self.momentum >= 1:
            raise ConfigError(f"`momentum` must be in [0, 1). Received: momentum={self.momentum}")
        if not is_int(self.warmup_epochs) or self.warmup_epochs < 0:
            raise ConfigError(
                f"`warmup_epochs` must be an integer >= 0. Received: {self.warmup_epochs!r}"
            )
        if not is_int(self.seed) or not 0 <= self.seed < 2**32:
            raise ConfigError(
                f"`seed` must be an integer in [0, 2**32 - 1]. Received: seed={self.seed!r}"
            )
        for name in ("loss_params", "model_params", "optimizer_params"):
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(
                    f"`{name}` must be an object of KEY: VALUE pairs. "
                    f"Received: {name}={getattr(self, name)!r}"
                )
        for name, reserved, why in (
            ("model_params", RESERVED_PARAMS,
             "num_classes from the dataset, head from the loss; runs take 28x28 images"),
            ("loss_params", _RESERVED_LOSS, "the training loop owns reduction, dtype and name"),
            ("optimizer_params", _RESERVED_OPTIMIZER,
             "from `lr` (--lr) and `lr_schedule`; set the learning rate there"),
        ):  # fmt: skip
            clash = sorted(set(getattr(self, name)) & reserved)
            if clash:
                given = ", ".join(f"{k}={getattr(self, name)[k]!r}" for k in clash)
                raise ConfigError(
                    f"`{name}` cannot set {', '.join(clash)}: kmnist_lab sets it itself "
                    f"({why}). Received: {given}"
                )
        # `augment` and `l2` are fields and builder keywords too, as are `momentum` and
        # `weight_decay` for the optimizer: one run, one value (the keywords are the ones
        # used, so a differing field would be recorded in config.json, not used).
        twice = [("model_params", "augment", None), ("model_params", "l2", 0.0),
                 ("optimizer_params", "momentum", None),
                 ("optimizer_params", "weight_decay", None)]  # fmt: skip
        for params, name, unset in twice:
            field, param = getattr(self, name), getattr(self, params).get(name)
            if field != unset and param is not None and param != field:
                raise ConfigError(
                    f"`{name}` is given twice with different values: {name}={field!r} and "
                    f"{params} {name}={param!r}; give it once"
                )
        # Unknown keys and bad values fail here, before any data is loaded.
        check_overrides(self.arch, self.model_params)
        get_loss(self.loss, **self.loss_params)
        if self.l2 and "l2" not in model_params(self.arch):
            raise ConfigError(f"arch {self.arch!r} does not take l2. Received: l2={self.l2!r}")
        defaults = ARCH_DEFAULTS.get(self.arch, FALLBACK_DEFAULTS)
        check_warmup(
            self.warmup_epochs,
            self.epochs or defaults.epochs,
            self.lr_schedule or defaults.lr_schedule,
        )
        get_optimizer(self.optimizer or defaults.optimizer, **self.optimizer_kwargs())
        if self.precise_bn and self.distribute != "none":
            raise ConfigError(
                "`precise_bn` runs on one device; it cannot be combined with `distribute` "
                f"{self.distribute!r}"
            )
        for name in ("augment", "precise_bn", "tensorboard", "export", "overwrite"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ConfigError(f"`{name}` must be true or false. Received: {name}={value!r}")
        for name in ("data_dir", "output_dir", "run_name"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value):
                what = "a non-empty string" + (" or path" if name != "run_name" else "")
                raise ConfigError(f"`{name}` must be {what}. Received: {name}={value!r}")
        if self.val_fraction is not None and (
            not is_real(self.val_fraction) or not (0.0 < self.val_fraction < 1.0)
        ):
            raise ConfigError(
                f"`val_fraction` must be in (0, 1). Received: val_fraction={self.val_fraction!r}"
            )
        if self.run_name is not None:
            check_folder_name("run_name", self.run_name, "output_dir")
        if self.verbose not in (0, 1, 2):
            raise ConfigError(f"`verbose` must be 0, 1 or 2. Received: verbose={self.verbose!r}")

    def optimizer_kwargs(self) -> dict:
        """`get_optimizer` keywords: `momentum`, `weight_decay` (when set) and
        `optimizer_params` (validation refuses a key set in both with different values)."""
        kwargs = {k: getattr(self, k) for k in ("momentum", "weight_decay")}
        return {k: v for k, v in kwargs.items() if v is not None} | self.optimizer_params

    def resolved(self) -> TrainConfig:
        """A copy with every `None` default filled in from `ARCH_DEFAULTS`."""
        d = ARCH_DEFAULTS.get(self.arch, FALLBACK_DEFAULTS)
        changes = {
            "epochs": self.epochs or d.epochs,
            "batch_size": self.batch_size or d.batch_size,
            "optimizer": self.optimizer or d.optimizer,
            "lr": self.lr or _default_lr(self.optimizer or d.optimizer, d),
            "lr_schedule": self.lr_schedule or d.lr_schedule,
            "augment": self.augment
            if self.augment is not None
            else self.model_params.get("augment", d.augment),
        }
        if self.run_name is None:
            changes["run_name"] = self.derived_run_name()
        return dataclasses.replace(self, **changes)

    def derived_run_name(self, arrays: str | None = None) -> str:
        """The folder name a run without `run_name` gets: `{arch}_{dataset}_{loss}_s{seed}`.

        Args:
            arrays: the name of a dataset of your own (`data.from_arrays(..., name=...)`)
                that stands in for `dataset`; characters other than letters, digits and
                `. _ = + -` become `_`.
        """
        dataset = self.dataset if arrays is None else re.sub(r"[^A-Za-z0-9._=+-]", "_", arrays)
        return f"{self.arch}_{dataset}_{self.loss}_s{self.seed}"

    @property
    def run_dir(self) -> Path:
        """The run's folder: `output_dir / run_name`, the name derived when unset.

        Raises:
            ConfigError: no `run_name` and `dataset="auto"`: that run's folder is named
                after the dataset `auto` finds when `training.train` loads it (`mnist`
                or `mnist_5k`), which `RunResult.run_dir` gives.
        """
        if self.run_name is None and self.dataset == "auto":
            raise ConfigError(
                "the folder of a run with dataset 'auto' and no run_name is named after the "
                "dataset 'auto' finds when training loads it (mnist or mnist_5k): read it "
                "from training.train's RunResult.run_dir, or set dataset or run_name"
            )
        return Path(self.output_dir) / (self.run_name or self.resolved().run_name)

    def to_dict(self) -> dict:
        """The fields as JSON types (tuples become lists, NumPy scalars Python numbers),
        as `config.json` reads back."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=_python_scalar))

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Builds a config from a dict (e.g. a `config.json`), refusing unknown keys."""
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a JSON object. Received: {type(data).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            from kmnist_lab.models import list_models, user_params

            arch_keys = {k for arch in list_models() for k in user_params(arch)}
            hint = (
                f" `{unknown[0]}` is a model parameter: put it under model_params "
                f'({{"model_params": {{"{unknown[0]}": ...}}}}).'
                if unknown[0] in arch_keys
                else did_you_mean(unknown[0], fields)
            )
            raise ConfigError(
                f"unknown config keys {unknown}.{hint} Valid keys: {', '.join(sorted(fields))}"
            )
        return cls(**data)

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        """Reads a config file (a `config.json` of a run, or its `"config"` entry)."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:  # ValueError: bad JSON or not UTF-8
            raise ConfigError(f"cannot read config file {path}: {e}") from None
        if isinstance(data, dict) and "config" in data and isinstance(data["config"], dict):
            data = data["config"]
        return cls.from_dict(data)


def check_folder_name(field: str, name: str, parent: str) -> None:
    """Raises `ConfigError` unless `name` names one folder inside the folder `parent`.

    For `run_name` (inside `output_dir`) and tune.py's `project_name` (inside
    `directory`): letters, digits and `. _ = + -` only, so no path separator, and
    neither `.` (the parent itself) nor `..` (its parent), which `--overwrite` would
    otherwise replace (or a run would fill) with the whole parent folder's contents.
    """
    if not re.fullmatch(r"[A-Za-z0-9._=+-]+", name):
        raise ConfigError(
            f"`{field}` may contain only letters, digits and . _ = + -. Received: {field}={name!r}"
        )
    if name in (".", ".."):
        which = f"`{parent}` itself" if name == "." else f"the parent of `{parent}`"
        raise ConfigError(
            f"`{field}` must name a folder inside `{parent}`, and {name!r} is {which}. "
            f"Received: {field}={name!r}"
        )


def _default_lr(optimizer: str, defaults: ArchDefaults) -> float:
    """The architecture's tuned learning rate for its own optimizer, else the optimizer's.

    An arch's preset lr (Adam's 1e-3) would be wrong for another update rule: Adadelta
    moves 1000x slower at it, Lion takes 10x too large steps. So `--optimizer X`
    without `--lr` takes X's registry default (docs/optimizers.md, "default lr").
    """
    if optimizer == defaults.optimizer:
        return defaults.lr
    from kmnist_lab.optimizers import optimizer_defaults  # keeps config import-light

    return float(optimizer_defaults(optimizer)["learning_rate"])


def _positive_float(name: str, value) -> None:
    if value is not None and (not is_real(value) or not math.isfinite(value) or value <= 0):
        raise ConfigError(f"`{name}` must be a positive finite number. Received: {name}={value!r}")


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(
            f"`{name}` must be one of {', '.join(allowed)}. Received: {name}={value!r}"
        )


def _python_scalar(value):
    """`json.dumps` fallback for the parameter dicts (`loss_params`, ...; the fields
    themselves are Python numbers, see `__post_init__`): a NumPy scalar or a Fraction
    becomes its Python number; anything else stays unserializable."""
    if is_real(value):
        return int(value) if is_int(value) else float(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
