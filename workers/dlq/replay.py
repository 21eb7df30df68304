"""``fleet dlq replay``: re-send selected dead letters into the failed group's own retry path.

Owns the replay job: lock, audit, in-doubt resolution, selection, pacing, produce, progress.
Must not produce to a shared source topic: other groups read it and already succeeded, so the copy
goes to ``<group>.retry.1``, which only the failed group consumes (or, past the loop guard, to
``<group>.parked``, which nobody consumes). The one exception is ``ingress``: its dead letters never
reached any group, so their bodies are re-ingested onto the topic the receiver writes
(``workers.dlq.ingress``), with the receiver's deterministic CloudEvent ids.

Why a replay is never sent twice, even when the process is killed:
1. one job per group at a time (a Postgres advisory lock that dies with the connection);
2. every copy's progress row is committed as 'sending' BEFORE the produce and as 'done' after the
   broker acknowledged it (idempotent producer, acks=all), so a re-run skips 'done' records;
3. a row still 'sending' belongs to a job that died between the two; the next job reads the target
   partition from ``scan_from`` (its end offset before that job sent anything) looking for a copy
   with that job's ``replay_job`` header and the row's fingerprint: found → 'done', not found → the
   row is forgotten and the record is selectable again.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

import asyncpg
import structlog

from adapters.db import migrate
from adapters.dlq_store import DlqStore, InDoubt, PgDlqStore, Sending
from adapters.kafka import KafkaTarget, durable_producer, start_client
from events import failure as fh
from events.topics import parked_topic, retry_topic
from workers.dlq import audit, ingress
from workers.dlq.filters import Filter
from workers.dlq.models import DeadLetter, Header, fingerprint
from workers.dlq.names import INGRESS, dead_letter_topic
from workers.dlq.ratelimit import TokenBucket, Unlimited
from workers.dlq.reader import TopicReader
from workers.dlq.selection import (
    DEFERRED_BY_LIMIT,
    FILTERED_OUT,
    PARKED,
    PURGED_HIDDEN,
    REFUSED,
    REPLAYED,
    SELECTED,
    SKIPPED_ALREADY_REPLAYED,
    Action,
    Selector,
    action_records,
    plan_action,
)

log = structlog.get_logger()

CLIENT_ID = "fleet-dlq-replay"
CHUNK_MAX = 200  # copies per produce round (one progress transaction before, one after)
ACK_TIMEOUT_S = 60.0
IN_DOUBT_CONFIRMED = "in_doubt_confirmed"
IN_DOUBT_REQUEUED = "in_doubt_requeued"
IN_DOUBT_PENDING = "in_doubt_pending"  # dry run only: rows the next real run will check


@dataclass(frozen=True)
class ReplayOptions:
    group: str
    filt: Filter
    operator: str
    max_replays: int
    limit: int | None = None
    dry_run: bool = False
    again: bool = False
    rate: float | None = None


class ReplayListener(Protocol):
    """How the CLI follows a job (progress bar, dry-run listing); every method may be a no-op."""

    def planned(self, actions: Sequence[Action]) -> None: ...

    def sent(self, count: int) -> None: ...


@dataclass(frozen=True)
class ReplayReport:
    job_id: UUID
    dry_run: bool
    actions: list[Action]
    counts: dict[str, int]


def summary_counts(counts: Counter[str]) -> dict[str, int]:
    """Every counter of the summary, zeros included, so the printed and logged shapes never vary."""
    names = (REPLAYED, PARKED, SKIPPED_ALREADY_REPLAYED, FILTERED_OUT, PURGED_HIDDEN, DEFERRED_BY_LIMIT)
    extra = sorted(set(counts) - set(names) - {SELECTED})
    return {name: counts.get(name, 0) for name in (*names, *extra)}


async def replay(kafka: KafkaTarget, dsn: str, opts: ReplayOptions, listener: ReplayListener) -> ReplayReport:
    """Run one replay job end to end; its audit row is finished whatever happens."""
    await migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        if not opts.dry_run:
            await audit.lock_group(conn, opts.group)
        job = audit.Job("replay", opts.group, opts.operator, opts.dry_run, _audit_filters(opts))
        return await _ReplayJob(conn, job.job_id, kafka, opts, listener).run_audited(job)
    finally:
        await conn.close()  # also releases the advisory lock


class _ReplayJob:
    def __init__(
        self, conn: asyncpg.Connection, job_id: UUID, kafka: KafkaTarget, opts: ReplayOptions, listener: ReplayListener
    ) -> None:
        self.conn, self.job_id, self.kafka, self.opts, self.listener = conn, job_id, kafka, opts, listener
        self.store = PgDlqStore(conn)  # on the job's connection, which holds the group lock
        self.group = opts.group
        self.counts: Counter[str] = Counter()

    async def run_audited(self, job: audit.Job) -> ReplayReport:
        await audit.start(self.conn, job)
        status, error = "failed", None
        try:
            report = await self.run()
            status = "completed"
            return report
        except asyncio.CancelledError:  # Ctrl-C or SIGTERM: the progress rows already say where we are
            status = "interrupted"
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            final = summary_counts(self.counts)
            await audit.finish(self.conn, self.job_id, status, final, error)
            log.info(
                "dlq_replay_finished",
                job_id=str(self.job_id),
                group=self.group,
                status=status,
                dry_run=self.opts.dry_run,
                **final,
            )

    async def run(self) -> ReplayReport:
        partitions, scan_from = await _targets(self.kafka, self.group)
        if self.opts.dry_run:
            self.counts[IN_DOUBT_PENDING] = len(await self.store.in_doubt(self.group))
        else:
            self.counts.update(await resolve_in_doubt(self.store, self.kafka, self.group))
        actions = [self._plan(dl, partitions) for dl in await self._select()]
        self.listener.planned(actions)
        sendable = [a for a in actions if a.outcome != REFUSED]
        self.counts[REFUSED] += len(actions) - len(sendable)  # not sent, no progress row: replayable later
        if self.opts.dry_run:
            self.counts.update(a.outcome for a in sendable)  # what a real run would do now
        else:
            await self._send_all(sendable, scan_from)
        return ReplayReport(self.job_id, self.opts.dry_run, actions, summary_counts(self.counts))

    def _plan(self, dl: DeadLetter, partitions: dict[str, int]) -> Action:
        if self.group == INGRESS:  # no loop guard: a re-ingested event that fails lands in a group's DLQ
            return ingress.plan_reingest(dl, partitions=partitions[ingress.TARGET])
        return plan_action(dl, group=self.group, max_replays=self.opts.max_replays, partitions=partitions)

    async def _select(self) -> list[DeadLetter]:
        selector = Selector(
            self.opts.filt,
            purged=await self.store.purged_records(self.group),
            done=set(await self.store.done_records(self.group)),
            again=self.opts.again,
            limit=self.opts.limit,
        )
        async with TopicReader(self.kafka, dead_letter_topic(self.group), client_id=CLIENT_ID) as reader:
            async for dl in reader.read():
                selector.offer(dl)
        selected = selector.finish()
        self.counts.update(selector.counts)
        return selected

    async def _send_all(self, actions: list[Action], scan_from: dict[tuple[str, int], int]) -> None:
        if not actions:
            return
        bucket = TokenBucket(self.opts.rate) if self.opts.rate else Unlimited()
        producer = durable_producer(self.kafka, CLIENT_ID)
        await start_client(producer, self.kafka)
        try:
            for chunk in _chunks(actions, _chunk_size(self.opts.rate)):
                for _ in chunk:
                    await bucket.acquire()
                await self._send_chunk(producer, chunk, scan_from)
                self.counts.update(a.outcome for a in chunk)
                self.listener.sent(len(chunk))
        finally:
            await producer.stop()

    async def _send_chunk(self, producer: Any, chunk: list[Action], scan_from: dict[tuple[str, int], int]) -> None:
        now_ms = int(time.time() * 1000)
        records = [action_records(a, job_id=str(self.job_id), now_ms=now_ms) for a in chunk]
        rows = [_sending(a, list(r[0][2]), scan_from) for a, r in zip(chunk, records, strict=True)]
        await self.store.mark_sending(self.group, self.job_id, rows)  # committed before the produce
        # send() only enqueues, in this order, so the copies of one partition keep their DLQ order.
        futures = [
            await producer.send(a.target_topic, key=key, value=value, headers=list(h), partition=a.target_partition)
            for a, copies in zip(chunk, records, strict=True)
            for key, value, h in copies
        ]
        metas = await asyncio.wait_for(asyncio.gather(*futures), ACK_TIMEOUT_S)
        firsts = itertools.accumulate((len(r) for r in records[:-1]), initial=0)  # each action's first record
        done = [(a.dl.coordinates, metas[i].offset) for a, i in zip(chunk, firsts, strict=True)]
        await self.store.mark_done(self.group, self.job_id, done)


async def _targets(kafka: KafkaTarget, group: str) -> tuple[dict[str, int], dict[tuple[str, int], int]]:
    """Partition counts and current end offsets of every target; fails early when one is missing."""
    partitions: dict[str, int] = {}
    ends: dict[tuple[str, int], int] = {}
    targets = (ingress.TARGET,) if group == INGRESS else (retry_topic(group, 1), parked_topic(group))
    for topic in targets:
        async with TopicReader(kafka, topic, client_id=CLIENT_ID) as reader:
            ranges = await reader.ranges()
        partitions[topic] = len(ranges)
        ends.update({(topic, p): r.end for p, r in ranges.items()})
    return partitions, ends


def _chunk_size(rate: float | None) -> int:
    """About a quarter second of copies per round, so an interruption leaves little in doubt."""
    return CHUNK_MAX if not rate else max(1, min(CHUNK_MAX, int(rate / 4)))


def _chunks(actions: list[Action], size: int) -> Iterable[list[Action]]:
    return (actions[i : i + size] for i in range(0, len(actions), size))


def _sending(action: Action, headers: list[Header], scan_from: dict[tuple[str, int], int]) -> Sending:
    return Sending(
        partition=action.dl.partition,
        offset=action.dl.offset,
        outcome=action.outcome,
        event_id=action.dl.event_id,
        fingerprint=fingerprint(headers),
        target_topic=action.target_topic,
        target_partition=action.target_partition,
        scan_from=scan_from[(action.target_topic, action.target_partition)],
    )


async def resolve_in_doubt(store: DlqStore, kafka: KafkaTarget, group: str) -> Counter[str]:
    """Settle the rows a killed job left in 'sending' (see the module docstring, step 3)."""
    result: Counter[str] = Counter()
    by_target: dict[tuple[str, int], list[InDoubt]] = defaultdict(list)
    for row in await store.in_doubt(group):
        by_target[(row.target_topic, row.target_partition)].append(row)
    for (topic, partition), rows in by_target.items():
        found = await _copies_on(kafka, topic, partition, rows)
        for row in rows:
            offsets = found.get((str(row.job_id), row.fingerprint))
            if offsets:
                await store.mark_done(group, row.job_id, [((row.partition, row.offset), offsets.pop(0))])
                result[IN_DOUBT_CONFIRMED] += 1
            else:
                await store.forget_sending(group, row)
                result[IN_DOUBT_REQUEUED] += 1
    if result:
        log.info("dlq_replay_in_doubt_resolved", group=group, **result)
    return result


async def _copies_on(
    kafka: KafkaTarget, topic: str, partition: int, rows: list[InDoubt]
) -> dict[tuple[str, str], list[int]]:
    """Offsets of the copies the in-doubt jobs left on one target partition, by (job id, fingerprint)."""
    jobs = {str(r.job_id) for r in rows}
    found: dict[tuple[str, str], list[int]] = defaultdict(list)
    async with TopicReader(kafka, topic, client_id=CLIENT_ID) as reader:
        async for record in reader.read({partition: min(r.scan_from for r in rows)}):
            job = record.header(fh.REPLAY_JOB)
            if job in jobs:
                found[(job, record.fingerprint())].append(record.offset)
    return found


def _audit_filters(opts: ReplayOptions) -> dict[str, Any]:
    extra = {"limit": opts.limit, "again": opts.again or None, "rate": opts.rate, "max_replays": opts.max_replays}
    return {**opts.filt.as_json(), **{k: v for k, v in extra.items() if v is not None}}
