"""The batching window: concurrent partition batches share one writer run; a cancelled submitter
does not cancel the run for the others."""

from __future__ import annotations

import asyncio

from adapters.salesforce import FakeSalesforce
from events.fulfillment import UpdateSalesforceRecord
from sandbox import demo_data
from workers.sf_writer import BatchWindow, BudgetGovernor, Pending, SalesforceWriter


def window_over(fake: FakeSalesforce, linger_s: float = 0.02) -> BatchWindow:
    governor = BudgetGovernor(low_priority_share=0.8, usage=fake.api_usage)
    return BatchWindow(SalesforceWriter(fake, governor), linger_s=linger_s)


def batch(partition: int, count: int, fake: FakeSalesforce) -> list[Pending]:
    out = []
    for i in range(count):
        record_id = demo_data.sf_id("801", partition * 1000 + i)
        fake.add_record("Order", {"Id": record_id})
        out.append(
            Pending(
                UpdateSalesforceRecord(sobject="Order", record_id=record_id, fields={"Status": "X"}), (partition, i)
            )
        )
    return out


async def test_four_partitions_of_fifty_cost_one_call() -> None:
    fake = FakeSalesforce()
    window = window_over(fake)
    batches = [batch(p, 50, fake) for p in range(4)]

    results = await asyncio.gather(*(window.write(b) for b in batches))

    assert [len(r) for r in results] == [50] * 4 and all(o is None for r in results for o in r)
    assert window.runs == 1 and [len(c) for c in fake.collection_calls] == [200]


async def test_a_full_window_does_not_wait_for_the_linger() -> None:
    fake = FakeSalesforce()
    window = window_over(fake, linger_s=30.0)

    outcomes = await asyncio.wait_for(window.write(batch(0, 200, fake)), 5.0)

    assert outcomes == [None] * 200


async def test_a_cancelled_submitter_leaves_the_others_outcomes_intact() -> None:
    fake = FakeSalesforce()
    window = window_over(fake, linger_s=0.05)
    first = asyncio.create_task(window.write(batch(0, 3, fake)))
    second = asyncio.create_task(window.write(batch(1, 3, fake)))
    await asyncio.sleep(0)
    first.cancel()

    assert await second == [None] * 3
    assert window.runs == 1
