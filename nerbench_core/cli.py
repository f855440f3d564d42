"""The ``nerbench`` command: the benchmark, the project's tests and the tools behind one name.

    nerbench quick [ARGS]    pytest bench --quick --suite offline ARGS
    nerbench bench [ARGS]    pytest bench ARGS
    nerbench test [ARGS]     pytest ARGS, in the repository (the project's own tests)
    nerbench report|perf|submit [ARGS]

ARGS go to the command as they are. pytest runs as a child process of this interpreter (``python -m pytest``), so
that only the plugin imports pytest; its exit status is the command's. Nothing heavy is imported before a command
runs, so ``nerbench --help`` is quick.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"

# name -> one line of help (the order of `nerbench --help`)
COMMANDS = {
    "quick": "quick offline benchmark: pytest bench --quick --suite offline",
    "bench": "the benchmark: pytest bench ARGS (options: pytest --help)",
    "test": "the project's own tests: pytest ARGS, in the repository",
    "report": "tables, verdicts, exports, plots from stored records",
    "perf": "speed benchmark: cases through several training set-ups",
    "submit": "a suite as Slurm or local jobs, through submitit",
}


def parser() -> argparse.ArgumentParser:
    from . import __version__

    ap = argparse.ArgumentParser(
        prog="nerbench", usage="nerbench COMMAND [ARGS...]",
        description="nerbench: fine-tune and compare named-entity recognizers on one footing.",
        epilog="ARGS go to the command as they are, e.g. `nerbench quick -n 2`, `nerbench report results/`, "
               "`nerbench report --help`. From a fresh clone: python3 -m nerbench_core COMMAND (the first start "
               "sets up .venv).")
    ap.add_argument("--version", action="version", version=f"nerbench {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True, title="commands")
    for name, line in COMMANDS.items():
        sub.add_parser(name, help=line, add_help=False)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = parser().parse_args(argv[:1]).command  # exits on --help, --version or an unknown command
    return RUNNERS[command](argv[1:])


def run_pytest(args: list[str], cwd: Path | None = None) -> int:
    """``python -m pytest ARGS`` with this interpreter; its exit status. Ctrl-C reaches pytest too (one process
    group): it is left to finish its summary; a second Ctrl-C stops it."""
    proc = subprocess.Popen([sys.executable, "-m", "pytest", *args], cwd=cwd)
    try:
        try:
            status = proc.wait()
        except KeyboardInterrupt:
            status = proc.wait()
    except KeyboardInterrupt:
        proc.kill()
        status = proc.wait()
    if status == 5:
        print("nerbench: pytest collected no tests (exit status 5): check the paths and -k/-m selections",
              file=sys.stderr)
    return status


def bench_path() -> str | None:
    """``bench`` when it is this checkout's bench/ seen from here, else its absolute path; None when the package was
    installed without its checkout (a wheel: the suites live in the repository, beside the package)."""
    if not BENCH.is_dir():
        return None
    return "bench" if Path("bench").resolve() == BENCH.resolve() else str(BENCH)


def _bench(args: list[str], *fixed: str) -> int:
    path = bench_path()
    if path is None:
        print(f"nerbench: no bench/ beside the package ({BENCH}): the benchmark runs from a clone of the repository "
              "(pip install -e . there)", file=sys.stderr)
        return 2
    return run_pytest([path, *fixed, *args])


def bench(args: list[str]) -> int:
    return _bench(args)


def quick(args: list[str]) -> int:
    return _bench(args, "--quick", "--suite", "offline")


def test(args: list[str]) -> int:
    return run_pytest(args, cwd=REPO)  # pytest.ini's testpaths apply in the repository


def report(args: list[str]) -> int:
    from .reporting.report import main as report_main

    return report_main(args)


def perf(args: list[str]) -> int:
    from .perf import main as perf_main

    return perf_main(args)


def submit(args: list[str]) -> int:
    from .distributed.driver import main as submit_main

    return submit_main(args)


RUNNERS = {"quick": quick, "bench": bench, "test": test, "report": report, "perf": perf, "submit": submit}
assert RUNNERS.keys() == COMMANDS.keys()

if __name__ == "__main__":
    sys.exit(main())
