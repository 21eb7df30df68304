"""The inbox's upkeep: a worker with a pool purges inbox rows past their retention, in bounded batches.

The inbox itself is the idempotent consumer: a handler claims its event id (``adapters.db.claim_event``)
in the same transaction as its own writes (the saga does, through ``adapters.saga_store``), so a
redelivered event (crash between handling and offset commit, rebalance, replay) finds its row and
skips its side effects. Owns only the periodic purge. Must not commit offsets or decide retries.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING

import asyncpg
import structlog

from adapters.db import purge_inbox

if TYPE_CHECKING:
    from workers.config import RuntimeSettings

log = structlog.get_logger(__name__)


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


def start_purge(pool: asyncpg.Pool, settings: RuntimeSettings) -> asyncio.Task[None]:
    """A worker's ``purge_loop`` as a task (the worker cancels it when it stops): rows older than
    ``inbox_retention_days``, every ``purge_interval_s``, in batches of ``purge_batch``."""
    retention = timedelta(days=settings.inbox_retention_days)
    every = purge_loop(
        pool, retention, settings.purge_interval_s, batch=settings.purge_batch, max_batches=settings.purge_max_batches
    )
    return asyncio.create_task(every, name="inbox-purge")
