"""``python3 -m nerbench_core COMMAND [ARGS]``: the ``nerbench`` command, from a fresh clone.

    python3 -m nerbench_core quick     # the first start sets up .venv (nerbench_core/bootstrap.py), then runs
    python3 -m nerbench_core test

This file is kept parseable by old Pythons (no f-strings, ASCII only), so that one too old says so in one line.
"""
import sys

MIN_PYTHON = (3, 11)  # = bootstrap.MIN_PYTHON = pyproject's requires-python (tests/test_start.py checks)

if sys.version_info[:2] < MIN_PYTHON:
    sys.stderr.write(
        "nerbench needs Python %d.%d or newer; this is Python %d.%d (%s). Start it with a newer one, e.g. "
        "python3.%d -m nerbench_core ...\n"
        % (MIN_PYTHON + tuple(sys.version_info[:2]) + (sys.executable, MIN_PYTHON[1])))
    sys.exit(1)


def main(argv=None):
    from .bootstrap import ensure_environment

    argv = sys.argv[1:] if argv is None else list(argv)
    ensure_environment(argv)  # returns in the environment nerbench runs in (after setting it up, re-executed)
    from .cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
