"""The CDC checkpoint store's port: the ``Checkpoint`` row, the pending catch-up marker, ``CheckpointStore``.

A window the stream cannot replay (a rejected replay id, a quiet channel) is caught up by a resync.
While that catch-up has not succeeded the row says so durably: ``reset_reason`` is
``CATCH_UP_PENDING:<reason>`` and ``position_time`` stays at the window's start, whatever replay ids
the stream checkpoints meanwhile, so a restart (or another leader) resumes the catch-up. Must not
know SQL: ``pg.py`` implements the port over asyncpg, ``memory.py`` in memory.

Positions (``ReplayId``) come in two kinds, one per transport: CometD replay ids are integers,
Pub/Sub API (gRPC) replay ids are opaque bytes. Bytes are kept as bytes: never compared, ordered or
turned into a number; ``replay_id_text`` is the one way to show either kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

#: where a channel's stream resumes: a CometD replay id (int) or a Pub/Sub API replay id (opaque bytes)
ReplayId = int | bytes

#: ``reset_reason`` prefix of a channel whose catch-up resync has not succeeded yet
CATCH_UP_PENDING = "CATCH_UP_PENDING:"


def pending(reason: str) -> str:
    """The ``reset_reason`` recording an unfinished catch-up whose resync reason is ``reason``."""
    return CATCH_UP_PENDING + reason


def replay_id_text(replay_id: ReplayId) -> str:
    """A replay id for people, headers and keys: an int in decimal, bytes in lowercase hex."""
    return replay_id.hex() if isinstance(replay_id, bytes) else str(replay_id)


def checked_replay_id(replay_id: object) -> ReplayId | None:
    """``replay_id`` when it is a position (an int that is not a bool, or bytes) or None; else
    ``TypeError``, so a store refuses what its columns could not hold faithfully."""
    if replay_id is None or isinstance(replay_id, bytes):
        return replay_id
    if isinstance(replay_id, int) and not isinstance(replay_id, bool):
        return replay_id
    raise TypeError(f"a replay id is an int or bytes, not {type(replay_id).__name__}")


@dataclass(frozen=True)
class Checkpoint:
    """Where a channel may resume: ``replay_id`` (None after a fallback; its kind says which
    transport wrote it) and ``position_time``,
    the commit time of that change or the end of the last resync window; while a catch-up is
    pending (``pending_catch_up``), the start of the window still to resync."""

    channel: str
    replay_id: ReplayId | None
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
        ``replay_id`` is always written, as the kind it is (an int stays an int, bytes stay bytes;
        a row holds one kind, the other is cleared); a None ``position_time`` or ``reset_reason`` keeps the
        stored one (so a stream position never clears a pending catch-up's marker)."""
        ...
