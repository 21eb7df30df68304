"""The dead letters of a few record keys since a moment: what ``fleet orders show`` adds to a timeline.

Owns the bounded lookup by key: only what was dead-lettered since ``since`` is read (Kafka's time
index, ``offsets_for_times``), at most ``MAX_SCAN`` records per partition, and only the records with
a wanted key are kept, joined with what operators did to them (replayed, parked, purged). A DLQ
topic is not keyed for lookups (partitions may be added to it), so every partition is read.
Must not change anything in Kafka or Postgres.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from adapters.dlq_store import PgDlqStore
from adapters.kafka import KafkaTarget
from workers.dlq.browse import RecordView
from workers.dlq.models import DeadLetter
from workers.dlq.names import dead_letter_topic
from workers.dlq.reader import TopicMissing, TopicReader

CLIENT_ID = "fleet-dlq-lookup"
#: records read per partition at most: the newest ones, when an incident filled the DLQ since ``since``
MAX_SCAN = 50_000


@dataclass(frozen=True)
class KeyedDeadLetters:
    """A group's dead letters of some keys, oldest first."""

    group: str
    topic: str
    views: list[RecordView] = field(default_factory=list)
    #: a partition held more than ``MAX_SCAN`` records since ``since``: its oldest were not read
    capped: bool = False


async def dead_letters_of(
    kafka: KafkaTarget,
    dsn: str,
    group: str,
    keys: Collection[str],
    since: datetime | None,
    *,
    max_scan: int = MAX_SCAN,
) -> KeyedDeadLetters:
    """The dead letters of ``group`` whose key is one of ``keys``, dead-lettered at or after ``since``.
    A DLQ topic that does not exist holds none."""
    topic, wanted = dead_letter_topic(group), set(keys)
    try:
        async with TopicReader(kafka, topic, client_id=CLIENT_ID) as reader:
            ranges = await reader.ranges()
            since_ms = int(since.timestamp() * 1000) if since else 0
            first = await reader.offsets_at(since_ms) if since else {}
            since_offsets = {p: first.get(p, r.start) for p, r in ranges.items()}
            start = {p: max(since_offsets[p], r.end - max_scan) for p, r in ranges.items()}
            # the time index finds the first record at or after ``since``; a later one may still be older
            found = [dl async for dl in reader.read(start) if dl.key_text in wanted and dl.timestamp_ms >= since_ms]
    except TopicMissing:
        return KeyedDeadLetters(group, topic)
    capped = any(start[p] > since_offsets[p] for p in start)
    views = await _with_status(dsn, group, found) if found else []
    return KeyedDeadLetters(group, topic, sorted(views, key=lambda v: v.dl.timestamp_ms), capped)


async def _with_status(dsn: str, group: str, found: list[DeadLetter]) -> list[RecordView]:
    at = [dl.coordinates for dl in found]
    conn = await asyncpg.connect(dsn)
    try:
        store = PgDlqStore(conn)
        replays = await store.done_among(group, at)
        purged = await store.purged_among(group, at)
    finally:
        await conn.close()
    return [RecordView(dl, replays.get(dl.coordinates), dl.coordinates in purged) for dl in found]
