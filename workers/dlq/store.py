"""Postgres state of ``fleet dlq``: the per-group job lock, replay progress and purge marks (0003_dlq.sql).

Owns the SQL of ``dlq_replay_progress`` and ``dlq_purged``. Must not talk to Kafka: the replay engine
decides what to send and tells this module before (``mark_sending``) and after (``mark_done``) it
sends, which is the whole of the resumability protocol.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

Coordinates = tuple[int, int]  # (dlq partition, dlq offset)


@dataclass(frozen=True)
class Sending:
    """A replay or park about to be produced: the row written before the produce."""

    partition: int
    offset: int
    outcome: str  # replayed | parked
    event_id: str
    fingerprint: str
    target_topic: str
    target_partition: int
    scan_from: int


@dataclass(frozen=True)
class InDoubt:
    """A row a killed job left in 'sending': its copy may or may not be on ``target_topic``."""

    partition: int
    offset: int
    job_id: UUID
    fingerprint: str
    target_topic: str
    target_partition: int
    scan_from: int


@dataclass(frozen=True)
class ProgressRow:
    job_id: UUID
    outcome: str
    target_topic: str
    target_partition: int
    target_offset: int | None
    replays: int
    updated_at: datetime | None = None  # when the copy was acknowledged (state 'done')


# --- the per-group lock: one replay or purge job per group at a time ------------------------


async def try_lock_group(conn: asyncpg.Connection, group: str) -> bool:
    """Session-level advisory lock; released by ``unlock_group`` or when the connection closes
    (also when the process is killed), so a dead job never blocks the next one."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", _lock_key(group)))


async def unlock_group(conn: asyncpg.Connection, group: str) -> None:
    await conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", _lock_key(group))


def _lock_key(group: str) -> str:
    return f"fleet-dlq:{group}"


# --- replay progress ---------------------------------------------------------------------------


_DONE = (
    "SELECT dlq_partition, dlq_offset, job_id, outcome, target_topic, target_partition, target_offset, replays,"
    " updated_at FROM dlq_replay_progress WHERE consumer_group = $1 AND state = 'done'"
)


async def done_records(conn: asyncpg.Connection, group: str) -> dict[Coordinates, ProgressRow]:
    return _progress_rows(await conn.fetch(_DONE, group))


async def done_among(
    conn: asyncpg.Connection, group: str, records: Collection[Coordinates]
) -> dict[Coordinates, ProgressRow]:
    """``done_records`` of these records only (a lookup by key need not load a whole group's progress)."""
    sql = _DONE + " AND (dlq_partition, dlq_offset) IN (SELECT * FROM unnest($2::int[], $3::bigint[]))"
    return _progress_rows(await conn.fetch(sql, group, *_columns(records)))


def _progress_rows(rows: Sequence[asyncpg.Record]) -> dict[Coordinates, ProgressRow]:
    return {
        (r["dlq_partition"], r["dlq_offset"]): ProgressRow(
            r["job_id"],
            r["outcome"],
            r["target_topic"],
            r["target_partition"],
            r["target_offset"],
            r["replays"],
            r["updated_at"],
        )
        for r in rows
    }


async def in_doubt(conn: asyncpg.Connection, group: str) -> list[InDoubt]:
    rows = await conn.fetch(
        "SELECT dlq_partition, dlq_offset, job_id, fingerprint, target_topic, target_partition, scan_from"
        " FROM dlq_replay_progress WHERE consumer_group = $1 AND state = 'sending'"
        " ORDER BY dlq_partition, dlq_offset",
        group,
    )
    return [InDoubt(*r.values()) for r in rows]


async def mark_sending(conn: asyncpg.Connection, group: str, job_id: UUID, rows: Sequence[Sending]) -> None:
    """Written and committed BEFORE the produce: if we die after the broker took the copy, the next
    job finds this row and checks the target topic instead of sending a second copy."""
    await conn.executemany(
        "INSERT INTO dlq_replay_progress (consumer_group, dlq_partition, dlq_offset, job_id, outcome, state,"
        " event_id, fingerprint, target_topic, target_partition, scan_from)"
        " VALUES ($1, $2, $3, $4, $5, 'sending', $6, $7, $8, $9, $10)"
        " ON CONFLICT (consumer_group, dlq_partition, dlq_offset) DO UPDATE SET"
        "  previous_job_id = dlq_replay_progress.job_id, job_id = EXCLUDED.job_id, outcome = EXCLUDED.outcome,"
        "  state = 'sending', event_id = EXCLUDED.event_id, fingerprint = EXCLUDED.fingerprint,"
        "  target_topic = EXCLUDED.target_topic, target_partition = EXCLUDED.target_partition,"
        "  scan_from = EXCLUDED.scan_from, target_offset = NULL,"
        "  replays = dlq_replay_progress.replays + 1, updated_at = now()",
        [
            (group, r.partition, r.offset, job_id, r.outcome, r.event_id, r.fingerprint)
            + (r.target_topic, r.target_partition, r.scan_from)
            for r in rows
        ],
    )


async def mark_done(
    conn: asyncpg.Connection, group: str, job_id: UUID, done: Sequence[tuple[Coordinates, int]]
) -> None:
    """After the broker acknowledged the copies: ``done`` = ((dlq partition, dlq offset), target offset)."""
    await conn.executemany(
        "UPDATE dlq_replay_progress SET state = 'done', target_offset = $5, updated_at = now()"
        " WHERE consumer_group = $1 AND dlq_partition = $2 AND dlq_offset = $3 AND job_id = $4",
        [(group, p, o, job_id, target_offset) for (p, o), target_offset in done],
    )


async def forget_sending(conn: asyncpg.Connection, group: str, row: InDoubt) -> None:
    """The in-doubt copy never reached the broker: the record is as if that job had not touched it
    (a first replay is forgotten; an ``--again`` falls back to the job that replayed it before)."""
    async with conn.transaction():
        key = (group, row.partition, row.offset, row.job_id)
        await conn.execute(
            "DELETE FROM dlq_replay_progress WHERE consumer_group = $1 AND dlq_partition = $2"
            " AND dlq_offset = $3 AND job_id = $4 AND state = 'sending' AND previous_job_id IS NULL",
            *key,
        )
        await conn.execute(
            "UPDATE dlq_replay_progress SET state = 'done', job_id = previous_job_id, previous_job_id = NULL,"
            " replays = replays - 1, updated_at = now() WHERE consumer_group = $1 AND dlq_partition = $2"
            " AND dlq_offset = $3 AND job_id = $4 AND state = 'sending'",
            *key,
        )


# --- purge marks -------------------------------------------------------------------------------


async def purged_records(conn: asyncpg.Connection, group: str) -> set[Coordinates]:
    rows = await conn.fetch("SELECT dlq_partition, dlq_offset FROM dlq_purged WHERE consumer_group = $1", group)
    return {(r["dlq_partition"], r["dlq_offset"]) for r in rows}


async def purged_among(conn: asyncpg.Connection, group: str, records: Collection[Coordinates]) -> set[Coordinates]:
    rows = await conn.fetch(
        "SELECT dlq_partition, dlq_offset FROM dlq_purged WHERE consumer_group = $1"
        " AND (dlq_partition, dlq_offset) IN (SELECT * FROM unnest($2::int[], $3::bigint[]))",
        group,
        *_columns(records),
    )
    return {(r["dlq_partition"], r["dlq_offset"]) for r in rows}


def _columns(records: Collection[Coordinates]) -> tuple[list[int], list[int]]:
    return [p for p, _ in records], [o for _, o in records]


async def mark_purged(
    conn: asyncpg.Connection, group: str, job_id: UUID, records: Sequence[tuple[Coordinates, str]]
) -> None:
    """``records`` = ((dlq partition, dlq offset), event id). Marking twice keeps the first mark."""
    await conn.executemany(
        "INSERT INTO dlq_purged (consumer_group, dlq_partition, dlq_offset, job_id, event_id)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        [(group, p, o, job_id, event_id) for (p, o), event_id in records],
    )
