"""sf-cdc's bulk re-reads: concurrent reads share SOQL queries, each caller gets its own order (or None),
and a failed query fails exactly the callers that were in it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from adapters.salesforce import FakeSalesforce, OrderWithItems
from events.errors import UpstreamUnavailable
from workers.ingress.order_reads import BulkOrderReader


def org(*ids: str) -> FakeSalesforce:
    sf = FakeSalesforce()
    for order_id in ids:
        sf.add_record("Order", {"Id": order_id, "Status": "Approved"})
        sf.add_record("OrderItem", {"Id": "802" + order_id[3:], "OrderId": order_id, "Quantity": 1})
    return sf


async def test_reads_asked_for_together_cost_one_query_and_each_gets_its_own_order() -> None:
    # ids that share their first 15 characters must never be confused (exact 18-character match)
    ids = [f"8015g00000001{n:03d}AA" for n in range(100, 110)] + ["8015g00000001100AB"]
    sf = org(*ids)
    reader = BulkOrderReader(sf.get_orders_with_items)

    reads = await asyncio.gather(*(reader.read(i) for i in ids))

    assert [r.order.id for r, _ in reads if r is not None] == ids
    assert all(r is not None and [item.order_id for item in r.items] == [r.order.id] for r, _ in reads)
    assert sf.bulk_reads == [ids] and reader.calls == 1


async def test_an_order_that_does_not_exist_reads_as_none() -> None:
    sf = org("8015g00000001001AA")
    reader = BulkOrderReader(sf.get_orders_with_items)

    (found, _), (missing, _) = await asyncio.gather(
        reader.read("8015g00000001001AA"), reader.read("8015g00000009999AA")
    )

    assert found is not None and missing is None


async def test_requests_arriving_while_the_slots_are_busy_gather_for_the_next_query() -> None:
    ids = [f"8015g00000002{n:03d}AA" for n in range(20)]
    gate = asyncio.Event()
    calls: list[list[str]] = []
    sf = org(*ids)

    async def slow(order_ids: Sequence[str]) -> list[OrderWithItems]:
        calls.append(list(order_ids))
        await gate.wait()
        return await sf.get_orders_with_items(order_ids)

    reader = BulkOrderReader(slow, max_concurrent=1)
    first = asyncio.create_task(reader.read(ids[0]))
    await asyncio.sleep(0.01)
    rest = [asyncio.create_task(reader.read(i)) for i in ids[1:]]
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(first, *rest)

    assert calls == [ids[:1], ids[1:]]


async def test_a_failed_query_fails_its_callers_and_the_next_read_works() -> None:
    sf = org("8015g00000003001AA")
    sf.fail_next_with(UpstreamUnavailable("503", upstream="salesforce"))
    reader = BulkOrderReader(sf.get_orders_with_items)

    with pytest.raises(UpstreamUnavailable):
        await reader.read("8015g00000003001AA")
    found, _ = await reader.read("8015g00000003001AA")

    assert found is not None


async def test_more_than_one_query_worth_of_ids_is_split() -> None:
    ids = [f"8015g0000004{n:04d}AA" for n in range(5)]
    sf = org(*ids)
    reader = BulkOrderReader(sf.get_orders_with_items, max_ids=2)

    await asyncio.gather(*(reader.read(i) for i in ids))

    assert sorted(len(c) for c in sf.bulk_reads) == [1, 2, 2]


async def test_under_a_burst_a_query_waits_briefly_so_reads_asked_apart_share_it() -> None:
    ids = [f"8015g00000005{n:03d}AA" for n in range(8)]
    sf = org(*ids)
    reader = BulkOrderReader(sf.get_orders_with_items, busy_rate=5, busy_linger_s=0.1)
    await asyncio.gather(*(reader.read(i) for i in ids[:5]))  # five reads in the last second: busy

    later = []
    for order_id in ids[5:]:
        later.append(asyncio.create_task(reader.read(order_id)))
        await asyncio.sleep(0.02)
    await asyncio.gather(*later)

    assert sf.bulk_reads[-1] == ids[5:] and reader.calls == 2


async def test_when_quiet_a_read_does_not_wait() -> None:
    sf = org("8015g00000006001AA", "8015g00000006002AA")
    reader = BulkOrderReader(sf.get_orders_with_items, busy_rate=5, busy_linger_s=10.0)

    await asyncio.wait_for(reader.read("8015g00000006001AA"), 1.0)
    await asyncio.wait_for(reader.read("8015g00000006002AA"), 1.0)

    assert reader.calls == 2
