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
    "ConsumerPort",
    "ConsumerRebalanceListener",
    "ConsumerRecord",
    "FleetConsumer",
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

    async def commit(self, offsets: Mapping[TopicPartition, int | tuple[int, str]] | None = None) -> None: ...

    async def committed_metadata(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, tuple[int, str]]:
        """The committed offset and its metadata of each of ``partitions`` that has one."""
        ...

    def highwater(self, partition: TopicPartition) -> int | None: ...


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
        # Only a fallback: the worker passes its own ``max_records`` (``RuntimeSettings.max_records``)
        # to every ``getmany``, which overrides this.
        "max_poll_records": 1_000,
        # Fewer, larger fetches: 4 MiB per partition (default 1 MiB) cut the CPU per record in
        # bench/runtime_bench.py at 500-byte records. Memory: at most one undrained fetch per
        # partition, a response capped by ``fetch_max_bytes`` (50 MiB default), plus the worker's
        # buffers (``RuntimeSettings.buffer_per_partition`` + ``max_records`` records per partition).
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
        # How long the broker may hold a fetch whose partitions have no data (the long poll of an idle
        # worker). The worker shortens it while records flow: see FetchPacing.
        "fetch_max_wait_ms": 100,
    }
    options.update(overrides)
    return options


def revoke_grace_s(options: Mapping[str, Any], shutdown_grace_s: float) -> float:
    """How long revocation may wait for in-flight records: half the rebalance timeout at most, so the
    member rejoins in time and is not expelled (which would make its final commit fail)."""
    rebalance_ms = options.get("rebalance_timeout_ms") or options.get("session_timeout_ms") or 10_000
    return max(0.1, min(shutdown_grace_s, float(rebalance_ms) / 2000))


class FleetConsumer(AIOKafkaConsumer):  # type: ignore[misc]
    """``AIOKafkaConsumer`` plus the one read the worker needs and aiokafka does not offer:
    committed offsets *with their metadata* (``workers.runtime.done_ahead``).

    ``AIOKafkaConsumer.committed()`` makes the same OffsetFetch request and drops the metadata of
    its answer; this asks the group coordinator the same way and keeps it. aiokafka has no public
    call for it (its admin client has one, at the cost of another connection per worker), so this
    uses ``_coordinator``; aiokafka is held to 0.14.x, and the keys-in-flight rebalance test of
    ``tests/integration/test_runtime_kafka.py`` fails if the call goes away (records delivered twice)."""

    async def committed_metadata(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, tuple[int, str]]:
        found = await self._coordinator.fetch_committed_offsets(list(partitions))
        return {tp: (meta.offset, meta.metadata or "") for tp, meta in found.items() if meta.offset >= 0}


def build_consumer(
    kafka: KafkaSettings,
    group: str,
    topics: Iterable[str] = (),
    listener: ConsumerRebalanceListener | None = None,
    **overrides: Any,
) -> FleetConsumer:
    """An unstarted consumer of ``group`` (call inside the running loop). ``Worker.run`` subscribes
    it to the route's topics with its own rebalance listener when ``topics`` is empty."""
    consumer = FleetConsumer(**consumer_options(kafka, group, **overrides))
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
