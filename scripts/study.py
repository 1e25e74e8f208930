#!/usr/bin/env python3
"""Run one of the lab reports' studies (every run of its table), resumably.

Examples:
  python scripts/study.py --list
  python scripts/study.py a_grid --list               # its 60 runs: the names --only matches
  python scripts/study.py a_models --dataset mnist_5k
  python scripts/study.py b_resnet --dataset fashion_mnist --epochs-scale 0.5
  python scripts/study.py e_sweeps --quick            # a few batches per run, under a minute
  python scripts/study.py a_grid --only 'bs128_*'     # some of a study's runs

Runs go to OUTPUT_DIR/NAME/RUN/ (default OUTPUT_DIR: studies/DATASET, or
studies/DATASET-quick with --quick). Re-running the command skips finished runs
and resumes the interrupted one. Then: python scripts/report.py OUTPUT_DIR/NAME
Exit codes: 0 ok (diverged runs are listed, not fatal), 2 bad input, 130 interrupted
(Ctrl-C), 143 terminated (SIGTERM): re-run to resume.
"""

from __future__ import annotations

import logging
import sys

import _cli


def build_parser():
    from kmnist_lab.data import list_datasets
    from kmnist_lab.studies import list_studies

    p = _cli.Parser(prog="study.py", description=__doc__)
    p.add_argument("name", nargs="?", choices=list_studies(), metavar="NAME",
                   help="study to run: " + ", ".join(list_studies()))  # fmt: skip
    p.add_argument("--list", action="store_true",
                   help="list the studies with their run counts; with NAME, list that study's "
                   "runs (the names --only matches) and the settings they vary, or with --only "
                   "the runs it selects (no other run flags)")  # fmt: skip
    p.add_argument(
        "--dataset",
        choices=list_datasets(),
        default="auto",
        help="dataset (default auto; not for e_regression, which draws its own samples)",
    )
    p.add_argument("--data-dir", help="folder with IDX (.gz or raw) or .npz files, searched first")
    p.add_argument("--epochs-scale", type=_cli.positive_float, default=1.0, metavar="F",
                   help="multiply every run's epochs by F (nearest whole epoch, halves up; "
                   "at least 1)")  # fmt: skip
    p.add_argument("--quick", action="store_true",
                   help="a few batches per run on a small subset, one step per compiled call "
                   "(every batch in batches.csv); exports no SavedModels")  # fmt: skip
    p.add_argument("--only", action="append", metavar="PATTERN",
                   help="train only the runs whose names match this shell pattern "
                   "(repeatable), e.g. --only '*_e15'; the others are left as they are")  # fmt: skip
    p.add_argument(
        "--backend",
        choices=_cli.BACKENDS,
        help="Keras backend for every run of the study (default: KERAS_BACKEND if set, "
        "else tensorflow; train.py's --backend auto picks per arch instead, JAX for the MLPs)",
    )
    p.add_argument(
        "--output-dir", help="parent of the study folder (default studies/DATASET[-quick])"
    )
    p.add_argument("--no-export", dest="export", action="store_false",
                   help="skip each run's SavedModel/model.keras (faster)")  # fmt: skip
    p.add_argument("--report", action="store_true", help="write report.md/report.html afterwards")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print the summary (its line, the diverged runs, the report's files) "
                   "and no progress; training's warnings and errors still show, the report's "
                   "warnings (unfinished runs, damaged files) only in the report, as with "
                   "report.py -q")  # fmt: skip
    return p


# The flags that only change how a study runs: `--list` runs none, so it refuses them.
_RUN_FLAGS = (
    ("dataset", "--dataset"),
    ("data_dir", "--data-dir"),
    ("epochs_scale", "--epochs-scale"),
    ("quick", "--quick"),
    ("only", "--only"),
    ("output_dir", "--output-dir"),
    ("export", "--no-export"),
    ("report", "--report"),
    ("backend", "--backend"),
)


def _configure_batch_shards(study) -> None:
    """Sets TensorFlow's threads for batch shards (`kmnist_lab.speed`) when every run of
    the study plans the same number of them (report C's `residual_cnn` runs), before
    anything starts TensorFlow's runtime; a study of other or mixed architectures keeps
    TensorFlow's default threads, which its other runs train fastest with."""
    from kmnist_lab.speed import configure_batch_shards, planned_batch_shards_of

    # (The sin x study's runs are not image classifiers: no arch, one shard.)
    plans = {planned_batch_shards_of(run.config) for run in study.runs}
    if len(plans) == 1:
        configure_batch_shards(plans.pop())


def _list_runs(study, only) -> None:
    """Prints each run of `study` (those `only`'s patterns select), one a line: its name
    (what --only matches) and the settings that vary across the study."""
    from kmnist_lab.studies import select_runs

    selected = select_runs(study, only)
    width = max(len(run.name) for run in selected)
    for run in selected:
        factors = ", ".join(f"{k} {v}" for k, v in run.factors.items())
        print(f"{run.name:<{width}}  {factors}".rstrip())


def main(argv=None) -> int:
    backend = _cli.select_backend(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    from kmnist_lab.studies import get_study, list_studies

    if args.list and args.name is not None:
        ignored = [flag for dest, flag in _RUN_FLAGS
                   if dest != "only" and getattr(args, dest) != parser.get_default(dest)]  # fmt: skip
        if ignored:
            parser.error(
                f"--list lists the runs of {args.name} and trains none, so "
                f"{', '.join(ignored)} would be ignored; drop --list to run {args.name} with "
                f"{'it' if len(ignored) == 1 else 'them'}"
            )
        _list_runs(get_study(args.name), args.only)
        return 0
    if args.list:
        ignored = [
            flag for dest, flag in _RUN_FLAGS if getattr(args, dest) != parser.get_default(dest)
        ]
        if ignored:
            parser.error(
                f"--list lists every study and runs none, so {', '.join(ignored)} would be "
                "ignored; drop --list to run a study with them"
            )
        width = max(map(len, list_studies()))
        for name in list_studies():
            study = get_study(name)
            runs = f"{len(study.runs)} run{'s' if len(study.runs) != 1 else ''}"
            print(f"{name:<{width}}  {runs:>8}  report {study.report}")
        return 0
    if args.name is None:
        _cli.fail("a study NAME or --list is required (see --help)")
    if get_study(args.name).kind != "classify":
        given = [flag for dest, flag in _RUN_FLAGS[:2]
                 if getattr(args, dest) != parser.get_default(dest)]  # fmt: skip
        if given:
            parser.error(
                f"{args.name} fits sin x on samples it draws itself, so {' and '.join(given)} "
                f"would be ignored; drop {'it' if len(given) == 1 else 'them'}"
            )
    _cli.setup_logging(not args.quiet)
    logging.getLogger("kmnist_lab").info("Keras backend: %s", backend)
    if backend == "tensorflow":
        _configure_batch_shards(get_study(args.name))
    from kmnist_lab.studies import run_study

    result = run_study(
        args.name,
        dataset=args.dataset,
        data_dir=args.data_dir,
        epochs_scale=args.epochs_scale,
        quick=args.quick,
        output_dir=args.output_dir,
        export=args.export,
        only=args.only,
    )
    counts = {}
    for status in result.statuses.values():
        counts[status] = counts.get(status, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    trained = len(result.trained)
    print(
        f"{args.name} on {result.dataset}: {summary} ({trained} trained now) -> {result.study_dir}"
    )
    diverged = [name for name, s in result.statuses.items() if s == "diverged"]
    if diverged:
        print(f"diverged: {', '.join(diverged)}")
    if args.report:
        from kmnist_lab.report import write_report

        with _cli.report_logs(args.quiet):  # as report.py -q: they are in the report
            md, html = write_report(result.study_dir)
        print(f"report: {md} and {html}")
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run(main))
