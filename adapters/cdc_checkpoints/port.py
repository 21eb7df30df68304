"""The CDC checkpoint store's port: the ``Checkpoint`` row, the pending catch-up marker, ``CheckpointStore``.

A window the stream cannot replay (a rejected replay id, a quiet channel) is caught up by a resync.
While that catch-up has not succeeded the row says so durably: ``reset_reason`` is
``CATCH_UP_PENDING:<reason>`` and ``position_time`` stays at the window's start, whatever replay ids
the stream checkpoints meanwhile, so a restart (or another leader) resumes the catch-up. Must not
know SQL: ``pg.py`` implements the port over asyncpg, ``memory.py`` in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

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
