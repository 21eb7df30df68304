"""The WHMCS webhook receiver against the real local stack (Kafka + Redis), served by ``serve`` itself.

Contract: every answer of the receiver (200, 200-duplicate, 400 malformed/unknown, 401
missing/bad/stale, 409, 413) on a real socket; an accepted webhook is one CloudEvents record on the
topic, keyed by the WHMCS client id, with ``ce_id = whmcs-webhook:<webhook-id>``; signed bodies we
cannot read land on the ingress DLQ; the WHMCS sandbox's emitter reaches Kafka through the receiver;
and the Redis dedupe store honours the same contract as its fake. Each test uses its own topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord
from redis.asyncio import Redis
from standardwebhooks.webhooks import Webhook
from structlog.testing import capture_logs

from adapters.kafka import ensure_topics
from adapters.webhook_dedupe import Claim, DedupeStore, RedisDedupeStore
from events.errors import DependencyUnavailable
from events.topics import TopicSpec
from tests.unit.test_webhook_dedupe import DedupeContract
from workers.config import Settings
from workers.ingress.webhook_server import DEDUPE_PREFIX, PATH, make_receiver, serve

pytestmark = pytest.mark.integration

SECRET = "whsec_c2FuZGJveC13ZWJob29rLXNlY3JldA=="  # the default of FLEET_WHMCS__WEBHOOK_SECRETS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def webhook(event: str = "InvoicePaid", **data: Any) -> bytes:
    data = {"client_id": 4242, "invoice_id": 9001, **data}
    return json.dumps({"event": event, "occurred_at": "2027-01-15T08:00:00+00:00", "data": data}).encode()


def signed(body: bytes, webhook_id: str | None = None, ts: float | None = None) -> dict[str, str]:
    webhook_id = webhook_id or f"msg_it_{uuid.uuid4().hex}"
    at = datetime.fromtimestamp(ts if ts is not None else time.time(), UTC)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(SECRET).sign(webhook_id, at, body.decode()),
        "content-type": "application/json",
    }


@dataclass
class Receiver:
    url: str
    topic: str
    dlq: str
    bootstrap: str
    redis_url: str
    http: aiohttp.ClientSession

    async def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        async with self.http.post(self.url + PATH, data=body, headers=headers) as response:
            return response.status, await response.json()

    async def records(self, topic: str, expected: int, timeout_s: float = 10.0) -> list[ConsumerRecord]:
        return await read_topic(self.bootstrap, topic, expected, timeout_s)


async def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 10.0) -> list[ConsumerRecord]:
    """Everything on ``topic`` from the start: waits for ``expected`` records, then half a second more
    (so a duplicate that would follow is caught too)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    found: list[ConsumerRecord] = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and len(found) < expected:
            batches = await consumer.getmany(timeout_ms=200)
            found += [record for batch in batches.values() for record in batch]
        batches = await consumer.getmany(timeout_ms=500)
        found += [record for batch in batches.values() for record in batch]
    finally:
        await consumer.stop()
    return found


@contextlib.asynccontextmanager
async def running_receiver(stack_env: dict[str, str]) -> AsyncIterator[Receiver]:
    """``serve`` on a free port with fresh topics, until the block ends (shared with the PHP hook tests)."""
    bootstrap, suffix, port = stack_env["KAFKA_BOOTSTRAP"], uuid.uuid4().hex[:8], free_port()
    topic, dlq = f"test.whmcs.billing.{suffix}", f"test.ingress.dlq.{suffix}"
    await ensure_topics(bootstrap, [TopicSpec(topic, 4, 3_600_000), TopicSpec(dlq, 1, 3_600_000)])
    settings = Settings(
        kafka={"bootstrap": bootstrap}, redis={"url": stack_env["REDIS_URL"]}, whmcs={"webhook_listen_port": port}
    )
    stop = asyncio.Event()
    server = asyncio.create_task(serve(settings, stop, topic=topic, dlq_topic=dlq))
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{port}"
            await wait_ready(http, url, server)
            yield Receiver(url, topic, dlq, bootstrap, stack_env["REDIS_URL"], http)
    finally:
        stop.set()
        await asyncio.wait_for(server, 30)


@pytest_asyncio.fixture
async def receiver(stack_env: dict[str, str]) -> AsyncIterator[Receiver]:
    async with running_receiver(stack_env) as running:
        yield running


async def wait_ready(http: aiohttp.ClientSession, url: str, server: asyncio.Task[None]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.done():
            server.result()  # raises what went wrong
        try:
            async with http.get(url + "/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise TimeoutError("receiver not ready")


async def test_an_accepted_webhook_is_one_cloudevent_keyed_by_the_whmcs_client(receiver: Receiver) -> None:
    body = webhook(status="Paid", total="15.95")
    headers = signed(body)
    status, answer = await receiver.post(body, headers)
    assert (status, answer["status"]) == (200, "accepted")

    [record] = await receiver.records(receiver.topic, 1)
    assert record.key == b"4242"
    ce = dict(record.headers)
    assert ce["ce_id"] == f"whmcs-webhook:{headers['webhook-id']}".encode()
    assert ce["ce_type"] == b"fleet.billing.invoice-changed.v1"
    assert ce["ce_source"] == b"/fleet/whmcs-webhooks"
    assert ce["ce_subject"] == b"4242"
    assert ce["ce_time"] == b"2027-01-15T08:00:00Z"
    assert ce["content-type"] == b"application/json"
    data = json.loads(record.value)
    assert data | {"whmcs_client_id": 4242, "invoice_id": 9001, "status": "Paid", "hook": "InvoicePaid"} == data
    assert "total" not in data  # vendor fields stay out of our events


async def test_a_redelivery_answers_200_and_is_not_produced_again(receiver: Receiver) -> None:
    body = webhook()
    headers = signed(body)
    assert (await receiver.post(body, headers))[0] == 200
    resigned = signed(body, headers["webhook-id"], time.time() + 1)  # a retry is signed afresh
    status, answer = await receiver.post(body, resigned)
    assert (status, answer["status"]) == (200, "duplicate")
    assert len(await receiver.records(receiver.topic, 2, timeout_s=2)) == 1


async def test_a_webhook_held_by_another_request_gets_409_with_retry_after(receiver: Receiver) -> None:
    body = webhook()
    headers = signed(body)
    redis = Redis.from_url(receiver.redis_url)
    try:
        await redis.set(DEDUPE_PREFIX + headers["webhook-id"], "inflight:another-replica", px=5_000)
    finally:
        await redis.aclose()
    async with receiver.http.post(receiver.url + PATH, data=body, headers=headers) as response:
        assert (response.status, response.headers["Retry-After"]) == (409, "1")
        assert (await response.json())["error"] == "in_progress"


@pytest.mark.parametrize(
    ("body", "code"),
    [(b'{"event": "InvoicePaid", "occurred_at"', "malformed_json"), (webhook("InvoiceTeleported"), "unknown_event")],
)
async def test_signed_unreadable_bodies_get_400_and_are_kept_on_the_ingress_dlq(
    receiver: Receiver, body: bytes, code: str
) -> None:
    headers = signed(body)
    status, answer = await receiver.post(body, headers)
    assert (status, answer["error"]) == (400, code)
    assert set(answer) == {"error", "reason"}
    [dead] = await receiver.records(receiver.dlq, 1)
    assert (dead.key, dead.value) == (headers["webhook-id"].encode(), body)
    assert dict(dead.headers)["error_code"] == code.encode()


def without_signature(body: bytes) -> dict[str, str]:
    return {k: v for k, v in signed(body).items() if k != "webhook-signature"}


def with_foreign_signature(body: bytes) -> dict[str, str]:
    return signed(body) | {"webhook-signature": "v1,bm90IGEgc2lnbmF0dXJlIGZyb20gdXM="}


def signed_an_hour_ago(body: bytes) -> dict[str, str]:
    return signed(body, ts=time.time() - 3600)


@pytest.mark.parametrize(
    ("make_headers", "code"),
    [
        (without_signature, "missing_signature"),
        (with_foreign_signature, "invalid_signature"),
        (signed_an_hour_ago, "stale_timestamp"),
    ],
)
async def test_unauthenticated_webhooks_get_401(
    receiver: Receiver, make_headers: Callable[[bytes], dict[str, str]], code: str
) -> None:
    body = webhook()
    status, answer = await receiver.post(body, make_headers(body))
    assert (status, answer["error"]) == (401, code)
    assert await receiver.records(receiver.topic, 0, timeout_s=0.5) == []


async def test_a_body_over_256_kb_gets_413(receiver: Receiver) -> None:
    body = b'{"pad": "' + b"x" * (256 * 1024) + b'"}'
    status, answer = await receiver.post(body, signed(body))
    assert (status, answer["error"]) == (413, "body_too_large")


async def test_metrics_and_health_are_served(receiver: Receiver) -> None:
    body = webhook()
    await receiver.post(body, signed(body))
    async with receiver.http.get(receiver.url + "/metrics") as response:
        text = await response.text()
    assert 'fleet_whmcs_webhooks_accepted_total{outcome="produced"} 1.0' in text
    assert "fleet_whmcs_webhooks_produce_seconds_bucket" in text
    async with receiver.http.get(receiver.url + "/livez") as response:
        assert response.status == 200


async def test_the_whmcs_sandbox_emitter_reaches_kafka_through_the_receiver(receiver: Receiver) -> None:
    """The sandbox plays the WHMCS hook file: its signed webhooks must verify, parse and land on Kafka."""
    from aiohttp.test_utils import TestClient, TestServer

    from sandbox.whmcs import WhmcsSandbox

    sandbox = WhmcsSandbox(webhook_url=receiver.url + PATH, webhook_secret=SECRET)
    async with TestClient(TestServer(sandbox.app())) as client:
        client_id = next(iter(sandbox.world.clients))
        created = await (await client.post("/_sandbox/invoices", json={"clientid": client_id, "total": 10})).json()
        await client.post("/_sandbox/invoices", json={"action": "pay", "invoiceid": created["invoiceid"]})
        await client.post("/_sandbox/paymethods", json={"clientid": client_id, "type": "BankAccount"})  # no hook
        await client.post("/_sandbox/paymethods", json={"clientid": client_id, "type": "CreditCard"})
        await sandbox.emitter.drain()
        sent = {e["webhook_id"]: e for e in sandbox.emitter.events}
        assert sorted(e["event"] for e in sent.values()) == ["CCUpdate", "InvoiceCreated", "InvoicePaid"]
        assert all(d.status == 200 for d in sandbox.emitter.deliveries), sandbox.emitter.deliveries

    records = await receiver.records(receiver.topic, len(sent))
    assert sorted(dict(r.headers)["ce_id"].decode() for r in records) == sorted(f"whmcs-webhook:{i}" for i in sent)
    assert {r.key for r in records} == {str(client_id).encode()}
    assert {dict(r.headers)["ce_type"] for r in records} == {
        b"fleet.billing.invoice-changed.v1",
        b"fleet.billing.payment-method-changed.v1",
    }


class TestRedisDedupeStore(DedupeContract):
    """The fake's contract, against Redis (TTLs in real time)."""

    @pytest_asyncio.fixture
    async def store(self, stack_env: dict[str, str]) -> AsyncIterator[RedisDedupeStore]:
        self.redis = Redis.from_url(stack_env["REDIS_URL"])
        self.prefix = f"test:dedupe:{uuid.uuid4().hex[:6]}:"
        yield self.build()
        await self.redis.aclose()

    def build(self, **options: Any) -> RedisDedupeStore:
        return RedisDedupeStore(self.redis, prefix=self.prefix, inflight_ttl_s=0.3, done_ttl_s=0.6, **options)

    async def advance(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def other(self, store: DedupeStore) -> DedupeStore:
        return self.build()

    async def test_a_lone_completion_is_written_after_its_linger(self, store: DedupeStore, webhook_id: str) -> None:
        lingering = self.build(complete_linger_s=0.2)
        await lingering.claim(webhook_id, "a")
        lingering.complete(webhook_id)
        assert await store.claim(webhook_id, "b") is Claim.IN_PROGRESS  # queued: no claim of its own carried it
        await asyncio.sleep(0.25)
        assert await store.claim(webhook_id, "b") is Claim.DUPLICATE

    async def test_claims_go_on_after_redis_forgot_the_script(self, store: DedupeStore, webhook_id: str) -> None:
        """The store sends ``EVALSHA`` itself: after ``SCRIPT FLUSH`` (or a restarted Redis) it loads the script."""
        assert await store.claim(webhook_id + "a", "a") is Claim.NEW
        await self.redis.script_flush()
        assert await store.claim(webhook_id + "b", "b") is Claim.NEW
        assert await self.redis.get(self.prefix + webhook_id + "b") == b"inflight:b"

    async def test_a_dropped_connection_fails_one_call_and_the_next_reconnects(
        self, store: DedupeStore, webhook_id: str
    ) -> None:
        assert await store.claim(webhook_id + "a", "a") is Claim.NEW  # the store holds its connection now
        (held,) = [c["id"] for c in await self.redis.client_list() if c["cmd"] == "evalsha"]
        await self.redis.execute_command("CLIENT", "KILL", "ID", held)
        outcomes = []
        for attempt in ("b", "c"):
            try:
                outcomes.append(await store.claim(webhook_id + attempt, attempt))
            except DependencyUnavailable:
                outcomes.append(None)
        assert outcomes[-1] is Claim.NEW, outcomes
        assert await self.redis.get(self.prefix + webhook_id + "c") == b"inflight:c"


async def test_the_redis_store_raises_dependency_unavailable_when_redis_is_away() -> None:
    """Every batched call fails as a whole, and each waiting request gets the receiver's "fail open" signal."""
    redis = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    lost: list[DependencyUnavailable] = []
    store = RedisDedupeStore(redis, prefix="test:dedupe:away:", inflight_ttl_s=30, done_ttl_s=60, on_error=lost.append)
    try:
        store.complete("c")
        results = await asyncio.gather(store.claim("a", "o1"), store.claim("b", "o2"), return_exceptions=True)
        assert all(isinstance(result, DependencyUnavailable) for result in results), results
        assert len(lost) == 1  # the queued completion went with the claims, and failed with them
        with pytest.raises(DependencyUnavailable):
            await store.release("a", "o1")
    finally:
        await redis.aclose()


async def test_the_redis_store_bounds_each_call_when_redis_does_not_answer() -> None:
    """A Redis that accepts and never replies (blackholed): the store's own ``timeout_s`` answers every
    waiting claim and a release with ``DependencyUnavailable``, although the client has no socket timeout."""
    silent: list[asyncio.StreamWriter] = []

    async def never_answer(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.append(writer)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    redis = Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=0.5)
    store = RedisDedupeStore(redis, prefix="test:dedupe:silent:", inflight_ttl_s=30, done_ttl_s=60, timeout_s=0.2)
    try:
        results = await asyncio.wait_for(
            asyncio.gather(store.claim("a", "o1"), store.claim("b", "o2"), return_exceptions=True), 5
        )
        assert all(isinstance(result, DependencyUnavailable) for result in results), results
        with pytest.raises(DependencyUnavailable):
            await asyncio.wait_for(store.release("a", "o1"), 5)
    finally:
        await redis.aclose()
        for writer in silent:
            writer.close()
        server.close()


async def test_a_done_mark_redis_did_not_take_is_counted_like_any_dedupe_error() -> None:
    """Nobody awaits a completion, so the receiver ``serve`` builds counts and logs a lost one itself."""
    redis = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    receiver = make_receiver(Settings(), producer=None, redis=redis)
    try:
        with capture_logs() as logs:
            receiver.dedupe.complete("msg_lost")
            await receiver.dedupe.flush()
        assert receiver.metrics.registry.get_sample_value("fleet_whmcs_webhooks_dedupe_unavailable_total") == 1
        assert [entry["event"] for entry in logs] == ["webhook_dedupe_unavailable"]
    finally:
        await redis.aclose()
