"""Replay-id checkpoints of the Salesforce CDC subscriber, in PostgreSQL: where each channel may resume.

System: PostgreSQL (table ``sf_cdc_checkpoints``, migrations 0004 and 0009), through asyncpg. Owns the
rows and the durable marker of an unfinished catch-up (``pending``). Must not decide which replay id is
safe to write (``workers.ingress.watermark`` does, after Kafka acknowledged), read configuration or
build its pool. Same shape as every adapter: ``port`` (``CheckpointStore``, ``Checkpoint``), ``pg``
(``PgCheckpointStore``), ``memory`` (``MemoryCheckpointStore``, the fake). A position is a
``ReplayId``: an int (CometD) or opaque bytes (Pub/Sub API), stored as the kind it is.
"""

from adapters.cdc_checkpoints.memory import MemoryCheckpointStore
from adapters.cdc_checkpoints.pg import PgCheckpointStore
from adapters.cdc_checkpoints.port import (
    CATCH_UP_PENDING,
    Checkpoint,
    CheckpointStore,
    ReplayId,
    checked_replay_id,
    pending,
    replay_id_text,
)

__all__ = [
    "CATCH_UP_PENDING",
    "Checkpoint",
    "CheckpointStore",
    "MemoryCheckpointStore",
    "PgCheckpointStore",
    "ReplayId",
    "checked_replay_id",
    "pending",
    "replay_id_text",
]
