"""``fleet dlq unpark``: send a parked record back into its group's retry path, past the loop guard.

A replay parks a dead letter already replayed ``max_replays`` times on ``<group>.parked`` (nobody
consumes it). Once a human fixed the cause, un-parking replays that dead letter once more. Owns
finding the dead letter a parked copy came from (the progress row of the job that parked it names
the copy's partition and offset) and the replay options that lift the loop guard for exactly that
record. The replay itself is ``workers.dlq.replay.replay``: locked, audited (its filters show the
record and the lifted guard), resumable. Must not produce anything itself.
"""

from __future__ import annotations

import asyncpg

from adapters.db import migrate
from adapters.dlq_store import PgDlqStore
from events.topics import parked_topic
from workers.dlq.filters import Filter
from workers.dlq.replay import ReplayOptions
from workers.dlq.selection import PARKED

#: the loop guard an un-park replays under: high enough that the record is replayed, not parked again
UNPARK_MAX_REPLAYS = 1_000_000

Coordinates = tuple[int, int]


async def parked_origins(dsn: str, group: str) -> dict[Coordinates, Coordinates]:
    """Each parked copy still parked (its partition and offset on ``<group>.parked``) → its dead letter."""
    await migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        rows = await PgDlqStore(conn).done_records(group)
    finally:
        await conn.close()
    topic = parked_topic(group)
    return {
        (row.target_partition, row.target_offset): at
        for at, row in rows.items()
        if row.outcome == PARKED and row.target_topic == topic and row.target_offset is not None
    }


def unpark_options(
    group: str, dead_letter: Coordinates, operator: str, *, rate: float | None = None, dry_run: bool = False
) -> ReplayOptions:
    """Replay exactly ``dead_letter`` again (it was replayed before: ``again``), past the loop guard."""
    return ReplayOptions(
        group, Filter(records=(dead_letter,)), operator, UNPARK_MAX_REPLAYS, dry_run=dry_run, again=True, rate=rate
    )
