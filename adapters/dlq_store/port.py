"""The DLQ store's port: what ``fleet dlq`` remembers between runs, and the contract of each method.

Replay progress is the whole of replay's resumability protocol: a copy's row is committed as
'sending' (``mark_sending``) BEFORE it is produced and as 'done' (``mark_done``) after the broker
acknowledged it, so a job killed in between leaves a row the next job settles (``in_doubt``, then
``mark_done`` or ``forget_sending``). Purge marks hide records Kafka cannot delete one by one. Must
not know SQL: ``pg.py`` implements the port over asyncpg. Every method raises asyncpg's errors as
they come (the CLI reports them; a job never retries a database call on its own).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from uuid import UUID

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


class DlqStore(Protocol):
    async def try_lock_group(self, group: str) -> bool:
        """Take the group's job lock without waiting; False when another job holds it. A session lock:
        released by ``unlock_group`` or when the store's connection closes (also when the process is
        killed), so a dead job never blocks the next one."""
        ...

    async def unlock_group(self, group: str) -> None:
        """Release the group's job lock (idempotent)."""
        ...

    async def done_records(self, group: str) -> dict[Coordinates, ProgressRow]:
        """Every record of ``group`` whose replay (or park) the broker acknowledged, by DLQ coordinates."""
        ...

    async def done_among(self, group: str, records: Collection[Coordinates]) -> dict[Coordinates, ProgressRow]:
        """``done_records`` of these records only (a lookup by key need not load a whole group's progress)."""
        ...

    async def in_doubt(self, group: str) -> list[InDoubt]:
        """The rows a killed job left in 'sending', in DLQ order."""
        ...

    async def mark_sending(self, group: str, job_id: UUID, rows: Sequence[Sending]) -> None:
        """Record ``rows`` as 'sending' for ``job_id``; committed BEFORE the produce: if we die after
        the broker took the copy, the next job finds this row and checks the target topic instead of
        sending a second copy. A record replayed before keeps its previous job (``--again``)."""
        ...

    async def mark_done(self, group: str, job_id: UUID, done: Sequence[tuple[Coordinates, int]]) -> None:
        """After the broker acknowledged the copies: ``done`` = ((dlq partition, dlq offset), target
        offset). Idempotent."""
        ...

    async def forget_sending(self, group: str, row: InDoubt) -> None:
        """The in-doubt copy never reached the broker: the record is as if that job had not touched it
        (a first replay is forgotten; an ``--again`` falls back to the job that replayed it before).
        One transaction."""
        ...

    async def purged_records(self, group: str) -> set[Coordinates]:
        """Every record of ``group`` an operator purged."""
        ...

    async def purged_among(self, group: str, records: Collection[Coordinates]) -> set[Coordinates]:
        """``purged_records`` among these records only."""
        ...

    async def mark_purged(self, group: str, job_id: UUID, records: Sequence[tuple[Coordinates, str]]) -> None:
        """``records`` = ((dlq partition, dlq offset), event id). Marking twice keeps the first mark."""
        ...
