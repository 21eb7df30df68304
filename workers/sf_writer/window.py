"""The batching window: gathers the batches of several partition tasks into one writer run.

The runtime hands each partition's consecutive records to the sf-writer as one batch, one partition
at a time per task; partitions run concurrently. Their batches arriving within ``linger_s`` (or
until ``max_records`` are waiting) are written together, so four partitions of 50 records cost one
sObject Collections call, not four. Owns only the gathering; must not decide anything about records.

Order: a partition task awaits its batch's outcomes before it submits the next, and runs are
serialised, so two commands of one record (one key → one partition) never travel in concurrent
calls. A submitter cancelled meanwhile (shutdown, revocation) does not cancel the run: the others
still get their outcomes, and the cancelled one's records stay uncommitted and are written again
on redelivery (idempotent writes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from adapters.salesforce.port import COLLECTION_LIMIT
from workers.sf_writer.writer import Outcome, Pending, SalesforceWriter


class BatchWindow:
    def __init__(
        self, writer: SalesforceWriter, *, linger_s: float = 0.01, max_records: int = COLLECTION_LIMIT
    ) -> None:
        self.writer = writer
        self._linger_s = linger_s
        self._max = max_records
        self._queue: list[tuple[list[Pending], asyncio.Future[list[Outcome]]]] = []
        self._queued = 0
        self._full = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        #: writer runs made (one per window), for metrics and tests
        self.runs = 0

    async def write(self, items: Sequence[Pending]) -> list[Outcome]:
        if not items:
            return []
        future: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
        self._queue.append((list(items), future))
        self._queued += len(items)
        if self._queued >= self._max:
            self._full.set()
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name="sf-writer-window")
        # shield: a cancelled submitter must not cancel the shared run or its future
        return await asyncio.shield(future)

    async def _run(self) -> None:
        while self._queue:
            if not self._full.is_set():
                try:
                    await asyncio.wait_for(self._full.wait(), self._linger_s)
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
