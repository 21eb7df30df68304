"""Replay-id checkpoints of the Salesforce CDC subscriber, in PostgreSQL: where each channel may resume.

System: PostgreSQL (table ``sf_cdc_checkpoints``, migration 0004), through asyncpg. Owns the rows
and the durable marker of an unfinished catch-up (``pending``). Must not decide which replay id is
safe to write (``workers.ingress.watermark`` does, after Kafka acknowledged), read configuration or
build its pool. Same shape as every adapter: ``port`` (``CheckpointStore``, ``Checkpoint``), ``pg``
(``PgCheckpointStore``), ``memory`` (``MemoryCheckpointStore``, the fake).
"""

from adapters.cdc_checkpoints.memory import MemoryCheckpointStore
from adapters.cdc_checkpoints.pg import PgCheckpointStore
from adapters.cdc_checkpoints.port import CATCH_UP_PENDING, Checkpoint, CheckpointStore, pending

__all__ = [
    "CATCH_UP_PENDING",
    "Checkpoint",
    "CheckpointStore",
    "MemoryCheckpointStore",
    "PgCheckpointStore",
    "pending",
]
