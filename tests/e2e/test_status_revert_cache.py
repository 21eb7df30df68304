"""Scenario: the sf-writer's Status revert of a failed SIM order busts the portal's order cache.

Contract: on a SIM failure the saga's outcome busts the order's keys before the sf-writer's
``Status = Approved`` lands in Salesforce; a portal read in between caches the old Status (no TTL).
When the write lands, its change event carries the fleet's own ``changeOrigin``
(``client=fulfillment-fleet``). The CDC subscriber still emits no trigger for it (the approval Flow
that fires on the write sets ``Activating`` under the same origin: no second activation), but since
``Status`` is customer-facing it emits an ``OrderChanged`` that the cache-invalidator turns into an
UNLINK of the order's keys. An own write of internal fields only (``Activation_Status__c``,
``WHMCS_Order_ID__c``) emits nothing, and the keys stay.

Real pieces: the Salesforce sandbox (REST, CometD change events), the sf-cdc subscriber, the stack's
Kafka, PostgreSQL and Redis, and the cache-invalidator's runtime ``Worker``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from adapters.cache import RedisCache
from adapters.kafka import AiokafkaProducer, durable_producer, ensure_topics
from adapters.mappings import PgIdMappings
from events.topics import group_topics
from tests.e2e.test_sf_cdc_flow import (  # noqa: F401
    ACTIVATION,
    CHANGED,
    ORDER_CH,
    OWN_CLIENT,
    SIM_ACTIVATION,
    World,
    eventually,
    world,
)
from workers import cache_keys as ck
from workers.cache_invalidation.route import bind_cache_invalidator
from workers.config import KafkaSettings, RuntimeSettings
from workers.runtime.consumer import build_consumer, partition_counter
from workers.runtime.route import Route
from workers.runtime.worker import Worker

pytestmark = pytest.mark.e2e


@dataclass
class Portal:
    """The portal's side: its Redis (keys it caches, their dependency SET) and the notices it hears."""

    redis: Redis
    pubsub: PubSub

    async def cache_order(self, account: str, order_id: str) -> tuple[str, str]:
        """Cache the order's list and detail (no TTL) and record them in the order's dependency SET."""
        keys = ck.order_keys(account, order_id)
        await self.redis.mset(dict.fromkeys(keys, json.dumps({"Status": "as read"})))
        await self.redis.sadd(ck.order_deps(order_id), *keys)
        return keys

    async def notice(self, wanted: Callable[[dict[str, Any]], bool], timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message is not None and wanted(notice := json.loads(message["data"])):
                return dict(notice)
        raise AssertionError("no invalidation notice")

    async def existing(self, keys: tuple[str, ...]) -> set[str]:
        return {k for k in keys if await self.redis.exists(k)}


def updates_of(w: World, order_id: str) -> list[Any]:
    return [r for r in w.tap.on(w.topics.order, CHANGED) if r.key == order_id and r.value["change_type"] == "UPDATE"]


@pytest.fixture
async def portal(world: World, stack_env: dict[str, str]) -> AsyncIterator[Portal]:  # noqa: F811
    """A cache-invalidator on the world's order topic (its own group and notice channel) and the portal."""
    tag = uuid.uuid4().hex[:8]
    group, channel = f"fleet.cache-invalidator.e2e-{tag}", f"portal:cache:invalidated:e2e-{tag}"
    bootstrap = stack_env["KAFKA_BOOTSTRAP"]
    await ensure_topics(bootstrap, group_topics(group, 1))
    redis = Redis.from_url(stack_env["REDIS_URL"], retry=Retry(NoBackoff(), 0))
    pool = await asyncpg.create_pool(stack_env["DATABASE_URL"], min_size=1, max_size=2)
    assert pool is not None
    pubsub = redis.pubsub()
    await pubsub.subscribe(channel)
    aioproducer = durable_producer(bootstrap, f"e2e-{group}")
    await aioproducer.start()
    kafka = KafkaSettings(bootstrap=bootstrap, session_timeout_ms=6_000)
    runtime = RuntimeSettings(in_place_attempts=2, backoff_initial_s=0.05, backoff_max_s=0.2, shutdown_grace_s=3.0)
    handlers = bind_cache_invalidator(
        cache=RedisCache(redis, channel=channel, status_channel=f"{channel}:status"), mappings=PgIdMappings(pool)
    )
    route = Route("cache-invalidator", group, (world.topics.order,), handlers, retry_delays_ms=(300, 1000))
    worker = Worker(route, build_consumer(kafka, group), AiokafkaProducer(aioproducer), runtime,
                    partitions_for=partition_counter(aioproducer))  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield Portal(redis, pubsub)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await aioproducer.stop()
        await pubsub.unsubscribe(channel)
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await pool.close()
        await redis.aclose()


async def test_an_own_status_revert_busts_the_order_keys_and_an_internal_own_write_does_not(
    world: World,  # noqa: F811
    portal: Portal,
) -> None:
    await world.start()
    tap = world.tap
    other = (await world.seed_order())["id"]  # edited at the end, to know the stream went past our writes
    await portal.notice(lambda n: any(k.endswith(other) for k in n["keys"]))
    order = await world.seed_order(type_="SIM", SIM_Type__c="eSIM")
    oid, account = order["id"], order["AccountId"]
    detail = ck.account_order(account, oid)
    await portal.notice(lambda n: detail in n["keys"])  # the create's bust is behind us

    # staff set Processed: the SIM activation is requested once, and the order's keys are busted
    keys = await portal.cache_order(account, oid)
    await world.edit("Order", oid, Status="Processed")
    await portal.notice(lambda n: detail in n["keys"])
    await tap.wait(lambda: [r for r in tap.on(world.topics.order, SIM_ACTIVATION) if r.key == oid], what="sim")

    # the SIM step failed; the outcome's bust came and went, and a portal read cached the order again
    keys = await portal.cache_order(account, oid)
    # the sf-writer's revert lands (with the approval Flow it fires, under the same changeOrigin)
    await world.edit(
        "Order",
        oid,
        client=OWN_CLIENT,
        Status="Approved",
        Activation_Status__c="Activating",
        Activation_Error_Code__c="SIM_ACTIVATION_FAILED",
        Activation_Error_Message__c="Freebit refused the SIM",
    )
    notice = await portal.notice(lambda n: detail in n["keys"])
    assert set(notice["keys"]) == set(keys) and await portal.existing(keys) == set()
    revert = [r for r in tap.on(world.topics.order, CHANGED) if r.key == oid][-1]
    assert revert.value["changed_fields"] == ["Status"]
    assert revert.value["change"]["payload"]["ChangeEventHeader"]["changeOrigin"].endswith(f"client={OWN_CLIENT}")
    assert [r for r in tap.on(world.topics.order, ACTIVATION) if r.key == oid] == []
    assert len([r for r in tap.on(world.topics.order, SIM_ACTIVATION) if r.key == oid]) == 1

    # an own write of internal fields only: handled, skipped as an own write, nothing on Kafka
    keys = await portal.cache_order(account, oid)
    produced = len([r for r in tap.records if r.key == oid])
    skipped = world.metric("sf_cdc_events_skipped_total", channel=ORDER_CH, reason="own_write")
    await world.edit("Order", oid, client=OWN_CLIENT, Activation_Status__c="Activated", WHMCS_Order_ID__c="7001")
    own = {"channel": ORDER_CH, "reason": "own_write"}
    await eventually(lambda: world.metric("sf_cdc_events_skipped_total", **own) == skipped + 1, what="own write")
    await world.edit("Order", other, BillingCity="Osaka")  # busts only the other order's dependents
    await tap.wait(lambda: updates_of(world, other), what="the later change")
    assert len([r for r in tap.records if r.key == oid]) == produced
    assert await portal.existing(keys) == set(keys)
