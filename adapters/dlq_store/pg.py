"""``PgDlqStore``: the state of ``fleet dlq`` in PostgreSQL, on the one connection a job holds (0003_dlq.sql).

Owns the SQL of ``dlq_replay_progress`` and ``dlq_purged`` and the per-group advisory lock. Works on
the connection it is given, for the whole job: the lock is a *session* lock, so it must be taken and
held on that connection (it dies with it, also when the process is killed). Must not talk to Kafka,
build its connection or decide what to replay.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from uuid import UUID

import asyncpg

from adapters.dlq_store.port import Coordinates, InDoubt, ProgressRow, Sending

_DONE = (
    "SELECT dlq_partition, dlq_offset, job_id, outcome, target_topic, target_partition, target_offset, replays,"
    " updated_at FROM dlq_replay_progress WHERE consumer_group = $1 AND state = 'done'"
)


class PgDlqStore:
    """``DlqStore`` over one asyncpg connection (the job's own, which also holds the group lock)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    # --- the per-group lock: one replay or purge job per group at a time ---------------------

    async def try_lock_group(self, group: str) -> bool:
        return bool(await self._conn.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", _lock_key(group)))

    async def unlock_group(self, group: str) -> None:
        await self._conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", _lock_key(group))

    # --- replay progress ------------------------------------------------------------------------

    async def done_records(self, group: str) -> dict[Coordinates, ProgressRow]:
        return _progress_rows(await self._conn.fetch(_DONE, group))

    async def done_among(self, group: str, records: Collection[Coordinates]) -> dict[Coordinates, ProgressRow]:
        sql = _DONE + " AND (dlq_partition, dlq_offset) IN (SELECT * FROM unnest($2::int[], $3::bigint[]))"
        return _progress_rows(await self._conn.fetch(sql, group, *_columns(records)))

    async def in_doubt(self, group: str) -> list[InDoubt]:
        rows = await self._conn.fetch(
            "SELECT dlq_partition, dlq_offset, job_id, fingerprint, target_topic, target_partition, scan_from"
            " FROM dlq_replay_progress WHERE consumer_group = $1 AND state = 'sending'"
            " ORDER BY dlq_partition, dlq_offset",
            group,
        )
        return [InDoubt(*r.values()) for r in rows]

    async def mark_sending(self, group: str, job_id: UUID, rows: Sequence[Sending]) -> None:
        await self._conn.executemany(
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

    async def mark_done(self, group: str, job_id: UUID, done: Sequence[tuple[Coordinates, int]]) -> None:
        await self._conn.executemany(
            "UPDATE dlq_replay_progress SET state = 'done', target_offset = $5, updated_at = now()"
            " WHERE consumer_group = $1 AND dlq_partition = $2 AND dlq_offset = $3 AND job_id = $4",
            [(group, p, o, job_id, target_offset) for (p, o), target_offset in done],
        )

    async def forget_sending(self, group: str, row: InDoubt) -> None:
        async with self._conn.transaction():
            key = (group, row.partition, row.offset, row.job_id)
            await self._conn.execute(
                "DELETE FROM dlq_replay_progress WHERE consumer_group = $1 AND dlq_partition = $2"
                " AND dlq_offset = $3 AND job_id = $4 AND state = 'sending' AND previous_job_id IS NULL",
                *key,
            )
            await self._conn.execute(
                "UPDATE dlq_replay_progress SET state = 'done', job_id = previous_job_id, previous_job_id = NULL,"
                " replays = replays - 1, updated_at = now() WHERE consumer_group = $1 AND dlq_partition = $2"
                " AND dlq_offset = $3 AND job_id = $4 AND state = 'sending'",
                *key,
            )

    # --- purge marks ----------------------------------------------------------------------------

    async def purged_records(self, group: str) -> set[Coordinates]:
        rows = await self._conn.fetch(
            "SELECT dlq_partition, dlq_offset FROM dlq_purged WHERE consumer_group = $1", group
        )
        return {(r["dlq_partition"], r["dlq_offset"]) for r in rows}

    async def purged_among(self, group: str, records: Collection[Coordinates]) -> set[Coordinates]:
        rows = await self._conn.fetch(
            "SELECT dlq_partition, dlq_offset FROM dlq_purged WHERE consumer_group = $1"
            " AND (dlq_partition, dlq_offset) IN (SELECT * FROM unnest($2::int[], $3::bigint[]))",
            group,
            *_columns(records),
        )
        return {(r["dlq_partition"], r["dlq_offset"]) for r in rows}

    async def mark_purged(self, group: str, job_id: UUID, records: Sequence[tuple[Coordinates, str]]) -> None:
        await self._conn.executemany(
            "INSERT INTO dlq_purged (consumer_group, dlq_partition, dlq_offset, job_id, event_id)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            [(group, p, o, job_id, event_id) for (p, o), event_id in records],
        )


def _lock_key(group: str) -> str:
    return f"fleet-dlq:{group}"


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


def _columns(records: Collection[Coordinates]) -> tuple[list[int], list[int]]:
    return [p for p, _ in records], [o for _, o in records]
