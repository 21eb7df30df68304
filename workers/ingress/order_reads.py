"""Bulk re-reads for sf-cdc: concurrent reads of single Orders become one SOQL query per batch.

The lanes of the subscriber each ask for one Order (with its lines) when a rule needs the record;
``BulkOrderReader`` gathers the ids asked for into ``get_orders_with_items`` calls (at most 200 ids
per query) with the fleet's ``adapters.coalescer.Coalescer``. When idle, no timer: a request
waits for nothing but one event-loop turn (so the lanes woken by the same CometD batch join it)
when a read slot is free; while ``max_concurrent`` reads are running, requests gather for the next
one, so under load a batch grows by itself with the arrival rate times the read's round trip
("smart batching"). While reads are asked for at ``busy_rate`` or more (per second, over the last
second: a burst of approvals), a query also waits up to ``busy_linger_s`` from its oldest read
before it leaves (``ByRate``; sooner once 200 ids wait), which gathers every lane's read into it; a
lone change never waits. So reads cost far less than one API call per change under load without
adding latency when idle. Two slots, not one, so one slow query (a huge order) does not hold every
lane. Owns only the gathering; must not apply rules. A failed read fails every caller of that
batch, each with its own exception (each retries its own change).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from adapters.coalescer import ByRate, Coalescer
from adapters.salesforce.port import BULK_READ_LIMIT, OrderWithItems

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
        self._clock = clock
        self._reads: Coalescer[str, Read] = Coalescer(
            self._read_batch,
            max_items=max(1, max_ids),
            max_in_flight=max(1, max_concurrent),
            linger=ByRate(busy_s=busy_linger_s, busy_rate=busy_rate),
            clock=monotonic,
            name="sf-cdc-bulk-read",
        )
        #: ids read (distinct per query), for metrics and tests
        self.ids_read = 0

    @property
    def calls(self) -> int:
        """Bulk reads made (one per query sent)."""
        return self._reads.calls

    async def read(self, order_id: str) -> Read:
        """The Order ``order_id`` with its lines as Salesforce holds it now (None: no such order).
        Raises what the port raised for the batch this read was part of."""
        return await self._reads.submit(order_id)

    def rate(self) -> float:
        """Reads asked for per second, over the last second."""
        return self._reads.rate()

    async def _read_batch(self, order_ids: list[str]) -> list[Read]:
        ids = list(dict.fromkeys(order_ids))  # two lanes asking for one order: one id in the query
        read_at = self._clock()
        self.ids_read += len(ids)
        by_id = {r.order.id: r for r in await self._fetch(ids)}
        return [(_match(by_id, order_id), read_at) for order_id in order_ids]


def _match(by_id: dict[str, OrderWithItems], order_id: str) -> OrderWithItems | None:
    """The record read for ``order_id``: by exact id (change events and SOQL both use 18-character
    ids); a 15-character id matches the 18-character id it is the case-sensitive prefix of."""
    found = by_id.get(order_id)
    if found is None and len(order_id) == 15:
        found = next((r for i, r in by_id.items() if i[:15] == order_id), None)
    return found
