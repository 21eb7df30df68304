"""In-memory stand-ins for driving a ``Worker`` without Kafka: the fake ships next to the port.

``FakeConsumer`` implements ``ConsumerPort`` (the aiokafka subset the loop uses) over per-partition
lists, with pause/resume, commits and a scripted ``rebalance``. ``LoopbackProducer`` is the
``FakeProducer`` of ``adapters.kafka`` that also appends what it produces to a ``FakeConsumer`` log,
so a record moved to ``<group>.retry.1`` comes back to the same worker as on a real broker.
Must not be imported by production code.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka.errors import IllegalStateError  # type: ignore[import-untyped]

from adapters.kafka import Delivered, FakeProducer, Headers
from events.base import DomainEvent, to_envelope
from events.envelope import to_record
from workers.runtime.consumer import ConsumerRecord, TopicPartition

if TYPE_CHECKING:
    from workers.runtime.worker import Worker


def record(
    topic: str,
    partition: int,
    offset: int,
    value: bytes | None,
    *,
    key: bytes | None = None,
    headers: Iterable[tuple[str, bytes]] = (),
    timestamp: int | None = None,
) -> ConsumerRecord:
    return ConsumerRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp=timestamp if timestamp is not None else int(time.time() * 1000),
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=len(value or b""),
        headers=tuple(headers),
    )


class FakeConsumer:
    """``ConsumerPort`` in memory. ``partitions`` gives each topic's partition count (default 1);
    ``start()`` assigns every partition of the subscribed topics, like a single group member."""

    def __init__(self, partitions: Mapping[str, int] | None = None) -> None:
        self.partition_counts = dict(partitions or {})
        self.logs: dict[TopicPartition, list[ConsumerRecord]] = {}
        self.positions: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}
        self.metadata: dict[TopicPartition, str] = {}  # committed with each offset (workers.runtime.done_ahead)
        self.commits: list[dict[TopicPartition, int]] = []
        self.topics: tuple[str, ...] = ()
        self.listener: Any = None
        self.started = False
        self.stopped = False
        self.fail_next_commit_with: Exception | None = None
        self.polls = 0
        self._assigned: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()
        self._arrived = asyncio.Event()

    # --- test side ---------------------------------------------------------------------------

    def append(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Iterable[tuple[str, bytes]] = (),
        partition: int = 0,
        timestamp: int | None = None,
    ) -> ConsumerRecord:
        tp = TopicPartition(topic, partition)
        log = self.logs.setdefault(tp, [])
        rec = record(topic, partition, len(log), value, key=key, headers=headers, timestamp=timestamp)
        log.append(rec)
        self._arrived.set()
        return rec

    def append_event(self, topic: str, event: DomainEvent, *, partition: int = 0, **envelope: Any) -> ConsumerRecord:
        key, value, headers = to_record(to_envelope(event, source="/test", **envelope))
        return self.append(topic, value, key=key, headers=headers, partition=partition)

    def committed_offset(self, topic: str, partition: int = 0) -> int | None:
        return self.committed.get(TopicPartition(topic, partition))

    async def rebalance(self, assign: Iterable[TopicPartition]) -> None:
        """Revoke everything, then assign ``assign`` (eager protocol, as aiokafka does); positions of
        the new assignment restart from the committed offsets."""
        revoked = set(self._assigned)
        if self.listener is not None:
            await self.listener.on_partitions_revoked(revoked)
        self._assigned = set(assign)
        self._paused &= self._assigned
        for tp in self._assigned:
            self.positions[tp] = self.committed.get(tp, 0)
        if self.listener is not None:
            await self.listener.on_partitions_assigned(set(self._assigned))

    # --- ConsumerPort --------------------------------------------------------------------------

    def subscribe(self, topics: Iterable[str] = (), pattern: str | None = None, listener: Any = None) -> None:
        self.topics = tuple(topics)
        self.listener = listener

    async def start(self) -> None:
        self.started = True
        await self.rebalance(TopicPartition(t, p) for t in self.topics for p in range(self.partition_counts.get(t, 1)))

    async def stop(self) -> None:
        self.stopped = True
        self._assigned = set()

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        """Like aiokafka: only ``partitions`` when given (the others keep their records), never paused ones."""
        self.polls += 1
        out = self._drain(partitions, max_records)
        if not out and timeout_ms:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout_ms / 1000)
            except TimeoutError:
                return {}
            out = self._drain(partitions, max_records)
        return out

    def _drain(
        self, partitions: tuple[TopicPartition, ...], max_records: int | None
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        budget = max_records or 1_000_000
        out: dict[TopicPartition, list[ConsumerRecord]] = {}
        wanted = set(partitions) if partitions else self._assigned
        for tp in sorted((self._assigned & wanted) - self._paused):
            log = self.logs.get(tp, [])
            start = self.positions.get(tp, 0)
            batch = log[start : start + budget]
            if batch:
                out[tp] = batch
                self.positions[tp] = start + len(batch)
                budget -= len(batch)
            if budget <= 0:
                break
        return out

    def pause(self, *partitions: TopicPartition) -> None:
        self._paused.update(tp for tp in partitions if tp in self._assigned)

    def resume(self, *partitions: TopicPartition) -> None:
        self._paused.difference_update(partitions)
        self._arrived.set()

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    async def commit(self, offsets: Mapping[TopicPartition, int | tuple[int, str]] | None = None) -> None:
        if self.fail_next_commit_with is not None:
            exc, self.fail_next_commit_with = self.fail_next_commit_with, None
            raise exc
        points = {tp: point if isinstance(point, tuple) else (point, "") for tp, point in (offsets or {}).items()}
        for tp in points:
            if tp not in self._assigned:
                raise IllegalStateError(f"Partition {tp} is not assigned")
        self.committed.update((tp, offset) for tp, (offset, _) in points.items())
        self.metadata.update((tp, metadata) for tp, (_, metadata) in points.items())
        self.commits.append({tp: offset for tp, (offset, _) in points.items()})

    async def committed_metadata(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, tuple[int, str]]:
        return {tp: (self.committed[tp], self.metadata.get(tp, "")) for tp in partitions if tp in self.committed}

    def highwater(self, partition: TopicPartition) -> int | None:
        return len(self.logs.get(partition, []))

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.partition_counts.get(topic, 1)))


class FakeClock:
    """Injectable wall clock and sleep for a ``Worker``: sleeping advances time at once."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@dataclass
class LoopbackProducer(FakeProducer):
    """A ``FakeProducer`` whose records also land in ``consumer`` (when it reads that topic)."""

    consumer: FakeConsumer | None = None
    partitions: list[int | None] = field(default_factory=list)

    async def publish_raw(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        partition: int | None = None,
    ) -> Delivered:
        delivered = await super().publish_raw(topic, key, value, headers, partition)
        self.partitions.append(partition)
        if self.consumer is not None:
            rec = self.consumer.append(topic, value, key=key, headers=list(headers), partition=partition or 0)
            return Delivered(topic, rec.partition, rec.offset)
        return delivered


class WorkerRun:
    """A ``Worker`` over a ``FakeConsumer`` and a ``LoopbackProducer``, started by the first ``until``
    and stopped by ``finish``: the common half of the unit suites' harnesses (they build the worker)."""

    worker: Worker
    consumer: FakeConsumer
    producer: LoopbackProducer
    source_topic: str = ""  # ``committed``'s default topic
    until_timeout_s: float = 5.0

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.worker.run(self.stop))

    async def until(self, condition: Callable[[], bool], timeout: float | None = None) -> None:
        """Run the worker (started on first use) until ``condition()`` holds; fail if it stops first."""
        if self.task is None:
            await self.start()
        assert self.task is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.until_timeout_s if timeout is None else timeout)
        while not condition():
            if self.task.done():
                self.task.result()
                raise AssertionError("worker stopped before the condition held")
            if loop.time() > deadline:
                raise AssertionError("condition not reached in time")
            await asyncio.sleep(0.001)

    async def finish(self) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 5)

    def committed(self, topic: str | None = None, partition: int = 0) -> int | None:
        return self.consumer.committed_offset(topic or self.source_topic, partition)

    def on(self, topic: str) -> list[dict[str, bytes]]:
        """The headers of every record produced to ``topic``."""
        return [dict(h) for _, _, h in self.producer.on(topic)]
