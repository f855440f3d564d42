"""python -m nerbench_core.distributed: the driver (``nerbench submit``)."""
import sys

from .driver import main

sys.exit(main())
