"""Scenario: the subscriber stops mid-stream (gracefully, or killed) and resumes from its checkpoint.

Contract: changes made while the subscriber runs, while it stops and while it is down all reach
Kafka after the restart: nothing is lost. A graceful stop drains and checkpoints, so nothing is
produced twice; after a kill the changes after the last checkpoint are produced again, but with
the same CloudEvent ids, so a downstream inbox sees each change once.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import pytest

from tests.e2e.test_sf_cdc_flow import CHANGED, ORDER_CH, World, eventually, world  # noqa: F401

pytestmark = pytest.mark.e2e

WRITES = 30


async def write_statuses(w: World, order_ids: list[str], count: int, started: asyncio.Event) -> None:
    for i in range(count):
        status = "Draft" if (i // len(order_ids)) % 2 == 0 else "Pending Review"
        await w.edit("Order", order_ids[i % len(order_ids)], Status=status)
        if i == count // 3:
            started.set()
        await asyncio.sleep(0.02)


async def order_update_replay_ids(w: World) -> set[int]:
    retained = (await w.http.get("/_sandbox/events", params={"channel": ORDER_CH})).json()
    return {
        m["data"]["event"]["replayId"]
        for m in retained
        if m["data"]["payload"]["ChangeEventHeader"]["changeType"] == "UPDATE"
    }


def emitted_updates(w: World) -> list[dict[str, Any]]:
    return [
        {**r.value, "ce_id": r.id}
        for r in w.tap.on(w.topics.order, CHANGED)
        if r.value["entity"] == "Order" and r.value["change_type"] == "UPDATE"
    ]


async def run_with_restart(w: World, *, crash: bool) -> set[int | str]:
    # when killed, let the checkpoint lag the stream (as it may in production) so the restart
    # really replays changes that were already produced
    interval = 2.0 if crash else 0.05
    await w.start(checkpoint_interval_s=interval)
    orders = [(await w.seed_order())["id"] for _ in range(3)]
    await eventually(lambda: len(w.tap.on(w.topics.order, CHANGED)) >= 6, what="the creates")
    await asyncio.sleep(interval + 0.2)  # a checkpoint covering the creates is written
    started = asyncio.Event()
    writer = asyncio.create_task(write_statuses(w, orders, WRITES, started))
    await started.wait()
    await w.stop(crash=crash)  # mid-stream: the writer keeps going while the subscriber is down
    await writer
    await w.start()
    expected = {w.replay_key(replay_id) for replay_id in await order_update_replay_ids(w)}
    assert len(expected) == WRITES
    await w.tap.wait(lambda: {e["replay_id"] for e in emitted_updates(w)} == expected, 30, "every update")
    return expected


async def test_a_graceful_restart_loses_nothing_and_repeats_nothing(world: World) -> None:  # noqa: F811
    expected = await run_with_restart(world, crash=False)
    await asyncio.sleep(0.5)  # anything produced twice would arrive by now
    updates = emitted_updates(world)
    assert sorted(e["replay_id"] for e in updates) == sorted(expected)
    assert world.replay_key(await world.checkpoint() or 0) == max(expected)  # hex of fixed width sorts as numbers


async def test_after_a_kill_repeats_carry_the_same_event_ids(world: World) -> None:  # noqa: F811
    expected = await run_with_restart(world, crash=True)
    await asyncio.sleep(0.5)
    ids_by_change: dict[int | str, set[str]] = defaultdict(set)
    for event in emitted_updates(world):
        ids_by_change[event["replay_id"]].add(event["ce_id"])
    assert set(ids_by_change) == expected
    assert all(len(ids) == 1 for ids in ids_by_change.values())  # a repeat is the same CloudEvent
    assert len(emitted_updates(world)) > WRITES  # the kill did make the restart replay something
