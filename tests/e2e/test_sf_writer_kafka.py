"""Scenario: the sf-writer (the real runtime ``Worker`` in batch mode) between Kafka and the Salesforce sandbox.

Contract: ``UpdateSalesforceRecord`` commands produced to a unique 4-partition topic end up as field
values in the sandbox org, every one of them, with far fewer ``PATCH /composite/sobjects`` calls than
commands (coalesced per record, up to 200 records a call, batches of the four partitions gathered
into one call); a record whose first write hits a lock is retried and written too; one whose write
a validation rule refuses lands in the group's dead-letter topic, alone. Offsets are committed
past every command once the worker is done.

A unique consumer group, topic and order ids per run, so suites share one stack.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from adapters.http import build_client
from adapters.kafka import AiokafkaProducer, durable_producer, ensure_topics
from adapters.salesforce import HttpSalesforce, PasswordAuth
from events.base import to_envelope
from events.fulfillment import UpdateSalesforceRecord
from events.topics import DAY_MS, TopicSpec, dlq_topic, group_topics
from sandbox.salesforce import SalesforceSandbox
from tests.support import eventually
from workers.config import KafkaSettings, RuntimeSettings, Settings
from workers.runtime.consumer import build_consumer, partition_counter
from workers.runtime.route import Route
from workers.runtime.worker import Worker
from workers.sf_writer.route import bind_sf_writer

pytestmark = pytest.mark.e2e

PARTITIONS = 4
ORDERS = 200


class World:
    def __init__(self, env: dict[str, str], sandbox: SalesforceSandbox) -> None:
        tag = uuid.uuid4().hex[:8]
        self.env, self.sandbox = env, sandbox
        self.topic = f"e2e.{tag}.sf.writeback.v1"
        self.group = f"fleet.sf-writer.e2e-{tag}"
        self.settings = Settings(
            kafka=KafkaSettings(bootstrap=env["KAFKA_BOOTSTRAP"], session_timeout_ms=6_000),
            runtime=RuntimeSettings(retry_tier_delays_ms=[300, 1000], in_place_attempts=2, backoff_initial_s=0.05,
                                    backoff_max_s=0.2, shutdown_grace_s=3.0),
        )  # fmt: skip

    async def prepare(self) -> None:
        specs = [TopicSpec(self.topic, PARTITIONS, DAY_MS), *group_topics(self.group, PARTITIONS)]
        await ensure_topics(self.env["KAFKA_BOOTSTRAP"], specs)

    def seed_orders(self, count: int) -> list[str]:
        created = self.sandbox.control.seed({"orders": [{"customer": "suzuki"}] * count})
        return [o["id"] for o in created["orders"]]

    async def produce(self, commands: list[UpdateSalesforceRecord]) -> None:
        aioproducer = durable_producer(self.env["KAFKA_BOOTSTRAP"], f"e2e-{self.group}", linger_ms=5)
        await aioproducer.start()
        try:
            producer = AiokafkaProducer(aioproducer)
            await asyncio.gather(*(producer.publish(self.topic, to_envelope(c, source="/e2e/saga")) for c in commands))
        finally:
            await aioproducer.stop()

    async def run_worker(self, stop: asyncio.Event) -> None:
        """The sf-writer route as the composition root builds it."""
        http = build_client(2.0, 5.0, 20)
        aioproducer = durable_producer(self.env["KAFKA_BOOTSTRAP"], f"e2e-worker-{self.group}")
        await aioproducer.start()
        try:
            auth = PasswordAuth(http, self.sandbox.url, "fleet-connected-app", "sandbox-client-secret",
                                "integration@fleet.example", "sandbox-password")  # fmt: skip
            salesforce = HttpSalesforce(http, auth, "60.0", self.settings.salesforce.call_options_client)
            route = Route(name="sf-writer", group=self.group, topics=(self.topic,),
                          handlers=bind_sf_writer(salesforce=salesforce, settings=self.settings),
                          retry_delays_ms=(300, 1000))  # fmt: skip
            worker = Worker(route, build_consumer(self.settings.kafka, self.group), AiokafkaProducer(aioproducer),
                            self.settings.runtime, partitions_for=partition_counter(aioproducer))  # fmt: skip
            self.worker = worker
            await worker.run(stop)
        finally:
            await aioproducer.stop()
            await http.aclose()

    def composite_calls(self) -> int:
        return sum(1 for r in self.sandbox.requests if r.endpoint == "composite.update")

    def order(self, order_id: str) -> dict[str, Any]:
        record = self.sandbox.store.get("Order", order_id)
        assert record is not None
        return record

    async def dead_letters(self) -> list[Any]:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.env["KAFKA_BOOTSTRAP"], enable_auto_commit=False)
        await consumer.start()
        try:
            dlq = dlq_topic(self.group)
            partitions = [TopicPartition(dlq, p) for p in range(PARTITIONS)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            batches = await consumer.getmany(timeout_ms=2000)
            return [r for records in batches.values() for r in records]
        finally:
            await consumer.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def world(stack_env: dict[str, str]) -> AsyncIterator[World]:
    sandbox = SalesforceSandbox(cometd_timeout_ms=1000)
    runner = await sandbox.start()
    try:
        w = World(stack_env, sandbox)
        await w.prepare()
        yield w
    finally:
        await runner.cleanup()


async def test_a_backlog_of_commands_is_written_with_far_fewer_calls(world: World) -> None:
    orders = world.seed_orders(ORDERS)
    locked, refused = orders[3], orders[11]
    world.sandbox.record_faults.add(locked, "UNABLE_TO_LOCK_ROW")
    # a validation rule refuses every write of this record (one-shot faults would pass the isolation)
    world.sandbox.record_faults.add(refused, "FIELD_CUSTOM_VALIDATION_EXCEPTION", times=10)
    commands: list[UpdateSalesforceRecord] = []
    for i, order_id in enumerate(orders):  # the saga's write-back sequence, three commands per order
        commands += [
            UpdateSalesforceRecord(sobject="Order", record_id=order_id, fields={"Activation_Status__c": "Activating"}),
            UpdateSalesforceRecord(sobject="Order", record_id=order_id, fields={"WHMCS_Order_ID__c": str(70_000 + i)}),
            UpdateSalesforceRecord(sobject="Order", record_id=order_id, fields={"Activation_Status__c": "Activated"}),
        ]
    await world.produce(commands)
    world.sandbox.requests.clear()

    stop = asyncio.Event()
    task = asyncio.create_task(world.run_worker(stop))
    try:
        written = [o for o in orders if o != refused]

        async def all_written() -> bool:
            return all(world.order(o).get("Activation_Status__c") == "Activated" for o in written)

        await eventually(all_written, 60, "every order written")

        async def three_dead_letters() -> list[Any]:  # one per command, each refused on its own
            found = await world.dead_letters()
            return found if len(found) >= 3 else []

        dead = await eventually(three_dead_letters, 20, "the refused order's three dead letters")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)

    calls = world.composite_calls()
    assert calls <= len(commands) // 20, f"{calls} composite calls for {len(commands)} commands"
    assert world.order(locked)["WHMCS_Order_ID__c"] == "70003"
    assert world.order(refused).get("Activation_Status__c") != "Activated"
    assert {r.key.decode() for r in dead} == {refused}, "only the refused record's commands are dead letters"
    assert len(dead) == 3, "each of its three commands is refused on its own (isolated)"
    print(f"\nsf-writer e2e: {len(commands)} commands on {ORDERS} records -> {calls} composite calls")
