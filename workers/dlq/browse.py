"""``fleet dlq list`` and ``fleet dlq show``: what sits in a group's DLQ, and one record in full.

Owns the read-only views: counts grouped by error class and event type, and the lookup of one
record with what operators already did to it (replayed by which job, purged). Must not change
anything in Kafka or Postgres, apart from applying pending migrations.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from adapters.db import migrate
from adapters.dlq_store import PgDlqStore, ProgressRow
from adapters.kafka import KafkaTarget
from workers.dlq.models import DeadLetter
from workers.dlq.names import dead_letter_topic
from workers.dlq.reader import TopicMissing, TopicReader
from workers.dlq.selection import PARKED, REPLAYED

CLIENT_ID = "fleet-dlq-inspect"


@dataclass
class Bucket:
    """Dead letters of one (error class, event type)."""

    error_class: str
    event_type: str
    count: int = 0
    replayed: int = 0
    parked: int = 0
    oldest: datetime | None = None
    newest: datetime | None = None

    def add(self, dl: DeadLetter, outcome: str | None) -> None:
        """``outcome``: None (pending), 'replayed' or 'parked' (what a replay job did with it)."""
        self.count += 1
        self.replayed += int(outcome == REPLAYED)
        self.parked += int(outcome == PARKED)
        at = dl.dead_lettered_at
        self.oldest = at if self.oldest is None else min(self.oldest, at)
        self.newest = at if self.newest is None else max(self.newest, at)


@dataclass
class GroupOverview:
    """A group's DLQ: the visible (not purged) dead letters, and what replay jobs did with them."""

    group: str
    topic: str
    exists: bool = True
    total: Bucket = field(default_factory=lambda: Bucket("*", "*"))
    purged_hidden: int = 0
    buckets: dict[tuple[str, str], Bucket] = field(default_factory=dict)

    def add(self, dl: DeadLetter, *, purged: bool, outcome: str | None) -> None:
        if purged:
            self.purged_hidden += 1
            return
        key = (dl.error_class, dl.event_type)
        self.buckets.setdefault(key, Bucket(*key)).add(dl, outcome)
        self.total.add(dl, outcome)

    def sorted_buckets(self) -> list[Bucket]:
        return sorted(self.buckets.values(), key=lambda b: (-b.count, b.error_class, b.event_type))


def summarize(
    group: str,
    records: Iterable[DeadLetter],
    purged: set[tuple[int, int]],
    outcomes: dict[tuple[int, int], str],
) -> GroupOverview:
    overview = GroupOverview(group, dead_letter_topic(group))
    for dl in records:
        overview.add(dl, purged=dl.coordinates in purged, outcome=outcomes.get(dl.coordinates))
    return overview


async def overviews(kafka: KafkaTarget, dsn: str, groups: Iterable[str]) -> list[GroupOverview]:
    await migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        return [await _overview(conn, kafka, group) for group in groups]
    finally:
        await conn.close()


async def _overview(conn: asyncpg.Connection, kafka: KafkaTarget, group: str) -> GroupOverview:
    store = PgDlqStore(conn)
    purged = await store.purged_records(group)
    outcomes = {at: row.outcome for at, row in (await store.done_records(group)).items()}
    try:
        async with TopicReader(kafka, dead_letter_topic(group), client_id=CLIENT_ID) as reader:
            return summarize(group, [dl async for dl in reader.read()], purged, outcomes)
    except TopicMissing:
        return GroupOverview(group, dead_letter_topic(group), exists=False)


@dataclass(frozen=True)
class RecordView:
    """One dead letter and what operators did to it."""

    dl: DeadLetter
    replay: ProgressRow | None
    purged: bool


async def find(
    kafka: KafkaTarget,
    dsn: str,
    group: str,
    *,
    at: tuple[int, int] | None = None,
    event_id: str | None = None,
) -> list[RecordView]:
    """The record at ``at`` (partition, offset), or every record whose ``ce_id`` is ``event_id``
    (one event can be dead-lettered again after a replay: all its dead letters are returned, oldest first)."""
    await migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        found = await _find_records(kafka, group, at, event_id)
        store = PgDlqStore(conn)
        replays = await store.done_records(group)
        purged = await store.purged_records(group)
        return [RecordView(dl, replays.get(dl.coordinates), dl.coordinates in purged) for dl in found]
    finally:
        await conn.close()


async def _find_records(
    kafka: KafkaTarget, group: str, at: tuple[int, int] | None, event_id: str | None
) -> list[DeadLetter]:
    async with TopicReader(kafka, dead_letter_topic(group), client_id=CLIENT_ID) as reader:
        if at is not None:
            one = await reader.read_one(*at)
            return [one] if one is not None else []
        found = [dl async for dl in reader.read() if dl.event_id == event_id]
    return sorted(found, key=lambda dl: dl.timestamp_ms)
