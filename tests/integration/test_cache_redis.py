"""The cache-invalidator against the real local Redis and PostgreSQL (``fleet stack``).

Contract: with the portal's keys seeded for two users (plus their accounts, the catalog lists and
the dependency SETs), each event type deletes exactly its keys: a SCAN of every seeded family
afterwards finds all the others, and the notice arrives on the pub/sub channel. Users come from
the real ``id_mappings`` table. One batch of every event type costs one lookup and one pipeline and
still gives each event exactly its keys and its own notice; a command Redis refuses fails only its
own event's share of the pipeline. When Redis is down the handler raises a retryable error and
nothing is lost: after Redis is back, the redelivered event deletes the keys and notifies (a private
``redis-server`` is started and stopped for this; the shared one is never touched).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
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

from adapters.cache import Invalidation, InvalidationNotice, RedisCache
from adapters.db import seed_id_mappings
from adapters.mappings import PgIdMappings
from events.base import DomainEvent
from events.billing import ClientChanged, InvoiceChanged, PaymentMethodChanged, ServiceChanged, WhmcsOrderChanged
from events.envelope import H_ID
from events.errors import DependencyUnavailable, RejectedByUpstream
from events.fulfillment import OrderFulfilled, OrderFulfillmentFailed, OrderParked
from events.salesforce import AccountEligibilityChanged, CatalogChanged, OrderChanged
from sandbox import demo_data
from workers import cache_keys as ck
from workers.cache_invalidation.route import bind_cache_invalidator
from workers.runtime.batch import BatchHandler
from workers.runtime.message import Message

pytestmark = pytest.mark.integration


def sf_id(prefix: str) -> str:
    return prefix + secrets.token_hex(8)[:15].upper()


def mapping_row() -> dict[str, Any]:
    return {
        "user_id": str(uuid.uuid4()),
        "whmcs_client_id": 100_000_000 + secrets.randbelow(2_000_000_000),
        "sf_account_id": sf_id("001"),
    }


def message(event: DomainEvent) -> Message:
    event_id = str(uuid.uuid4()).encode()
    return Message(event=event, group="g", topic="t", partition=0, offset=0, timestamp=0, key=None, value=None,
                   headers=[(H_ID, event_id)], header_map={H_ID: event_id}, event_type=event.TYPE)  # fmt: skip


class Portal:
    """Two mapped users, seeded the way the portal caches, plus an unmapped client."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.a, self.b = mapping_row(), mapping_row()
        self.order_a, self.order_b = sf_id("801"), sf_id("801")
        self.product = sf_id("01t")
        self.catalog_key = f"catalog:internet:plans:{secrets.token_hex(4)}"  # a variant the portal caches

    def user_keys(self, row: dict[str, Any]) -> list[str]:
        user = row["user_id"]
        return [ck.user_invoices(user), ck.user_invoice(user, 5001), ck.user_subscriptions(user),
                ck.user_subscription(user, 9001), ck.user_paymethods(user), ck.user_profile(user)]  # fmt: skip

    def account_keys(self, row: dict[str, Any], order: str) -> list[str]:
        account = row["sf_account_id"]
        return [ck.account_orders(account), ck.account_order(account, order), ck.eligibility(account)]

    def plain_keys(self) -> list[str]:
        return [*self.user_keys(self.a), *self.user_keys(self.b), *self.account_keys(self.a, self.order_a),
                *self.account_keys(self.b, self.order_b), self.catalog_key]  # fmt: skip

    async def seed(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for key in self.plain_keys():
            pipe.set(key, json.dumps({"cached": key}), ex=600)
        a, b = self.a["sf_account_id"], self.b["sf_account_id"]
        pipe.sadd(ck.order_deps(self.order_a), ck.account_orders(a), ck.account_order(a, self.order_a))
        pipe.sadd(ck.order_deps(self.order_b), ck.account_orders(b), ck.account_order(b, self.order_b))
        pipe.sadd(ck.product_deps(self.product), self.catalog_key)
        await pipe.execute()

    async def present(self) -> set[str]:
        """SCAN the portal's namespaces; keep the keys of this test's own ids (the shared Redis holds
        other suites' keys too)."""
        ids = (self.a["user_id"], self.b["user_id"], self.a["sf_account_id"], self.b["sf_account_id"],
               self.order_a, self.order_b, self.product, self.catalog_key)  # fmt: skip
        found: set[str] = set()
        for pattern in (f"{ck.PREFIX}:*", "catalog:*"):
            async for raw in self.redis.scan_iter(match=pattern, count=10_000):
                key = raw.decode() if isinstance(raw, bytes) else raw
                if any(ident in key for ident in ids):
                    found.add(key)
        return found


@pytest_asyncio.fixture
async def pool(stack_env: dict[str, str]) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(stack_env["DATABASE_URL"], min_size=1, max_size=4)
    assert pool is not None
    await seed_id_mappings(pool, demo_data.id_mappings())
    yield pool
    await pool.close()


@pytest_asyncio.fixture
async def redis(stack_env: dict[str, str]) -> AsyncIterator[Redis]:
    client = Redis.from_url(stack_env["REDIS_URL"])
    yield client
    await client.aclose()


@pytest_asyncio.fixture
async def portal(redis: Redis, pool: asyncpg.Pool) -> AsyncIterator[Portal]:
    world = Portal(redis)
    await seed_id_mappings(pool, [world.a, world.b])
    await world.seed()
    yield world
    await redis.unlink(*world.plain_keys(), ck.order_deps(world.order_a), ck.order_deps(world.order_b),
                       ck.product_deps(world.product))  # fmt: skip
    await pool.execute(
        "DELETE FROM id_mappings WHERE user_id = ANY($1::uuid[])", [world.a["user_id"], world.b["user_id"]]
    )


class Listener:
    """A portal instance subscribed to the invalidation channel."""

    def __init__(self, redis: Redis, channel: str) -> None:
        self.pubsub = redis.pubsub()
        self.channel = channel

    async def __aenter__(self) -> Listener:
        await self.pubsub.subscribe(self.channel)
        await self.pubsub.get_message(timeout=1.0)  # the subscribe confirmation
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.pubsub.unsubscribe(self.channel)
        await self.pubsub.aclose()  # type: ignore[no-untyped-call]

    async def notice(self, timeout: float = 3.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if message is not None:
                return dict(json.loads(message["data"]))
        raise AssertionError("no invalidation notice received")


def cases(p: Portal) -> list[tuple[str, DomainEvent, set[str]]]:
    ua, a_client, a_acct = p.a["user_id"], p.a["whmcs_client_id"], p.a["sf_account_id"]
    orders_a = {ck.account_orders(a_acct), ck.account_order(a_acct, p.order_a)}
    return [
        (
            "invoice",
            InvoiceChanged(whmcs_client_id=a_client, invoice_id=5001),
            {ck.user_invoices(ua), ck.user_invoice(ua, 5001)},
        ),
        (
            "service",
            ServiceChanged(whmcs_client_id=a_client, service_id=9001),
            {ck.user_subscriptions(ua), ck.user_subscription(ua, 9001)},
        ),
        ("paymethod", PaymentMethodChanged(whmcs_client_id=a_client), {ck.user_paymethods(ua)}),
        (
            "client",
            ClientChanged(whmcs_client_id=a_client),
            {ck.user_profile(ua), ck.user_paymethods(ua), ck.user_subscriptions(ua)},
        ),
        (
            "whmcs-order",
            WhmcsOrderChanged(whmcs_client_id=a_client, whmcs_order_id=1),
            {ck.user_subscriptions(ua), ck.user_invoices(ua)},
        ),
        ("order", OrderChanged(sf_order_id=p.order_a, sf_account_id=a_acct, changed_fields=["Status"]), orders_a),
        ("order-item", OrderChanged(sf_order_id=p.order_a, entity="OrderItem", changed_fields=["Quantity"]), orders_a),
        (
            "fulfilled",
            OrderFulfilled(sf_order_id=p.order_a, whmcs_client_id=a_client, whmcs_order_id=1),
            orders_a | {ck.user_subscriptions(ua), ck.user_invoices(ua)},
        ),
        (
            "failed",
            OrderFulfillmentFailed(sf_order_id=p.order_a, sf_account_id=a_acct, error_code="E", error_message="m"),
            orders_a,
        ),
        (
            "parked",
            OrderParked(sf_order_id=p.order_a, sf_account_id=a_acct, error_code="E", error_message="m"),
            orders_a,
        ),
        (
            "catalog",
            CatalogChanged(
                entity="PricebookEntry", record_id=sf_id("01u"), product2_id=p.product, changed_fields=["UnitPrice"]
            ),
            {p.catalog_key},
        ),
        ("eligibility", AccountEligibilityChanged(sf_account_id=a_acct), {ck.eligibility(a_acct)}),
    ]


CASE_NAMES = ["invoice", "service", "paymethod", "client", "whmcs-order", "order", "order-item", "fulfilled",
              "failed", "parked", "catalog", "eligibility"]  # fmt: skip


@pytest.mark.parametrize("case", CASE_NAMES)
async def test_each_event_deletes_exactly_its_keys_and_notifies(
    case: str, portal: Portal, redis: Redis, pool: asyncpg.Pool
) -> None:
    channel = f"portal:cache:invalidated:test-{secrets.token_hex(4)}"
    handlers = bind_cache_invalidator(
        cache=RedisCache(redis, channel=channel, status_channel=f"{channel}:status"), mappings=PgIdMappings(pool)
    )
    name, event, expected = next(c for c in cases(portal) if c[0] == case)
    before = await portal.present()
    assert expected <= before, f"{name}: the test seeds what it expects to see deleted"

    async with Listener(redis, channel) as listener:
        msg = message(event)
        await handlers[type(event)](event, msg)
        notice = await listener.notice()

    after = await portal.present()
    emptied = {k for k in before - after if ":deps:" in k}  # a SET whose every member was deleted
    assert after == before - expected - emptied
    assert all(k in (ck.order_deps(portal.order_a), ck.product_deps(portal.product)) for k in emptied)
    assert notice["event_id"] == msg.event_id and set(notice["keys"]) == expected and notice["reason"]


async def test_an_unmapped_client_busts_nothing(portal: Portal, redis: Redis, pool: asyncpg.Pool) -> None:
    handlers = bind_cache_invalidator(
        cache=RedisCache(redis, channel="unused", status_channel="unused-status"), mappings=PgIdMappings(pool)
    )
    before = await portal.present()
    event = InvoiceChanged(whmcs_client_id=99_999, invoice_id=1)

    await handlers[InvoiceChanged](event, message(event))

    assert await portal.present() == before


async def test_id_mappings_lookups_by_client_and_by_account(portal: Portal, pool: asyncpg.Pool) -> None:
    mappings = PgIdMappings(pool)
    row = portal.a

    (by_client,) = await mappings.for_whmcs_client(row["whmcs_client_id"])
    (by_account,) = await mappings.for_sf_account(row["sf_account_id"])
    (by_short,) = await mappings.for_sf_account(row["sf_account_id"][:15])

    assert by_client == by_account == by_short and by_client.user_id == row["user_id"]
    assert await mappings.for_whmcs_client(99_999) == []
    assert await mappings.for_sf_account(sf_id("001")) == []


async def test_one_batch_of_every_event_type_busts_each_events_keys_with_its_own_notice(
    portal: Portal, redis: Redis, pool: asyncpg.Pool
) -> None:
    channel = f"portal:cache:invalidated:test-{secrets.token_hex(4)}"
    handler = bind_cache_invalidator(
        cache=RedisCache(redis, channel=channel, status_channel=f"{channel}:status"), mappings=PgIdMappings(pool)
    )[InvoiceChanged]
    assert isinstance(handler, BatchHandler)
    batch = [*cases(portal), ("unmapped", InvoiceChanged(whmcs_client_id=99_999, invoice_id=1), set())]
    msgs = [message(event) for _, event, _ in batch]
    before = await portal.present()

    async with Listener(redis, channel) as listener:
        outcomes = await handler.handle_batch(msgs)
        notices = [await listener.notice() for _ in range(len(batch) - 1)]

    assert outcomes == [None] * len(batch)
    assert {n["event_id"]: set(n["keys"]) for n in notices} == {
        msg.event_id: expected for msg, (_, _, expected) in zip(msgs, batch, strict=True) if expected
    }
    after = await portal.present()
    emptied = {k for k in before - after if ":deps:" in k}
    assert after == before - set().union(*(expected for _, _, expected in batch)) - emptied


async def test_batch_lookups_resolve_clients_and_accounts_in_one_query_each(portal: Portal, pool: asyncpg.Pool) -> None:
    mappings = PgIdMappings(pool)
    a, b = portal.a, portal.b

    by_client = await mappings.for_whmcs_clients([a["whmcs_client_id"], b["whmcs_client_id"], 99_999, 2**40])
    by_account = await mappings.for_sf_accounts([a["sf_account_id"], b["sf_account_id"][:15], sf_id("001")])

    assert [r.user_id for r in by_client[a["whmcs_client_id"]]] == [a["user_id"]]
    assert [r.user_id for r in by_client[b["whmcs_client_id"]]] == [b["user_id"]]
    assert by_client[99_999] == [] and by_client[2**40] == [], "unmapped, and beyond the column's range"
    assert [r.user_id for r in by_account[a["sf_account_id"]]] == [a["user_id"]]
    assert [r.user_id for r in by_account[b["sf_account_id"][:15]]] == [b["user_id"]], "15-character id"
    assert sum(len(rows) for rows in by_account.values()) == 2


async def test_a_command_redis_refuses_fails_only_its_own_item(redis: Redis) -> None:
    """``WRONGTYPE`` on one item's SREM: its UNLINKs (earlier in the pipeline) ran, the others are untouched."""
    tag = secrets.token_hex(4)
    a, b, c, not_a_set = (f"portal:v1:test:{tag}:{n}" for n in ("a", "b", "c", "deps"))
    await redis.mset({a: "1", b: "1", c: "1", not_a_set: "a string"})
    cache = RedisCache(redis, channel=f"test-{tag}", status_channel=f"test-{tag}:status")
    try:
        results = await cache.invalidate(
            [
                Invalidation(InvalidationNotice("e1", "t", (a,), "r")),
                Invalidation(InvalidationNotice("e2", "t", (b,), "r"), {not_a_set: [b]}),
                Invalidation(InvalidationNotice("e3", "t", (c,), "r")),
            ]
        )
        assert results[0] == 1 and results[2] == 1
        assert isinstance(results[1], RejectedByUpstream) and not results[1].retriable
        assert await redis.exists(a, b, c) == 0
    finally:
        await redis.unlink(a, b, c, not_a_set)


async def test_postgres_unreachable_is_retryable() -> None:
    """A pool whose server refuses connections (nothing listens on the port) → retryable."""
    pool = await asyncpg.create_pool(f"postgresql://postgres@127.0.0.1:{free_port()}/fleet", min_size=0, max_size=1)
    assert pool is not None
    try:
        with pytest.raises(DependencyUnavailable) as caught:
            await PgIdMappings(pool).for_whmcs_client(1001)
        assert caught.value.upstream == "postgres"
    finally:
        await pool.close()


# --- Redis down, then up: nothing lost ----------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A throwaway ``redis-server`` this test starts and stops by its own process handle."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        probe = Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            for _ in range(100):
                try:
                    if await probe.ping():
                        return
                except OSError:
                    pass
                except Exception:  # redis.ConnectionError while it boots
                    pass
                await asyncio.sleep(0.05)
            raise AssertionError("private redis-server did not start")
        finally:
            await probe.aclose()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()
        self.process = None


@pytest_asyncio.fixture
async def private_redis() -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_redis_down_then_up_loses_nothing(private_redis: PrivateRedis, pool: asyncpg.Pool) -> None:
    row = mapping_row()
    await seed_id_mappings(pool, [row])
    user = row["user_id"]
    # as the composition root should build it: the runtime retries, so redis-py must not (its default
    # of 3 backed-off retries makes every failed attempt take seconds)
    client = Redis(port=private_redis.port, socket_connect_timeout=0.5, socket_timeout=0.5, retry=Retry(NoBackoff(), 0))
    channel = f"test-{secrets.token_hex(4)}"
    handler = bind_cache_invalidator(
        cache=RedisCache(client, channel=channel, status_channel=f"{channel}:status"), mappings=PgIdMappings(pool)
    )[InvoiceChanged]
    other = ck.user_profile(user)
    stale = {ck.user_invoices(user), ck.user_invoice(user, 7)}
    event = InvoiceChanged(whmcs_client_id=row["whmcs_client_id"], invoice_id=7)
    msg = message(event)
    try:
        await private_redis.stop()
        for _ in range(3):  # what the runtime's in-place attempts would see
            with pytest.raises(DependencyUnavailable) as caught:
                await handler(event, msg)
            assert caught.value.retriable

        await private_redis.start()  # back, empty (no persistence): the portal caches again
        for key in (*stale, other):
            await client.set(key, "{}")
        async with Listener(client, channel) as listener:
            await handler(event, msg)  # the redelivery (retry tier or a replay)
            notice = await listener.notice()

        assert await client.exists(*stale) == 0 and await client.exists(other) == 1
        assert notice["event_id"] == msg.event_id
    finally:
        await client.aclose()
        await pool.execute("DELETE FROM id_mappings WHERE user_id = $1::uuid", user)
