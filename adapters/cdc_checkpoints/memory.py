"""``MemoryCheckpointStore``: the CDC checkpoints in memory, for unit tests.

Same contract as ``PgCheckpointStore`` (rows merge as its upsert does, a position keeps its kind and
replaces one of the other kind); must not grow behaviour the real store lacks.
"""

from __future__ import annotations

from collections.abc import Sequence

from adapters.cdc_checkpoints.port import Checkpoint, checked_replay_id


class MemoryCheckpointStore:
    """In-memory ``CheckpointStore`` for unit tests; ``saves`` records every write in order. Rows
    merge as the SQL upsert does (a None time or reason keeps the stored one); a replay id that is
    neither an int nor bytes is refused (``TypeError``), as the real store's columns refuse it."""

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
            checked_replay_id(checkpoint.replay_id)
        for checkpoint in checkpoints:
            old = self.rows.get(checkpoint.channel)
            self.rows[checkpoint.channel] = Checkpoint(
                checkpoint.channel,
                checkpoint.replay_id,
                checkpoint.position_time or (old.position_time if old else None),
                checkpoint.reset_reason or (old.reset_reason if old else None),
            )
            self.saves.append(checkpoint)
