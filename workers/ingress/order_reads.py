"""Bulk re-reads for sf-cdc: concurrent reads of single Orders become one SOQL query per batch.

The lanes of the subscriber each ask for one Order (with its lines) when a rule needs the record;
``BulkOrderReader`` gathers the ids asked for into ``get_orders_with_items`` calls (at most 200 ids
per query). When idle, no timer: a request waits for nothing but one event-loop turn (so the lanes
woken by the same CometD batch join it) when a read slot is free; while ``max_concurrent`` reads are running,
requests gather for the next one, so under load a batch grows by itself with the arrival rate
times the read's round trip ("smart batching"). While reads are asked for at ``busy_rate`` or more
(per second, over the last second: a burst of approvals), a query also waits ``busy_linger_s``
before it leaves, which gathers every lane's read into it; a lone change never waits. So reads
cost far less than one API call per change under load without adding latency when idle. Two
slots, not one, so one slow query (a huge order) does not hold every lane. Owns only the
gathering; must not apply rules. A failed read fails every caller of that batch (each retries
its own change).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from adapters.salesforce.port import BULK_READ_LIMIT, OrderWithItems
from workers.arrival_rate import ArrivalRate

Fetch = Callable[[Sequence[str]], Awaitable[list[OrderWithItems]]]
#: the answer to one read: the record (None when the order does not exist) and when it was read
Read = tuple[OrderWithItems | None, datetime]


class BulkOrderReader:
    def __init__(
        self,
        fetch: Fetch,
        *,
        max_ids: int = BULK_READ_LIMIT,
        max_concurrent: int = 2,
        busy_rate: float = 20.0,
        busy_linger_s: float = 0.02,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._max = max(1, max_ids)
        self._slots = max(1, max_concurrent)
        self._clock = clock
        self._waiting: dict[str, list[asyncio.Future[Read]]] = {}
        self._running = 0
        self._starting = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._busy_rate = busy_rate
        self._busy_linger_s = busy_linger_s
        self._asked = ArrivalRate(clock=monotonic)  # reads asked for per second, over the last second
        #: bulk reads made (one per query sent), and ids read: for metrics and tests
        self.calls = 0
        self.ids_read = 0

    async def read(self, order_id: str) -> Read:
        """The Order ``order_id`` with its lines as Salesforce holds it now (None: no such order).
        Raises what the port raised for the batch this read was part of."""
        future: asyncio.Future[Read] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(order_id, []).append(future)
        self._asked.note()
        self._start()
        return await future

    def rate(self) -> float:
        """Reads asked for per second, over the last second."""
        return self._asked.per_second()

    def _start(self) -> None:
        if self._waiting and not self._starting and self._running < self._slots:
            self._starting = True
            task = asyncio.create_task(self._batch(), name="sf-cdc-bulk-read")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _batch(self) -> None:
        await asyncio.sleep(0)  # one loop turn: lanes woken by the same delivery batch join in
        if self.rate() >= self._busy_rate and len(self._waiting) < self._max:
            await asyncio.sleep(self._busy_linger_s)  # a burst: let the other lanes' reads join
        self._starting = False
        ids = list(self._waiting)[: self._max]
        futures = {order_id: self._waiting.pop(order_id) for order_id in ids}
        self._running += 1
        self._start()  # more than one query's worth waiting and a slot free: the next starts now
        read_at = self._clock()
        try:
            self.calls += 1
            self.ids_read += len(ids)
            found = await self._fetch(ids)
        except Exception as exc:  # every caller of this batch sees the error and retries its change
            _settle(futures, exc)
        else:
            by_id = {r.order.id: r for r in found}
            _settle(futures, {order_id: (_match(by_id, order_id), read_at) for order_id in ids})
        finally:
            self._running -= 1
            self._start()


def _match(by_id: dict[str, OrderWithItems], order_id: str) -> OrderWithItems | None:
    """The record read for ``order_id``: by exact id (change events and SOQL both use 18-character
    ids); a 15-character id matches the 18-character id it is the case-sensitive prefix of."""
    found = by_id.get(order_id)
    if found is None and len(order_id) == 15:
        found = next((r for i, r in by_id.items() if i[:15] == order_id), None)
    return found


def _settle(futures: dict[str, list[asyncio.Future[Read]]], outcome: Exception | dict[str, Read]) -> None:
    for order_id, waiting in futures.items():
        for future in waiting:
            if future.done():  # the caller was cancelled meanwhile (shutdown): nobody to tell
                continue
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome[order_id])
