"""Scenario: an activation request for an order the ledger already fulfilled, through the real route.

Contract: the fulfillment worker and an sf-writer (both the real runtime ``Worker``) run against Kafka,
PostgreSQL and the sandboxes; the saga's write-back commands reach the Salesforce sandbox through the
sf-writer. An order is fulfilled once. When its Salesforce record is then back at ``Activating``
without ``WHMCS_Order_ID__c`` (what a lost or dead-lettered write-back leaves) and a new request
arrives with a snapshot of it, the write-back is sent again: the record ends ``Activated`` with the
same WHMCS order and service ids, the WHMCS sandbox still holds exactly one order for it, and the
timeline notes ``writeback_repaired``. When the record names another WHMCS order instead, nothing
is created and the record gets ``LEDGER_MISMATCH`` with a message naming both orders.

Unique consumer groups, topics and Order ids per run, so suites share one stack.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from adapters.http import build_client
from adapters.kafka import AiokafkaProducer, durable_producer, ensure_topics
from adapters.salesforce import HttpSalesforce, PasswordAuth
from events.topics import group_topics
from sandbox.salesforce.org import AGENT
from tests.e2e.test_fulfillment_flow import World, run_worker, world_for
from tests.support import eventually
from workers.runtime.consumer import build_consumer, partition_counter
from workers.runtime.route import Route
from workers.runtime.worker import Worker
from workers.sf_writer.route import bind_sf_writer

pytestmark = pytest.mark.e2e


async def run_sf_writer(world: World, group: str, stop: asyncio.Event) -> None:
    """The sf-writer route on the world's write-back topic, writing to the Salesforce sandbox."""
    settings = world.cfg.settings()
    http = build_client(2.0, 5.0, 20)
    aioproducer = durable_producer(world.cfg.bootstrap, f"e2e-{group}")
    await aioproducer.start()
    try:
        auth = PasswordAuth(http, world.salesforce.url, "fleet-connected-app", "sandbox-client-secret",
                            "integration@fleet.example", "sandbox-password")  # fmt: skip
        salesforce = HttpSalesforce(http, auth, "60.0", settings.salesforce.call_options_client)
        route = Route(name="sf-writer", group=group, topics=(world.cfg.writeback_topic,),
                      handlers=bind_sf_writer(salesforce=salesforce, settings=settings),
                      retry_delays_ms=world.cfg.tiers_ms)  # fmt: skip
        worker = Worker(route, build_consumer(settings.kafka, group), AiokafkaProducer(aioproducer),
                        settings.runtime, partitions_for=partition_counter(aioproducer))  # fmt: skip
        await worker.run(stop)
    finally:
        await aioproducer.stop()
        await http.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(stack_env: dict[str, str]) -> AsyncIterator[World]:
    async with world_for(stack_env) as w:
        writer_group = f"fleet.sf-writer.e2e-{w.tag}"
        await ensure_topics(w.cfg.bootstrap, list(group_topics(writer_group, 2)))
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(run_worker(w.cfg, stop)),
            asyncio.create_task(run_sf_writer(w, writer_group, stop)),
        ]
        try:
            yield w
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)


def order_fields(world: World, order_id: str) -> dict[str, Any]:
    record = world.salesforce.store.get("Order", order_id)
    assert record is not None
    return record


async def fulfilled_and_written_back(world: World) -> tuple[str, list[str], Any]:
    order_id, items = world.place_order("tanaka", "Internet", ["INT-1G-GOLD", "INT-INSTALL-SINGLE"])
    await world.request(order_id, snapshot=world.snapshot(order_id))
    await world.reaches(order_id, "fulfilled")
    [whmcs_order] = world.whmcs_orders(order_id)
    await eventually(lambda: order_fields(world, order_id)["Activation_Status__c"] == "Activated", 30, "write-back")
    return order_id, items, whmcs_order


def lose_the_write_back(world: World, order_id: str, items: list[str], **fields: Any) -> None:
    """What the record looks like when the write-back never arrived (or staff set it back)."""
    with world.salesforce.org.transaction(AGENT) as tx:
        tx.update("Order", order_id, {"Activation_Status__c": "Activating", "WHMCS_Order_ID__c": None, **fields})
        for item in items:
            tx.update("OrderItem", item, {"WHMCS_Service_ID__c": None})


async def test_a_lost_write_back_is_repaired_from_the_ledger_without_a_second_whmcs_order(world: World) -> None:
    order_id, items, whmcs_order = await fulfilled_and_written_back(world)
    lose_the_write_back(world, order_id, items, Status="Reactivate")

    request = await world.request(order_id, snapshot=world.snapshot(order_id))

    def repaired() -> bool:
        fields = order_fields(world, order_id)
        return fields["Activation_Status__c"] == "Activated" and fields["WHMCS_Order_ID__c"] == str(whmcs_order.id)

    await eventually(repaired, 30, "the repaired write-back in Salesforce")
    services = [world.salesforce.store.get("OrderItem", i) for i in items]
    await eventually(lambda: all(s and s["WHMCS_Service_ID__c"] for s in services), 30, "the lines' service ids")
    assert [s["WHMCS_Service_ID__c"] for s in services if s] == [str(i) for i in whmcs_order.service_ids]
    assert len(world.whmcs_orders(order_id)) == 1
    assert world.whmcs_orders(order_id)[0].id == whmcs_order.id
    assert world.store is not None
    history = await world.store.history(order_id)
    [note] = [h for h in history if h.kind == "writeback_repaired"]
    assert note.detail["whmcs_order_id"] == whmcs_order.id
    assert any(h.kind == "requested" and h.detail.get("event_id") == request.id for h in history)
    record = await world.record(order_id)
    assert record is not None and record.order.state == "fulfilled"


async def test_a_record_naming_another_whmcs_order_gets_ledger_mismatch(world: World) -> None:
    order_id, items, whmcs_order = await fulfilled_and_written_back(world)
    other = str(whmcs_order.id + 100_000)
    lose_the_write_back(world, order_id, items, WHMCS_Order_ID__c=other)

    await world.request(order_id, snapshot=world.snapshot(order_id))

    await eventually(
        lambda: order_fields(world, order_id)["Activation_Error_Code__c"] == "LEDGER_MISMATCH", 30, "the error code"
    )
    fields = order_fields(world, order_id)
    assert (
        str(whmcs_order.id) in fields["Activation_Error_Message__c"] and other in fields["Activation_Error_Message__c"]
    )
    assert fields["WHMCS_Order_ID__c"] == other and fields["Activation_Status__c"] == "Activating"
    assert len(world.whmcs_orders(order_id)) == 1
    assert world.store is not None
    assert [h.kind for h in await world.store.history(order_id)][-1] == "ledger_mismatch"
