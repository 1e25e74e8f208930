#!/usr/bin/env python3
"""Regenerate the README's model/loss/optimizer/dataset tables from the registries.

python scripts/update_readme.py          # rewrite README.md
python scripts/update_readme.py --check  # exit 1 if README.md is stale
"""

from __future__ import annotations

import sys
from pathlib import Path

import _cli


def main(argv=None) -> int:
    p = _cli.Parser(prog="update_readme.py", description=__doc__)
    p.add_argument("--check", action="store_true", help="only check; exit 1 when stale")
    args = p.parse_args(argv)
    _cli.prepare_process()  # TensorFlow's start-up lines filtered, as in the other scripts
    from kmnist_lab.catalog import TABLES, fill

    readme = Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text()
    new = fill(text, required=TABLES)
    if args.check:
        if new != text:
            print(
                "README.md tables are stale: run python scripts/update_readme.py", file=sys.stderr
            )
            return 1
        return 0
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run(main, resumable=False))
