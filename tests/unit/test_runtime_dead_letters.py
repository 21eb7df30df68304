"""The group's dead-letter gauges: depth and oldest age as Kafka keeps the DLQ topic, from one instance.

Contract: the instance that owns partition 0 of the route's first topic exports
``fleet_dead_letters{group}`` (records retained over every partition) and
``fleet_dead_letter_oldest_age_seconds{group}`` (from the first retained record's timestamp); an
empty DLQ shows depth 0 and no age; an instance that does not own that partition exports no sample.
The offsets are read with list-offsets calls only (never a fetch).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiokafka import TopicPartition  # type: ignore[import-untyped]
from aiokafka.structs import OffsetAndTimestamp  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from workers.runtime.dead_letters import DeadLetterGauges

DLQ = "fleet.test.dlq"
NOW = 1_800_000_000.0


class Offsets:
    """A DLQ topic as the broker's ListOffsets answers: per partition (first, end, first timestamp ms)."""

    def __init__(self, partitions: dict[int, tuple[int, int, int | None]]) -> None:
        self.partitions = partitions
        self.calls: list[str] = []

    async def beginning_offsets(self, tps: list[TopicPartition]) -> Mapping[TopicPartition, int]:
        self.calls.append("beginning")
        return {tp: self.partitions[tp.partition][0] for tp in tps}

    async def end_offsets(self, tps: list[TopicPartition]) -> Mapping[TopicPartition, int]:
        self.calls.append("end")
        return {tp: self.partitions[tp.partition][1] for tp in tps}

    async def offsets_for_times(self, stamps: Mapping[TopicPartition, int]) -> Mapping[TopicPartition, Any]:
        self.calls.append("times")
        found = {}
        for tp in stamps:
            first, _end, ts = self.partitions[tp.partition]
            found[tp] = OffsetAndTimestamp(first, ts) if ts is not None else None
        return found


def gauges(offsets: Offsets, *, owner: bool = True) -> DeadLetterGauges:
    async def count(topic: str) -> int | None:
        return len(offsets.partitions) if topic == DLQ else None

    return DeadLetterGauges("fleet.test", DLQ, offsets, count, lambda: owner, 30.0, clock=lambda: NOW)


def page(collector: DeadLetterGauges) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


async def test_depth_and_oldest_age_over_every_partition() -> None:
    hour_ago_ms, day_ago_ms = int((NOW - 3600) * 1000), int((NOW - 86400) * 1000)
    offsets = Offsets({0: (10, 13, hour_ago_ms), 1: (0, 0, None), 2: (5, 6, day_ago_ms)})
    collector = gauges(offsets)
    await collector.refresh()
    assert page(collector) == {"fleet_dead_letters": 4.0, "fleet_dead_letter_oldest_age_seconds": 86400.0}
    assert offsets.calls == ["beginning", "end", "times"]


async def test_an_empty_dead_letter_topic_shows_zero_and_no_age() -> None:
    collector = gauges(Offsets({0: (7, 7, None), 1: (0, 0, None)}))
    await collector.refresh()
    assert page(collector) == {"fleet_dead_letters": 0.0}


async def test_an_instance_without_the_first_partition_exports_no_sample() -> None:
    offsets = Offsets({0: (0, 3, int(NOW * 1000))})
    collector = gauges(offsets, owner=False)
    await collector.refresh()
    assert page(collector) == {} and offsets.calls == []


async def test_an_instance_that_stops_reporting_exports_no_sample_before_its_next_read() -> None:
    """A rebalance (or a lost CDC lease) ends the export at the next scrape, not after the next read."""
    owner = [True]
    offsets = Offsets({0: (0, 3, int(NOW * 1000))})

    async def count(topic: str) -> int | None:
        return 1

    collector = DeadLetterGauges("fleet.test", DLQ, offsets, count, lambda: owner[0], 30.0, clock=lambda: NOW)
    await collector.refresh()
    assert page(collector)["fleet_dead_letters"] == 3.0
    owner[0] = False
    assert page(collector) == {}
