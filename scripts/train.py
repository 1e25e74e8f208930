#!/usr/bin/env python3
"""Train one model and write its run folder (history, SavedModel, plots, metrics).

Examples:
  python scripts/train.py --arch bn_mlp
  python scripts/train.py --arch resnet18 --dataset fashion_mnist --epochs 10
  python scripts/train.py --arch bn_mlp --loss am_softmax --loss-param margin=0.3
  python scripts/train.py --arch mlp --hidden 128 --activation tanh --optimizer sgdm --lr 0.01

Defaults per architecture (epochs, batch size, optimizer, learning rate, schedule)
are listed at the end of --help. Re-running an interrupted command resumes it.
Exit codes: 0 ok, 2 bad input (one line on stderr), 3 training diverged,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM): re-run the same command to resume.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import _cli


def build_parser():
    from kmnist_lab.config import (
        ARCH_DEFAULTS,
        INPUT_PIPELINES,
        JIT_POLICIES,
        LR_SCHEDULES,
        PRECISIONS,
        TrainConfig,
    )
    from kmnist_lab.data import DATASETS
    from kmnist_lab.names import (  # not the registries: they import Keras (seconds)
        ACTIVATIONS,
        ARCHS,
        CLASSIFICATION_LOSSES,
        OPTIMIZERS,
        RESNET_ACTIVATIONS,
    )

    defaults = "\n".join(
        f"  {arch:<13} epochs={d.epochs} batch={d.batch_size} {d.optimizer} lr={d.lr:g} {d.lr_schedule}"
        f"{' augment' if d.augment else ''}"
        for arch, d in ARCH_DEFAULTS.items()
    )
    p = _cli.Parser(
        prog="train.py",
        description=__doc__,
        epilog=f"per-architecture defaults:\n{defaults}\n\ndatasets:\n"
        + "\n".join(f"  {k:<14} {DATASETS.get(k).summary}" for k in DATASETS.names()),
    )
    # The class's field defaults, not an instance: validating one creates an optimizer,
    # which initialises the backend's devices before --cpu-devices could split the CPU.
    c = TrainConfig
    g = p.add_argument_group("what to train")
    g.add_argument(
        "--config",
        metavar="JSON",
        help="read options from a JSON file (a run's config.json works); flags override it, "
        "settings the run took by default follow them (e.g. a new --optimizer's lr), and a "
        "new --loss, --optimizer or --arch starts without the file's keywords for the old one "
        "(its params; an optimizer's momentum and weight decay too), a new --dataset without "
        "its --data-dir. A run folder named "
        "from its settings (the default) is named again from the final ones, so a new "
        "--arch, --dataset, --loss or --seed trains beside it; a name the file chose "
        "(--run-name, a search's best_train_config.json) is kept, with a warning when one of "
        "those four changes: pass --run-name to train a variant beside it",
    )
    g.add_argument("--arch", choices=ARCHS, default=None, help=f"architecture (default {c.arch})")
    g.add_argument(
        "--dataset", choices=DATASETS.names(), default=None, help=f"dataset (default {c.dataset})"
    )
    g.add_argument("--data-dir", help="folder with IDX (.gz or raw) or .npz files, searched first")
    g.add_argument(
        "--val-fraction",
        type=_cli.fraction,
        help="share of training data held out for validation "
        "(default 1/12; mnist_5k 1/9, its 4000/500 split)",
    )
    g.add_argument(
        "--loss",
        # Regression losses (mse) need float targets: only report E's sin fit uses them.
        choices=CLASSIFICATION_LOSSES,
        default=None,
        help=f"loss; it picks the model head (default {c.loss})",
    )
    g.add_argument("--loss-param", action="append", type=_cli.key_value, default=[], metavar="K=V",
                   help="loss keyword, e.g. margin=0.3 (repeatable; K=null drops a --config value)")  # fmt: skip
    g.add_argument("--model-param", action="append", type=_cli.key_value, default=[], metavar="K=V",
                   help="builder keyword, e.g. hidden=[256,64] (repeatable); K=null: the arch's "
                   "default (drops a --config value); mlp with no activation: activation=linear")  # fmt: skip
    g.add_argument(
        "--hidden",
        type=_cli.positive_int,
        nargs="+",
        help="hidden widths (arch mlp; default 512 128)",
    )
    g.add_argument("--activation", choices=ACTIVATIONS, metavar="ACTIVATION",
                   help=f"activation (arch mlp: {', '.join(ACTIVATIONS)}; "
                   f"resnet18: {', '.join(RESNET_ACTIVATIONS)})")  # fmt: skip
    g.add_argument("--dropout", type=_cli.nonneg_float, help="dropout rate (MLPs; default 0)")
    g.add_argument(
        "--l2", type=_cli.nonneg_float, default=None, help="L2 penalty on kernels (MLPs; default 0)"
    )
    g.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random translation + small rotation at training time (default: per arch)",
    )
    o = p.add_argument_group("optimisation")
    o.add_argument(
        "--epochs", type=_cli.positive_int, help="epochs (default: the arch's, table below)"
    )
    o.add_argument("--batch-size", type=_cli.positive_int,
                   help="batch size (default: the arch's, table below)")  # fmt: skip
    o.add_argument("--lr", type=_cli.positive_float,
                   help="(peak) learning rate (default: the arch's with its own optimizer, "
                        "else the optimizer's default lr, docs/optimizers.md)")  # fmt: skip
    o.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                   help="update rule (default: the arch's, table below; docs/optimizers.md)")  # fmt: skip
    o.add_argument("--momentum", type=_cli.nonneg_float, help="momentum (sgdm, nesterov, rmsprop)")
    o.add_argument("--weight-decay", type=_cli.nonneg_float,
                   help="weight decay: Keras' decoupled weight_decay (asgd: PyTorch's coupled "
                   "one; rprop takes none); default: the optimizer's, none but adamw's 0.004")  # fmt: skip
    o.add_argument("--optimizer-param", action="append", type=_cli.key_value, default=[], metavar="K=V",
                   help="optimizer keyword, e.g. eta_plus=1.1 for rprop (repeatable; K=null drops a "
                   "--config value)")  # fmt: skip
    o.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None,
                   help="learning-rate schedule over the epochs: constant; step (x0.1 after "
                   "50%% and again after 75%% of the epochs); cosine (down to 1%% of lr at "
                   "the end). Default: the arch's, table below")  # fmt: skip
    o.add_argument("--warmup-epochs", type=_cli.nonneg_int, default=None,
                   help="linear lr warm-up to the peak lr over this many epochs (cosine: "
                   "from 0; constant and step: from lr/warm-up steps); default 0; with "
                   "--lr-schedule step at most half the epochs")  # fmt: skip
    o.add_argument("--precise-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="after training, recompute BatchNorm's moving statistics over up to 200 "
                   "training batches (for full-batch or other large-step training; default off)")  # fmt: skip
    o.add_argument("--seed", type=int, default=None,
                   help="seed of the weights, shuffling, augmentation and split (default 0)")  # fmt: skip
    r = p.add_argument_group("run")
    r.add_argument("--run-name", help="run folder name (default: arch_dataset_loss_sSEED, "
                   "dataset being what --dataset auto found: mnist or mnist_5k)")  # fmt: skip
    r.add_argument(
        "--output-dir", default=None, help=f"parent of run folders (default {c.output_dir})"
    )
    r.add_argument(
        "--overwrite",
        action="store_true",
        default=None,
        help="replace the run in the run folder (finished, diverged, or interrupted with "
        "other settings; an interrupted run of the same settings resumes all the same); a "
        "folder train.py did not write is never replaced",
    )
    r.add_argument(
        "--backend",
        choices=(*_cli.BACKENDS, "auto"),
        help="Keras backend (default auto: KERAS_BACKEND if set, else the fastest measured "
        "for --arch: on CPU jax for the MLPs when installed, tensorflow for the CNNs; on an "
        "NVIDIA GPU with JAX's CUDA plugin jax for every arch)",
    )
    r.add_argument(
        "--jit",
        choices=JIT_POLICIES,
        default=None,
        help="XLA policy (default auto: measured per model; on JAX the step is always "
        "jitted, off included; on torch, on means torch.compile, several times slower here, "
        "with torch._dynamo's recompile-limit warnings)",
    )
    r.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="float32 (default), or mixed: bfloat16 compute, float32 weights, head and loss",
    )
    r.add_argument(
        "--steps-per-execution",
        type=_cli.positive_int,
        help="steps per compiled call (default: auto)",
    )
    r.add_argument(
        "--input-pipeline",
        choices=INPUT_PIPELINES,
        default=None,
        help="how batches reach the model: device (JAX, TensorFlow: data copied to the "
        "device once, batch loop compiled), iterator (Keras'), or auto (default: device "
        "on JAX, and on TensorFlow without a GPU; iterator on torch, with --distribute "
        "and on TensorFlow with a GPU)",
    )
    r.add_argument(
        "--batch-shards",
        type=_cli.positive_int,
        metavar="K",
        help="TensorFlow: run each batch as K independent passes side by side on the CPU "
        "cores, one thread per op (the same function, summed in another order; default: "
        "auto, one per core for residual_cnn on a CPU, 1 otherwise)",
    )
    r.add_argument("--distribute", choices=("none", "data-parallel"), default=None,
                   help="data-parallel: JAX DataParallel / TF MirroredStrategy over all devices")  # fmt: skip
    r.add_argument("--cpu-devices", type=_cli.positive_int, metavar="N",
                   help="split the CPU into N logical devices (to try --distribute without GPUs; "
                   "only with --distribute data-parallel)")  # fmt: skip
    r.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also write TensorBoard logs (default: no)",
    )
    r.add_argument(
        "--export",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write the SavedModel and model.keras (default: yes; --no-export skips them)",
    )
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def config_from_args(args):
    from kmnist_lab.config import TrainConfig

    base = TrainConfig.from_json(args.config).to_dict() if args.config else {}
    arrays = None
    if args.config:
        _note_a_quick_study_run(args.config)
        arrays = _note_a_run_on_arrays(args.config)
    base.pop("backend", None)
    # A finished run is replaced only on this command line's --overwrite, never on the
    # `overwrite: true` a run's config.json recorded because *it* was run with it.
    base.pop("overwrite", None)
    # config.json records the resolved run name; one derived from the settings is derived
    # again from the final ones (`--config RUN/config.json --seed 1` must not write a seed-1
    # run into RUN's `..._s0` folder); a name chosen with --run-name is kept.
    # (A run on arrays of your own was named after them: that name was derived too.)
    if base and base.get("run_name") in _derived_run_names(base, arrays):
        base.pop("run_name")
    # config.json also records the per-arch defaults the run resolved (epochs, batch size,
    # optimizer, lr, schedule, augment). A recorded value equal to the one derived without
    # it was a default: it is derived again from the final settings, so that `--config
    # RUN/config.json --optimizer lion` trains at Lion's default lr, not the Adam lr RUN
    # recorded, and `--arch X` takes X's defaults; values set explicitly are kept.
    if base:
        defaulted = [
            name for name in _RESOLVED if name in base and base[name] == _derived(base, name)
        ]
        for name in defaulted:
            base.pop(name)
    fields = (
        "arch", "dataset", "data_dir", "val_fraction", "loss", "l2", "augment", "epochs",
        "batch_size", "lr", "optimizer", "momentum", "weight_decay", "lr_schedule",
        "warmup_epochs", "seed", "run_name", "output_dir", "overwrite", "jit", "precision",
        "steps_per_execution", "input_pipeline", "batch_shards", "tensorboard", "export",
        "distribute", "precise_bn",
    )  # fmt: skip
    # The keywords a config file gave its loss, optimizer or arch belong to that component:
    # a different one on the command line starts from none (`--config RUN/config.json
    # --loss ce` of an AM-Softmax run must not hand `margin` to cross-entropy).
    # So does a data folder to its dataset (`--config RUN/config.json --dataset mnist_5k`
    # of a run on `--data-dir` files).
    for field, owned in (("loss", ("loss_params",)), ("arch", ("model_params",)),
                         ("optimizer", ("optimizer_params", "momentum", "weight_decay")),
                         ("dataset", ("data_dir",))):  # fmt: skip
        new = getattr(args, field)
        dropped = [k for k in owned if base.get(k) not in (None, {})] if base else []
        if new is None or new == base.get(field) or not dropped:
            continue
        logging.getLogger("kmnist_lab").info(
            "--%s %s: not reusing the config file's %s", field, new,
            ", ".join(f"{k} {base[k]!r}" for k in dropped),
        )  # fmt: skip
        for k in dropped:
            base[k] = {} if k.endswith("_params") else None
    # A name the file chose (a search's `..._best`) stays: say so when the run it names
    # is no longer the file's (`--dataset fashion_mnist` of a search on mnist_5k).
    if base.get("run_name") is not None and args.run_name is None:
        changed = [f"--{k} {getattr(args, k)}" for k in ("arch", "dataset", "loss", "seed")
                   if getattr(args, k) is not None and getattr(args, k) != base.get(k)
                   # `auto` is MNIST or its 5k subset, whichever is there: no change
                   and not (k == "dataset" and args.dataset == "auto"
                            and base.get(k) in ("mnist", "mnist_5k"))]  # fmt: skip
        if changed:
            logging.getLogger("kmnist_lab").warning(
                "%s: the run keeps the config file's run name %r; pass --run-name to name "
                "it after its new settings", ", ".join(changed), base["run_name"],
            )  # fmt: skip
    for name in fields:
        value = getattr(args, name)
        if value is not None:
            base[name] = value
    _check_given_once(args)
    model_params = dict(args.model_param)
    for name in ("hidden", "activation", "dropout"):
        if getattr(args, name) is not None:
            model_params[name] = getattr(args, name)
    # K=null on the command line drops K: the component's own default applies.
    for params, given in (("loss_params", dict(args.loss_param)), ("model_params", model_params),
                          ("optimizer_params", dict(args.optimizer_param))):  # fmt: skip
        merged = {**base.get(params, {}), **given}
        base[params] = {k: v for k, v in merged.items() if not (k in given and v is None)}
    base["verbose"] = 0 if args.quiet else (1 if sys.stdout.isatty() else 2)
    import keras

    base["backend"] = keras.backend.backend()
    return TrainConfig.from_dict(base)


def _check_given_once(args) -> None:
    """Refuses `--hidden`, `--activation` or `--dropout` contradicting `--model-param`,
    and `--momentum` or `--weight-decay` contradicting `--optimizer-param`.

    Both set the same builder keyword; one of them would silently win. (A value
    from `--config` is different: flags override the file.)

    Raises:
        ConfigError: one of them is given on the command line with two different values.
    """
    from kmnist_lab.errors import ConfigError

    pairs = [(name, "model_param") for name in ("hidden", "activation", "dropout")]
    pairs += [(name, "optimizer_param") for name in ("momentum", "weight_decay")]
    for name, params in pairs:
        flag, given = getattr(args, name), dict(getattr(args, params))
        if flag is not None and given.get(name) is not None and given[name] != flag:
            shown = " ".join(map(str, flag)) if isinstance(flag, list) else flag
            param = given[name] if isinstance(given[name], str) else json.dumps(given[name])
            raise ConfigError(
                f"`{name}` is given twice with different values: --{name.replace('_', '-')} "
                f"{shown} and --{params.replace('_', '-')} {name}={param}; give it once"
            )


def _note_a_quick_study_run(path) -> None:
    """Warns when `path` is the config.json of a `study.py --quick` run.

    Such a run trained on a small random subset of each split (`studies.QUICK_SIZES`),
    which its config does not hold: `--config` of it trains on the whole dataset.
    """
    from kmnist_lab.studies import STUDY_FILE

    path = Path(path)
    try:
        quick = json.loads((path.parent.parent / STUDY_FILE).read_text()).get("quick") is True
        sizes = json.loads(path.read_text())["dataset"]["sizes"]
        shown = " / ".join(f"{int(sizes[s])} {s}" for s in ("train", "val", "test"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return  # not a study run's config.json
    if quick:
        logging.getLogger("kmnist_lab").warning(
            "--config %s: that run is from a `study.py --quick` study and trained on a subset "
            "(%s images); this run trains on the whole dataset's splits", path, shown,
        )  # fmt: skip


def _note_a_run_on_arrays(path) -> str | None:
    """Warns when `path` is the config.json of a run trained on arrays of its own.

    `training.train(config, dataset=data.from_arrays(..., name=NAME))` records NAME
    under `dataset` and the config's own `dataset` (`auto` unless set), which is not
    those arrays: `--config` of such a run trains on that dataset instead.

    Returns:
        NAME for such a run, else None.
    """
    try:
        record = json.loads(Path(path).read_text())
        origin = record["dataset"]["source"]["origin"]
        name, requested = record["dataset"]["name"], record["config"]["dataset"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not a run's config.json, or one without a dataset record
    if origin == "in-memory arrays":
        logging.getLogger("kmnist_lab").warning(
            "--config %s: that run trained on in-memory arrays (%r, from Python: "
            "kmnist_lab.data.from_arrays), which no file holds; this run trains on "
            "--dataset %s instead unless you pass another",
            path, name, requested,
        )  # fmt: skip
        return name if isinstance(name, str) else None
    return None


# The fields `TrainConfig.resolved` fills in from the architecture's defaults.
_RESOLVED = ("epochs", "batch_size", "optimizer", "lr", "lr_schedule", "augment")


def _derived(config: dict, name: str):
    """The value `TrainConfig.resolved` gives field `name` of a (valid) config dict when
    the dict leaves it unset; `_NOT_DERIVABLE` when the dict is invalid without it (an
    `optimizer` that `optimizer_params` or `momentum` need was set explicitly)."""
    from kmnist_lab.config import TrainConfig
    from kmnist_lab.errors import ConfigError

    try:
        return getattr(TrainConfig.from_dict({**config, name: None}).resolved(), name)
    except ConfigError:
        return _NOT_DERIVABLE


_NOT_DERIVABLE = object()


def _derived_run_names(config: dict, arrays: str | None) -> set[str]:
    """The run names a (valid) config dict derives: `TrainConfig.resolved`'s, and with
    `arrays` (the name of a run's own arrays) the one `training.train` gave that run."""
    from kmnist_lab.config import TrainConfig

    config = TrainConfig.from_dict({**config, "run_name": None})
    names = {config.resolved().run_name}
    return names | {config.derived_run_name(arrays)} if arrays else names


def _configure_batch_shards(args, argv) -> None:
    """Sets TensorFlow's threads for the run's batch shards (`--batch-shards`, auto for
    residual_cnn on a CPU) from the command line and its `--config`: before the
    config's checks, which start TensorFlow's runtime and with it fix its threads."""
    from kmnist_lab.speed import configure_batch_shards, planned_batch_shards_of

    argv = list(argv if argv is not None else sys.argv[1:])

    def given(name):
        value = getattr(args, name)
        return value if value is not None else _cli._config_value(argv, name)

    names = ("arch", "batch_size", "batch_shards", "input_pipeline", "jit", "distribute")
    configure_batch_shards(planned_batch_shards_of({name: given(name) for name in names}))


def main(argv=None) -> int:
    backend = _cli.select_backend(argv, auto=True)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cpu_devices:
        argv_list = list(argv if argv is not None else sys.argv[1:])
        distribute = args.distribute or _cli._config_value(argv_list, "distribute") or "none"
        if distribute == "none":
            # Without a distribution the run trains on the first device only.
            parser.error(
                f"--cpu-devices {args.cpu_devices} splits the CPU for --distribute data-parallel, "
                "and this run trains on one device (distribute none); add --distribute "
                "data-parallel or drop --cpu-devices"
            )
    if args.cpu_devices:  # before anything (the config's checks too) starts the backend
        from kmnist_lab.distribute import split_cpu

        split_cpu(args.cpu_devices)
    if backend == "tensorflow":
        _configure_batch_shards(args, argv)
    cfg = config_from_args(args)  # a bad option fails here, before anything is printed
    _cli.setup_logging(not args.quiet)
    logging.getLogger("kmnist_lab").info("Keras backend: %s", backend)
    from kmnist_lab.training import train

    result = train(cfg)
    m = result.metrics
    print(
        f"{result.config.arch} on {m['dataset']}: test accuracy {100 * m['test_accuracy']:.2f}% "
        f"(loss {m['test_loss']:.4f}) in {m['wall_time_s']:.0f} s -> {result.run_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run(main))
