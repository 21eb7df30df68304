"""The batching window: gathers the batches of several partition tasks, across orders, into one writer run.

The runtime hands each partition's consecutive records to the sf-writer as one batch, one partition
at a time per task; partitions run concurrently. Their batches arriving within the window (or until
``max_records`` are waiting) are written together, so four partitions of 50 records cost one
sObject Collections call, not four. Owns only the gathering; must not decide anything about records.

How long a window stays open, counted from the first command waiting in it (bounded: no command
waits longer than the window plus the run in flight before it):

* ``linger_s`` (5 ms) while commands arrive slowly. One order's commands (its Order and its lines,
  published together by the saga) land within a few ms, so each order still costs one call, and an
  activation is not held back for orders that are not coming.
* ``busy_linger_s`` (100 ms) while commands arrive at ``busy_rate`` or more (per second, over the
  last second). At that rate the longer window gathers, on average, at least ``busy_rate *
  busy_linger_s`` (two) more commands from other orders into the same call: calls per order fall
  well below one exactly when there are orders to share a call with, and a lone order never pays
  the longer wait. At a sustained 4 orders/s (12 commands/s) the window stays short: batching there
  would cost every activation 100 ms to save a third of a call.

Order: a partition task awaits its batch's outcomes before it submits the next, and runs are
serialised, so two commands of one record (one key → one partition) never travel in concurrent
calls. A submitter cancelled meanwhile (shutdown, revocation) does not cancel the run: the others
still get their outcomes, and the cancelled one's records stay uncommitted and are written again
on redelivery (idempotent writes).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from adapters.salesforce.port import COLLECTION_LIMIT
from workers.arrival_rate import ArrivalRate
from workers.sf_writer.writer import Outcome, Pending, SalesforceWriter


class BatchWindow:
    def __init__(
        self,
        writer: SalesforceWriter,
        *,
        linger_s: float = 0.005,
        busy_linger_s: float = 0.1,
        busy_rate: float = 20.0,
        max_records: int = COLLECTION_LIMIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.writer = writer
        self._linger_s = linger_s
        self._busy_linger_s = max(busy_linger_s, linger_s)
        self._busy_rate = busy_rate
        self._max = max_records
        self._clock = clock
        self._queue: list[tuple[list[Pending], asyncio.Future[list[Outcome]]]] = []
        self._queued = 0
        self._opened_at = 0.0  # when the first command of the open window arrived
        self._arrivals = ArrivalRate(clock=clock)  # commands per second, over the last second
        self._full = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        #: writer runs made (one per window), for metrics and tests
        self.runs = 0

    async def write(self, items: Sequence[Pending]) -> list[Outcome]:
        if not items:
            return []
        future: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
        if not self._queue:
            self._opened_at = self._clock()
        self._queue.append((list(items), future))
        self._queued += len(items)
        self._arrivals.note(len(items))
        if self._queued >= self._max:
            self._full.set()
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name="sf-writer-window")
        # shield: a cancelled submitter must not cancel the shared run or its future
        return await asyncio.shield(future)

    def rate(self) -> float:
        """Commands per second that arrived over the last second."""
        return self._arrivals.per_second()

    def linger(self) -> float:
        """How long the open window waits for more commands (from its first one)."""
        return self._busy_linger_s if self.rate() >= self._busy_rate else self._linger_s

    async def _run(self) -> None:
        while self._queue:
            if not self._full.is_set():
                remaining = self._opened_at + self.linger() - self._clock()
                if remaining > 0:
                    try:
                        await asyncio.wait_for(self._full.wait(), remaining)
                    except TimeoutError:
                        pass
            self._full.clear()
            taken, self._queue, self._queued = self._queue, [], 0
            items = [item for batch, _ in taken for item in batch]
            self.runs += 1
            try:
                outcomes: list[Outcome] = await self.writer.write(items)
            except Exception as exc:  # a bug in the writer: every command fails (retryable), none is lost
                outcomes = [exc] * len(items)
            start = 0
            for batch, future in taken:
                if not future.done():
                    future.set_result(outcomes[start : start + len(batch)])
                start += len(batch)
