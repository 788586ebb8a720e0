"""``memcim reproduce``: regenerate every paper's figures and tables into a Markdown report."""
from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("reproduce", help="regenerate the papers' figures and tables into a report",
                       description="Run the reproduction of paper 000, 001, 002, 003 or all, and write REPORT.md "
                                   "with the PNGs, each measured figure beside the paper's.")
    p.add_argument("paper", nargs="?", default="all", choices=["all", "000", "001", "002", "003"])
    p.add_argument("--out", default="results/report", metavar="DIR", help="report directory (default results/report)")
    p.add_argument("--quick", action="store_true", help="smaller settings that finish in minutes on 2 cores")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report-only", action="store_true",
                   help="rewrite REPORT.md from an earlier run's results in --out, without running anything")
    p.set_defaults(func=run)


def run(args) -> int:
    from memcim.experiments.reproduce import reproduce

    if args.seed < 0:
        raise ValueError(f"--seed: {args.seed} is not allowed; must be >= 0")
    report = reproduce(args.paper, args.out, quick=args.quick, seed=args.seed, progress=sys.stderr.isatty(),
                       report_only=args.report_only)
    text = report.read_text()
    failed = text.count("**failed**")
    print(f"wrote {report}" + (f" ({failed} step(s) failed: see the report)" if failed else ""))
    return 1 if failed else 0
