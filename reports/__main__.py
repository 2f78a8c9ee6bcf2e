"""python -m reports {accuracy,speedup,scaling,pd} RESULTS.json [...] --out reports/NAME.md [--overwrite]

Turns saved results into documents; needs no GPU and no model."""

from __future__ import annotations

import argparse
from pathlib import Path

from reports import accuracy, pd, scaling, speedup


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m reports", description=__doc__)
    sub = p.add_subparsers(dest="kind", required=True)
    a = sub.add_parser("accuracy", help="accuracy-*.json from `pytest reference` -> markdown + PNG")
    a.add_argument("results", type=Path, nargs="+")
    a.add_argument("--out", type=Path, default=Path("reports/accuracy.md"), help="Default: %(default)s")
    a.add_argument("--overwrite", action="store_true", help="replace an existing report. Default: off")
    s = sub.add_parser("speedup", help="pytest-benchmark JSON from `pytest bench` -> markdown")
    s.add_argument("results", type=Path, nargs="+")
    s.add_argument("--out", type=Path, default=Path("reports/speedup.md"), help="Default: %(default)s")
    s.add_argument("--quality", type=Path, default=None, metavar="JSON",
                   help="`python -m bench quality` over the recipes' images: the image verdict beside each column, and "
                        "the pipeline target judged on passing recipes only. Default: none")  # fmt: skip
    s.add_argument("--accuracy", type=Path, nargs="+", default=None, metavar="JSON",
                   help="`pytest reference`'s accuracy-*.json: each column's engines' verdict, and the targets judged "
                        "on recipes whose engines pass. Default: none")  # fmt: skip
    s.add_argument("--overwrite", action="store_true", help="replace an existing report. Default: off")
    c = sub.add_parser("scaling", help="pytest-benchmark JSON of the batch and step sweeps -> markdown + PNG")
    c.add_argument("results", type=Path, nargs="+")
    c.add_argument("--out", type=Path, default=Path("reports/scaling.md"), help="Default: %(default)s")
    c.add_argument("--overwrite", action="store_true", help="replace an existing report. Default: off")
    q = sub.add_parser("pd", help="results/quality.json from `python -m bench quality` -> markdown + image grids")
    q.add_argument("results", type=Path, nargs=1)
    q.add_argument("--out", type=Path, default=Path("reports/pd.md"), help="Default: %(default)s")
    q.add_argument("--overwrite", action="store_true", help="replace an existing report. Default: off")
    args = p.parse_args(argv)
    writer = {"accuracy": accuracy.write_report, "speedup": speedup.write_report, "scaling": scaling.write_report,
              "pd": pd.write_report}[args.kind]  # fmt: skip
    extra = {"quality": args.quality, "accuracy": args.accuracy} if args.kind == "speedup" else {}
    try:
        print(f"wrote {writer(args.results, args.out, overwrite=args.overwrite, **extra)}")
    except (OSError, ValueError, KeyError) as e:
        p.exit(2, f"error: {e}\n")


main()
