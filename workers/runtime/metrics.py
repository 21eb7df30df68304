"""Prometheus metrics of one worker, in its own ``CollectorRegistry``.

Owns the counters the loop bumps and their exposition. The hot path increments plain attributes
of a per-topic ``TopicStats`` (a ``prometheus_client`` child costs a lock per call, which at 100k
records/s is a noticeable share of the loop); a custom collector turns them into counter and
histogram families at scrape time, together with the gauges read from the worker then (in-flight,
lag per partition, last commit age, circuit-breaker state). Must not decide anything.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

#: handler latency buckets (seconds): a cache bust takes a millisecond, a Freebit call seconds
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class TopicStats:
    """Plain counters of one topic; the loop bumps attributes, the collector reads them."""

    __slots__ = (
        "consumed",
        "processed",
        "skipped",
        "failed",
        "retried_in_place",
        "retried_to_topic",
        "dead_lettered",
        "latency_counts",
        "latency_sum",
    )

    def __init__(self) -> None:
        self.consumed = 0
        self.processed = 0  # handled successfully (skipped records are not counted here)
        self.skipped = 0  # type without a handler in this route: acknowledged, not handled
        self.failed = 0  # records whose in-place attempts were exhausted (before any move)
        self.retried_in_place = 0  # in-place re-attempts
        self.retried_to_topic = 0  # moved to a retry tier
        self.dead_lettered = 0
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

    def observe(self, seconds: float) -> None:
        self.latency_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds


@dataclass
class PartitionGauge:
    topic: str
    partition: int
    lag: int | None  # highwater - first offset not done (what is left to do)
    fetch_lag: int | None  # highwater - position (what is left to fetch)
    buffered: int
    in_flight: int
    paused: bool


@dataclass
class Snapshot:
    """What the worker reports at scrape time."""

    partitions: list[PartitionGauge] = field(default_factory=list)
    last_commit_age_s: float | None = None
    breaker_state: int = 0
    breaker_trips: int = 0
    commit_failures: int = 0


class RuntimeMetrics:
    """Per-topic stats of one worker plus the collector that exposes them."""

    def __init__(self, group: str, registry: CollectorRegistry | None = None) -> None:
        self.group = group
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.topics: dict[str, TopicStats] = {}
        self.snapshot: Callable[[], Snapshot] = Snapshot
        self.registry.register(_Collector(self))

    def topic(self, name: str) -> TopicStats:
        stats = self.topics.get(name)
        if stats is None:
            stats = self.topics[name] = TopicStats()
        return stats


_COUNTERS = (
    ("fleet_records_consumed", "Records fetched from Kafka", "consumed"),
    ("fleet_records_processed", "Records handled successfully", "processed"),
    ("fleet_records_skipped", "Records of a type this route does not handle (acknowledged)", "skipped"),
    ("fleet_records_failed", "Records whose in-place attempts were exhausted", "failed"),
    ("fleet_records_retried_in_place", "In-place re-attempts of a failing record", "retried_in_place"),
    ("fleet_records_retried", "Records moved to a retry tier topic", "retried_to_topic"),
    ("fleet_records_dead_lettered", "Records produced to the dead-letter topic", "dead_lettered"),
)


class _Collector(Collector):
    def __init__(self, metrics: RuntimeMetrics) -> None:
        self._m = metrics

    def describe(self) -> list[Metric]:
        return []  # collected on demand only (the values are read at scrape time)

    def collect(self) -> Iterator[Metric]:
        group = self._m.group
        topics = sorted(self._m.topics.items())
        for name, doc, attr in _COUNTERS:
            family = CounterMetricFamily(name, doc, labels=["group", "topic"])
            for topic, stats in topics:
                family.add_metric([group, topic], getattr(stats, attr))
            yield family
        latency = HistogramMetricFamily(
            "fleet_handler_duration_seconds", "Handler latency per attempt", labels=["group", "topic"]
        )
        for topic, stats in topics:
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), stats.latency_counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(cumulative)))
            latency.add_metric([group, topic], buckets, stats.latency_sum)
        yield latency
        yield from self._gauges(group, self._m.snapshot())

    @staticmethod
    def _gauges(group: str, snap: Snapshot) -> Iterator[Metric]:
        labels = ["group", "topic", "partition"]
        lag = GaugeMetricFamily(
            "fleet_consumer_lag", "Records not done yet: highwater - first offset not done", labels=labels
        )
        fetch_lag = GaugeMetricFamily(
            "fleet_consumer_fetch_lag", "Records not fetched yet: highwater - position", labels=labels
        )
        buffered = GaugeMetricFamily("fleet_partition_buffered", "Records fetched, not started", labels=labels)
        paused = GaugeMetricFamily("fleet_partition_paused", "1 while fetching is paused", labels=labels)
        in_flight = GaugeMetricFamily("fleet_records_in_flight", "Records in a handler now", labels=["group"])
        assigned = GaugeMetricFamily("fleet_partitions_assigned", "Partitions assigned", labels=["group"])
        for p in snap.partitions:
            key = [group, p.topic, str(p.partition)]
            if p.lag is not None:
                lag.add_metric(key, p.lag)
            if p.fetch_lag is not None:
                fetch_lag.add_metric(key, p.fetch_lag)
            buffered.add_metric(key, p.buffered)
            paused.add_metric(key, 1 if p.paused else 0)
        in_flight.add_metric([group], sum(p.in_flight for p in snap.partitions))
        assigned.add_metric([group], len(snap.partitions))
        yield from (lag, fetch_lag, buffered, paused, in_flight, assigned)
        age = GaugeMetricFamily(
            "fleet_last_commit_age_seconds", "Seconds since offsets were last known committed", labels=["group"]
        )
        if snap.last_commit_age_s is not None:
            age.add_metric([group], snap.last_commit_age_s)
        yield age
        state = GaugeMetricFamily(
            "fleet_circuit_breaker_state", "0 closed, 1 open (alarm), 2 half-open", labels=["group"]
        )
        state.add_metric([group], snap.breaker_state)
        yield state
        alarm = GaugeMetricFamily("fleet_circuit_breaker_open", "1 while the breaker holds records", labels=["group"])
        alarm.add_metric([group], 1 if snap.breaker_state else 0)
        yield alarm
        trips = CounterMetricFamily("fleet_circuit_breaker_trips", "Times the breaker opened", labels=["group"])
        trips.add_metric([group], snap.breaker_trips)
        yield trips
        commits = CounterMetricFamily("fleet_commit_failures", "Offset commits that failed", labels=["group"])
        commits.add_metric([group], snap.commit_failures)
        yield commits
