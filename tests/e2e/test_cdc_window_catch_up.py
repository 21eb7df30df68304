"""Scenario: a catch-up resync fails, and the window it had to re-read is not lost.

Contract: when the stored replay id is rejected, the subscriber falls back and resyncs the window
since the checkpoint's time by SOQL. If that SOQL fails permanently (the Salesforce sandbox answers
400), the window is kept: the checkpoint row keeps the window's start (``position_time``) and says
``CATCH_UP_PENDING:<reason>`` while the stream goes on and checkpoints its replay ids; the catch-up
is retried with back-off (alarm metric ``sf_cdc_catch_up_failures_total``, gauge
``sf_cdc_catch_up_pending``) until it succeeds, in the same process or after a restart, and then
every record changed in the window reaches ``sf.order.v1``. Every resync is audited: one
``ResyncRequested`` on ``sf.resync.v1`` (nobody consumes it; the resync runs in-process), which each
resynced event names by its CloudEvent id, and the checkpoint row's reason and window end.

Real pieces: the Salesforce sandbox over HTTP and CometD or the Pub/Sub API, the stack's Kafka and PostgreSQL.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.e2e.test_sf_cdc_fallback import RESYNC, checkpoint_row, reset_row, store_checkpoint
from tests.e2e.test_sf_cdc_flow import ACTIVATION, CHANGED, ORDER_CH, World, eventually, world  # noqa: F401

pytestmark = pytest.mark.e2e

PENDING = "CATCH_UP_PENDING:REPLAY_ID_REJECTED"
REJECTED = 10**9  # a replay id the sandbox never issued
#: the catch-up's SOQL (and any other query) answers 400: a permanent error for the subscriber
QUERY_REFUSED = {"endpoint": "query", "kind": "error", "status": 400, "times": None}


async def lost_window(w: World) -> tuple[datetime, str]:
    """A checkpoint whose replay id is rejected, and an order approved after its time (the window
    the stream can no longer replay); the sandbox's SOQL refuses every query."""
    since = datetime.now(UTC) - timedelta(minutes=10)
    await store_checkpoint(w, REJECTED, since)
    order = await w.seed_order()
    await w.approve(order["id"])
    await w.control("faults", QUERY_REFUSED)
    return since, str(order["id"])


async def stream_goes_on(w: World) -> int:
    """An agent's edit after subscribing (needs no SOQL) reaches Kafka and is checkpointed."""
    other = (await w.seed_order())["id"]
    await w.edit("Order", other, BillingCity="Osaka")
    tap = w.tap
    await tap.wait(
        lambda: any(r.key == other and r.value["change_type"] == "UPDATE" for r in tap.on(w.topics.order, CHANGED)),
        what="the streamed change",
    )
    for _ in range(200):
        position = w.number((await checkpoint_row(w))[w.column])
        if position not in (None, REJECTED):
            return position
        await asyncio.sleep(0.05)
    raise AssertionError("the stream's position was never checkpointed")


def position_of(w: World, row: Any) -> int:
    """The row's position (either transport's column) as the sandbox's integer; there must be one."""
    position = w.number(row[w.column])
    assert position is not None, dict(row)
    return position


def activations_of(w: World, order_id: str) -> list[dict[str, Any]]:
    return [r.value for r in w.tap.on(w.topics.order, ACTIVATION) if r.key == order_id]


async def test_a_failed_catch_up_keeps_its_window_and_is_retried_while_the_stream_flows(world: World) -> None:  # noqa: F811
    since, lost = await lost_window(world)
    await world.start(catch_up_retry_initial_s=0.3, catch_up_retry_max_s=1.0)
    # CometD refuses the replay id at subscribe, before "ready"; Pub/Sub on the stream, just after
    await eventually(lambda: world.metric("sf_cdc_catch_up_failures_total", channel=ORDER_CH) >= 1, what="failure")
    assert world.metric("sf_cdc_catch_up_pending", channel=ORDER_CH) == 1

    position = await stream_goes_on(world)
    row = await checkpoint_row(world)  # the stream moved the replay id, not the window's start
    # (later stream events may have moved it on since: a loaded machine checkpoints them in between)
    assert position_of(world, row) >= position
    assert (row["position_time"], row["reset_reason"]) == (since, PENDING)
    assert activations_of(world, lost) == []

    await world.http.delete("/_sandbox/faults")  # Salesforce answers again: the next retry succeeds
    await world.tap.wait(lambda: activations_of(world, lost), what="the lost window's order")
    (activation,) = activations_of(world, lost)
    assert activation["replay_id"] is None
    assert activation["change"]["resync"]["reason"] == "REPLAY_ID_REJECTED"
    await eventually(lambda: world.metric("sf_cdc_catch_up_pending", channel=ORDER_CH) == 0)
    row = await reset_row(world)
    assert row["reset_reason"] == "REPLAY_ID_REJECTED" and row["position_time"] > since
    assert position_of(world, row) >= position


async def test_a_restart_resumes_a_catch_up_that_failed(world: World) -> None:  # noqa: F811
    since, lost = await lost_window(world)
    await world.start(catch_up_retry_initial_s=3600.0)  # no retry in this run
    await eventually(lambda: world.metric("sf_cdc_catch_up_failures_total", channel=ORDER_CH) == 1, what="failure")
    streamed = await stream_goes_on(world)
    await world.stop()  # graceful: drains and writes the final checkpoint
    row = await checkpoint_row(world)
    assert position_of(world, row) >= streamed  # later stream events may have moved it on
    assert (row["position_time"], row["reset_reason"]) == (since, PENDING)
    position = position_of(world, row)

    await world.http.delete("/_sandbox/faults")
    await world.start()  # resumes after the stream's replay id, and catches the window up
    assert world.metric("sf_cdc_replay_fallbacks_total", channel=ORDER_CH) == 0
    await world.tap.wait(lambda: activations_of(world, lost), what="the lost window's order")
    resynced = [r for r in world.tap.on(world.topics.order, CHANGED) if r.key == lost]
    assert [r.value["change_type"] for r in resynced] == ["RESYNC"]
    row = await reset_row(world)
    assert row["reset_reason"] == "REPLAY_ID_REJECTED" and position_of(world, row) == position
    assert row["position_time"] > since
    assert world.metric("sf_cdc_catch_up_pending", channel=ORDER_CH) == 0


async def test_a_resync_is_audited_once_on_sf_resync_and_named_by_every_event_it_produced(world: World) -> None:  # noqa: F811
    since = datetime.now(UTC) - timedelta(minutes=10)
    await store_checkpoint(world, REJECTED, since)
    orders = [(await world.seed_order())["id"] for _ in range(2)]
    await world.approve(orders[0])

    await world.start()
    tap, topics = world.tap, world.topics
    await tap.wait(lambda: activations_of(world, orders[0]), what="the resynced activation")
    (request,) = [r for r in tap.on(topics.resync, RESYNC) if r.value["entity"] == "Order"]
    assert request.value["reason"] == "REPLAY_ID_REJECTED"
    resynced = [r for r in tap.on(topics.order) if "resync" in (r.value.get("change") or {})]
    assert {r.key for r in resynced} >= set(orders)
    assert {r.value["change"]["resync"]["request_id"] for r in resynced} == {request.id}
    assert world.metric("sf_cdc_resyncs_total", entity="Order", reason="REPLAY_ID_REJECTED") == 1
    row = await reset_row(world)  # the row names the same window end as the audit record
    assert row["reset_reason"] == "REPLAY_ID_REJECTED"
    assert row["position_time"] == datetime.fromisoformat(request.value["until"])
