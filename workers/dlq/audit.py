"""The audit trail of ``fleet dlq``: one ``dlq_audit`` row per replay or purge job, dry runs included.

Owns who/when/what of every operator action (the row is inserted as 'running' before the job
touches anything and finished with its counts, so even a job that crashed leaves evidence) and
the one-job-per-group rule. Must not decide anything about the records themselves.
"""

from __future__ import annotations

import getpass
import json
import socket
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from adapters.dlq_store import PgDlqStore


class GroupBusy(RuntimeError):
    """Another replay or purge job holds this group's lock."""


async def lock_group(conn: asyncpg.Connection, group: str) -> None:
    """Take the group's job lock or raise ``GroupBusy``. Holding it proves no other job of the group
    runs, so a 'running' audit row left by a killed job is then marked 'interrupted'."""
    if not await PgDlqStore(conn).try_lock_group(group):
        raise GroupBusy(f"another `fleet dlq replay/purge` job is running for {group}; see `fleet dlq audit`")
    await mark_stale_interrupted(conn, group)


def default_operator() -> str:
    """The OS user running the command (``--operator`` overrides it)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (some containers)
        return "unknown"


@dataclass(frozen=True)
class Job:
    action: str  # replay | purge
    group: str
    operator: str
    dry_run: bool
    filters: dict[str, Any]
    job_id: UUID = field(default_factory=uuid4)
    host: str = field(default_factory=socket.gethostname)


@dataclass(frozen=True)
class AuditRow:
    job_id: UUID
    action: str
    group: str
    operator: str
    host: str
    dry_run: bool
    filters: dict[str, Any]
    counts: dict[str, Any]
    status: str
    error: str | None
    started_at: datetime
    finished_at: datetime | None


async def start(conn: asyncpg.Connection, job: Job) -> None:
    await conn.execute(
        "INSERT INTO dlq_audit (job_id, action, consumer_group, operator, host, dry_run, filters)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)",
        job.job_id,
        job.action,
        job.group,
        job.operator,
        job.host,
        job.dry_run,
        json.dumps(job.filters),
    )


async def finish(
    conn: asyncpg.Connection, job_id: UUID, status: str, counts: dict[str, Any], error: str | None = None
) -> None:
    await conn.execute(
        "UPDATE dlq_audit SET status = $2, counts = $3::jsonb, error = $4, finished_at = now() WHERE job_id = $1",
        job_id,
        status,
        json.dumps(counts),
        error,
    )


async def mark_stale_interrupted(conn: asyncpg.Connection, group: str) -> int:
    """Call while holding the group lock: a 'running' job of this group cannot be running any more."""
    status = await conn.execute(
        "UPDATE dlq_audit SET status = 'interrupted', finished_at = now(),"
        " error = coalesce(error, 'the process ended without finishing the job')"
        " WHERE consumer_group = $1 AND status = 'running' AND dry_run = false",
        group,
    )
    return int(status.split()[-1])


async def recent(conn: asyncpg.Connection, group: str | None, limit: int = 20) -> list[AuditRow]:
    rows = await conn.fetch(
        "SELECT job_id, action, consumer_group, operator, host, dry_run, filters, counts, status, error,"
        " started_at, finished_at FROM dlq_audit WHERE $1::text IS NULL OR consumer_group = $1"
        " ORDER BY started_at DESC LIMIT $2",
        group,
        limit,
    )
    return [_row(r) for r in rows]


def _row(r: asyncpg.Record) -> AuditRow:
    values = dict(r)
    values["group"] = values.pop("consumer_group")
    values["filters"] = json.loads(values["filters"])
    values["counts"] = json.loads(values["counts"])
    return AuditRow(**values)
