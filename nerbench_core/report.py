"""``python -m nerbench_core.report``: kept as the short name of :mod:`nerbench_core.reporting.report`."""
import sys

from .reporting.report import main

if __name__ == "__main__":
    sys.exit(main())
