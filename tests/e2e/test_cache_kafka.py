"""Scenario: the cache-invalidator (the real runtime ``Worker``) between Kafka, PostgreSQL and Redis.

Contract: domain events produced to unique billing / order / catalog topics make the worker delete
exactly the portal keys they affect in the real Redis (users resolved through the real
``id_mappings``), publish one notice per event on the invalidation channel, and leave every other
seeded key alone; an event of a client without a portal user busts nothing and is not an error
(nothing reaches the dead-letter topic). The produce → notice latency is measured. Fulfillment
outcomes also publish an order-status notice (Activating / Activated / Failed) on the order-status
channel, after the event's keys are gone and after its invalidation notice, even when nothing was
stale; a parked wait (``AWAITING_PROCESSED``) publishes none.

A unique consumer group, topics, channel, users and accounts per run, so suites share one stack.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from adapters.cache import RedisCache
from adapters.db import seed_id_mappings
from adapters.kafka import AiokafkaProducer, durable_producer, ensure_topics
from adapters.mappings import PgIdMappings
from events.base import DomainEvent, to_envelope
from events.billing import InvoiceChanged
from events.fulfillment import OrderActivationStarted, OrderFulfilled, OrderParked
from events.salesforce import CatalogChanged, OrderChanged
from events.topics import DAY_MS, TopicSpec, group_topics
from workers import cache_keys as ck
from workers.cache_invalidation.route import bind_cache_invalidator
from workers.config import KafkaSettings, RuntimeSettings, Settings
from workers.runtime.consumer import build_consumer, partition_counter
from workers.runtime.route import Route
from workers.runtime.worker import Worker

pytestmark = pytest.mark.e2e


def sf_id(prefix: str) -> str:
    return prefix + secrets.token_hex(8)[:15].upper()


class World:
    def __init__(self, env: dict[str, str], redis: Redis, pool: asyncpg.Pool) -> None:
        tag = uuid.uuid4().hex[:8]
        self.env, self.redis, self.pool = env, redis, pool
        self.billing, self.orders = f"e2e.{tag}.whmcs.billing.v1", f"e2e.{tag}.sf.order.v1"
        self.catalog = f"e2e.{tag}.sf.catalog.v1"
        self.outcomes = f"e2e.{tag}.fulfillment.outcome.v1"
        self.group = f"fleet.cache-invalidator.e2e-{tag}"
        self.channel = f"portal:cache:invalidated:e2e-{tag}"
        self.status_channel = f"portal:orders:status:e2e-{tag}"
        client_id = 100_000_000 + secrets.randbelow(2_000_000_000)
        self.row: dict[str, Any] = {
            "user_id": str(uuid.uuid4()),
            "whmcs_client_id": client_id,
            "sf_account_id": sf_id("001"),
        }
        self.order, self.product = sf_id("801"), sf_id("01t")
        self.catalog_key = f"catalog:sim:plans:{tag}"
        self.settings = Settings(
            kafka=KafkaSettings(bootstrap=env["KAFKA_BOOTSTRAP"], session_timeout_ms=6_000),
            runtime=RuntimeSettings(retry_tier_delays_ms=[300, 1000], in_place_attempts=2, backoff_initial_s=0.05,
                                    backoff_max_s=0.2, shutdown_grace_s=3.0),
        )  # fmt: skip

    def keys(self) -> dict[str, str]:
        user, account = self.row["user_id"], self.row["sf_account_id"]
        return {
            "invoices": ck.user_invoices(user),
            "invoice": ck.user_invoice(user, 31),
            "subs": ck.user_subscriptions(user),
            "sub": ck.user_subscription(user, 41),
            "paymethods": ck.user_paymethods(user),
            "profile": ck.user_profile(user),
            "orders": ck.account_orders(account),
            "order": ck.account_order(account, self.order),
            "eligibility": ck.eligibility(account),
            "catalog": self.catalog_key,
        }

    async def prepare(self) -> None:
        specs = [TopicSpec(t, 2, DAY_MS) for t in (self.billing, self.orders, self.catalog, self.outcomes)]
        await ensure_topics(self.env["KAFKA_BOOTSTRAP"], [*specs, *group_topics(self.group, 2)])
        await seed_id_mappings(self.pool, [self.row])
        await self.redis.mset({key: "{}" for key in self.keys().values()})
        await self.redis.sadd(ck.product_deps(self.product), self.catalog_key)

    async def cleanup(self) -> None:
        await self.redis.unlink(*self.keys().values(), ck.product_deps(self.product))
        await self.pool.execute("DELETE FROM id_mappings WHERE user_id = $1::uuid", self.row["user_id"])

    async def run_worker(self, stop: asyncio.Event) -> None:
        aioproducer = durable_producer(self.env["KAFKA_BOOTSTRAP"], f"e2e-worker-{self.group}")
        await aioproducer.start()
        try:
            cache = RedisCache(self.redis, channel=self.channel, status_channel=self.status_channel)
            handlers = bind_cache_invalidator(cache=cache, mappings=PgIdMappings(self.pool))
            topics = (self.billing, self.orders, self.catalog, self.outcomes)
            route = Route(name="cache-invalidator", group=self.group, topics=topics, handlers=handlers,
                          retry_delays_ms=(300, 1000))  # fmt: skip
            self.worker = Worker(route, build_consumer(self.settings.kafka, self.group), AiokafkaProducer(aioproducer),
                                 self.settings.runtime, partitions_for=partition_counter(aioproducer))  # fmt: skip
            await self.worker.run(stop)
        finally:
            await aioproducer.stop()

    async def existing(self) -> set[str]:
        names = list(self.keys().values())
        flags = [await self.redis.exists(k) for k in names]
        return {name for name, flag in zip(names, flags, strict=True) if flag}


@pytest_asyncio.fixture(loop_scope="session")
async def world(stack_env: dict[str, str]) -> AsyncIterator[World]:
    redis = Redis.from_url(stack_env["REDIS_URL"], retry=Retry(NoBackoff(), 0))
    pool = await asyncpg.create_pool(stack_env["DATABASE_URL"], min_size=1, max_size=4)
    assert pool is not None
    w = World(stack_env, redis, pool)
    await w.prepare()
    try:
        yield w
    finally:
        await w.cleanup()
        await pool.close()
        await redis.aclose()


async def test_domain_events_on_kafka_delete_exactly_their_keys(world: World) -> None:
    k, row = world.keys(), world.row
    client, account = row["whmcs_client_id"], row["sf_account_id"]
    plan: list[tuple[str, DomainEvent, set[str]]] = [
        (world.billing, InvoiceChanged(whmcs_client_id=client, invoice_id=31, hook="InvoicePaid"),
         {k["invoices"], k["invoice"]}),
        (world.billing, InvoiceChanged(whmcs_client_id=424_242, invoice_id=1), set()),  # no portal user
        (world.orders, OrderChanged(sf_order_id=world.order, sf_account_id=account,
                                    changed_fields=["Activation_Status__c"]), set()),  # internal only
        (world.orders, OrderChanged(sf_order_id=world.order, sf_account_id=account, changed_fields=["Status"]),
         {k["orders"], k["order"]}),
        (world.catalog, CatalogChanged(entity="PricebookEntry", record_id=sf_id("01u"), product2_id=world.product,
                                       changed_fields=["UnitPrice"]), {k["catalog"]}),
    ]  # fmt: skip
    pubsub = world.redis.pubsub()
    await pubsub.subscribe(world.channel)
    aioproducer = durable_producer(world.env["KAFKA_BOOTSTRAP"], f"e2e-{world.group}")
    await aioproducer.start()
    stop = asyncio.Event()
    task = asyncio.create_task(world.run_worker(stop))
    latencies: list[float] = []
    try:
        producer = AiokafkaProducer(aioproducer)
        gone: set[str] = set()
        for topic, event, expected in plan:
            sent = time.perf_counter()
            await producer.publish(topic, to_envelope(event, source="/e2e"))
            gone |= expected
            if expected:
                notice = await next_notice(pubsub, timeout=30)
                latencies.append(time.perf_counter() - sent)
                assert set(notice["keys"]) == expected
            assert await wait_for_keys(world, set(k.values()) - gone)
        # the fulfilled outcome last: orders (already gone) + the user's subscriptions and invoices
        await producer.publish(
            world.orders,
            to_envelope(
                OrderFulfilled(sf_order_id=world.order, whmcs_client_id=client, whmcs_order_id=5), source="/e2e"
            ),
        )
        notice = await next_notice(pubsub, timeout=30)
        assert set(notice["keys"]) == {k["orders"], k["order"], k["subs"], k["invoices"]}
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await aioproducer.stop()
        await pubsub.unsubscribe(world.channel)
        await pubsub.aclose()  # type: ignore[no-untyped-call]

    assert await world.existing() == {k["sub"], k["paymethods"], k["profile"], k["eligibility"]}
    stats = world.worker.metrics.topic(world.billing)
    assert stats.dead_lettered == 0 and stats.retried_to_topic == 0
    print(f"\ncache-invalidator e2e: produce -> notice latency ms: {[round(s * 1000, 1) for s in latencies]}")


async def test_fulfillment_outcomes_publish_order_status_notices_after_their_keys_are_gone(world: World) -> None:
    """Activating (nothing stale: the status alone), Failed for a payment park, nothing for a parked
    wait, Activated: each status on the real channel, after its event's cache notice, with the order's
    keys already gone from Redis when it arrives."""
    k, row = world.keys(), world.row
    account, client = row["sf_account_id"], row["whmcs_client_id"]
    order_keys = {k["orders"], k["order"]}
    plan: list[tuple[DomainEvent, str | None]] = [
        (OrderActivationStarted(sf_order_id=world.order, sf_account_id=account, order_type="Internet"), "Activating"),
        (OrderParked(sf_order_id=world.order, sf_account_id=account, whmcs_client_id=client,
                     error_code="PAYMENT_METHOD_MISSING", error_message="no pay method"), "Failed"),
        (OrderParked(sf_order_id=world.order, sf_account_id=account, whmcs_client_id=client,
                     error_code="AWAITING_PROCESSED", error_message="waiting for Processed"), None),
        (OrderFulfilled(sf_order_id=world.order, sf_account_id=account, whmcs_client_id=client, whmcs_order_id=5),
         "Activated"),
    ]  # fmt: skip
    pubsub = world.redis.pubsub()
    await pubsub.subscribe(world.channel, world.status_channel)
    aioproducer = durable_producer(world.env["KAFKA_BOOTSTRAP"], f"e2e-status-{world.group}")
    await aioproducer.start()
    stop = asyncio.Event()
    task = asyncio.create_task(world.run_worker(stop))
    try:
        producer = AiokafkaProducer(aioproducer)
        for event, status in plan:
            await world.redis.mset(dict.fromkeys(order_keys, "{}"))  # the portal cached the order again
            envelope = to_envelope(event, source="/e2e")
            await producer.publish(world.outcomes, envelope)
            busts = not isinstance(event, OrderActivationStarted)
            if busts:  # the cache notice first: UNLINK, then PUBLISH it, then PUBLISH the status
                channel, notice = await next_message(pubsub, timeout=30)
                assert (channel, notice["event_id"]) == (world.channel, envelope.id)
                assert order_keys <= set(notice["keys"])
            if status is None:
                continue  # a parked wait: the next status on the channel is the next event's
            channel, notice = await next_message(pubsub, timeout=30)
            assert await world.redis.exists(*order_keys) == (0 if busts else 2), "the status comes after the UNLINKs"
            assert channel == world.status_channel, f"{type(event).__name__}: its status, not another cache notice"
            assert notice == {
                "event_id": envelope.id,
                "sf_order_id": world.order,
                "sf_account_id": account,
                "status": status,
                "error_code": getattr(event, "error_code", None),
                "error_message": getattr(event, "error_message", None),
                "at": envelope.time.isoformat().replace("+00:00", "Z"),
            }
        assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5) is None, "nothing more"
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await aioproducer.stop()
        await pubsub.unsubscribe(world.channel, world.status_channel)
        await pubsub.aclose()  # type: ignore[no-untyped-call]

    stats = world.worker.metrics.topic(world.outcomes)
    assert stats.dead_lettered == 0 and stats.retried_to_topic == 0


async def next_message(pubsub: Any, timeout: float) -> tuple[str, dict[str, Any]]:
    """The next pub/sub message on any subscribed channel: (channel, JSON body)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            channel = message["channel"]
            return (channel.decode() if isinstance(channel, bytes) else channel), dict(json.loads(message["data"]))
    raise AssertionError("no notice")


async def next_notice(pubsub: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            return dict(json.loads(message["data"]))
    raise AssertionError("no invalidation notice")


async def wait_for_keys(world: World, expected: set[str], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await world.existing() == expected:
            return True
        await asyncio.sleep(0.05)
    return await world.existing() == expected
