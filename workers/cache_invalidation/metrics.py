"""The cache-invalidator's business metrics, served on its worker's /metrics.

Owns the names; ``batch`` bumps plain per-event-type counts (a ``prometheus_client`` child takes a
lock per call, and a batch settles hundreds of events) and this collector exposes them at scrape
time. Must not decide anything.

    fleet_cache_invalidations_total{event_type}   events whose stale portal keys were unlinked
    fleet_cache_keys_busted_total{event_type}     portal keys those events deleted (UNLINK's count)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector


class BustedKeys(Collector):
    def __init__(self) -> None:
        self.events: Counter[str] = Counter()
        self.keys: Counter[str] = Counter()

    def add(self, event_type: str, deleted: int) -> None:
        self.events[event_type] += 1
        self.keys[event_type] += deleted

    def describe(self) -> list[Metric]:
        return []  # collected on demand only

    def collect(self) -> Iterator[Metric]:
        events = CounterMetricFamily(
            "fleet_cache_invalidations", "Events whose stale portal keys were unlinked", labels=["event_type"]
        )
        keys = CounterMetricFamily(
            "fleet_cache_keys_busted", "Portal cache keys deleted, by the event type that made them stale",
            labels=["event_type"],
        )  # fmt: skip
        for event_type in sorted(self.events):
            events.add_metric([event_type], self.events[event_type])
            keys.add_metric([event_type], self.keys[event_type])
        yield events
        yield keys
