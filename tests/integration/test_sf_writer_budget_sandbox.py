"""The sf-writer's call cap and budget reading against the Salesforce sandbox over real HTTP.

Contract: a backlog of 1,000 records (five sObject Collections calls) reaches the sandbox with
never more than ``SalesforceSettings.max_concurrent_calls`` composite calls in flight at once, as
the sandbox's own request log shows (a request is in flight while it has no status yet; each is
held 150 ms by an injected latency). A low-priority write deferred near the limit stays deferred on
a reading the writer has no reason to doubt, even after the org's usage fell (it made no call, so it
cannot know); once the reading is older than ``api_usage_max_age_s`` it counts as unknown, the
write goes out, and its answer is the fresh reading.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from adapters.salesforce import HttpSalesforce, PasswordAuth
from events.fulfillment import UpdateSalesforceRecord
from sandbox.common import FaultSpec
from sandbox.salesforce import SalesforceSandbox
from workers.sf_writer import DEFERRED_CODE, BudgetGovernor, Pending, SalesforceWriter

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def sandbox() -> AsyncIterator[SalesforceSandbox]:
    world = SalesforceSandbox(cometd_timeout_ms=1000)
    runner = await world.start()
    yield world
    await runner.cleanup()


@pytest.fixture
async def salesforce(sandbox: SalesforceSandbox) -> AsyncIterator[HttpSalesforce]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as http:
        auth = PasswordAuth(http, sandbox.url, "fleet-connected-app", "sandbox-client-secret",
                            "integration@fleet.example", "sandbox-password")  # fmt: skip
        sandbox.requests.clear()
        yield HttpSalesforce(http, auth, "60.0", "fulfillment-fleet")
        sandbox.faults.clear()
        sandbox.limits.used, sandbox.limits.limit = 0, sandbox.api_daily_limit


def seed(sandbox: SalesforceSandbox, count: int) -> list[str]:
    return [o["id"] for o in sandbox.control.seed({"orders": [{"customer": "sato"}] * count})["orders"]]


def update(record_id: str, priority: str = "high", **fields: Any) -> UpdateSalesforceRecord:
    return UpdateSalesforceRecord(sobject="Order", record_id=record_id, fields=fields, priority=priority)


def in_flight_at_the_sandbox(sandbox: SalesforceSandbox) -> int:
    return sum(1 for r in sandbox.requests if r.endpoint == "composite.update" and r.status is None)


@pytest.mark.parametrize("cap", [2, 4])
async def test_the_sandbox_never_sees_more_composite_calls_at_once_than_the_cap(
    sandbox: SalesforceSandbox, salesforce: HttpSalesforce, cap: int
) -> None:
    orders = seed(sandbox, 1_000)
    sandbox.add_fault(FaultSpec(endpoint="composite.update", kind="latency", latency_ms=150))
    writer = SalesforceWriter(salesforce, BudgetGovernor(0.8, salesforce.api_usage), max_concurrent_calls=cap)
    batch = [Pending(update(o, Activation_Status__c="Activated"), (0, i)) for i, o in enumerate(orders)]

    seen: list[int] = []
    task = asyncio.create_task(writer.write(batch))
    while not task.done():
        seen.append(in_flight_at_the_sandbox(sandbox))
        await asyncio.sleep(0.005)
    outcomes = await task

    assert all(o is None for o in outcomes)
    calls = [r for r in sandbox.requests if r.endpoint == "composite.update"]
    assert len(calls) == 5 and all(r.status == 200 for r in calls)
    assert max(seen) == cap, f"in flight at the sandbox over time: {sorted(set(seen))}"
    assert writer.gate.peak == cap and writer.gate.in_flight == 0
    assert all(sandbox.store.get("Order", o)["Activation_Status__c"] == "Activated" for o in orders[::97])


async def test_a_stale_reading_stops_deferring_and_the_answer_refreshes_it(
    sandbox: SalesforceSandbox, salesforce: HttpSalesforce
) -> None:
    first, deferred = seed(sandbox, 2)
    now = [0.0]
    governor = BudgetGovernor(0.8, salesforce.api_usage, max_age_s=300.0, clock=lambda: now[0])
    writer = SalesforceWriter(salesforce, governor)
    sandbox.limits.used, sandbox.limits.limit = 12_500, 15_000  # 83 %: above the 80 % share

    assert await writer.write([Pending(update(first, Activation_Status__c="Activated"), (0, 0))]) == [None]
    low = Pending(update(deferred, "low", Description="for reference"), (0, 1))
    (outcome,) = await writer.write([low])
    assert getattr(outcome, "code", None) == DEFERRED_CODE

    sandbox.limits.used = 1_000  # the rolling 24 h window moved on; this writer has not been answered since
    now[0] += 299.0
    (outcome,) = await writer.write([low])
    assert getattr(outcome, "code", None) == DEFERRED_CODE, "a 299 s old reading still counts"
    assert not any(deferred in r.body for r in sandbox.requests), "deferred writes never reach Salesforce"

    now[0] += 2.0
    assert await writer.write([low]) == [None]
    assert sandbox.store.get("Order", deferred)["Description"] == "for reference"
    assert salesforce.api_usage() == (1_001, 15_000) and governor.share_used() == pytest.approx(1_001 / 15_000)
    assert sum(deferred in r.body for r in sandbox.requests) == 1
