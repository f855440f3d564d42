"""Running a suite as jobs of a distributed engine: ``driver`` (the ``nerbench submit`` command, no pytest) submits
one job per case; ``jobs`` is the pytest plugin each job's (and the collection's) pytest process loads.

The names both sides share are here.
"""
COLLECT_ENV = "NERBENCH_DISTRIBUTED_COLLECT"  # collection: where the jobs plugin writes the cases
STATE_ENV = "NERBENCH_DISTRIBUTED_STATE"  # a job: where it notes the case's run key, then the records
ITEM_ENV = "NERBENCH_DISTRIBUTED_ITEM"  # a job: its case's test file and name (JSON), the only item it runs
PLUGIN = ["-p", "no:cacheprovider", "-p", "nerbench_core.distributed.jobs"]
