"""Scenario: the stored replay id is rejected (never issued, or older than the retention window).

Contract: the subscriber subscribes with the configured fallback instead, counts the alarm metric,
publishes a ``ResyncRequested`` for the channel's entity and re-reads every record modified since
the checkpoint's time by SOQL, emitting domain events from their current state; the checkpoint is
reset (no replay id, consistent until the resync) and new changes flow and checkpoint as usual.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from tests.e2e.test_sf_cdc_flow import ACTIVATION, CHANGED, ORDER_CH, World, eventually, world  # noqa: F401

pytestmark = pytest.mark.e2e

RESYNC = "fleet.salesforce.resync-requested.v1"


async def store_checkpoint(w: World, replay_id: int, position_time: datetime) -> None:
    """A row whose position is the sandbox's ``replay_id``, in the column of ``w``'s transport."""
    column = "pubsub_replay_id" if w.pubsub else "replay_id"
    conn = await asyncpg.connect(w.dsn)
    try:
        await conn.execute(
            f"INSERT INTO sf_cdc_checkpoints (subscriber, channel, {column}, position_time) VALUES ($1, $2, $3, $4)",
            w.subscriber_name,
            ORDER_CH,
            w.position(replay_id),
            position_time,
        )
    finally:
        await conn.close()


async def reset_row(w: World, reason: str = "REPLAY_ID_REJECTED") -> asyncpg.Record:
    """The row once the fallback's catch-up wrote its reset (its events are on Kafka just before)."""
    for _ in range(200):
        row = await checkpoint_row(w)
        if row["reset_reason"] == reason:
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"the checkpoint row never said {reason}: {dict(row)}")


async def checkpoint_row(w: World) -> asyncpg.Record:
    conn = await asyncpg.connect(w.dsn)
    try:
        row = await conn.fetchrow(
            "SELECT * FROM sf_cdc_checkpoints WHERE subscriber = $1 AND channel = $2", w.subscriber_name, ORDER_CH
        )
    finally:
        await conn.close()
    assert row is not None
    return row


async def test_a_replay_id_never_issued_falls_back_alarms_and_resyncs_the_window(world: World) -> None:  # noqa: F811
    since = datetime.now(UTC) - timedelta(minutes=10)
    await store_checkpoint(world, 10**9, since)
    order = await world.seed_order()  # changed while "down": Approved + Activating by the Flow
    await world.approve(order["id"])

    await world.start()
    tap, topics = world.tap, world.topics
    # CometD refuses the replay id at subscribe, before "ready"; Pub/Sub on the stream, just after
    await eventually(lambda: world.metric("sf_cdc_replay_fallbacks_total", channel=ORDER_CH) == 1, what="fallback")
    await tap.wait(lambda: [r for r in tap.on(topics.resync, RESYNC) if r.value["entity"] == "Order"], what="resync")
    (request,) = [r for r in tap.on(topics.resync, RESYNC) if r.value["entity"] == "Order"]
    assert request.value["reason"] == "REPLAY_ID_REJECTED"
    assert datetime.fromisoformat(request.value["since"]) == since
    await tap.wait(lambda: any(r.key == order["id"] for r in tap.on(topics.order, ACTIVATION)), what="resync")
    activation = next(r for r in tap.on(topics.order, ACTIVATION) if r.key == order["id"])
    assert activation.value["replay_id"] is None and activation.value["change"]["resync"]["reason"] == (
        "REPLAY_ID_REJECTED"
    )
    row = await reset_row(world)
    assert row["replay_id"] is None and row["pubsub_replay_id"] is None
    assert row["reset_reason"] == "REPLAY_ID_REJECTED" and row["position_time"] > since

    await world.edit("Order", order["id"], Status="Draft")  # the stream goes on from "latest"
    await eventually(lambda: any(r.value["change_type"] == "UPDATE" for r in tap.on(topics.order, CHANGED)))
    assert await checkpoint_written(world)


async def checkpoint_written(w: World) -> int:
    for _ in range(200):
        if (replay_id := await w.checkpoint()) is not None:
            return replay_id
        await asyncio.sleep(0.05)
    raise AssertionError("no checkpoint written")


async def test_a_checkpoint_older_than_retention_is_caught_up_by_soql(world: World) -> None:  # noqa: F811
    world.sandbox.bus.retention = 5  # keep only five events per channel, as if 72 h had passed
    await world.start()
    orders = [(await world.seed_order())["id"] for _ in range(2)]
    await world.edit("Order", orders[0], Status="Draft")
    checkpoint = await checkpoint_written(world)
    await world.stop()

    for i in range(8):  # while down, more changes than the bus retains
        await world.edit("Order", orders[i % 2], Status="Draft" if i % 4 < 2 else "Pending Review")
    await world.approve(orders[1])

    await world.start()
    tap, topics = world.tap, world.topics
    await eventually(lambda: world.metric("sf_cdc_replay_fallbacks_total", channel=ORDER_CH) == 1, what="fallback")
    await tap.wait(lambda: any(r.key == orders[1] for r in tap.on(topics.order, ACTIVATION)), what="resync")

    def resynced() -> set[str]:
        return {r.key for r in tap.on(topics.order, CHANGED) if r.value["change_type"] == "RESYNC"}

    # the orders' events are keyed by order id: on different partitions, they reach the tap in any order
    await tap.wait(lambda: set(orders) <= resynced(), what=f"both orders resynced (seen: {resynced()})")
    row = await reset_row(world)
    assert row["replay_id"] is None and row["pubsub_replay_id"] is None and row["reset_reason"] == "REPLAY_ID_REJECTED"
    assert checkpoint < world.sandbox.bus.last_replay_id


async def test_switching_the_transport_resyncs_from_the_other_transports_checkpoint(world: World) -> None:  # noqa: F811
    """Run on the other transport first; its checkpoint means nothing to this one, so the switch
    is a fallback: alarm, resync of what changed meanwhile, then this transport's own positions."""
    mine = world.settings
    other = "cometd" if world.pubsub else "pubsub"
    switched = mine.salesforce.model_copy(update=_as(world, other).transport_settings)
    world.settings = mine.model_copy(update={"salesforce": switched})
    await world.start()
    oid = (await world.seed_order())["id"]
    await world.tap.wait(lambda: any(r.key == oid for r in world.tap.on(world.topics.order, CHANGED)), what="create")
    await checkpoint_written(_as(world, other))
    await world.stop()
    first = await checkpoint_row(world)
    assert first[_column(other)] is not None and first[world.column] is None

    await world.approve(oid)  # while nobody listens
    world.settings = mine
    await world.start()
    await eventually(lambda: world.metric("sf_cdc_replay_fallbacks_total", channel=ORDER_CH) == 1, what="fallback")
    await world.tap.wait(lambda: any(r.key == oid for r in world.tap.on(world.topics.order, ACTIVATION)), what="resync")
    await world.edit("Order", oid, BillingCity="Osaka")  # the stream goes on, on this transport
    assert await checkpoint_written(world) is not None
    row = await checkpoint_row(world)
    assert row[world.column] is not None and row[_column(other)] is None


def _column(transport: str) -> str:
    return "pubsub_replay_id" if transport == "pubsub" else "replay_id"


def _as(w: World, transport: str) -> World:
    """``w`` read as the other transport (its ``checkpoint()`` decodes that transport's column)."""
    return replace(w, transport=transport)
