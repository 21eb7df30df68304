"""The consume runtime on the real broker and Postgres of the local stack.

Contract: a record is committed only once done; transient failures are retried in place and then on
the group's retry tiers, no earlier than their ``retry_not_before``; permanent ones reach
``<group>.dlq`` byte for byte with every provenance header; a worker killed with SIGKILL between
handling and commit is redelivered and, thanks to the inbox, applies its side effect once; SIGTERM
mid-stream and a rebalance mid-stream lose nothing and duplicate nothing. Assertions read Kafka
topics and Postgres rows, never logs. Every test uses its own topic, group and ids.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from aiohttp import ClientSession
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from adapters.db import claim_event, migrate
from adapters.kafka import AiokafkaProducer, durable_producer, ensure_topics
from events import failure as fh
from events.base import to_envelope
from events.envelope import to_record
from events.errors import MappingMissing, UpstreamUnavailable
from events.salesforce import OrderChanged
from events.topics import DAY_MS, TopicSpec, dlq_topic, group_topics, retry_topic
from tests.support import eventually
from workers.config import KafkaSettings, RuntimeSettings
from workers.runtime import Message, Route, Worker, build_consumer, partition_counter

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TEST_CONSUMER = {"session_timeout_ms": 6_000, "heartbeat_interval_ms": 500, "rebalance_timeout_ms": 5_000}
PARTITIONS = 4


# --- fixtures and helpers --------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env(stack_env: dict[str, str]) -> AsyncIterator[dict[str, Any]]:  # noqa: F811
    dsn = stack_env["DATABASE_URL"]
    await migrate(dsn)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=8)
    assert pool is not None
    await pool.execute(
        "CREATE TABLE IF NOT EXISTS rt_side_effects ("
        " event_id text PRIMARY KEY, order_id text NOT NULL, worker text NOT NULL,"
        " at timestamptz NOT NULL DEFAULT now())"
    )
    await pool.execute(
        "CREATE TABLE IF NOT EXISTS rt_deliveries ("
        " id bigserial PRIMARY KEY, event_id text NOT NULL, worker text NOT NULL,"
        " at timestamptz NOT NULL DEFAULT now())"
    )
    producer = durable_producer(stack_env["KAFKA_BOOTSTRAP"], "rt-tests")
    await producer.start()
    try:
        yield {"bootstrap": stack_env["KAFKA_BOOTSTRAP"], "dsn": dsn, "pool": pool, "producer": producer}
    finally:
        await producer.stop()
        await pool.close()


class Names:
    def __init__(self, name: str) -> None:
        tag = uuid.uuid4().hex[:8]
        self.topic = f"t-{name}-{tag}"
        self.group = f"g-{name}-{tag}"
        self.prefix = f"{name}-{tag}-"  # sf_order_id prefix: rows of this test only

    def order(self, i: int) -> OrderChanged:
        return OrderChanged(sf_order_id=f"{self.prefix}{i}", changed_fields=["Status"])


async def topics_for(env: dict[str, Any], names: Names) -> None:
    await ensure_topics(env["bootstrap"], [TopicSpec(names.topic, PARTITIONS, DAY_MS), *group_topics(names.group)])


async def produce(
    env: dict[str, Any], topic: str, events: list[OrderChanged], *, partition: int | None = None, extra=()
) -> list[tuple[bytes, bytes, list[tuple[str, bytes]], Any]]:
    sent = []
    for event in events:
        key, value, headers = to_record(to_envelope(event, source="/rt-test", correlationid="corr-rt"))
        headers = [*headers, *extra]
        meta = await env["producer"].send_and_wait(topic, value=value, key=key, headers=headers, partition=partition)
        sent.append((key, value, headers, meta))
    return sent


async def read_topic(env: dict[str, Any], topic: str, count: int, timeout: float = 20.0) -> list[Any]:
    """Every record of ``topic`` from the beginning, once ``count`` are there."""
    consumer = AIOKafkaConsumer(bootstrap_servers=env["bootstrap"], enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]  # every test topic has 4
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(out) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                out.extend(records)
        return out
    finally:
        await consumer.stop()


async def end_offsets(env: dict[str, Any], topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=env["bootstrap"])
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return {tp.partition: off for tp, off in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def committed_offsets(env: dict[str, Any], group: str, topic: str) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=env["bootstrap"], group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(PARTITIONS)}
    finally:
        await consumer.stop()


async def count(env: dict[str, Any], sql: str, *args: Any) -> int:
    return int(await env["pool"].fetchval(sql, *args))


@asynccontextmanager
async def running(
    env: dict[str, Any],
    route: Route,
    *,
    settings: RuntimeSettings | None = None,
) -> AsyncIterator[Worker]:
    """A Worker on the real broker, in this process, until the block ends (then SIGTERM semantics)."""
    consumer = build_consumer(KafkaSettings(bootstrap=env["bootstrap"]), route.group, **TEST_CONSUMER)
    worker = Worker(
        route,
        consumer,
        AiokafkaProducer(env["producer"]),
        settings or RuntimeSettings(backoff_initial_s=0.05, backoff_max_s=0.5, revoke_grace_s=2.5),
        pool=env["pool"],
        partitions_for=partition_counter(env["producer"]),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await eventually(lambda: _ready(worker, task), what="worker assigned")
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def _ready(worker: Worker, task: asyncio.Task[None]) -> bool:
    if task.done():
        task.result()
    return worker.readiness()[0]


# --- in-process worker on the real broker ------------------------------------------------------


async def test_transient_error_is_retried_in_place_then_succeeds_and_is_committed(env: dict[str, Any]) -> None:
    names = Names("transient")
    await topics_for(env, names)
    calls: list[int] = []

    async def handle(event: OrderChanged, msg: Message) -> None:
        calls.append(msg.attempts)
        if len(calls) < 3:
            raise UpstreamUnavailable("whmcs 503", upstream="whmcs", status=503)

    route = Route("t", names.group, (names.topic,), {OrderChanged: handle})
    ((_, _, _, meta),) = await produce(env, names.topic, [names.order(0)], partition=1)
    async with running(env, route) as worker:
        await eventually(lambda: _committed_is(env, names, {1: meta.offset + 1}), what="commit")
        assert worker.metrics.topic(names.topic).retried_in_place == 2
    assert calls == [1, 2, 3]
    assert sum((await end_offsets(env, retry_topic(names.group, 1))).values()) == 0
    assert sum((await end_offsets(env, dlq_topic(names.group))).values()) == 0


async def test_a_backlog_deeper_than_the_buffers_is_handled_in_order_with_fetch_pacing_on_the_real_fetcher(
    env: dict[str, Any],
) -> None:
    """3,000 records over 4 partitions (six times the 500-record buffers) are all handled once, in
    offset order per partition, and committed. While records flow, aiokafka's fetcher runs with the
    busy pacing (no prefetch backoff, 5 ms long poll: polling.FetchPacing sets its attributes, and this
    fails if an aiokafka upgrade renames them); once idle, its configured values are back."""
    names = Names("pacing")
    await topics_for(env, names)
    seen: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}
    pacing: set[tuple[int, float]] = set()
    holder: dict[str, Any] = {}

    async def handle(event: OrderChanged, msg: Message) -> None:
        seen[msg.partition].append(msg.offset)
        fetcher = holder["consumer"]._fetcher
        pacing.add((fetcher._fetch_max_wait_ms, fetcher._prefetch_backoff))

    route = Route("t", names.group, (names.topic,), {OrderChanged: handle})
    async with running(env, route) as worker:
        holder["consumer"] = worker._consumer
        events = [names.order(i) for i in range(3_000)]
        for p in range(PARTITIONS):
            for key, value, headers in (to_record(to_envelope(e, source="/rt-test")) for e in events[p::PARTITIONS]):
                await env["producer"].send(names.topic, value=value, key=key, headers=headers, partition=p)
        await env["producer"].flush()
        ends = await end_offsets(env, names.topic)
        await eventually(lambda: _committed_is(env, names, ends), what="every record committed", timeout=60)
        fetcher = worker._consumer._fetcher  # type: ignore[attr-defined]
        await eventually(lambda: fetcher._fetch_max_wait_ms == 100, what="idle pacing restored")
        assert fetcher._prefetch_backoff == pytest.approx(0.1)
    assert {p: len(offsets) for p, offsets in seen.items()} == {p: 750 for p in range(PARTITIONS)}
    assert all(offsets == sorted(set(offsets)) for offsets in seen.values())
    assert (5, 0.0) in pacing


async def _committed_is(env: dict[str, Any], names: Names, expected: dict[int, int]) -> bool:
    committed = await committed_offsets(env, names.group, names.topic)
    # a partition nobody consumed from has no committed offset (None): its end, when it is empty (0)
    return all((committed.get(p) or 0) == o for p, o in expected.items())


async def test_retry_tier_delay_is_honoured(env: dict[str, Any]) -> None:
    """The record reappears on retry.1 with not_before >= failure + delay and runs no earlier."""
    names = Names("delay")
    await topics_for(env, names)
    seen: list[tuple[float, int, int]] = []  # (wall time, tier, attempts)

    async def handle(event: OrderChanged, msg: Message) -> None:
        seen.append((time.time(), msg.tier, msg.attempts))
        if msg.tier == 0:
            raise UpstreamUnavailable("freebit busy")

    route = Route(
        "t", names.group, (names.topic,), {OrderChanged: handle}, in_place_attempts=1, retry_delays_ms=(1_500, 3_000)
    )
    async with running(env, route):
        await produce(env, names.topic, [names.order(0)], partition=2)
        await eventually(lambda: _true(len(seen) == 2), what="handled on retry.1")
    (retried,) = await read_topic(env, retry_topic(names.group, 1), 1)
    h = dict(retried.headers)
    failed_at, handled_at = seen[0][0], seen[1][0]
    not_before_s = int(h[fh.NOT_BEFORE]) / 1000
    assert not_before_s >= failed_at + 1.5 - 0.05
    assert handled_at >= not_before_s
    assert seen[1][1:] == (1, 2)  # tier 1, second invocation overall
    assert h[fh.RETRY_TIER] == b"1" and h[fh.SOURCE_TOPIC] == names.topic.encode()
    assert retried.partition == 2  # the source partition (mod 4)


async def _all_committed(env: dict[str, Any], names: Names) -> bool:
    return await _committed_is(env, names, await end_offsets(env, names.topic))


async def _true(value: bool) -> bool:
    return value


async def test_permanent_error_reaches_the_dead_letter_with_every_provenance_header(env: dict[str, Any]) -> None:
    names = Names("dlq")
    await topics_for(env, names)

    async def handle(event: OrderChanged, msg: Message) -> None:
        raise MappingMissing("no WHMCS product for SKU-9 " + "x" * 2_000, code="PRODUCT_UNMAPPED")

    custom = [("x-trace", b"\x00\x01binary\xff"), ("x-empty", b"")]
    route = Route("t", names.group, (names.topic,), {OrderChanged: handle})
    before = time.time()
    async with running(env, route):
        ((key, value, headers, meta),) = await produce(env, names.topic, [names.order(0)], partition=3, extra=custom)
        (dead,) = await read_topic(env, dlq_topic(names.group), 1)
    after = time.time()
    assert dead.key == key and dead.value == value
    assert list(dead.headers[: len(headers)]) == headers  # original headers first, byte for byte, in order
    h = dict(dead.headers[len(headers) :])
    assert set(h) == set(fh.PROVENANCE)
    assert h[fh.SOURCE_TOPIC] == names.topic.encode()
    assert h[fh.SOURCE_PARTITION] == b"3"
    assert h[fh.SOURCE_OFFSET] == str(meta.offset).encode()
    assert h[fh.SOURCE_TIMESTAMP] == str(meta.timestamp).encode()
    assert h[fh.SOURCE_GROUP] == names.group.encode()
    assert h[fh.ATTEMPTS] == b"1"  # permanent: never retried
    assert h[fh.ERROR_CLASS] == b"events.errors.MappingMissing"
    assert h[fh.ERROR_CODE] == b"PRODUCT_UNMAPPED"
    assert h[fh.ERROR_MESSAGE].startswith(b"no WHMCS product for SKU-9 xxx")
    assert len(h[fh.ERROR_MESSAGE]) == fh.ERROR_MESSAGE_MAX
    assert b"MappingMissing" in h[fh.ERROR_STACKTRACE] and len(h[fh.ERROR_STACKTRACE]) <= fh.STACKTRACE_MAX
    assert h[fh.ERROR_STAGE] == b"handle"
    for stamp in (h[fh.FIRST_FAILED_AT], h[fh.LAST_FAILED_AT]):
        from datetime import datetime

        assert before - 1 <= datetime.fromisoformat(stamp.decode()).timestamp() <= after + 1
        assert stamp.endswith(b"Z")
    assert h[fh.REPLAY_COUNT] == b"0"
    assert dead.partition == 3  # keyed and partitioned like the source
    assert await _committed_is(env, names, {3: meta.offset + 1})


async def test_the_worker_shows_its_groups_dead_letters_read_from_kafka(env: dict[str, Any]) -> None:
    """``fleet_dead_letters{group}`` and ``fleet_dead_letter_oldest_age_seconds{group}`` on the worker's
    /metrics: read from the DLQ topic's offsets on the real broker after two records were dead-lettered."""
    names = Names("dlqgauge")
    await topics_for(env, names)

    async def handle(event: OrderChanged, msg: Message) -> None:
        raise MappingMissing("no WHMCS product", code="PRODUCT_UNMAPPED")

    route = Route("t", names.group, (names.topic,), {OrderChanged: handle})
    settings = RuntimeSettings(backoff_initial_s=0.05, backoff_max_s=0.5, dead_letter_check_interval_s=0.2)
    labels = {"group": names.group}
    async with running(env, route, settings=settings) as worker:
        await eventually(lambda: worker.registry.get_sample_value("fleet_dead_letters", labels) == 0, what="empty")
        await produce(env, names.topic, [names.order(0)], partition=1)
        await produce(env, names.topic, [names.order(1)], partition=2)
        await read_topic(env, dlq_topic(names.group), 2)
        await eventually(lambda: worker.registry.get_sample_value("fleet_dead_letters", labels) == 2, what="depth 2")
        age = worker.registry.get_sample_value("fleet_dead_letter_oldest_age_seconds", labels)
        assert age is not None and 0 <= age < 60


@pytest.mark.parametrize(
    ("keys", "limit", "pause_s"),
    [
        pytest.param(240, 1, 0.02, id="one-record-at-a-time"),
        # 12 keys of 20 records, every key in flight at once: revocation meets busy lanes with records
        # queued behind them (left to the next owner) and later records of other keys done
        pytest.param(12, 32, 0.2, id="keys-in-flight"),
    ],
)
async def test_a_second_member_joining_mid_stream_causes_no_duplicate_side_effect(
    env: dict[str, Any], keys: int, limit: int, pause_s: float
) -> None:
    """Revocation waits for in-flight records and commits them: the new owner starts exactly after."""
    names = Names("rebalance")
    await topics_for(env, names)
    total = 240

    def handler(worker_name: str) -> Any:
        async def handle(event: OrderChanged, msg: Message) -> None:
            pool = env["pool"]
            await pool.execute(
                "INSERT INTO rt_deliveries (event_id, worker) VALUES ($1, $2)", msg.event_id, worker_name
            )
            async with pool.acquire() as conn, conn.transaction():
                if await claim(conn, names.group, msg):
                    await conn.execute(
                        "INSERT INTO rt_side_effects (event_id, order_id, worker) VALUES ($1, $2, $3)",
                        msg.event_id,
                        event.sf_order_id,
                        worker_name,
                    )
                    await asyncio.sleep(pause_s)

        return handle

    done = f"SELECT count(*) FROM rt_side_effects WHERE order_id LIKE '{names.prefix}%'"
    await produce(env, names.topic, [names.order(i % keys) for i in range(total)])
    route_a = Route("a", names.group, (names.topic,), {OrderChanged: handler("a")}, max_in_flight_per_partition=limit)
    route_b = Route("b", names.group, (names.topic,), {OrderChanged: handler("b")}, max_in_flight_per_partition=limit)
    async with running(env, route_a):
        await eventually(lambda: _at_least(env, done, 30), what="A started")
        async with running(env, route_b) as b:
            await eventually(lambda: _at_least(env, done, total), timeout=60, what="all handled")
            assert b.readiness()[0]
    by_worker = dict(
        await env["pool"].fetch(
            "SELECT worker, count(*) FROM rt_side_effects WHERE order_id LIKE $1 GROUP BY worker", names.prefix + "%"
        )
    )
    assert by_worker.get("b", 0) > 0  # B took partitions over mid-stream
    assert await count(env, done) == total
    deliveries = await env["pool"].fetch(
        "SELECT d.event_id, count(*) AS n FROM rt_deliveries d JOIN rt_side_effects s USING (event_id)"
        " WHERE s.order_id LIKE $1 GROUP BY d.event_id HAVING count(*) > 1",
        names.prefix + "%",
    )
    # not even redelivered: the revoked member committed what it had done, and with keys in flight the
    # records done after one left queued travelled in the commit metadata (workers.runtime.done_ahead)
    assert deliveries == []
    ends = await end_offsets(env, names.topic)
    committed = await committed_offsets(env, names.group, names.topic)
    # 12 random keys leave a partition empty in ~1 run of 8 (4 x (3/4)^12): nobody consumed anything
    # there, so nothing is committed (None), which is its end (0) as far as delivery goes
    assert {p: offset or 0 for p, offset in committed.items()} == ends, committed


async def _at_least(env: dict[str, Any], sql: str, n: int) -> bool:
    return await count(env, sql) >= n


# --- worker processes --------------------------------------------------------------------------


def spawn(
    env: dict[str, Any], names: Names, name: str, delay_s: float, commit_interval_s: float
) -> subprocess.Popen[str]:
    argv = [
        sys.executable,
        "-m",
        "tests.integration._worker_proc",
        env["bootstrap"],
        env["dsn"],
        names.topic,
        names.group,
        name,
        str(delay_s),
        str(commit_interval_s),
    ]
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    return subprocess.Popen(argv, cwd=REPO, env=child_env, stdout=subprocess.PIPE, text=True)


async def wait_ready(proc: subprocess.Popen[str], timeout: float = 30.0) -> int:
    """The child's health port, once /readyz says it has partitions."""
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout)
    assert line.startswith("READY "), f"worker process said {line!r} (exit {proc.poll()})"
    port = int(line.split()[1])

    async def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"worker process exited with {proc.returncode}")
        async with ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as resp:
            return resp.status == 200

    await eventually(ready, timeout=timeout, what="readyz")
    return port


async def finish(proc: subprocess.Popen[str], timeout: float = 20.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout)


async def test_kill_9_between_handling_and_commit_redelivers_and_the_inbox_applies_it_once(
    env: dict[str, Any],
) -> None:
    names = Names("kill9")
    await topics_for(env, names)
    total = 60
    done = f"SELECT count(*) FROM rt_side_effects WHERE order_id LIKE '{names.prefix}%'"
    await produce(env, names.topic, [names.order(i) for i in range(total)])
    first = spawn(env, names, "first", delay_s=0.0, commit_interval_s=3600.0)  # handles, never commits
    try:
        await wait_ready(first)
        await eventually(lambda: _at_least(env, done, total), what="first handled everything")
        assert all(o is None for o in (await committed_offsets(env, names.group, names.topic)).values())
        first.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(asyncio.to_thread(first.wait), 10) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
    second = spawn(env, names, "second", delay_s=0.0, commit_interval_s=0.2)
    try:
        await wait_ready(second)
        redelivered = (
            "SELECT count(*) FROM rt_deliveries d JOIN rt_side_effects s USING (event_id)"
            f" WHERE s.order_id LIKE '{names.prefix}%' AND d.worker = 'second'"
        )
        await eventually(lambda: _at_least(env, redelivered, total), what="redelivered to the second worker")
        await eventually(lambda: _all_committed(env, names), what="commit")
    finally:
        assert await finish(second) == 0
    assert await count(env, done) == total  # once each, all by the first worker
    assert await count(env, done + " AND worker = 'first'") == total
    inbox = await count(env, "SELECT count(*) FROM inbox WHERE consumer_group = $1", names.group)
    assert inbox == total


async def test_sigterm_mid_stream_loses_nothing_and_duplicates_nothing(env: dict[str, Any]) -> None:
    names = Names("sigterm")
    await topics_for(env, names)
    total = 200
    done = f"SELECT count(*) FROM rt_side_effects WHERE order_id LIKE '{names.prefix}%'"
    await produce(env, names.topic, [names.order(i) for i in range(total)])
    first = spawn(env, names, "first", delay_s=0.02, commit_interval_s=0.2)
    try:
        await wait_ready(first)
        await eventually(lambda: _at_least(env, done, 40), what="first is mid-stream")
        assert await finish(first) == 0  # drained in-flight records, committed, left the group
    finally:
        if first.poll() is None:
            first.kill()
    handled_by_first = await count(env, done)
    assert 40 <= handled_by_first < total
    second = spawn(env, names, "second", delay_s=0.0, commit_interval_s=0.2)
    try:
        await wait_ready(second)
        await eventually(lambda: _at_least(env, done, total), what="second finished the stream")
        await eventually(lambda: _all_committed(env, names), what="commit")
    finally:
        assert await finish(second) == 0
    ids = {r["order_id"] for r in await env["pool"].fetch(done.replace("count(*)", "order_id"))}
    assert ids == {f"{names.prefix}{i}" for i in range(total)}  # no gaps
    twice = await env["pool"].fetch(
        "SELECT d.event_id FROM rt_deliveries d JOIN rt_side_effects s USING (event_id)"
        " WHERE s.order_id LIKE $1 GROUP BY d.event_id HAVING count(*) > 1",
        names.prefix + "%",
    )
    assert twice == []  # the graceful stop committed exactly what it had done


# --- the inbox and replays ---------------------------------------------------------------------


def _message(event_id: str, group: str = "g") -> Message:
    return Message(
        event=None,
        group=group,
        topic="t",
        partition=0,
        offset=1,
        timestamp=0,
        key=None,
        value=None,
        headers=(),
        header_map={"ce_id": event_id.encode()},
        event_type="fleet.order.changed.v1",
    )


async def claim(conn: Any, group: str, msg: Message) -> bool:
    """The inbox claim of ``msg`` for ``group``, inside ``conn``'s transaction (the saga store's way)."""
    return await claim_event(
        conn,
        group=group,
        event_id=msg.event_id,
        event_type=msg.event_type,
        topic=msg.source_topic,
        partition=msg.source_partition,
        offset=msg.source_offset,
    )


async def test_an_inbox_claim_commits_and_rolls_back_with_the_handler_writes(env: dict[str, Any]) -> None:
    pool, group, event_id = env["pool"], f"g-inbox-{uuid.uuid4().hex[:8]}", f"e-{uuid.uuid4().hex}"
    msg = _message(event_id, group)
    insert = "INSERT INTO rt_side_effects (event_id, order_id, worker) VALUES ($1, 'o', 'w')"
    with pytest.raises(UpstreamUnavailable):
        async with pool.acquire() as conn, conn.transaction():
            assert await claim(conn, group, msg)
            await conn.execute(insert, event_id)
            raise UpstreamUnavailable("after the write")
    # the failed attempt left neither the claim nor the side effect behind
    assert await count(env, "SELECT count(*) FROM inbox WHERE event_id = $1", event_id) == 0
    assert await count(env, "SELECT count(*) FROM rt_side_effects WHERE event_id = $1", event_id) == 0
    async with pool.acquire() as conn, conn.transaction():
        assert await claim(conn, group, msg)
        await conn.execute(insert, event_id)
    async with pool.acquire() as conn, conn.transaction():
        assert not await claim(conn, group, msg)  # redelivered: acknowledged without running twice
    async with pool.acquire() as conn, conn.transaction():
        assert await claim(conn, group + "-other", msg)  # another group handles the same event on its own
    row = await pool.fetchrow(
        'SELECT topic, partition, "offset" FROM inbox WHERE event_id = $1 AND consumer_group = $2', event_id, group
    )
    assert (row["topic"], row["partition"], row["offset"]) == ("t", 0, 1)


async def test_a_replayed_dead_letter_failing_again_returns_with_its_replay_count(env: dict[str, Any]) -> None:
    """What `fleet dlq replay` produces (the DLQ copy on retry.1, not_before=now, replay_count+1)."""
    names = Names("replay")
    await topics_for(env, names)

    async def handle(event: OrderChanged, msg: Message) -> None:
        raise MappingMissing("still unmapped")

    provenance = [
        (fh.SOURCE_TOPIC, b"sf.order.v1"),
        (fh.SOURCE_PARTITION, b"2"),
        (fh.SOURCE_OFFSET, b"77"),
        (fh.SOURCE_TIMESTAMP, b"1764142021123"),
        (fh.SOURCE_GROUP, names.group.encode()),
        (fh.ATTEMPTS, b"3"),
        (fh.ERROR_CLASS, b"events.errors.MappingMissing"),
        (fh.FIRST_FAILED_AT, b"2025-11-01T00:00:00.000Z"),
        (fh.REPLAY_COUNT, b"1"),
        (fh.REPLAY_JOB, b"job-42"),
        (fh.NOT_BEFORE, str(int(time.time() * 1000)).encode()),
    ]
    route = Route("t", names.group, (names.topic,), {OrderChanged: handle})
    async with running(env, route):
        ((key, value, headers, _),) = await produce(
            env, retry_topic(names.group, 1), [names.order(0)], partition=2, extra=provenance
        )
        (dead,) = await read_topic(env, dlq_topic(names.group), 1)
    original = headers[: -len(provenance)]
    assert dead.key == key and dead.value == value and list(dead.headers[: len(original)]) == original
    h = dict(dead.headers)
    assert h[fh.REPLAY_COUNT] == b"1" and h[fh.REPLAY_JOB] == b"job-42"
    assert h[fh.ATTEMPTS] == b"4" and h[fh.FIRST_FAILED_AT] == b"2025-11-01T00:00:00.000Z"
    assert (h[fh.SOURCE_TOPIC], h[fh.SOURCE_PARTITION], h[fh.SOURCE_OFFSET]) == (b"sf.order.v1", b"2", b"77")
    assert dead.partition == 2
    assert [n for n, _ in dead.headers].count(fh.REPLAY_COUNT) == 1
