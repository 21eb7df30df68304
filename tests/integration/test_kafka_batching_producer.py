"""``BatchingProducer`` against the real broker: shared batches keep every promise of ``send_and_wait``.

Contract: every concurrent caller gets the (topic, partition, offset) its own record landed at, and
nothing else is on the topic; a key lands on the partition ``send`` would pick, and one key's records
keep the order they were published in; a stopped producer answers ``DependencyUnavailable`` rather
than hanging or pretending.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

from adapters.kafka import AiokafkaProducer, BatchingProducer, Delivered, durable_producer, ensure_topics
from events.errors import DependencyUnavailable
from events.topics import TopicSpec

pytestmark = pytest.mark.integration

HEADERS = [("ce_id", b"x"), ("content-type", b"application/json")]


@pytest_asyncio.fixture
async def kafka(stack_env: dict[str, str]) -> AsyncIterator[tuple[str, str, Any]]:
    bootstrap, topic = stack_env["KAFKA_BOOTSTRAP"], f"t-batching-{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [TopicSpec(topic, 4, 3_600_000)])
    producer = durable_producer(bootstrap, "test-batching")
    await producer.start()
    try:
        yield bootstrap, topic, producer
    finally:
        await producer.stop()


async def read_all(bootstrap: str, topic: str, expected: int) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    found: list[Any] = []
    try:
        for _ in range(50):
            batches = await consumer.getmany(timeout_ms=200)
            found += [record for batch in batches.values() for record in batch]
            if len(found) >= expected:
                break
        batches = await consumer.getmany(timeout_ms=300)  # nothing more may follow
        found += [record for batch in batches.values() for record in batch]
    finally:
        await consumer.stop()
    return found


async def test_concurrent_callers_each_get_their_own_acknowledged_record(kafka: tuple[str, str, Any]) -> None:
    bootstrap, topic, raw = kafka
    producer = BatchingProducer(raw, timeout_s=10)
    calls = [(f"client-{n % 37}".encode(), f"value-{n}".encode()) for n in range(1_500)]

    delivered = await asyncio.gather(*(producer.publish_raw(topic, key, value, HEADERS) for key, value in calls))

    records = await read_all(bootstrap, topic, len(calls))
    assert len(records) == len(calls)
    at = {(r.topic, r.partition, r.offset): (r.key, r.value, list(r.headers)) for r in records}
    for (key, value), where in zip(calls, delivered, strict=True):
        assert at[(where.topic, where.partition, where.offset)] == (key, value, HEADERS)


async def test_keys_land_where_send_puts_them_in_the_order_published(kafka: tuple[str, str, Any]) -> None:
    bootstrap, topic, raw = kafka
    keys = [f"{n}".encode() for n in range(1, 60)]
    plain = AiokafkaProducer(raw)
    expected: dict[bytes, int] = {}
    for key in keys:
        expected[key] = (await plain.publish_raw(topic, key, b"plain", HEADERS)).partition

    producer = BatchingProducer(raw, timeout_s=10)
    calls = [(key, f"{n}".encode()) for n in range(10) for key in keys]  # each key 10 times, interleaved
    delivered: list[Delivered] = await asyncio.gather(
        *(producer.publish_raw(topic, key, value, HEADERS) for key, value in calls)
    )

    assert all(where.partition == expected[key] for (key, _), where in zip(calls, delivered, strict=True))
    records = sorted(
        (r for r in await read_all(bootstrap, topic, len(keys) + len(calls)) if r.value != b"plain"),
        key=lambda r: (r.partition, r.offset),
    )
    for key in keys:
        assert [r.value for r in records if r.key == key] == [f"{n}".encode() for n in range(10)]


async def test_a_stopped_producer_answers_dependency_unavailable(kafka: tuple[str, str, Any]) -> None:
    _, topic, raw = kafka
    producer = BatchingProducer(raw, timeout_s=5)
    await producer.publish_raw(topic, b"k", b"before", HEADERS)  # the topic's metadata is known now
    await raw.stop()
    with pytest.raises(DependencyUnavailable):
        await asyncio.wait_for(producer.publish_raw(topic, b"k", b"after", HEADERS), 10)


async def test_partitions_added_to_a_topic_count_from_the_next_metadata_update(kafka: tuple[str, str, Any]) -> None:
    """The producer keeps each topic's partition count between metadata updates; after partitions are
    added and aiokafka refreshed its metadata, keys land where ``send`` puts them again."""
    bootstrap, _, raw = kafka
    topic = f"t-batching-grow-{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [TopicSpec(topic, 2, 3_600_000)])
    producer, plain = BatchingProducer(raw, timeout_s=10), AiokafkaProducer(raw)
    keys = [f"{n}".encode() for n in range(1, 40)]
    assert {(await producer.publish_raw(topic, key, b"v", HEADERS)).partition for key in keys} == {0, 1}

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_partitions({topic: NewPartitions(total_count=4)})
    finally:
        await admin.close()
    for _ in range(50):  # the broker may take a moment to report the new partitions
        await raw.client.force_metadata_update()
        if len(raw.client.cluster.partitions_for_topic(topic) or ()) == 4:
            break
        await asyncio.sleep(0.1)

    landed = set()
    for key in keys:
        expected = (await plain.publish_raw(topic, key, b"plain", HEADERS)).partition
        assert (await producer.publish_raw(topic, key, b"v", HEADERS)).partition == expected
        landed.add(expected)
    assert landed == {0, 1, 2, 3}


async def test_submit_covers_unkeyed_records_and_topics_not_fetched_yet(kafka: tuple[str, str, Any]) -> None:
    """``submit`` queues keyed records on known topics itself and hands the rest to ``publish_raw``
    (metadata fetch, ``send_and_wait``); either way the future settles at the acknowledgement."""
    bootstrap, _, raw = kafka
    topic = f"t-batching-fresh-{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [TopicSpec(topic, 2, 3_600_000)])
    producer = BatchingProducer(raw, timeout_s=10)
    first = await producer.submit(topic, b"k", b"first", HEADERS)  # metadata not fetched by this producer yet
    unkeyed = await producer.submit(topic, None, b"unkeyed", HEADERS)
    queued = await asyncio.gather(*(producer.submit(topic, b"k", f"{n}".encode(), HEADERS) for n in range(5)))

    records = {(r.partition, r.offset): r.value for r in await read_all(bootstrap, topic, 7)}
    assert records[(first.partition, first.offset)] == b"first"
    assert records[(unkeyed.partition, unkeyed.offset)] == b"unkeyed"
    assert [records[(d.partition, d.offset)] for d in queued] == [b"0", b"1", b"2", b"3", b"4"]
    assert len(records) == 7


class CountingBatches:
    """Wraps ``send_batch`` of the raw producer: the record count of every batch sent, in order."""

    def __init__(self, raw: Any) -> None:
        self.sizes: list[int] = []
        self._send_batch = raw.send_batch
        raw.send_batch = self

    async def __call__(self, batch: Any, topic: str, *, partition: int) -> Any:
        self.sizes.append(batch.record_count())
        return await self._send_batch(batch, topic, partition=partition)


async def test_under_load_the_next_round_lingers_to_grow(kafka: tuple[str, str, Any]) -> None:
    """After a round of ``linger_from`` records or more, records that trickle in within ``linger_s``
    leave together; a quiet producer (rounds below ``linger_from``) sends each at once."""
    _, topic, raw = kafka
    counted = CountingBatches(raw)
    producer = BatchingProducer(raw, timeout_s=10, linger_s=0.5, linger_from=8)

    await producer.publish_raw(topic, b"k", b"warm", HEADERS)  # metadata fetched, a round of one
    for n in range(3):  # quiet: each alone, no linger after rounds of one
        await asyncio.wait_for(producer.publish_raw(topic, b"k", f"quiet-{n}".encode(), HEADERS), 0.4)
    await asyncio.gather(*(producer.publish_raw(topic, b"k", f"load-{n}".encode(), HEADERS) for n in range(10)))
    trickle = []
    for n in range(5):  # well apart compared with a round trip, well within the linger
        trickle.append(asyncio.ensure_future(producer.publish_raw(topic, b"k", f"trickle-{n}".encode(), HEADERS)))
        await asyncio.sleep(0.02)
    await asyncio.gather(*trickle)

    assert counted.sizes == [1, 1, 1, 1, 10, 5]
