"""Scenario: the platform's awkward deliveries, made by the sandbox's stream controls.

Contract: a gap event re-reads the record and emits from its current state; an overflow publishes
a resync and re-reads the entity by SOQL; a merged event emits one domain event per record id; a
duplicate delivery is emitted once; a batch delivered out of order is emitted completely and
checkpointed at its highest replay id; the fleet's own write-back (changeOrigin carrying its
client id) emits nothing, so it can neither trigger an activation nor start a loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from adapters.salesforce import HttpSalesforce, RefreshTokenAuth
from tests.e2e.test_sf_cdc_flow import ACTIVATION, CHANGED, ORDER_CH, World, eventually, world  # noqa: F401

pytestmark = pytest.mark.e2e

RESYNC = "fleet.salesforce.resync-requested.v1"


def changes_of(w: World, order_id: str, change_type: str | None = None) -> list[dict[str, Any]]:
    return [
        r.value
        for r in w.tap.on(w.topics.order, CHANGED)
        if r.key == order_id and r.value["entity"] == "Order" and change_type in (None, r.value["change_type"])
    ]


async def test_a_gap_event_rereads_the_record(world: World) -> None:  # noqa: F811
    await world.start()
    oid = (await world.seed_order())["id"]
    fields = {"Status": "Approved", "Activation_Status__c": "Activating"}
    await world.control(
        "events/gap", {"entity": "Order", "record_ids": [oid], "change_type": "GAP_UPDATE", "fields": fields}
    )
    tap = world.tap
    await tap.wait(lambda: any(r.key == oid for r in tap.on(world.topics.order, ACTIVATION)), what="gap activation")
    assert changes_of(world, oid, "GAP_UPDATE")
    activation = next(r for r in tap.on(world.topics.order, ACTIVATION) if r.key == oid)
    assert activation.value["status"] == "Approved"  # read from the record: the gap carried nothing


async def test_an_overflow_resyncs_the_entity(world: World) -> None:  # noqa: F811
    await world.start()
    oid = (await world.seed_order())["id"]
    await world.control("events/overflow", {"entity": "Order"})
    tap = world.tap
    await tap.wait(lambda: tap.on(world.topics.resync, RESYNC), what="resync request")
    (request,) = tap.on(world.topics.resync, RESYNC)
    assert request.value["entity"] == "Order" and request.value["reason"] == "GAP_OVERFLOW"
    await tap.wait(lambda: changes_of(world, oid, "RESYNC"), what="resynced order")


async def test_a_merged_event_fans_out_per_record(world: World) -> None:  # noqa: F811
    await world.start()
    ids = [(await world.seed_order())["id"] for _ in range(3)]
    published = await world.control(
        "events/merged", {"entity": "Order", "record_ids": ids, "fields": {"Status": "Draft"}}
    )
    replay_id = world.replay_key(published[0]["data"]["event"]["replayId"])
    tap = world.tap
    await tap.wait(lambda: all(changes_of(world, oid, "UPDATE") for oid in ids), what="one change per record")
    merged = [r for r in tap.on(world.topics.order, CHANGED) if r.value["replay_id"] == replay_id]
    assert sorted(r.key for r in merged) == sorted(ids) and len({r.id for r in merged}) == 3


async def test_a_duplicate_delivery_is_emitted_once(world: World) -> None:  # noqa: F811
    await world.start()
    oid = (await world.seed_order())["id"]
    await world.edit("Order", oid, Status="Draft")
    await world.tap.wait(lambda: changes_of(world, oid, "UPDATE"))
    await world.control("events/duplicate", {"channel": ORDER_CH})
    await eventually(lambda: world.metric("sf_cdc_events_skipped_total", channel=ORDER_CH, reason="duplicate") == 1)
    await world.edit("Order", oid, Status="Pending Review")  # a later change still flows
    await world.tap.wait(lambda: len(changes_of(world, oid, "UPDATE")) == 2)
    await asyncio.sleep(0.2)
    assert len(changes_of(world, oid, "UPDATE")) == 2


async def test_a_batch_delivered_out_of_order_is_emitted_completely(world: World) -> None:  # noqa: F811
    await world.start()
    ids = [(await world.seed_order())["id"] for _ in range(3)]
    await world.control("events/out-of-order", {"channel": ORDER_CH, "count": 3})
    for oid in ids:
        await world.edit("Order", oid, Status="Draft")
    await world.tap.wait(lambda: all(changes_of(world, oid, "UPDATE") for oid in ids), what="all three")
    replay_ids = [changes_of(world, oid, "UPDATE")[0]["replay_id"] for oid in ids]
    assert replay_ids == sorted(replay_ids)  # written in this order, delivered newest first
    numbers = [int(r, 16) if isinstance(r, str) else r for r in replay_ids]
    # CometD checkpoints the highest id of the done prefix; Pub/Sub ids are opaque (never compared),
    # so it checkpoints the last one received, here the oldest: a restart repeats the two newer
    # changes (same ids), and loses nothing
    expected = numbers[0] if world.pubsub else numbers[-1]
    for _ in range(200):
        if await world.checkpoint() == expected:
            break
        await asyncio.sleep(0.05)
    assert await world.checkpoint() == expected


async def test_the_fleets_own_write_back_triggers_nothing_and_only_its_status_busts_the_cache(
    world: World,  # noqa: F811
) -> None:
    await world.start()
    oid = (await world.seed_order())["id"]
    settings = world.settings.salesforce
    async with httpx.AsyncClient() as client:
        tokens = RefreshTokenAuth(
            client, world.url, settings.client_id, "sandbox-client-secret", "sandbox-refresh-token"
        )
        fleet = HttpSalesforce(client, tokens, call_options_client=settings.call_options_client)
        # what the fulfillment saga writes back, including a status a trigger would react to
        await fleet.update_record("Order", oid, {"WHMCS_Order_ID__c": "9001", "Activation_Status__c": "Activating"})
        await fleet.update_record("Order", oid, {"Status": "Approved"})
    # the internal write is skipped; the Status revert reaches the cache as a change, never a trigger
    await eventually(lambda: world.metric("sf_cdc_events_skipped_total", channel=ORDER_CH, reason="own_write") == 1)
    await world.edit("Order", oid, BillingCity="Kyoto")  # an agent's edit still flows
    await world.tap.wait(lambda: len(changes_of(world, oid, "UPDATE")) == 2)
    assert [c["changed_fields"] for c in changes_of(world, oid, "UPDATE")] == [["Status"], ["BillingAddress"]]
    assert world.tap.on(world.topics.order, ACTIVATION) == []
