"""The batching window: gathers the batches of several partition tasks, across orders, into one writer run.

The runtime hands each partition's consecutive records to the sf-writer as one batch, one partition
at a time per task; partitions run concurrently. Their batches arriving within the window (or until
``max_records`` are waiting) are written together, so four partitions of 50 records cost one
sObject Collections call, not four. The gathering is the fleet's ``adapters.coalescer.Coalescer``
(an item: one partition's batch, weighing its record count); this module only sets its policy and
must not decide anything about records.

How long a window stays open, counted from the first command waiting in it (``ByRate``; bounded:
no command waits longer than the window plus the run in flight before it):

* ``linger_s`` (5 ms) while commands arrive slowly. One order's commands (its Order and its lines,
  published together by the saga) land within a few ms, so each order still costs one call, and an
  activation is not held back for orders that are not coming. (The one coalescer that lingers when
  quiet: what it waits for is the rest of one order, not more load.)
* ``busy_linger_s`` (100 ms) while commands arrive at ``busy_rate`` (40) or more (per second, over
  the last second). At that rate the longer window gathers, on average, at least ``busy_rate *
  busy_linger_s`` (four) more commands, about one other order's (its Order, its lines, its
  Opportunity and, for a SIM, its card): calls per order fall well below one exactly when there
  are orders to share a call with, and a lone order never pays the longer wait. At a sustained
  4 orders/s (~18 commands/s) the window stays short: batching there would cost every activation
  100 ms to save a fraction of a call. (At 20, the threshold before orders wrote their Opportunity
  and card, bench-e2e's paced orders at 4/s crossed it: p50 45 → 148 ms over the floor.)

A run takes every batch waiting, however many records (no ``max_items``): the writer splits them
into Collections calls of 200 and sends those concurrently, which one bound per run would serialise.

Order: a partition task awaits its batch's outcomes before it submits the next, and runs are
serialised (one call in flight), so two commands of one record (one key → one partition) never
travel in concurrent calls. A submitter cancelled before its run took its batch is left out of it;
one cancelled later does not cancel the run: the others still get their outcomes, and the
cancelled one's records stay uncommitted and are written again on redelivery (idempotent writes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from adapters.coalescer import ByRate, Coalescer
from adapters.salesforce.port import COLLECTION_LIMIT
from workers.sf_writer.writer import Outcome, Pending, SalesforceWriter


class BatchWindow:
    def __init__(
        self,
        writer: SalesforceWriter,
        *,
        linger_s: float = 0.005,
        busy_linger_s: float = 0.1,
        busy_rate: float = 40.0,
        max_records: int = COLLECTION_LIMIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.writer = writer
        self._policy = ByRate(
            busy_s=max(busy_linger_s, linger_s), busy_rate=busy_rate, quiet_s=linger_s, fill=max_records
        )
        self._runs: Coalescer[list[Pending], list[Outcome]] = Coalescer(
            self._run, max_items=None, weight=len, linger=self._policy, clock=clock, name="sf-writer-window"
        )

    @property
    def runs(self) -> int:
        """Writer runs made (one per window), for metrics and tests."""
        return self._runs.calls

    async def write(self, items: Sequence[Pending]) -> list[Outcome]:
        if not items:
            return []
        return await self._runs.submit(list(items))

    def rate(self) -> float:
        """Commands per second over the last second (those written, plus those waiting now)."""
        return self._runs.rate()

    def linger(self) -> float:
        """How long the open window waits for more commands (from its first one)."""
        policy = self._policy
        return policy.busy_s if self.rate() >= policy.busy_rate else policy.quiet_s

    async def _run(self, batches: list[list[Pending]]) -> list[list[Outcome]]:
        items = [item for batch in batches for item in batch]
        try:
            outcomes: list[Outcome] = await self.writer.write(items)
        except Exception as exc:  # a bug in the writer: every command fails (retryable), none is lost
            outcomes = [exc] * len(items)
        split, start = [], 0
        for batch in batches:
            split.append(outcomes[start : start + len(batch)])
            start += len(batch)
        return split
