"""The group's dead letters as Kafka keeps them: how many, and how old the oldest is, on /metrics.

    fleet_dead_letters{group}                        records retained in the group's DLQ topic
    fleet_dead_letter_oldest_age_seconds{group}      age of the oldest retained one (its timestamp)

Owns a companion of the worker (started and stopped with the other companions) that reads, every
``dead_letter_check_interval_s``, the DLQ topic's first and end offsets and the timestamp of its
first retained record per partition (``offsets_for_times(0)``: the first record at or after the
epoch) — three ListOffsets requests, never a fetch nor a consumer group. Only the instance that
owns partition 0 of the route's first topic reads and exports them; the others export no sample, so
a ``sum`` over instances is right and a rebalance moves the job with the partition (an instance
that lost it stops exporting at once: ``reporting`` is asked again at each scrape).

The same collector serves ``ingress.dlq.v1`` under ``group="ingress"`` (the name ``fleet dlq -g``
gives it, ``workers.dlq.names``): sf-cdc builds one whose ``reporting`` is "this instance holds the
CDC lease" (``workers.ingress.sf_cdc.serve``), so that topic too is exported by one instance.

What "retained" means: a dead letter stays in the topic after ``fleet dlq replay`` or ``purge`` (those
are marks in Postgres) until the topic's retention deletes it; so the depth counts what Kafka holds
(what ``fleet dlq list`` reads), and the age is what the retention clock sees. Must not read records,
commit or join a group.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, Protocol

import structlog
from aiokafka import TopicPartition  # type: ignore[import-untyped]
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = structlog.get_logger(__name__)


class OffsetsReader(Protocol):
    """The subset of ``AIOKafkaConsumer`` read here (list offsets only)."""

    async def beginning_offsets(self, partitions: list[TopicPartition]) -> Mapping[TopicPartition, int]: ...

    async def end_offsets(self, partitions: list[TopicPartition]) -> Mapping[TopicPartition, int]: ...

    async def offsets_for_times(self, timestamps: Mapping[TopicPartition, int]) -> Mapping[TopicPartition, Any]: ...


class DeadLetterGauges(Collector):
    def __init__(
        self,
        group: str,
        topic: str,
        offsets: OffsetsReader,
        partition_count: Callable[[str], Awaitable[int | None]],
        reporting: Callable[[], bool],
        interval_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.group, self.topic = group, topic
        self._offsets = offsets
        self._partition_count = partition_count
        self._reporting = reporting
        self._interval_s = interval_s
        self._clock = clock
        #: (depth, timestamp of the oldest in seconds or None when empty); None: not reported here
        self.value: tuple[int, float | None] | None = None

    async def refresh(self) -> None:
        if not self._reporting():
            self.value = None
            return
        count = await self._partition_count(self.topic)
        if not count:
            self.value = None  # the topic is missing: nothing to say
            return
        tps = [TopicPartition(self.topic, p) for p in range(count)]
        first, end = await self._offsets.beginning_offsets(tps), await self._offsets.end_offsets(tps)
        holding = [tp for tp in tps if end[tp] > first[tp]]
        oldest: float | None = None
        if holding:
            found = await self._offsets.offsets_for_times(dict.fromkeys(holding, 0))
            stamps = [f.timestamp for f in found.values() if f is not None]
            oldest = min(stamps) / 1000 if stamps else None
        self.value = (sum(end[tp] - first[tp] for tp in tps), oldest)

    async def companion(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.refresh()
            except Exception as exc:  # Kafka away: keep the last value; the next turn tries again
                log.warning("dead_letter_gauges_failed", topic=self.topic, error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval_s)

    def describe(self) -> list[Metric]:
        return []  # collected on demand only

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "fleet_dead_letters", "Records retained in the group's dead-letter topic", labels=["group"]
        )
        age = GaugeMetricFamily(
            "fleet_dead_letter_oldest_age_seconds",
            "Age of the oldest record retained in the group's dead-letter topic",
            labels=["group"],
        )
        if self.value is not None and self._reporting():
            depth.add_metric([self.group], self.value[0])
            if self.value[1] is not None:
                age.add_metric([self.group], max(0.0, self._clock() - self.value[1]))
        yield depth
        yield age
