"""Read a topic's records by partition and offset without joining any consumer group.

Owns the inspection consumer of ``fleet dlq``: ``assign`` + ``seek``, no ``group_id``, auto-commit
off, so reading a DLQ (or checking a retry topic for an in-doubt replay) never moves anyone's
offsets and never triggers a rebalance. Reads stop at the end offsets snapshotted when the read
starts, so a DLQ that keeps growing cannot make a listing or a replay run forever.
Must not commit offsets or subscribe.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]

from adapters.kafka import KafkaTarget, as_connection, start_client
from workers.dlq.models import DeadLetter

#: a read that receives nothing for this long while records are known to be pending is stuck
STALL_TIMEOUT_S = 30.0


class TopicMissing(LookupError):
    """The topic does not exist on the broker."""


class ReadStalled(RuntimeError):
    """Records below the end offset never arrived (broker unavailable, or records deleted meanwhile)."""


@dataclass(frozen=True)
class PartitionRange:
    """Offsets ``[start, end)`` of one partition at the time they were read."""

    partition: int
    start: int
    end: int

    @property
    def count(self) -> int:
        return max(0, self.end - self.start)


class TopicReader:
    """``async with TopicReader(kafka, topic) as reader``; then ``ranges()``, ``read()``, ``read_one()``."""

    def __init__(self, kafka: KafkaTarget, topic: str, *, client_id: str = "fleet-dlq") -> None:
        self.topic = topic
        self._consumer = AIOKafkaConsumer(
            **as_connection(kafka).options(),
            client_id=client_id,
            group_id=None,  # no group: nothing to commit, nobody to rebalance
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",  # never show records of an aborted transaction
            request_timeout_ms=15_000,
        )
        self._partitions: list[int] = []
        self._kafka = kafka

    async def __aenter__(self) -> TopicReader:
        try:
            await start_client(self._consumer, self._kafka)
            await self._load_partitions()
        except BaseException:
            await self._consumer.stop()  # also after a failed start: it closes what start opened
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._consumer.stop()

    async def _load_partitions(self) -> None:
        self._partitions = await partitions_of(self._kafka, self.topic)
        self._consumer.assign([self._tp(p) for p in self._partitions])

    def _tp(self, partition: int) -> TopicPartition:
        return TopicPartition(self.topic, partition)

    @property
    def partitions(self) -> list[int]:
        return list(self._partitions)

    async def ranges(self) -> dict[int, PartitionRange]:
        """Log start and end offset of every partition, now."""
        tps = [self._tp(p) for p in self._partitions]
        starts = await self._consumer.beginning_offsets(tps)
        ends = await self._consumer.end_offsets(tps)
        return {tp.partition: PartitionRange(tp.partition, starts[tp], ends[tp]) for tp in tps}

    async def offsets_at(self, timestamp_ms: int) -> dict[int, int]:
        """Per partition, the first offset whose record timestamp is at or after ``timestamp_ms`` (the
        end offset when there is none): where ``read`` starts to skip what is older."""
        tps = [self._tp(p) for p in self._partitions]
        found = await self._consumer.offsets_for_times(dict.fromkeys(tps, timestamp_ms))
        ends = await self._consumer.end_offsets(tps)
        return {tp.partition: found[tp].offset if found.get(tp) else ends[tp] for tp in tps}

    async def read(self, start: Mapping[int, int] | None = None) -> AsyncGenerator[DeadLetter, None]:
        """Every record from ``start`` (partition → offset; default: every partition from its log start)
        up to the end offsets of now. In offset order within a partition; partitions interleave.

        Filters are applied by the caller on every record, not by seeking: the counts a replay
        reports (filtered out, already replayed) are then exact.
        """
        bounds = await self._bounds(start)
        async for record in self._read_bounds(bounds):
            yield record

    async def _bounds(self, start: Mapping[int, int] | None) -> dict[int, tuple[int, int]]:
        bounds: dict[int, tuple[int, int]] = {}
        for p, r in (await self.ranges()).items():
            if start is not None and p not in start:
                continue
            begin = max(r.start, (start or {}).get(p, r.start))
            if begin < r.end:
                bounds[p] = (begin, r.end)
        return bounds

    async def _read_bounds(self, bounds: dict[int, tuple[int, int]]) -> AsyncGenerator[DeadLetter, None]:
        consumer = self._consumer
        pending = {self._tp(p): end for p, (_, end) in bounds.items()}
        for tp in consumer.assignment():
            if tp in pending:
                consumer.seek(tp, bounds[tp.partition][0])
                consumer.resume(tp)
            else:
                consumer.pause(tp)
        last_progress = time.monotonic()
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=500)
            for tp, records in batch.items():
                for r in records:
                    if r.offset >= pending.get(tp, -1):
                        break
                    last_progress = time.monotonic()
                    yield _dead_letter(r)
            for tp in list(pending):
                if await consumer.position(tp) >= pending[tp]:
                    consumer.pause(tp)
                    del pending[tp]
            if pending and time.monotonic() - last_progress > STALL_TIMEOUT_S:
                raise ReadStalled(f"no records from {self.topic} for {STALL_TIMEOUT_S:.0f}s; still pending: {pending}")

    async def read_one(self, partition: int, offset: int) -> DeadLetter | None:
        """The record at exactly ``partition``/``offset``, or None when it is not (or no longer) there."""
        if partition not in self._partitions:
            return None
        async with aclosing(self.read({partition: offset})) as records:
            async for record in records:
                return record if record.offset == offset else None
        return None


async def partitions_of(kafka: KafkaTarget, topic: str) -> list[int]:
    """The topic's partition ids, from the admin API (the consumer's ``partitions_for_topic`` only knows
    topics it already fetched metadata for, and an assign-only consumer never does). Never creates it."""
    admin = AIOKafkaAdminClient(
        **as_connection(kafka).options(), client_id="fleet-dlq-admin", request_timeout_ms=15_000
    )
    try:
        await start_client(admin, kafka)
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described["error_code"] or not described["partitions"]:
        raise TopicMissing(f"topic {topic} does not exist (run `fleet topics ensure`?)")
    return sorted(p["partition"] for p in described["partitions"])


def _dead_letter(r: Any) -> DeadLetter:
    """An aiokafka ``ConsumerRecord`` as a ``DeadLetter``, bytes untouched (a null header value stays None)."""
    return DeadLetter(
        topic=r.topic,
        partition=r.partition,
        offset=r.offset,
        timestamp_ms=r.timestamp,
        key=r.key,
        value=r.value,
        headers=tuple(r.headers),
    )
