"""The comparison table from stored records alone (no training, no torch).

    python -m nerbench_core.report RESULTS_DIR_OR_FILE [...] [--compare BASELINES] [--mode quick|full]
        [--cost [--baseline LABEL]] [--time]

Folders from several hosts (or shards) are merged; for each case and run key the newest record counts.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .records import Baselines, load_records, merge_baselines
from .table import render, render_cost, render_time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nerbench_core.report", description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", help="result folders or record/baseline JSON files")
    ap.add_argument("--compare", metavar="BASELINES", help="baselines file: add the F1 change per case")
    ap.add_argument("--mode", choices=["quick", "full"], help="only records of this mode")
    ap.add_argument("--format", default="github", help="tabulate table format (github, grid, latex, ...)")
    ap.add_argument("--save-baselines", metavar="FILE", help="merge these records into a baselines file")
    ap.add_argument("--cost", action="store_true", help="the speed and memory table (set-up, steady tok/s, MFU)")
    ap.add_argument("--baseline", metavar="LABEL", help="with --cost: ratios against the record of this --label")
    ap.add_argument("--time", action="store_true", help="each case's build, training and scoring time and its share")
    args = ap.parse_args(argv)
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        ap.error(f"not found: {', '.join(missing)}")
    records = [r for r in load_records(args.paths) if args.mode in (None, r.mode)]
    if args.cost or args.time:
        print(render_cost(records, args.baseline, fmt=args.format) if args.cost else render_time(records, args.format))
        return 0 if records else 1
    baselines = Baselines.load(args.compare, tolerance=0.0).for_records(records) if args.compare else None
    print(render(records, baselines, fmt=args.format))
    if args.save_baselines:
        print(f"baselines: {merge_baselines(records, args.save_baselines)}")
    return 0 if records else 1


if __name__ == "__main__":
    sys.exit(main())
