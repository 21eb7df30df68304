"""``fleet dlq purge``: hide dead letters an operator decided not to replay, optionally truncate.

Owns purge semantics. Kafka cannot delete one record, so a purge *marks* the selected records in
``dlq_purged``; ``list``, ``show`` and ``replay`` then hide them (``show`` says "purged"). With
``truncate``, each partition is additionally cut with the admin ``DeleteRecords`` API up to (not
including) its first record that is not purged: only a purged prefix is ever deleted, so a record
someone may still replay is never lost. Must not delete anything not marked purged.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg
import structlog
from aiokafka import TopicPartition  # type: ignore[import-untyped]
from aiokafka.admin import RecordsToDelete  # type: ignore[import-untyped]

from adapters.db import migrate
from adapters.dlq_store import PgDlqStore
from adapters.kafka import KafkaTarget, admin_client
from workers.dlq import audit
from workers.dlq.filters import Filter
from workers.dlq.models import DeadLetter
from workers.dlq.names import dead_letter_topic
from workers.dlq.reader import PartitionRange, TopicReader
from workers.dlq.selection import FILTERED_OUT, PURGED_HIDDEN, Selector

log = structlog.get_logger()
CLIENT_ID = "fleet-dlq-purge"


@dataclass(frozen=True)
class PurgeOptions:
    group: str
    filt: Filter
    operator: str
    dry_run: bool = False
    truncate: bool = False


@dataclass
class PurgePlan:
    """What a purge would mark, plus every offset read (a truncation must know what it would delete)."""

    group: str
    selected: list[DeadLetter]
    counts: Counter[str]
    offsets: dict[int, list[int]] = field(default_factory=dict)
    ranges: dict[int, PartitionRange] = field(default_factory=dict)


@dataclass(frozen=True)
class PurgeReport:
    job_id: UUID
    dry_run: bool
    counts: dict[str, int]
    truncated: dict[int, int]  # partition -> new log start offset


async def prepare(kafka: KafkaTarget, dsn: str, group: str, filt: Filter) -> PurgePlan:
    """Read the whole DLQ and select what matches and is not purged yet (changes nothing)."""
    await migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        selector = Selector(filt, purged=await PgDlqStore(conn).purged_records(group), again=True)
    finally:
        await conn.close()
    offsets: dict[int, list[int]] = {}
    async with TopicReader(kafka, dead_letter_topic(group), client_id=CLIENT_ID) as reader:
        ranges = await reader.ranges()
        async for dl in reader.read():
            offsets.setdefault(dl.partition, []).append(dl.offset)
            selector.offer(dl)
    return PurgePlan(group, selector.finish(), selector.counts, offsets, ranges)


def truncate_points(
    offsets: dict[int, list[int]], ranges: dict[int, PartitionRange], purged: Collection[tuple[int, int]]
) -> dict[int, int]:
    """Per partition, the offset to delete records before: its first record that is not purged (or
    the end offset read, when all are). Partitions with nothing to delete are left out."""
    points: dict[int, int] = {}
    for partition, r in ranges.items():
        keep = next((o for o in sorted(offsets.get(partition, ())) if (partition, o) not in purged), r.end)
        if keep > r.start:
            points[partition] = keep
    return points


async def execute(kafka: KafkaTarget, dsn: str, plan: PurgePlan, opts: PurgeOptions) -> PurgeReport:
    """Mark (and optionally truncate) under the group's lock, audited; a dry run only audits."""
    job = audit.Job("purge", opts.group, opts.operator, opts.dry_run, _audit_filters(opts))
    conn = await asyncpg.connect(dsn)
    try:
        if not opts.dry_run:
            await audit.lock_group(conn, opts.group)
        await audit.start(conn, job)
        counts = _initial_counts(plan)
        status, error, truncated = "failed", None, {}
        try:
            truncated = await _apply(conn, kafka, plan, opts, job.job_id, counts)
            status = "completed"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            await audit.finish(conn, job.job_id, status, counts, error)
            log.info("dlq_purge_finished", job_id=str(job.job_id), group=opts.group, status=status, **counts)
        return PurgeReport(job.job_id, opts.dry_run, counts, truncated)
    finally:
        await conn.close()


async def _apply(
    conn: asyncpg.Connection,
    kafka: KafkaTarget,
    plan: PurgePlan,
    opts: PurgeOptions,
    job_id: UUID,
    counts: dict[str, Any],
) -> dict[int, int]:
    if opts.dry_run:
        counts["would_purge"] = len(plan.selected)
        return {}
    store = PgDlqStore(conn)
    await store.mark_purged(opts.group, job_id, [(dl.coordinates, dl.event_id) for dl in plan.selected])
    counts["purged"] = len(plan.selected)
    if not opts.truncate:
        return {}
    points = truncate_points(plan.offsets, plan.ranges, await store.purged_records(opts.group))
    truncated = await delete_records(kafka, dead_letter_topic(opts.group), points) if points else {}
    counts["truncated"] = {str(p): o for p, o in truncated.items()}
    return truncated


async def delete_records(kafka: KafkaTarget, topic: str, before: dict[int, int]) -> dict[int, int]:
    """Kafka ``DeleteRecords`` (aiokafka 0.14 ``AIOKafkaAdminClient.delete_records``): returns the new
    log start offset (low watermark) per partition."""
    async with admin_client(kafka, CLIENT_ID) as admin:
        request = {TopicPartition(topic, p): RecordsToDelete(before_offset=o) for p, o in before.items()}
        result = await asyncio.wait_for(admin.delete_records(request), 30)
        return {tp.partition: low for tp, low in result.items()}


def _initial_counts(plan: PurgePlan) -> dict[str, Any]:
    return {
        "purged": 0,
        FILTERED_OUT: plan.counts.get(FILTERED_OUT, 0),
        "already_purged": plan.counts.get(PURGED_HIDDEN, 0),
    }


def _audit_filters(opts: PurgeOptions) -> dict[str, Any]:
    return {**opts.filt.as_json(), **({"truncate": True} if opts.truncate else {})}
