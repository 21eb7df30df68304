"""Scenario: the stored replay id is rejected (never issued, or older than the retention window).

Contract: the subscriber subscribes with the configured fallback instead, counts the alarm metric,
publishes a ``ResyncRequested`` for the channel's entity and re-reads every record modified since
the checkpoint's time by SOQL, emitting domain events from their current state; the checkpoint is
reset (no replay id, consistent until the resync) and new changes flow and checkpoint as usual.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from tests.e2e.test_sf_cdc_flow import ACTIVATION, CHANGED, ORDER_CH, World, eventually, world  # noqa: F401

pytestmark = pytest.mark.e2e

RESYNC = "fleet.salesforce.resync-requested.v1"


async def store_checkpoint(w: World, replay_id: int, position_time: datetime) -> None:
    conn = await asyncpg.connect(w.dsn)
    try:
        await conn.execute(
            "INSERT INTO sf_cdc_checkpoints (subscriber, channel, replay_id, position_time) VALUES ($1, $2, $3, $4)",
            w.subscriber_name,
            ORDER_CH,
            replay_id,
            position_time,
        )
    finally:
        await conn.close()


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
    assert world.metric("sf_cdc_replay_fallbacks_total", channel=ORDER_CH) == 1
    (request,) = [r for r in tap.on(topics.resync, RESYNC) if r.value["entity"] == "Order"]
    assert request.value["reason"] == "REPLAY_ID_REJECTED"
    assert datetime.fromisoformat(request.value["since"]) == since
    await tap.wait(lambda: any(r.key == order["id"] for r in tap.on(topics.order, ACTIVATION)), what="resync")
    activation = next(r for r in tap.on(topics.order, ACTIVATION) if r.key == order["id"])
    assert activation.value["replay_id"] is None and activation.value["change"]["resync"]["reason"] == (
        "REPLAY_ID_REJECTED"
    )
    row = await checkpoint_row(world)
    assert row["replay_id"] is None and row["reset_reason"] == "REPLAY_ID_REJECTED" and row["position_time"] > since

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
    assert world.metric("sf_cdc_replay_fallbacks_total", channel=ORDER_CH) == 1
    await tap.wait(lambda: any(r.key == orders[1] for r in tap.on(topics.order, ACTIVATION)), what="resync")
    resynced = {r.key for r in tap.on(topics.order, CHANGED) if r.value["change_type"] == "RESYNC"}
    assert set(orders) <= resynced
    row = await checkpoint_row(world)
    assert row["replay_id"] is None and row["reset_reason"] == "REPLAY_ID_REJECTED"
    assert checkpoint < world.sandbox.bus.last_replay_id
