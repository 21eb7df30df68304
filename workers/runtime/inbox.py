"""The idempotent consumer: an inbox row written in the same transaction as the handler's own writes.

Owns the ergonomic wrapper around ``adapters.db.claim_event`` and the periodic inbox purge. Must not
commit offsets or decide retries: a redelivered event (crash between handling and offset commit,
rebalance, replay) finds its row, ``tx.duplicate`` is True, the handler skips its side effects and
returns, and the runtime acknowledges the record like any other success.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

import asyncpg
import structlog

from adapters.db import claim_event, purge_inbox
from workers.runtime.message import Message

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class InboxTx:
    """``conn`` is inside an open transaction; write the side effects with it unless ``duplicate``."""

    conn: asyncpg.Connection[Any]  # a pool connection (proxy): same query API
    duplicate: bool


@asynccontextmanager
async def idempotent(pool: asyncpg.Pool, group: str, msg: Message) -> AsyncIterator[InboxTx]:
    """``async with idempotent(pool, group, msg) as tx:`` — claim ``msg.event_id`` for ``group``.

    The claim and the body's writes commit together when the block exits normally and roll back
    together when it raises, so a failed attempt leaves no row behind and the retry claims again.
    A duplicate still runs the block (with ``duplicate=True``) so the handler decides what to skip.
    The row records the event's original coordinates (provenance headers on a retry topic).
    """
    async with pool.acquire() as proxy, proxy.transaction():
        conn = cast("asyncpg.Connection[Any]", proxy)
        fresh = await claim_event(
            conn,
            group=group,
            event_id=msg.event_id,
            event_type=msg.event_type,
            topic=msg.source_topic,
            partition=msg.source_partition,
            offset=msg.source_offset,
        )
        if not fresh:
            log.debug("duplicate_event_skipped", group=group, event_id=msg.event_id)
        yield InboxTx(conn, duplicate=not fresh)


async def purge_once(pool: asyncpg.Pool, retention: timedelta, *, batch: int = 1000, max_batches: int = 100) -> int:
    """One bounded purge pass (at most ``batch * max_batches`` rows); returns the rows deleted."""
    deleted = await purge_inbox(pool, retention, batch=batch, max_batches=max_batches)
    log.info("inbox_purged", deleted=deleted, retention_days=retention.days)
    return deleted


async def purge_loop(
    pool: asyncpg.Pool, retention: timedelta, interval_s: float, *, batch: int, max_batches: int
) -> None:
    """``purge_once`` every ``interval_s`` until cancelled (a worker with a pool runs one); a failed
    purge is logged and tried again next time."""
    while True:
        try:
            await purge_once(pool, retention, batch=batch, max_batches=max_batches)
        except (asyncpg.PostgresError, OSError) as exc:
            log.warning("inbox_purge_failed", error=repr(exc))
        await asyncio.sleep(interval_s)
