#!/usr/bin/env python3
"""Evaluate an exported SavedModel with TensorFlow alone (no model code needed).

Examples:
  python scripts/evaluate.py saved_models/bn_mlp_mnist_5k_ce_s0
  python scripts/evaluate.py saved_models/bn_mlp_mnist_5k_ce_s0/saved_model --split val
  python scripts/evaluate.py RUN --dataset fashion_mnist --data-dir /usr/share/datasets/fashion-mnist

PATH is a run folder, a search's best_model/ folder, or their saved_model/ folder.
Dataset, data dir, validation fraction and seed default to the run's config.json (a
best_model/'s metrics.json: the search's), so `--split val` is the same
validation split the run used (the run's data dir applies unless --dataset names
another dataset). On the run's own dataset, a --seed or --val-fraction other than
the run's is refused with --split val or train: it would carve another validation
split, holding images the run trained on. --split test takes neither (the test
split is fixed). A --dataset other than the run's is scored with a warning on
stderr naming both; the figures name the predictions by the model's own classes,
and the classification report's rows both (`Bag (pred 8)`: a row's precision is
about the model's predictions of its class 8). A run folder without metrics.json
(written last) is scored with a warning on stderr: its training is still running,
or stopped after exporting saved_model/ (which follows the last epoch).
Prints accuracy, cross-entropy of the served probabilities (metrics.json's
test_loss is the training loss, am_softmax's with its margin, kld's smoothed, ...:
the same number for `ce` only), per-class accuracy and the classification report;
writes evaluation.json (with the seed and val_fraction of the splits, and
run_complete: false for such an unfinished run, null outside a run folder),
confusion.png, per_class.png and wrong.png (the most confidently wrong images; none
when every image is right) to --output-dir (default
RUN/evaluation/DATASET-SPLIT; for a SavedModel folder outside a run,
evaluation/DATASET-SPLIT beside that folder).
"""

from __future__ import annotations

import sys

import _cli


def build_parser():
    from kmnist_lab.data import list_datasets

    p = _cli.Parser(prog="evaluate.py", description=__doc__)
    p.add_argument("path", help="run folder or SavedModel folder")
    p.add_argument(
        "--dataset", choices=list_datasets(), help="default: the run's dataset, else auto"
    )
    p.add_argument("--data-dir", help="folder with IDX/.npz files (default: the run's, "
                   "when --dataset is the run's dataset)")  # fmt: skip
    p.add_argument("--split", choices=("test", "val", "train"), default="test",
                   help="split to score (default test)")  # fmt: skip
    p.add_argument("--val-fraction", type=_cli.fraction,
                   help="validation share of the training set, for --split val/train "
                   "(default: the run's; on the run's own dataset only the run's)")  # fmt: skip
    p.add_argument("--seed", type=int,
                   help="validation-split seed, for --split val/train (default: the run's; on "
                   "the run's own dataset only the run's)")  # fmt: skip
    p.add_argument("--batch-size", type=_cli.positive_int, default=1024,
                   help="inference batch size (default 1024)")  # fmt: skip
    p.add_argument("--output-dir", help="where evaluation.json and figures go (default: see above)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print only the accuracy line and where the files went (no per-class "
                   "table, classification report or info lines)")  # fmt: skip
    p.add_argument("--backend", choices=_cli.BACKENDS, help=argparse_suppress())
    return p


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


def main(argv=None) -> int:
    _cli.select_backend(argv)
    args = build_parser().parse_args(argv)
    _cli.setup_logging(not args.quiet)
    from pathlib import Path

    from kmnist_lab.data import list_datasets, load_dataset
    from kmnist_lab.errors import ConfigError, DataError, ModelLoadError, did_you_mean, is_real
    from kmnist_lab.evaluation import (
        check_split_flags,
        default_val_fraction,
        load_saved_model,
        model_class_names,
        predict_scores,
        resolve_saved_model,
        run_complete,
        run_config,
        score,
        unfinished_run,
        write_report,
    )

    saved_dir, run_dir = resolve_saved_model(args.path)
    run = run_config(run_dir)
    cfg = run.get("config", {})
    trained_on = run.get("dataset", {}).get("name") or cfg.get("dataset")
    dataset_name = args.dataset or trained_on or "auto"
    # Where the run's settings were read: a search's best_model/ has them in metrics.json.
    source = run_dir and run_dir / (
        "config.json" if (run_dir / "config.json").is_file() else "metrics.json"
    )
    if args.dataset is None and cfg.get("dataset", "auto") not in list_datasets():
        raise ConfigError(
            f"{source} names dataset {cfg['dataset']!r}, which is not one of "
            f"{', '.join(list_datasets())}.{did_you_mean(cfg['dataset'], list_datasets())} "
            "Pass --dataset NAME (and --data-dir) to score the model on a dataset"
        )
    if args.dataset is None and dataset_name not in list_datasets():
        # A run of `training.train(config, dataset=data.from_arrays(...))`: its arrays
        # are in no file a dataset name reads.
        raise ConfigError(
            f"{run_dir} trained on {dataset_name!r}, arrays of its own "
            "(kmnist_lab.data.from_arrays), which evaluate.py cannot load: score its "
            "SavedModel from Python with kmnist_lab.evaluation "
            "(load_saved_model, predict_scores, score) or, with 10 classes saved as files, "
            "pass --dataset kmnist --data-dir FOLDER"
        )
    # The run's data folder holds the run's dataset: it applies unless another is named.
    data_dir = (
        args.data_dir
        if args.data_dir is not None
        else (cfg.get("data_dir") if args.dataset in (None, trained_on) else None)
    )
    if args.data_dir is None and data_dir is not None and not Path(data_dir).is_dir():
        raise DataError(
            f"the run's data dir {data_dir} (its {source.name}) does not exist or is not a "
            "directory; pass --data-dir with the folder that holds its files now"
        )
    run_seed, run_fraction = cfg.get("seed", 0), cfg.get("val_fraction")
    if run_fraction is not None and not (is_real(run_fraction) and 0 < run_fraction < 1):
        raise ConfigError(
            f"{source} has val_fraction {run_fraction!r}; it must be in (0, 1) "
            "(train.py's own check): fix the file"
        )
    seed = args.seed if args.seed is not None else run_seed
    val_fraction = args.val_fraction if args.val_fraction is not None else run_fraction
    dataset = load_dataset(dataset_name, data_dir, val_fraction, seed)  # checks their values
    # Its own dataset (`auto` of an older config: whatever `auto` finds, unless another
    # dataset is named): the run's split of its training images is the only honest one.
    own = trained_on is not None and (
        dataset.name == trained_on or (trained_on == "auto" and args.dataset in (None, "auto"))
    )
    own_split = {"dataset": dataset.name, "seed": run_seed, "val_fraction": run_fraction}
    check_split_flags(args.split, args.seed, args.val_fraction, own_split if own else None)
    if val_fraction is None:
        val_fraction = default_val_fraction(dataset.name)
    warnings = []
    if trained_on and trained_on != "auto" and dataset.name != trained_on:
        # Legitimate (e.g. transfer to another dataset), but easy to do by mistake.
        warnings.append(
            f"the model was trained on {trained_on} ({run_dir}) and is evaluated on "
            f"{dataset.name} (--dataset {args.dataset}); its scores measure "
            f"{trained_on} -> {dataset.name} transfer and do not compare with the run's own"
        )
    x, y = getattr(dataset, args.split)
    if not len(x):
        raise DataError(
            f"the {args.split} split of {dataset.name} holds no images here (val_fraction "
            f"{val_fraction}); choose another --split or --val-fraction"
        )
    loaded = load_saved_model(saved_dir)
    scores = predict_scores(loaded, x, args.batch_size)
    if scores.shape[1] != dataset.num_classes:
        raise ModelLoadError(
            f"the model outputs {scores.shape[1]} classes but {dataset.name} has {dataset.num_classes}"
        )
    # The true labels are the scored dataset's; the predictions are the model's classes
    # (an MNIST model's 8 is "8", not Fashion-MNIST's "Bag").
    predicted_names = model_class_names(run)
    if predicted_names is None or len(predicted_names) != dataset.num_classes:
        predicted_names = dataset.class_names
    result = score(y, scores, dataset.class_names, predicted_class_names=predicted_names)
    result.update({"saved_model": str(saved_dir), "run_complete": run_complete(run_dir),
                   "dataset": dataset.name, "split": args.split, "seed": seed,
                   "val_fraction": val_fraction,
                   "predicted_class_names": list(predicted_names)})  # fmt: skip
    out = (
        Path(args.output_dir)
        if args.output_dir
        else (run_dir or saved_dir.parent) / "evaluation" / f"{dataset.name}-{args.split}"
    )
    path = write_report(result, x, dataset.class_names, out, title=f"({dataset.name} {args.split})",
                        predicted_class_names=predicted_names)  # fmt: skip
    # Useful to score, but not a finished run's model. The warnings are said once
    # nothing can be refused any more, so that a refusal stays one line.
    unfinished = unfinished_run(run_dir)
    if unfinished:
        warnings.append(unfinished)
    for warning in warnings:
        print(f"evaluate.py: warning: {warning}", file=sys.stderr)
    print(f"{dataset.name} {args.split}: accuracy {100 * result['accuracy']:.2f}% "
          f"cross-entropy {result['cross_entropy']:.4f} (n={result['n']})")  # fmt: skip
    if not args.quiet:
        print(
            "per-class accuracy: "
            + "  ".join(f"{k}:{100 * v:.1f}" for k, v in result["per_class_accuracy"].items())
        )
        print(result["classification_report_text"])
    print(f"wrote {path} and figures in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run(main, resumable=False))
