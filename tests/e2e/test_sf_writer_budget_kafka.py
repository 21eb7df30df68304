"""Scenario: the API budget governor acting, through Kafka, the real ``Worker`` and ``HttpSalesforce`` on the sandbox.

Contract: with the sandbox's ``Sforce-Limit-Info`` at 83 % of the daily limit (above the 80 %
low-priority share), the saga's success write-back (``writeback.fulfilled``: the Order's activation,
high; the OrderItem's WHMCS service id, low) is half written: the Order is Activated while the
OrderItem's write is deferred (no composite call carries it; ``fleet_sf_writer_deferrals_total
{priority="low"}`` on the worker's /metrics counts it) and moves to the group's retry tier. Once the
org's usage is back under the share (seen in the answer to the next high-priority write), the
deferred write comes back from its tier and is written, once, and nothing is dead-lettered. The
worker's /metrics also shows the usage last seen and the calls in flight.

Reuses the harness of ``test_sf_writer_kafka`` (unique topic and group per run).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from adapters.http import build_client
from adapters.kafka import AiokafkaProducer, durable_producer
from adapters.salesforce import HttpSalesforce, PasswordAuth
from events.base import to_envelope
from events.fulfillment import UpdateSalesforceRecord
from sandbox.salesforce import SalesforceSandbox
from tests.e2e.test_sf_writer_kafka import World
from tests.support import eventually
from workers.fulfillment.model import ErrorCode
from workers.fulfillment.plan import PlanLine
from workers.fulfillment.writeback import errored, fulfilled
from workers.runtime.consumer import build_consumer, partition_counter
from workers.runtime.health import HealthServer
from workers.runtime.route import Route
from workers.runtime.worker import Worker
from workers.sf_writer.route import bind_sf_writer

pytestmark = pytest.mark.e2e

#: the deferred record waits at least this long on the first tier (longer than its 1.2 s deferral)
TIER_DELAYS_MS = (2_000, 6_000)


class BudgetWorld(World):
    """The sf-writer route with its metrics in the worker's own registry, served on /metrics."""

    def __init__(self, env: dict[str, str], sandbox: SalesforceSandbox) -> None:
        super().__init__(env, sandbox)
        self.registry = CollectorRegistry(auto_describe=True)
        self.metrics_url: str | None = None

    async def run_worker(self, stop: asyncio.Event) -> None:
        http = build_client(2.0, 5.0, 20)
        aioproducer = durable_producer(self.env["KAFKA_BOOTSTRAP"], f"e2e-worker-{self.group}")
        await aioproducer.start()
        try:
            auth = PasswordAuth(http, self.sandbox.url, "fleet-connected-app", "sandbox-client-secret",
                                "integration@fleet.example", "sandbox-password")  # fmt: skip
            salesforce = HttpSalesforce(http, auth, "60.0", self.settings.salesforce.call_options_client)
            handlers = bind_sf_writer(salesforce=salesforce, settings=self.settings)  # the Worker serves its metrics
            route = Route(name="sf-writer", group=self.group, topics=(self.topic,), handlers=handlers,
                          retry_delays_ms=TIER_DELAYS_MS)  # fmt: skip
            worker = Worker(route, build_consumer(self.settings.kafka, self.group), AiokafkaProducer(aioproducer),
                            self.settings.runtime, partitions_for=partition_counter(aioproducer),
                            registry=self.registry)  # fmt: skip
            async with HealthServer(worker, "127.0.0.1", 0) as health:
                self.metrics_url = f"http://127.0.0.1:{health.port}/metrics"
                await worker.run(stop)
        finally:
            await aioproducer.stop()
            await http.aclose()

    async def set_api_usage(self, used: int, limit: int = 15_000) -> None:
        async with httpx.AsyncClient() as client:
            answer = await client.post(self.sandbox.url + "/_sandbox/api-usage", json={"used": used, "limit": limit})
            assert answer.status_code == 200, answer.text

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        assert self.metrics_url is not None
        async with httpx.AsyncClient() as client:
            text = (await client.get(self.metrics_url)).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def bodies_with(self, record_id: str) -> list[str]:
        return [r.body for r in self.sandbox.requests if r.endpoint == "composite.update" and record_id in r.body]

    def seed_order_with_line(self) -> tuple[str, str]:
        created = self.sandbox.control.seed({"orders": [{"customer": "suzuki", "lines": ["INT-1G-GOLD"]}]})
        order = created["orders"][0]
        return order["id"], order["items"][0]["id"]


DEFERRALS_LOW = ("fleet_sf_writer_deferrals_total", (("priority", "low"),))
DEFERRALS_HIGH = ("fleet_sf_writer_deferrals_total", (("priority", "high"),))


@pytest_asyncio.fixture(loop_scope="session")
async def world(stack_env: dict[str, str]) -> AsyncIterator[BudgetWorld]:
    sandbox = SalesforceSandbox(cometd_timeout_ms=1000)
    runner = await sandbox.start()
    try:
        w = BudgetWorld(stack_env, sandbox)
        await w.prepare()
        yield w
    finally:
        await runner.cleanup()


async def test_near_the_limit_the_informational_write_is_deferred_then_written_once_the_budget_allows(
    world: BudgetWorld,
) -> None:
    warmup = world.seed_orders(1)[0]
    order, item = world.seed_order_with_line()
    later = world.seed_orders(1)[0]
    await world.set_api_usage(12_500)  # 83 % of 15,000: low priority stops at 80 %
    producer = durable_producer(world.env["KAFKA_BOOTSTRAP"], f"e2e-saga-{world.group}", linger_ms=1)
    await producer.start()
    stop = asyncio.Event()
    task = asyncio.create_task(world.run_worker(stop))

    async def publish(commands: list[UpdateSalesforceRecord]) -> None:
        out = AiokafkaProducer(producer)
        await asyncio.gather(*(out.publish(world.topic, to_envelope(c, source="/e2e/saga")) for c in commands))

    try:
        # a high-priority error write first: its answer tells the writer where the budget stands
        await publish([errored(warmup, ErrorCode.PAYMENT_METHOD_MISSING, "add a card", revert_status=False)])
        await eventually(lambda: world.order(warmup).get("Activation_Error_Code__c"), 30, "the warm-up write")

        line = PlanLine(order_item_id=item, pid=182, billing_cycle="monthly", qty=1)
        await publish(fulfilled(order, [line], 5001, [7001]))  # the saga's own commands, priorities included

        async def deferred() -> bool:
            return (await world.metrics()).get(DEFERRALS_LOW, 0) >= 1

        await eventually(lambda: world.order(order).get("Activation_Status__c") == "Activated", 30, "the activation")
        await eventually(deferred, 10, "the low-priority write counted as deferred")
        seen = await world.metrics()
        assert world.sandbox.store.get("OrderItem", item).get("WHMCS_Service_ID__c") is None
        assert world.bodies_with(item) == [], "the deferred write never reached Salesforce"
        assert [order in b for b in world.bodies_with(order)] == [True]
        assert seen[("fleet_salesforce_api_usage_limit", ())] == 15_000
        assert seen[("fleet_salesforce_api_usage_used", ())] >= 12_500
        assert seen[DEFERRALS_HIGH] == 0

        # the rolling window moved on; the next activation's answer carries the lower usage
        await world.set_api_usage(1_000)
        await publish([errored(later, ErrorCode.FREEBIT_TIMEOUT, "retry", revert_status=True)])

        def written() -> bool:
            record = world.sandbox.store.get("OrderItem", item)
            return record is not None and record.get("WHMCS_Service_ID__c") == "7001"

        await eventually(written, 30, "the deferred write, back from its retry tier")
        after = await world.metrics()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await producer.stop()

    assert len(world.bodies_with(item)) == 1, "written once"
    assert after[("fleet_salesforce_api_usage_used", ())] < 12_000
    assert after[("fleet_sf_writer_calls_in_flight", ())] == 0
    assert after[("fleet_sf_writer_max_concurrent_calls", ())] == world.settings.salesforce.max_concurrent_calls
    assert after[("fleet_records_retried_total", (("group", world.group), ("topic", world.topic)))] >= 1
    assert await world.dead_letters() == [], "nothing dead-lettered"
