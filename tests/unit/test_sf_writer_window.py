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


async def test_a_quiet_window_flushes_after_the_short_linger() -> None:
    """Commands arriving slowly (a lone order) wait only ``linger_s``: one call each."""
    fake = FakeSalesforce()
    governor = BudgetGovernor(low_priority_share=0.8, usage=fake.api_usage)
    window = BatchWindow(SalesforceWriter(fake, governor), linger_s=0.01, busy_linger_s=5.0, busy_rate=1000)
    first = asyncio.create_task(window.write(batch(0, 1, fake)))
    await asyncio.sleep(0.1)
    second = asyncio.create_task(window.write(batch(1, 1, fake)))

    await asyncio.wait_for(asyncio.gather(first, second), 2.0)

    assert window.runs == 2 and [len(c) for c in fake.collection_calls] == [1, 1]


async def test_a_busy_window_gathers_several_orders_into_one_call() -> None:
    """At ``busy_rate`` commands/s or more the window stays open ``busy_linger_s`` from its first
    command, so commands arriving apart share one call."""
    fake = FakeSalesforce()
    governor = BudgetGovernor(low_priority_share=0.8, usage=fake.api_usage)
    window = BatchWindow(SalesforceWriter(fake, governor), linger_s=0.01, busy_linger_s=0.3, busy_rate=10)
    await window.write(batch(0, 20, fake))  # 20 commands in the last second: busy
    later = [batch(p, 1, fake) for p in (1, 2, 3)]

    tasks = []
    for pending in later:
        tasks.append(asyncio.create_task(window.write(pending)))
        await asyncio.sleep(0.03)
    await asyncio.wait_for(asyncio.gather(*tasks), 2.0)

    assert window.runs == 2 and [len(c) for c in fake.collection_calls] == [20, 3]


async def test_the_rate_counts_commands_of_the_last_second_only() -> None:
    """The window is busy while commands of the last second (written or waiting) reach ``busy_rate``."""
    now = [100.0]
    fake = FakeSalesforce()
    window = BatchWindow(
        SalesforceWriter(fake, BudgetGovernor(low_priority_share=0.8, usage=fake.api_usage)),
        linger_s=0.01,
        busy_linger_s=0.1,
        busy_rate=20,
        clock=lambda: now[0],
    )
    await window.write(batch(0, 15, fake))
    now[0] += 0.5
    await window.write(batch(1, 10, fake))
    assert window.rate() == 25 and window.linger() == 0.1
    now[0] += 0.7
    assert window.rate() == 10 and window.linger() == 0.01


def test_arrival_rate_counts_only_the_last_window() -> None:
    from adapters.coalescer import ArrivalRate

    now = [100.0]
    rate = ArrivalRate(window_s=1.0, clock=lambda: now[0])
    rate.note(3)
    now[0] += 0.5
    rate.note()
    assert rate.per_second() == 4
    now[0] += 0.6  # the first three fall out of the window
    assert rate.per_second() == 1
    now[0] += 1.0
    assert rate.per_second() == 0
