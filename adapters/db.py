"""PostgreSQL plumbing: pool creation, the SQL migration runner and the inbox (idempotent consumer).

Migrations are plain numbered SQL files in ``adapters/migrations``; each runs once, in its own
transaction, recorded in ``schema_migrations`` with its checksum (an edited, already-applied file
is an error, not a silent skip). We do not use yoyo-migrations: it drives a synchronous DB-API
driver (psycopg) we would add only for this, and the runner we need is the forty lines below
over the asyncpg we already use; concurrent runners are serialised by an advisory lock.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta
from importlib import resources

import asyncpg

MIGRATIONS_PACKAGE = "adapters.migrations"
_LOCK_ID = 0x466C656574  # "Fleet": serialises concurrent `fleet db migrate` runs


@dataclass(frozen=True)
class Migration:
    version: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    files = resources.files(MIGRATIONS_PACKAGE).iterdir()
    found = [Migration(f.name.removesuffix(".sql"), f.read_text()) for f in files if f.name.endswith(".sql")]
    return sorted(found, key=lambda m: m.version)


async def migrate(dsn: str) -> list[str]:
    """Apply pending migrations; returns the versions applied now. Idempotent."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        applied = {
            r["version"]: r["checksum"] for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")
        }
        done: list[str] = []
        for m in load_migrations():
            if m.version in applied:
                if applied[m.version] != m.checksum:
                    raise RuntimeError(f"migration {m.version} was edited after it was applied")
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)", m.version, m.checksum
                )
            done.append(m.version)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
        await conn.close()


async def create_pool(dsn: str, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size)
    assert pool is not None
    return pool


# --- the inbox: idempotent consumption ------------------------------------------------------


#: the inbox row's columns, in ``claim_event``'s parameter order (the saga store claims inside its
#: one-statement save with the same row)
INBOX_COLUMNS = 'consumer_group, event_id, event_type, topic, partition, "offset"'


async def claim_event(
    conn: asyncpg.Connection,
    *,
    group: str,
    event_id: str,
    event_type: str,
    topic: str,
    partition: int,
    offset: int,
) -> bool:
    """Record ``event_id`` as processed by ``group`` inside the caller's transaction.

    Returns False when it was already processed: the caller skips its side effects and the
    runtime acknowledges the record. Because the row commits (or rolls back) together with the
    handler's own writes, a crash between handling and offset commit cannot apply them twice.
    """
    status = await conn.execute(
        f"INSERT INTO inbox ({INBOX_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        group,
        event_id,
        event_type,
        topic,
        partition,
        offset,
    )
    return bool(status == "INSERT 0 1")


async def purge_inbox(pool: asyncpg.Pool, retention: timedelta, batch: int = 1000, max_batches: int = 100) -> int:
    """Delete inbox rows older than ``retention`` in bounded batches (short locks, no bloat spike)."""
    total = 0
    for _ in range(max_batches):
        status = await pool.execute(
            "DELETE FROM inbox WHERE ctid IN ("
            " SELECT ctid FROM inbox WHERE processed_at < now() - $1::interval LIMIT $2)",
            retention,
            batch,
        )
        deleted = int(status.split()[-1])
        total += deleted
        if deleted < batch:
            break
    return total


async def seed_id_mappings(pool: asyncpg.Pool, rows: list[dict[str, object]]) -> int:
    """Insert id_mappings rows that are not there yet (demo and test data)."""
    await pool.executemany(
        "INSERT INTO id_mappings (user_id, whmcs_client_id, sf_account_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        [(r["user_id"], r["whmcs_client_id"], r["sf_account_id"]) for r in rows],
    )
    return len(rows)
