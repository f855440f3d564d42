"""The pytest-xdist scheduler of a benchmark run (``pytest bench -n N`` without --dist): each worker gets its share
of the cases' expected time up front, and a worker about to run out of work takes cases its partner has not started.

xdist's default (load) hands out cases by count, at least two per worker at once, whatever their length: on 2 GPUs
the seed suite took 0.72 of its one-GPU sum where 0.50 is possible. Here the longest-processing-time-first split of
scheduling.py decides the shares (14B and 0.5B against the rest), and work stealing corrects them where times turn
out other than expected.

An xdist worker runs a case only once it holds the next one or the order to stop: a worker whose share is one case,
or that is down to its last, is given cases worth taking from another's queue, or else told to stop (then it runs
that case and ends). Built on xdist's WorkStealingScheduling (its queues, stealing protocol and crash handling);
what differs is which cases go where and when taking some is worth it.
"""
from __future__ import annotations

import time
from typing import Callable

from xdist.scheduler.worksteal import MIN_PENDING, WorkStealingScheduling

from .scheduling import longest_first, lpt_partition, worth_taking


class ExpectedTimeScheduling(WorkStealingScheduling):
    """``expected``: a test's node id to its expected seconds (0 for a test that is no benchmark case)."""

    clock: Callable[[], float] = staticmethod(time.monotonic)

    def __init__(self, config, log=None, expected: Callable[[str], float] = lambda nodeid: 0.0):
        super().__init__(config, log)
        self.expected = expected
        self.seconds: list[float] = []  # by index into the collection
        self.since: dict = {}  # node -> when the case it runs now started (about: when it last finished one)

    def schedule(self) -> None:
        """The first call: each worker's share of the expected time, longest first (later calls, after a worker
        was added, only rebalance)."""
        assert self.collection_is_completed
        if self.collection is not None:
            self.check_schedule()
            return
        if not self._check_nodes_have_same_collection():
            self.log("**Different tests collected, aborting run**")
            return
        self.collection = next(iter(self.node2collection.values()))
        if not self.collection:
            return
        self.seconds = [float(self.expected(nodeid)) for nodeid in self.collection]
        nodes = self.nodes
        shares = lpt_partition(list(enumerate(self.seconds)), len(nodes))  # the collection is longest first already
        for node, share in zip(nodes, shares):
            self._send(node, share)
        self.check_schedule()

    def mark_test_complete(self, node, item_index: int, duration: float | None = None) -> None:
        self.since[node] = self.clock()  # its next case starts now (if it holds one more after it)
        super().mark_test_complete(node, item_index, duration)

    def check_schedule(self) -> None:
        """Workers short of work (fewer than two cases: the one they hold cannot start yet) get the cases given
        back (a crashed worker's, a steal's), else cases worth taking from another's queue, else the order to
        stop."""
        if self.collection is None:
            return
        idle = self._idle()
        if idle and self.pending:
            self._hand_out(idle)
            idle = self._idle()
        if not idle or self.steal_requested_from_node is not None:  # one steal at a time: wait for its answer
            return
        thief = min(idle, key=self.remaining)
        for busy in sorted((n for n in self._up() if n is not thief), key=self.remaining, reverse=True):
            queued = [(i, self.seconds[i]) for i in self.node2pending[busy][MIN_PENDING:]]  # held but not started
            taken = worth_taking(self.remaining(thief), self.remaining(busy), queued)
            if taken:
                busy.send_steal(taken)
                self.steal_requested_from_node = busy
                return
        for node in idle:  # nothing worth taking anywhere: run what they hold and end
            node.shutdown()

    def remaining(self, node) -> float:
        """Expected seconds of work left on a worker: its queued cases, and what is left of the one it runs (a
        worker holding one case has not started it)."""
        pending = self.node2pending.get(node, [])
        if not pending:
            return 0.0
        first = self.seconds[pending[0]]
        if len(pending) >= MIN_PENDING:
            first = max(first - (self.clock() - self.since.get(node, self.clock())), 0.0)
        return first + sum(self.seconds[i] for i in pending[1:])

    def _up(self) -> list:
        return [node for node in self.node2pending if not node.shutting_down]

    def _idle(self) -> list:
        return [node for node in self._up() if len(self.node2pending[node]) < MIN_PENDING]

    def _hand_out(self, idle: list) -> None:
        """The cases given back, longest first, each to the idle worker with the least work left."""
        jobs = longest_first([(i, self.seconds[i]) for i in self.pending])
        self.pending.clear()
        for node, share in zip(idle, lpt_partition(jobs, len(idle), [self.remaining(n) for n in idle])):
            self._send(node, share)

    def _send(self, node, indices: list[int]) -> None:
        if not indices:
            return
        if len(self.node2pending[node]) < MIN_PENDING:  # its held case starts once it holds the next one: now
            self.since[node] = self.clock()
        self.node2pending[node].extend(indices)
        node.send_runtest_some(indices)
