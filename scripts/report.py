#!/usr/bin/env python3
"""Write report.md and a self-contained report.html for a run, a study or a search folder.

Examples:
  python scripts/report.py studies/mnist_5k/a_models        # a study: table vs the report, figures
  python scripts/report.py saved_models/bn_mlp_mnist_5k_ce_s0 # one run
  python scripts/report.py searches/a_grid_grid_mnist_5k     # a search folder (trials.csv)

Figures are drawn from the folders' CSV/JSON files only, so a report is rebuilt
without retraining. A folder whose config.json or study.json is not what train.py or
study.py writes is refused; a damaged history.csv or batches.csv is named on stderr
(and in the report), which draws the rows it can read, and so is a damaged metrics.json
(its numbers shown as —). -q leaves these warnings to the report.
Exit codes: 0 ok, 2 bad input (one line on stderr), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import sys

import _cli


def build_parser():
    p = _cli.Parser(prog="report.py", description=__doc__)
    p.add_argument("path", help="a run, study or search folder")
    p.add_argument("--output-dir", help="where to write report.md/report.html (default: PATH)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _cli.setup_logging(False)
    from kmnist_lab.report import write_report

    # The report's warnings (an unfinished study, damaged files) are in the report too;
    # -q prints nothing but errors.
    with _cli.report_logs(args.quiet):
        md, page = write_report(args.path, args.output_dir)
    if not args.quiet:
        print(f"wrote {md} and {page}")
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run(main, resumable=False))
