"""The consumer side of Kafka for the runtime: the small aiokafka API subset the loop uses, and its factory.

Owns the consumer configuration every worker shares: manual commits only (``enable_auto_commit=False``:
the worker commits the offsets whose records are done), ``earliest`` for a new group (a new worker
must not silently skip what was produced before it first joined), ``read_committed`` (never act on
an aborted transactional write) and timeouts from ``KafkaSettings``. Must not consume or commit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.abc import ConsumerRebalanceListener  # type: ignore[import-untyped]
from aiokafka.structs import ConsumerRecord, TopicPartition  # type: ignore[import-untyped]

from workers.config import KafkaSettings

__all__ = [
    "BUSY_FETCH_WAIT_MS",
    "ConsumerPort",
    "ConsumerRebalanceListener",
    "ConsumerRecord",
    "FetchPacing",
    "TopicPartition",
    "build_consumer",
    "consumer_options",
    "partition_counter",
]


class ConsumerPort(Protocol):
    """The part of ``AIOKafkaConsumer`` the worker uses (``workers.runtime.testing.FakeConsumer`` too)."""

    def subscribe(self, topics: Iterable[str] = (), pattern: str | None = None, listener: Any = None) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord]]: ...

    def pause(self, *partitions: TopicPartition) -> None: ...

    def resume(self, *partitions: TopicPartition) -> None: ...

    def paused(self) -> set[TopicPartition]: ...

    def assignment(self) -> set[TopicPartition]: ...

    async def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None: ...

    def highwater(self, partition: TopicPartition) -> int | None: ...


#: while a worker is busy: the broker's long poll of a fetch for partitions without data (ms; the
#: configured ``fetch_max_wait_ms``, 100, applies when idle), see FetchPacing
BUSY_FETCH_WAIT_MS = 5


def consumer_options(kafka: KafkaSettings, group: str, **overrides: Any) -> dict[str, Any]:
    """The ``AIOKafkaConsumer`` keyword arguments of a worker of ``group``; tests override timeouts.

    ``rebalance_timeout_ms`` defaults to the session timeout (aiokafka's default): how long the group
    waits for members to rejoin, so the worker's bounded wait for in-flight records on revocation
    must stay well below it (``revoke_grace_s`` below).
    """
    options: dict[str, Any] = {
        **kafka.connection().options(),
        "client_id": f"{kafka.client_id}-{group}",
        "group_id": group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "session_timeout_ms": kafka.session_timeout_ms,
        "heartbeat_interval_ms": kafka.heartbeat_interval_ms,
        "max_poll_interval_ms": kafka.max_poll_interval_ms,
        "rebalance_timeout_ms": kafka.session_timeout_ms,
        "request_timeout_ms": max(kafka.request_timeout_ms, kafka.session_timeout_ms + 5_000),
        # Only a fallback: the worker passes its own ``max_records`` (``Tuning.max_records``) to every
        # ``getmany``, which overrides this.
        "max_poll_records": 1_000,
        # Fewer, larger fetches: 4 MiB per partition (default 1 MiB) cut the CPU per record in
        # bench/runtime_bench.py at 500-byte records. Memory: at most one undrained fetch per
        # partition, a response capped by ``fetch_max_bytes`` (50 MiB default), plus the worker's
        # buffers (``Tuning.buffer_per_partition`` + ``Tuning.max_records`` records per partition).
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
        # How long the broker may hold a fetch whose partitions have no data (the long poll of an idle
        # worker). The worker shortens it while records flow: see FetchPacing.
        "fetch_max_wait_ms": 100,
    }
    options.update(overrides)
    return options


class FetchPacing:
    """Keeps aiokafka fetching ahead while records flow; restores its idle settings when they stop.

    aiokafka keeps one fetch in flight per broker, and while any partition of a broker holds
    prefetched records younger than ``prefetch_backoff`` (100 ms) it sends that broker no fetch at
    all. A busy worker drains its partitions one after another, so a drained one waited for the
    others, or for those 100 ms; and when the fetch finally went out while every source partition
    still held records, it asked only for the idle ones (the retry tiers), which the broker held for
    ``fetch_max_wait_ms`` while the source partitions drained behind it. Deep buffers on our side hid
    those stalls at a price: a record handled 16,000 records after aiokafka built it is out of the CPU
    cache (bench/runtime_bench.py: ~0.7 us more per record). While busy, a drained partition is
    therefore fetched at once (no prefetch backoff) and an empty fetch returns after 5 ms. Idle, the
    configured long poll applies again: a short one everywhere would poll the broker 200 times a
    second per idle worker (apache/openwhisk#3971 measured what idle polling costs a broker; centrifugo
    #997 and Dekaf#607 shortened the wait for the same head-of-line stall).

    aiokafka reads both values from its fetcher's attributes each time it builds a fetch (the
    backoff when a fetch result is stored) and has no public setter, so this sets those attributes;
    a consumer without them (the test fake, another client) keeps its configuration. aiokafka is held
    to 0.14.x in pyproject.toml, and tests/integration/test_runtime_kafka.py fails if the attributes go away."""

    def __init__(self, consumer: object, busy_wait_ms: int = BUSY_FETCH_WAIT_MS) -> None:
        self._consumer = consumer
        self.busy_wait_ms = busy_wait_ms
        self.idle: tuple[int, float] | None = None  # the consumer's own (wait ms, backoff s), read at the first switch
        self.busy = False

    def set(self, busy: bool) -> None:
        """Busy (the last poll returned records, or some wait in the worker's buffers) or idle."""
        if busy is self.busy:
            return
        fetcher: Any = getattr(self._consumer, "_fetcher", None)  # exists once the consumer started
        wait, backoff = getattr(fetcher, "_fetch_max_wait_ms", None), getattr(fetcher, "_prefetch_backoff", None)
        if not isinstance(wait, int) or not isinstance(backoff, int | float):
            return
        if self.idle is None:
            self.idle = (wait, float(backoff))
        idle_wait, idle_backoff = self.idle
        fetcher._fetch_max_wait_ms = min(self.busy_wait_ms, idle_wait) if busy else idle_wait
        fetcher._prefetch_backoff = 0.0 if busy else idle_backoff
        self.busy = busy


def revoke_grace_s(options: Mapping[str, Any], shutdown_grace_s: float) -> float:
    """How long revocation may wait for in-flight records: half the rebalance timeout at most, so the
    member rejoins in time and is not expelled (which would make its final commit fail)."""
    rebalance_ms = options.get("rebalance_timeout_ms") or options.get("session_timeout_ms") or 10_000
    return max(0.1, min(shutdown_grace_s, float(rebalance_ms) / 2000))


def build_consumer(
    kafka: KafkaSettings,
    group: str,
    topics: Iterable[str] = (),
    listener: ConsumerRebalanceListener | None = None,
    **overrides: Any,
) -> AIOKafkaConsumer:
    """An unstarted consumer of ``group`` (call inside the running loop). ``Worker.run`` subscribes
    it to the route's topics with its own rebalance listener when ``topics`` is empty."""
    consumer = AIOKafkaConsumer(**consumer_options(kafka, group, **overrides))
    topics = tuple(topics)
    if topics:
        consumer.subscribe(topics, listener=listener)
    return consumer


def partition_counter(producer: AIOKafkaProducer) -> Callable[[str], Awaitable[int | None]]:
    """Partition counts of failure topics from the producer's metadata (a DLQ is not subscribed,
    so the consumer does not know it): ``Worker(partitions_for=partition_counter(aioproducer))``."""

    async def count(topic: str) -> int | None:
        partitions = await producer.partitions_for(topic)
        return len(partitions) if partitions else None

    return count
