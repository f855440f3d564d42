"""Tables, verdicts, exports and plots from stored records alone (no training, no torch).

    python -m nerbench_core.report RESULTS_DIR_OR_FILE [...] [--mode quick|full] [--columns COLS]
        [--format csv|json|markdown|html|latex] [--compare BASELINES] [--versus A B] [--export FILE]
        [--plot DIR] [--cost [--baseline LABEL]] [--time] [--save-baselines FILE] [--data-dir DIR]

Folders from several hosts (or shards) are merged; for each case and run key the newest record counts.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .baselines import Baselines, BaselinesError
from .compare import CompareError, versus
from .exports import FORMATS, TABULATE, export_run, render_as
from .store import load_records
from .summary import LEGEND, rows_for
from .table import Row, columns_for, render_cost, render_time


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="nerbench report", description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", help="result folders or record/baseline JSON files")
    ap.add_argument("--mode", choices=["quick", "full"], help="only records of this mode")
    ap.add_argument("--columns", default="default", help="default (fits 120 characters), all, cost, time, or a "
                                                         "comma-separated list of column names")
    ap.add_argument("--format", default="markdown", help=f"one of {', '.join(FORMATS)}")
    ap.add_argument("--per-seed", action="store_true", help="a row per seed (default: a case's seeds in one row)")
    ap.add_argument("--compare", metavar="BASELINES", help="baselines file: add the F1 change per case")
    ap.add_argument("--versus", nargs=2, metavar=("A", "B"), help="is A really better than B? (a paired verdict)")
    ap.add_argument("--resamples", type=positive, default=10000,
                    help="with --versus: bootstrap and randomization draws")
    ap.add_argument("--export", metavar="FILE", help="write the records and the table as one JSON file")
    ap.add_argument("--plot", metavar="DIR", help="draw the figures (and a Markdown page of them) into DIR")
    ap.add_argument("--save-baselines", metavar="FILE", help="merge these records into a baselines file")
    ap.add_argument("--cost", action="store_true", help="the speed and memory table (set-up, steady tok/s, MFU)")
    ap.add_argument("--baseline", metavar="LABEL", help="with --cost: ratios against the record of this --label")
    ap.add_argument("--time", action="store_true", help="each case's build, training and scoring time and its share")
    ap.add_argument("--data-dir", default=os.environ.get("NERBENCH_DATA_DIR"),
                    help="the CoNLL folder a baselines file's runs were measured on (default: $NERBENCH_DATA_DIR, "
                         "else the folder each record names): its predicted tags are read with the data's words")
    return ap


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: expected an integer >= 1")
    return value


def output_problem(path: str, folder: bool) -> str | None:
    """Why ``path`` cannot be written (a file, or a folder of files), or None."""
    from .. import atomic

    p = Path(path)
    if folder:
        return None if not p.exists() or p.is_dir() else "not a folder"
    if p.is_dir():
        return "a folder, not a file"
    problem = atomic.check_writable(p.resolve().parent, "folder")
    return problem


def pick(rows: list[Row], name: str, ap) -> Row:
    """The row of case ``name`` (``name@label`` where labels tell runs of one case apart; ``name@``: the unlabelled)."""
    case, at, label = name.partition("@")
    found = [r for r in rows if r.first.case == case and (not at or r.first.label == label)]
    found = [r for r in found if any(rec.finished for rec in r.records)] or found  # not the runs that broke
    if not found:
        ap.error(f"--versus: no records of {name!r} (cases: {', '.join(sorted({r.first.case for r in rows}))})")
    if len(found) > 1:
        ap.error(f"--versus: {name!r} has runs of several set-ups or data ({len(found)}): name one as CASE@LABEL "
                 "or choose --mode")
    return found[0]


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.format not in FORMATS:
        ap.error(f"--format {args.format!r}: expected one of {', '.join(FORMATS)}")
    outputs = [name for name, given in (("--export", args.export), ("--plot", args.plot),
                                        ("--save-baselines", args.save_baselines)) if given]
    for table, given in (("--versus", args.versus), ("--cost", args.cost), ("--time", args.time)):
        if given and outputs:
            ap.error(f"{table} prints its own answer; {', '.join(outputs)} go with the comparison table alone")
    if (args.cost or args.time) and args.format in ("csv", "json"):
        ap.error(f"--format {args.format}: --cost and --time print markdown, html, latex or text")
    if args.versus and args.versus[0] == args.versus[1]:
        ap.error(f"--versus: {args.versus[0]!r} twice; name two cases (CASE@LABEL tells set-ups of one case apart)")
    if args.compare and not Path(args.compare).is_file():
        ap.error(f"--compare {args.compare}: baselines file not found")
    for name, path, folder in (("--export", args.export, False), ("--plot", args.plot, True),
                               ("--save-baselines", args.save_baselines, False)):
        problem = path and output_problem(path, folder)
        if problem:
            ap.error(f"{name} {path}: {problem}")
    if args.data_dir and not Path(args.data_dir).is_dir():
        ap.error(f"--data-dir {args.data_dir}: not a folder")
    data_dirs = [args.data_dir] if args.data_dir else []
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        ap.error(f"not found: {', '.join(missing)}")
    try:
        records = [r for r in load_records(args.paths) if args.mode in (None, r.mode)]
        baselines = Baselines.load(args.compare) if args.compare else None
    except BaselinesError as err:
        ap.error(str(err))
    if not records:
        print("nerbench: no records in " + ", ".join(args.paths), file=sys.stderr)
        return 1
    if args.cost or args.time:
        fmt = TABULATE[args.format]
        print(render_cost(records, args.baseline, fmt) if args.cost else render_time(records, fmt))
        return 0
    rows = rows_for(records, baselines, versus_best=not args.versus, per_seed=args.per_seed and not args.versus,
                    data_dirs=data_dirs)
    if args.versus:
        a, b = (pick(rows, name, ap) for name in args.versus)
        try:
            result = versus(a, b, args.resamples, *args.versus, data_dirs=data_dirs)
        except CompareError as err:
            print(f"nerbench: {err}", file=sys.stderr)
            return 2
        print(result.sentence)
        return 0
    try:
        columns_for(args.columns, rows)
    except ValueError as err:
        ap.error(str(err))
    print(render_as(rows, args.format, args.columns))
    if args.format == "markdown" and any(r.versus_best for r in rows):
        print(LEGEND)
    if args.export:
        print(f"export: {export_run(args.export, rows)}", file=sys.stderr)
    try:
        if args.plot:
            from .plots import plot_all

            print(f"plots: {plot_all(rows, Path(args.plot), data_dirs)}", file=sys.stderr)
        if args.save_baselines:
            print(f"baselines: {Baselines.load(args.save_baselines).merge(records)}", file=sys.stderr)
    except (OSError, BaselinesError) as err:
        print(f"nerbench: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
