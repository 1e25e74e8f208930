#!/usr/bin/env python3
"""Search hyperparameters with keras-tuner; re-running the same command resumes.

Examples:
  python scripts/tune.py --space a_grid --tuner grid --dataset mnist_5k
  python scripts/tune.py --space a_grid --tuner hyperband --dataset mnist_5k --max-epochs 15
  python scripts/tune.py --space mlp --tuner random --max-trials 30 --max-epochs 5
  python scripts/tune.py --space losses --tuner bayesian --max-trials 20 --workers 2

Trials are scored on the validation split (final-epoch val accuracy); the test
split is used once, by the best model. The search folder DIRECTORY/PROJECT_NAME
receives trials.csv, best_hyperparameters.json, best_train_config.json (the best
trial as a train.py --config file), best_model/ (SavedModel, model.keras),
figures/ and summary.md. Past --recycle-mb of memory growth (TensorFlow keeps
every traced training function) the process restarts itself between two trials
and resumes. --workers N runs keras-tuner's chief/worker mode on this
machine; on several machines set KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP and
KERASTUNER_ORACLE_PORT yourself (see docs/tuning.md).
Exit codes: 0 ok, 1 a search process failed, 2 bad input (one line on stderr),
130 interrupted (Ctrl-C), 143 terminated (SIGTERM): re-run to resume.
"""

from __future__ import annotations

import logging
import os
import sys

import _cli


def build_parser():
    from kmnist_lab.config import JIT_POLICIES
    from kmnist_lab.data import list_datasets
    from kmnist_lab.names import SEARCH_SPACES, TUNERS  # not tuning's: Keras (seconds)

    spaces = "\n".join(f"  {name:<13} {summary}" for name, summary in SEARCH_SPACES.items())
    p = _cli.Parser(prog="tune.py", description=__doc__, epilog=f"search spaces:\n{spaces}")
    g = p.add_argument_group("what to search")
    g.add_argument("--space", required=True, choices=list(SEARCH_SPACES), help="search space")
    g.add_argument(
        "--tuner",
        choices=TUNERS,
        default="hyperband",
        help="search algorithm (default hyperband)",
    )
    g.add_argument(
        "--dataset", choices=list_datasets(), default="auto", help="dataset (default auto)"
    )
    g.add_argument("--data-dir", help="folder with IDX (.gz or raw) or .npz files, searched first")
    g.add_argument(
        "--val-fraction",
        type=_cli.fraction,
        help="share of training data held out for validation "
        "(default 1/12; mnist_5k 1/9, its 4000/500 split)",
    )
    g.add_argument(
        "--seed", type=int, default=0, help="data split, initialisation and oracle seed (default 0)"
    )
    b = p.add_argument_group("budget")
    b.add_argument("--max-epochs", type=_cli.positive_int,
                   help="most epochs one model trains (Hyperband's max_epochs; caps the epoch "
                   "choices of the other tuners; default: the space's largest)")  # fmt: skip
    b.add_argument(
        "--factor", type=_cli.positive_int, help="Hyperband reduction factor (default 3)"
    )
    b.add_argument(
        "--hyperband-iterations", type=_cli.positive_int, help="Hyperband sweeps (default 1)"
    )
    b.add_argument("--max-trials", type=_cli.positive_int,
                   help="most trials (default: grid all cells, random/bayesian 10, "
                   "hyperband as many as its brackets need)")  # fmt: skip
    o = p.add_argument_group("output")
    o.add_argument(
        "--directory", default="searches", help="parent of search folders (default searches)"
    )
    o.add_argument("--project-name", help="search folder name (default SPACE_TUNER_DATASET)")
    o.add_argument("--overwrite", action="store_true", help="start over instead of resuming "
                   "(empties the search folder; a folder that holds no search is never emptied)")  # fmt: skip
    o.add_argument("--retrain", action="store_true",
                   help="retrain the best configuration, not restore it")  # fmt: skip
    o.add_argument(
        "--no-export",
        dest="export",
        action="store_false",
        help="score the best model but write neither its model.keras nor its SavedModel "
        "(a later run without this flag exports it)",
    )
    r = p.add_argument_group("run")
    r.add_argument("--workers", type=_cli.nonneg_int, default=0,
                   help="start a chief and N workers here (distributed; default 0: one process)")  # fmt: skip
    r.add_argument("--expect-workers", type=_cli.nonneg_int, default=0,
                   help="as the chief of a search started by hand (KERASTUNER_TUNER_ID=chief): "
                   "no trial until N workers asked (at most 120 s; default 0: none)")  # fmt: skip
    r.add_argument("--recycle-mb", type=_cli.nonneg_int, default=300, metavar="MB",
                   help="restart between trials past MB of growth (300; 0: never)")  # fmt: skip
    r.add_argument(
        "--backend",
        choices=_cli.BACKENDS,
        help="Keras backend (default: KERAS_BACKEND if set, else tensorflow)",
    )
    r.add_argument("--jit", choices=JIT_POLICIES, default="auto", help="XLA policy (default auto)")
    r.add_argument("-q", "--quiet", action="store_true", help="no per-trial tables")
    return p


def _check_expect_workers(parser, args) -> None:
    """Refuses --expect-workers where no chief would read it (it would do nothing)."""
    from tuning.search import distributed_role

    if args.workers:
        parser.error(
            f"--expect-workers {args.expect_workers} is for a chief started by hand; "
            f"--workers {args.workers} already makes its chief wait for its own "
            f"{args.workers} workers: drop --expect-workers"
        )
    role = distributed_role()
    if role == "worker":
        parser.error(
            f"--expect-workers {args.expect_workers} makes a distributed search's chief wait for "
            "its workers, and this process is a worker (KERASTUNER_TUNER_ID="
            f"{os.environ['KERASTUNER_TUNER_ID']!r} has no 'chief'); pass it to the chief only"
        )
    if role is None:
        parser.error(
            f"--expect-workers {args.expect_workers} makes a distributed search's chief wait for "
            "its workers, and this search is not distributed (KERASTUNER_ORACLE_IP is not set); "
            "drop it, or pass --workers N to run a chief and N workers here"
        )


def config_from_args(args):
    from tuning.search import SearchConfig

    return SearchConfig(
        space=args.space,
        tuner=args.tuner,
        dataset=args.dataset,
        data_dir=args.data_dir,
        val_fraction=args.val_fraction,
        seed=args.seed,
        max_epochs=args.max_epochs,
        factor=args.factor,
        hyperband_iterations=args.hyperband_iterations,
        max_trials=args.max_trials,
        directory=args.directory,
        project_name=args.project_name,
        overwrite=args.overwrite,
        workers=args.workers,
        expect_workers=args.expect_workers,
        jit=args.jit,
        export=args.export,
        retrain=args.retrain,
        recycle_mb=args.recycle_mb or None,
        verbose=0 if args.quiet else 1,
    )


def main(argv=None) -> int:
    backend = _cli.select_backend(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    hyperband_flags = {"--factor": args.factor, "--hyperband-iterations": args.hyperband_iterations}
    if args.tuner != "hyperband":
        given = [flag for flag, value in hyperband_flags.items() if value is not None]
        if given:
            parser.error(
                f"{', '.join(given)} set{'s' if len(given) == 1 else ''} Hyperband's schedule, "
                f"and this search uses --tuner {args.tuner}: drop "
                f"{'it' if len(given) == 1 else 'them'}, or pass --tuner hyperband"
            )
    args.factor = 3 if args.factor is None else args.factor
    args.hyperband_iterations = args.hyperband_iterations or 1
    if args.factor < 2:
        _cli.fail(f"--factor must be an integer >= 2, got {args.factor}")
    if args.expect_workers:
        _check_expect_workers(parser, args)
    cfg = config_from_args(args)  # a bad option fails here, before anything is printed
    _cli.setup_logging(not args.quiet)
    logging.getLogger("kmnist_lab").info("Keras backend: %s", backend)
    from tuning.search import run_search

    result = run_search(cfg)
    if result is None:  # a worker of a distributed search: the chief reports
        return 0
    s = result.summary
    broken = s.get("trials_diverged", 0)
    finished = s["trials_completed"] + broken
    line = (
        f"{s['config']['space']}/{s['config']['tuner']} on {s['dataset']}: "
        f"{finished} trial{'' if finished == 1 else 's'}"
        + (f" ({broken} diverged)" if broken else "")
        + f", total epochs trained {s['total_epochs']}"
    )
    best, model = s.get("best"), s.get("best_model") or {}
    if not best and broken:
        line += "; no best trial (every trial diverged), no model exported"
    if best:
        hps = " ".join(
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in best["hyperparameters"].items()
        )
        line += (
            f"; best val accuracy {100 * best['val_accuracy']:.2f}% "
            f"(trial {best['trial_id']}: {hps}, {best['epochs']} "
            f"epoch{'' if best['epochs'] == 1 else 's'})"
        )
    if model.get("test_accuracy") is not None:
        line += f"; best model test accuracy {100 * model['test_accuracy']:.2f}%"
    print(f"{line} -> {result.project_dir}")
    train_config = result.project_dir / "best_train_config.json"
    if best and train_config.is_file():
        print(f"train the best configuration: python scripts/train.py --config {train_config}")
    best_model = result.project_dir / "best_model"
    if best and (best_model / "saved_model" / "saved_model.pb").is_file():
        print(f"evaluate the best model: python scripts/evaluate.py {best_model}")
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run(main))
