"""``PgCheckpointStore``: the CDC checkpoints in the ``sf_cdc_checkpoints`` table (migrations 0004, 0009).

Owns the SQL: one row per (subscriber, channel), upserted in one transaction per save, with a hook
(``before_write``) that runs inside that transaction first (the leader's fence). A position is kept
as the kind it is: an int (CometD) in ``replay_id`` (bigint), bytes (Pub/Sub API) in
``pubsub_replay_id`` (bytea); every write sets one and clears the other (a CHECK holds at most one).
Receives its pool from the composition root; must not build it, read configuration, retry or decide
what to write.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from adapters.cdc_checkpoints.port import Checkpoint, ReplayId, checked_replay_id

_UPSERT = """
INSERT INTO sf_cdc_checkpoints
    (subscriber, channel, replay_id, pubsub_replay_id, position_time, reset_reason, reset_at)
VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $6::text IS NULL THEN NULL ELSE now() END)
ON CONFLICT (subscriber, channel) DO UPDATE SET
    replay_id = EXCLUDED.replay_id,
    pubsub_replay_id = EXCLUDED.pubsub_replay_id,
    position_time = COALESCE(EXCLUDED.position_time, sf_cdc_checkpoints.position_time),
    reset_reason = COALESCE(EXCLUDED.reset_reason, sf_cdc_checkpoints.reset_reason),
    reset_at = COALESCE(EXCLUDED.reset_at, sf_cdc_checkpoints.reset_at),
    updated_at = now()
"""
_LOAD = """
SELECT channel, replay_id, pubsub_replay_id, position_time, reset_reason
FROM sf_cdc_checkpoints WHERE subscriber = $1
"""


def _columns(replay_id: ReplayId | None) -> tuple[int | None, bytes | None]:
    """``(replay_id, pubsub_replay_id)``: the position in the column of its kind, None in the other."""
    checked = checked_replay_id(replay_id)
    return (None, checked) if isinstance(checked, bytes) else (checked, None)


class PgCheckpointStore:
    """``CheckpointStore`` over the ``sf_cdc_checkpoints`` table (migrations 0004, 0009)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def load(self, subscriber: str) -> dict[str, Checkpoint]:
        rows = await self._pool.fetch(_LOAD, subscriber)
        return {r["channel"]: _checkpoint(r) for r in rows}

    async def save(self, subscriber: str, checkpoints: Sequence[Checkpoint]) -> None:
        if not checkpoints:
            return
        args = [(subscriber, c.channel, *_columns(c.replay_id), c.position_time, c.reset_reason) for c in checkpoints]
        async with self._pool.acquire() as conn, conn.transaction():
            await self.before_write(conn)
            await conn.executemany(_UPSERT, args)

    async def before_write(self, conn: asyncpg.Connection | PoolConnectionProxy) -> None:
        """Runs in the write's transaction, before it; raising aborts the write. A hook for subclasses
        (``workers.ingress.cdc_leader.FencedCheckpointStore`` fences the leader's term here)."""


def _checkpoint(row: asyncpg.Record) -> Checkpoint:
    # the CHECK of migration 0009 lets at most one of the two be set
    pubsub = row["pubsub_replay_id"]
    replay_id: ReplayId | None = row["replay_id"] if pubsub is None else bytes(pubsub)
    return Checkpoint(row["channel"], replay_id, row["position_time"], row["reset_reason"])
