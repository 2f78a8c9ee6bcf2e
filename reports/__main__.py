"""python -m reports accuracy RESULTS.json [...] --out reports/accuracy.md [--overwrite]

Turns saved results into documents; needs no GPU and no model."""

from __future__ import annotations

import argparse
from pathlib import Path

from reports import accuracy


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m reports", description=__doc__)
    sub = p.add_subparsers(dest="kind", required=True)
    a = sub.add_parser("accuracy", help="accuracy-*.json from `pytest reference` -> markdown + PNG")
    a.add_argument("results", type=Path, nargs="+")
    a.add_argument("--out", type=Path, default=Path("reports/accuracy.md"), help="Default: %(default)s")
    a.add_argument("--overwrite", action="store_true", help="replace an existing report. Default: off")
    args = p.parse_args(argv)
    try:
        print(f"wrote {accuracy.write_report(args.results, args.out, overwrite=args.overwrite)}")
    except (OSError, ValueError, KeyError) as e:
        p.exit(2, f"error: {e}\n")


main()
