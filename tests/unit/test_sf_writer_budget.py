"""The sf-writer's API budget: which write-back is low priority, the cap on calls in flight, the metrics.

Contract: the saga's success write-back makes the Order's activation high priority and each
OrderItem's WHMCS service id low; error write-backs (with or without the Status revert) are high.
Above the low-priority share the low ones are deferred and counted per priority; a usage reading
older than ``max_age_s`` counts as unknown and admits again (so a writer that only defers learns
that the budget recovered). A run's chunks go out concurrently, never more than the cap at once.
The writer's metrics (API usage last seen, deferrals by priority, calls in flight) are exposed
through the registry ``bind_sf_writer`` is given.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry

from adapters.salesforce import FakeSalesforce
from adapters.salesforce.port import RecordResult, RecordUpdate
from events.errors import RejectedByUpstream
from events.fulfillment import UpdateSalesforceRecord
from sandbox import demo_data
from workers.config import SalesforceSettings, Settings
from workers.fulfillment.model import ErrorCode
from workers.fulfillment.plan import PlanLine
from workers.fulfillment.writeback import errored, fulfilled
from workers.sf_writer import DEFERRED_CODE, BudgetGovernor, Pending, SalesforceWriter
from workers.sf_writer.route import SfWriterHandler, bind_sf_writer
from workers.sf_writer.writer import Outcome

ORDER = demo_data.sf_id("801", 1)


def line(n: int) -> PlanLine:
    return PlanLine(order_item_id=demo_data.sf_id("802", n), pid=182, billing_cycle="monthly", qty=1)


def success_write_back(n_items: int = 2) -> list[UpdateSalesforceRecord]:
    return fulfilled(ORDER, [line(i) for i in range(1, n_items + 1)], 5001, [7000 + i for i in range(1, n_items + 1)])


def pending(commands: Sequence[UpdateSalesforceRecord]) -> list[Pending]:
    return [Pending(c, (0, i)) for i, c in enumerate(commands)]


def fake_with(commands: Sequence[UpdateSalesforceRecord]) -> FakeSalesforce:
    fake = FakeSalesforce()
    for c in commands:
        fake.add_record(c.sobject, {"Id": c.record_id})
    return fake


# --- the priority rule ---------------------------------------------------------------------------


def test_the_activation_is_high_priority_and_the_service_ids_recorded_for_reference_are_low() -> None:
    order, *items = success_write_back()
    assert order.sobject == "Order" and order.priority == "high"
    assert order.fields["Activation_Status__c"] == "Activated" and "WHMCS_Order_ID__c" in order.fields
    assert [(i.sobject, i.priority) for i in items] == [("OrderItem", "low"), ("OrderItem", "low")]


@pytest.mark.parametrize("revert", [True, False])
def test_error_write_backs_staff_act_on_are_high_priority(revert: bool) -> None:
    update = errored(ORDER, ErrorCode.FREEBIT_TIMEOUT, "m", revert_status=revert)
    assert update.priority == "high" and ("Status" in update.fields) is revert


async def test_near_the_budget_the_success_write_back_sends_the_order_and_defers_the_items() -> None:
    commands = success_write_back()
    fake = fake_with(commands)
    governor = BudgetGovernor(low_priority_share=0.8, usage=lambda: (12_500, 15_000))
    writer = SalesforceWriter(fake, governor)

    outcomes = await writer.write(pending(commands))

    assert outcomes[0] is None
    assert all(getattr(o, "code", None) == DEFERRED_CODE for o in outcomes[1:])
    assert [[u.record_id for u in call] for call in fake.collection_calls] == [[ORDER]]
    assert writer.stats.deferred_by_priority == {"high": 0, "low": 2}


# --- a stale reading -----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_a_reading_older_than_max_age_is_unknown_and_admits_low_priority() -> None:
    clock, usage = Clock(), [(12_500, 15_000)]
    governor = BudgetGovernor(low_priority_share=0.8, usage=lambda: usage[0], max_age_s=60.0, clock=clock)
    governor.observed()  # a call was answered now
    assert not governor.admits("low")
    clock.now += 59.0
    assert not governor.admits("low"), "still fresh: the budget is tight"
    clock.now += 2.0
    assert governor.admits("low"), "61 s without an answer: unknown, the next call tells"
    governor.observed()  # that call's answer: still tight
    assert not governor.admits("low")
    clock.now += 120.0
    usage[0] = (12_600, 15_000)  # another adapter sharing the reading was answered: fresh again
    assert not governor.admits("low")


def test_without_max_age_a_reading_never_goes_stale() -> None:
    clock = Clock()
    governor = BudgetGovernor(low_priority_share=0.8, usage=lambda: (12_500, 15_000), clock=clock)
    governor.observed()
    clock.now += 1e6
    assert not governor.admits("low") and governor.admits("high")


async def test_the_writer_marks_the_reading_fresh_after_each_answered_call() -> None:
    commands = [UpdateSalesforceRecord(sobject="Order", record_id=ORDER, fields={"Status": "X"})]
    fake = fake_with(commands)
    clock = Clock()
    governor = BudgetGovernor(low_priority_share=0.8, usage=lambda: (12_500, 15_000), max_age_s=60.0, clock=clock)
    writer = SalesforceWriter(fake, governor)
    clock.now += 3_600  # an hour since the writer last looked
    await writer.write(pending(commands))  # high: sent, answered now
    low = UpdateSalesforceRecord(sobject="Order", record_id=ORDER, fields={"Description": "d"}, priority="low")

    assert (await writer.write([Pending(low, (0, 5))]))[0] is not None, "deferred on the fresh answer"


# --- the cap on calls in flight ------------------------------------------------------------------


class Instrumented(FakeSalesforce):
    """Counts the collection calls in flight at once; each call holds until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.peak = 0
        self.release = asyncio.Event()

    async def update_records(self, updates: Sequence[RecordUpdate], all_or_none: bool = False) -> list[RecordResult]:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await self.release.wait()
            await asyncio.sleep(0.001)  # a call takes time: concurrent ones overlap
            return await super().update_records(updates, all_or_none)
        finally:
            self.in_flight -= 1


def many(fake: FakeSalesforce, count: int) -> list[Pending]:
    commands = [
        UpdateSalesforceRecord(sobject="Order", record_id=demo_data.sf_id("801", n), fields={"Status": "X"})
        for n in range(1, count + 1)
    ]
    for c in commands:
        fake.add_record("Order", {"Id": c.record_id})
    return pending(commands)


@pytest.mark.parametrize("cap", [1, 2, 4])
async def test_a_backlog_goes_out_concurrently_but_never_more_than_the_cap(cap: int) -> None:
    fake = Instrumented()
    batch = many(fake, 1_000)  # 5 chunks of 200
    writer = SalesforceWriter(fake, BudgetGovernor(0.8, fake.api_usage), max_concurrent_calls=cap)

    task = asyncio.create_task(writer.write(batch))
    for _ in range(20):
        await asyncio.sleep(0)
    assert fake.in_flight == cap and writer.gate.in_flight == cap, "the cap, reached, while calls are held"
    fake.release.set()
    outcomes = await task

    assert all(o is None for o in outcomes) and len(fake.collection_calls) == 5
    assert fake.peak == cap and writer.gate.peak == cap and writer.gate.in_flight == 0


async def test_the_halves_of_a_refused_request_go_out_concurrently_under_the_cap() -> None:
    fake = Instrumented()
    batch = many(fake, 16)
    fake.fail_next_with(RejectedByUpstream("refused", upstream="salesforce", code="INVALID_FIELD"))
    writer = SalesforceWriter(fake, BudgetGovernor(0.8, fake.api_usage), max_concurrent_calls=2)

    task = asyncio.create_task(writer.write(batch))
    for _ in range(20):
        await asyncio.sleep(0)
    assert fake.in_flight == 1, "the whole request first"
    fake.release.set()
    outcomes: list[Outcome] = await task

    assert all(o is None for o in outcomes)
    assert [len(c) for c in fake.collection_calls] == [8, 8] and fake.peak == 2


def test_the_cap_and_the_max_age_are_settings() -> None:
    sf = SalesforceSettings()
    assert sf.max_concurrent_calls == 4 and sf.api_usage_max_age_s == 300.0
    with pytest.raises(ValueError):
        SalesforceSettings(max_concurrent_calls=0)


# --- metrics -------------------------------------------------------------------------------------


async def test_usage_deferrals_and_calls_in_flight_are_exported_in_the_given_registry() -> None:
    fake = Instrumented()
    commands = success_write_back(3)
    for c in commands:
        fake.add_record(c.sobject, {"Id": c.record_id})
    usage: list[tuple[int, int] | None] = [None]
    registry = CollectorRegistry()
    settings = Settings(salesforce=SalesforceSettings(max_concurrent_calls=3))
    handler = bind_sf_writer(salesforce=fake, settings=settings, usage=lambda: usage[0])[UpdateSalesforceRecord]
    assert isinstance(handler, SfWriterHandler)
    registry.register(handler.collector)  # what the Worker running the route does
    writer = handler.window.writer

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("fleet_salesforce_api_usage_used") is None, "nothing seen yet: no made-up zero"
    assert sample("fleet_sf_writer_max_concurrent_calls") == 3.0
    usage[0] = (12_500, 15_000)
    fake.release.set()
    await writer.write(pending(commands))

    assert sample("fleet_salesforce_api_usage_used") == 12_500.0
    assert sample("fleet_salesforce_api_usage_limit") == 15_000.0
    assert sample("fleet_salesforce_api_low_priority_share") == 0.8
    assert sample("fleet_sf_writer_deferrals_total", priority="low") == 3.0
    assert sample("fleet_sf_writer_deferrals_total", priority="high") == 0.0
    assert sample("fleet_sf_writer_calls_total") == 1.0

    fake.release.clear()
    held = asyncio.create_task(writer.write(pending(commands[:1])))
    for _ in range(10):
        await asyncio.sleep(0)
    assert sample("fleet_sf_writer_calls_in_flight") == 1.0
    fake.release.set()
    await held
    assert sample("fleet_sf_writer_calls_in_flight") == 0.0


def test_the_worker_running_the_route_serves_the_writers_metrics() -> None:
    """``fleet run sf-writer`` builds its Worker without knowing the writer: the Worker registers a
    handler's ``collector`` on its own registry, so /metrics shows the writer's gauges."""
    from workers.config import RuntimeSettings
    from workers.runtime import Route, Worker
    from workers.runtime.testing import FakeConsumer, LoopbackProducer

    handlers = bind_sf_writer(salesforce=Instrumented(), settings=Settings())
    worker = Worker(Route("sf-writer", "g", ("t",), handlers), FakeConsumer(), LoopbackProducer(), RuntimeSettings())
    assert worker.registry.get_sample_value("fleet_sf_writer_max_concurrent_calls") == 4.0
