"""Replay-id checkpoints of the Salesforce CDC subscriber: the Postgres store, the watermark and
the duplicate window.

Delivery semantics, the reason this module exists: a channel's replay id is written only after
Kafka acknowledged (``acks=all``, idempotent producer) every domain event derived from that change
*and from every change received before it* on the channel. Changes may complete out of order
(the subscriber works on several records at once), so ``Watermark`` tracks them in receive order
and only hands out the highest replay id below which everything is done. A crash therefore
resumes from a replay id whose changes are all on Kafka: what follows it is delivered again
(deterministic CloudEvent ids, so downstream inboxes drop the repeats) and nothing is lost.

A window the stream cannot replay (a rejected replay id, a quiet channel) is caught up by a resync.
While that catch-up has not succeeded the row says so durably: ``reset_reason`` is
``CATCH_UP_PENDING:<reason>`` and ``position_time`` stays at the window's start, whatever replay ids
the stream checkpoints meanwhile, so a restart (or another leader) resumes the catch-up.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import asyncpg
from asyncpg.pool import PoolConnectionProxy

#: ``reset_reason`` prefix of a channel whose catch-up resync has not succeeded yet
CATCH_UP_PENDING = "CATCH_UP_PENDING:"


def pending(reason: str) -> str:
    """The ``reset_reason`` recording an unfinished catch-up whose resync reason is ``reason``."""
    return CATCH_UP_PENDING + reason


@dataclass(frozen=True)
class Checkpoint:
    """Where a channel may resume: ``replay_id`` (None after a fallback) and ``position_time``,
    the commit time of that change or the end of the last resync window; while a catch-up is
    pending (``pending_catch_up``), the start of the window still to resync."""

    channel: str
    replay_id: int | None
    position_time: datetime | None = None
    reset_reason: str | None = None

    @property
    def pending_catch_up(self) -> str | None:
        """The reason of the unfinished catch-up this row records, None when there is none."""
        reason = self.reset_reason or ""
        return reason.removeprefix(CATCH_UP_PENDING) if reason.startswith(CATCH_UP_PENDING) else None


class CheckpointStore(Protocol):
    async def load(self, subscriber: str) -> dict[str, Checkpoint]:
        """Every channel's checkpoint of ``subscriber``. Raises on database errors."""
        ...

    async def save(self, subscriber: str, checkpoints: Sequence[Checkpoint]) -> None:
        """Upsert the checkpoints in one transaction. Idempotent. Raises on database errors.
        ``replay_id`` is always written; a None ``position_time`` or ``reset_reason`` keeps the
        stored one (so a stream position never clears a pending catch-up's marker)."""
        ...


_UPSERT = """
INSERT INTO sf_cdc_checkpoints (subscriber, channel, replay_id, position_time, reset_reason, reset_at)
VALUES ($1, $2, $3, $4, $5, CASE WHEN $5::text IS NULL THEN NULL ELSE now() END)
ON CONFLICT (subscriber, channel) DO UPDATE SET
    replay_id = EXCLUDED.replay_id,
    position_time = COALESCE(EXCLUDED.position_time, sf_cdc_checkpoints.position_time),
    reset_reason = COALESCE(EXCLUDED.reset_reason, sf_cdc_checkpoints.reset_reason),
    reset_at = COALESCE(EXCLUDED.reset_at, sf_cdc_checkpoints.reset_at),
    updated_at = now()
"""


class PgCheckpointStore:
    """``CheckpointStore`` over the ``sf_cdc_checkpoints`` table (migration 0004)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def load(self, subscriber: str) -> dict[str, Checkpoint]:
        rows = await self._pool.fetch(
            "SELECT channel, replay_id, position_time, reset_reason FROM sf_cdc_checkpoints WHERE subscriber = $1",
            subscriber,
        )
        return {
            r["channel"]: Checkpoint(r["channel"], r["replay_id"], r["position_time"], r["reset_reason"]) for r in rows
        }

    async def save(self, subscriber: str, checkpoints: Sequence[Checkpoint]) -> None:
        if not checkpoints:
            return
        args = [(subscriber, c.channel, c.replay_id, c.position_time, c.reset_reason) for c in checkpoints]
        async with self._pool.acquire() as conn, conn.transaction():
            await self._before_write(conn)
            await conn.executemany(_UPSERT, args)

    async def _before_write(self, conn: asyncpg.Connection | PoolConnectionProxy) -> None:
        """Runs in the write's transaction, before it; raising aborts the write (a fence hook)."""


class MemoryCheckpointStore:
    """In-memory ``CheckpointStore`` for unit tests; ``saves`` records every write in order. Rows
    merge as the SQL upsert does (a None time or reason keeps the stored one)."""

    def __init__(self, initial: dict[str, Checkpoint] | None = None) -> None:
        self.rows: dict[str, Checkpoint] = dict(initial or {})
        self.saves: list[Checkpoint] = []
        self.fail_next_with: Exception | None = None

    async def load(self, subscriber: str) -> dict[str, Checkpoint]:
        return dict(self.rows)

    async def save(self, subscriber: str, checkpoints: Sequence[Checkpoint]) -> None:
        if self.fail_next_with is not None:
            exc, self.fail_next_with = self.fail_next_with, None
            raise exc
        for checkpoint in checkpoints:
            old = self.rows.get(checkpoint.channel)
            self.rows[checkpoint.channel] = Checkpoint(
                checkpoint.channel,
                checkpoint.replay_id,
                checkpoint.position_time or (old.position_time if old else None),
                checkpoint.reset_reason or (old.reset_reason if old else None),
            )
            self.saves.append(checkpoint)


@dataclass
class _Entry:
    replay_id: int
    at: datetime | None
    done: bool = False


class Watermark:
    """One channel's changes in receive order; completed in any order; the safe position is the
    highest replay id of the completed prefix.

    "Highest", not "last": when the platform delivers a batch out of order (10, 12, 11), the prefix
    10..11 being done means 12 is done too, and the position never moves backwards.
    """

    def __init__(self) -> None:
        self._open: OrderedDict[int, _Entry] = OrderedDict()
        self._next = 0
        self._safe: _Entry | None = None
        self._dirty = False

    @property
    def pending(self) -> int:
        return len(self._open)

    def begin(self, replay_id: int, at: datetime | None) -> int:
        """Register a received change; returns the token to pass to ``done``."""
        token = self._next
        self._next += 1
        self._open[token] = _Entry(replay_id, at)
        return token

    def done(self, token: int) -> None:
        """Mark a change as durable on Kafka (or deliberately dropped) and advance the prefix."""
        entry = self._open.get(token)
        if entry is None:
            return
        entry.done = True
        while self._open:
            first_token, first = next(iter(self._open.items()))
            if not first.done:
                break
            del self._open[first_token]
            if self._safe is None or first.replay_id > self._safe.replay_id:
                self._safe, self._dirty = first, True

    @property
    def position(self) -> int | None:
        """The highest replay id of the completed prefix so far (None before the first)."""
        return self._safe.replay_id if self._safe is not None else None

    def take(self, channel: str) -> Checkpoint | None:
        """The position to write, once per advance (None when nothing new became safe)."""
        if not self._dirty or self._safe is None:
            return None
        self._dirty = False
        return Checkpoint(channel, self._safe.replay_id, self._safe.at)

    def restore(self, checkpoint: Checkpoint) -> None:
        """Put back a position whose write failed, so the next flush tries again."""
        if self._safe is not None and checkpoint.replay_id == self._safe.replay_id:
            self._dirty = True


class RecentIds:
    """The in-memory duplicate window: identities of the last ``capacity`` changes dispatched.

    Catches the platform's at-least-once redeliveries within one process lifetime; across restarts
    the deterministic CloudEvent ids let downstream inboxes drop what this window forgot.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._keys: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def seen(self, keys: Sequence[str]) -> bool:
        return any(key in self._keys for key in keys)

    def add(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._keys[key] = None
            self._keys.move_to_end(key)
        while len(self._keys) > self._capacity:
            self._keys.popitem(last=False)
