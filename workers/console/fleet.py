"""What the console's fleet page shows: per worker its consumer group, the group's members, lag per
partition, and, where the worker's health page is known, its readiness and circuit-breaker state.

Owns reading those: Kafka's admin API (DescribeGroups, the group's committed offsets) and the end
offsets of the topics the worker consumes (a consumer without a group: it joins nothing, commits
nothing), and each worker's ``/readyz`` and ``/metrics`` (``workers.runtime.health``) from
``FLEET_CONSOLE__HEALTH_URLS``. Must not change anything.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]
from prometheus_client.parser import text_string_to_metric_families

from adapters.kafka import KafkaTarget, admin_client, as_connection, start_client
from adapters.kafka.groups import describe_groups
from events.topics import retry_topic
from workers.routes import ROUTES

CLIENT_ID = "fleet-console"
HEALTH_TIMEOUT_S = 2.0
#: ``fleet_circuit_breaker_state`` (workers.runtime.metrics) → words
BREAKER_STATES = {0: "closed", 1: "open", 2: "half-open"}


@dataclass(frozen=True)
class Member:
    member_id: str
    client_id: str
    host: str


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None  # None: the group never committed here
    end: int

    @property
    def lag(self) -> int:
        return self.end - (self.committed or 0) if self.committed is not None else self.end


@dataclass(frozen=True)
class Health:
    url: str
    ready: bool | None  # None: the page could not be read
    reason: str
    breaker: str = "?"


@dataclass
class GroupView:
    worker: str
    group: str
    state: str = "?"
    members: list[Member] = field(default_factory=list)
    partitions: list[PartitionLag] = field(default_factory=list)
    health: list[Health] = field(default_factory=list)

    @property
    def total_lag(self) -> int:
        return sum(p.lag for p in self.partitions)


def health_targets(entries: list[str]) -> dict[str, list[str]]:
    """``name=url`` entries → worker name → base URLs (a worker may run several instances)."""
    found: dict[str, list[str]] = {}
    for entry in entries:
        name, sep, url = entry.partition("=")
        if sep and url.strip():
            found.setdefault(name.strip(), []).append(url.strip().rstrip("/"))
    return found


async def read_groups(kafka: KafkaTarget, tiers: int) -> list[GroupView]:
    """Every routed worker's group: state, members, lag of each partition it consumes (retry tiers too).

    Members come from DescribeGroups; when only that request fails, the lag is still shown and the
    state says why the members are missing."""
    views = [GroupView(name, spec.group.value) for name, spec in ROUTES.items()]
    topics_of = {v.group: [str(t) for t in ROUTES[v.worker].topics] for v in views}
    for v in views:
        topics_of[v.group] += [retry_topic(v.group, n) for n in range(1, tiers + 1)]
    every_topic = sorted({t for ts in topics_of.values() for t in ts})
    async with admin_client(kafka, CLIENT_ID) as admin:
        layout = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(every_topic)}
        try:
            groups: dict[str, Any] | None = await describe_groups(admin, [v.group for v in views])
        except KafkaError as exc:
            groups, why = None, f"members unknown (DescribeGroups: {type(exc).__name__})"
    tps = [TopicPartition(t, p) for t in every_topic for p in range(layout.get(t, 0))]
    ends = await _end_offsets(kafka, tps)
    for v in views:
        if groups is None:
            v.state = why
        elif (found := groups.get(v.group)) is not None:
            v.state = found[2] or "?"
            v.members = [Member(m[0], m[1], m[2]) for m in found[5]]
        mine = [tp for tp in tps if tp.topic in topics_of[v.group]]
        committed = await _committed(kafka, v.group, mine)
        v.partitions = [PartitionLag(tp.topic, tp.partition, committed.get(tp), ends.get(tp, 0)) for tp in mine]
    return views


async def _committed(kafka: KafkaTarget, group: str, tps: list[TopicPartition]) -> dict[TopicPartition, int | None]:
    """The group's committed offsets (OffsetFetch through a consumer that never subscribes, so it
    never joins the group nor triggers a rebalance)."""
    consumer = AIOKafkaConsumer(
        **as_connection(kafka).options(), client_id=CLIENT_ID, group_id=group, enable_auto_commit=False
    )
    try:
        await start_client(consumer, kafka)
        return {tp: await consumer.committed(tp) for tp in tps}
    finally:
        await consumer.stop()


async def _end_offsets(kafka: KafkaTarget, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    if not tps:
        return {}
    consumer = AIOKafkaConsumer(
        **as_connection(kafka).options(), client_id=CLIENT_ID, group_id=None, enable_auto_commit=False
    )
    try:
        await start_client(consumer, kafka)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        return ends
    finally:
        await consumer.stop()


async def read_health(targets: dict[str, list[str]], session: aiohttp.ClientSession) -> dict[str, list[Health]]:
    """Each worker instance's readiness and breaker state; an unreachable page says so, never raises."""
    pairs = [(name, url) for name, urls in targets.items() for url in urls]
    results = await asyncio.gather(*(_one(session, url) for _, url in pairs))
    found: dict[str, list[Health]] = {}
    for (name, _), health in zip(pairs, results, strict=True):
        found.setdefault(name, []).append(health)
    return found


async def _one(session: aiohttp.ClientSession, url: str) -> Health:
    timeout = aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)
    try:
        async with session.get(f"{url}/readyz", timeout=timeout) as response:
            body: dict[str, Any] = await response.json(content_type=None)
            ready, reason = response.status == 200, str(body.get("reason", ""))
        async with session.get(f"{url}/metrics", timeout=timeout) as response:
            breaker = breaker_state(await response.text())
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return Health(url, None, f"unreachable: {type(exc).__name__}: {exc}".rstrip(": "))
    return Health(url, ready, reason, breaker)


def breaker_state(metrics_text: str) -> str:
    """The worst ``fleet_circuit_breaker_state`` of a ``/metrics`` page, in words."""
    values = [
        int(sample.value)
        for family in text_string_to_metric_families(metrics_text)
        if family.name == "fleet_circuit_breaker_state"
        for sample in family.samples
    ]
    if not values:
        return "?"
    return BREAKER_STATES.get(max(values), str(max(values)))
