"""Persistence of the fulfillment saga: one row per order, one per step, an append-only history.

Owns the tables of migrations 0005, 0007 (the SIM cards orders took) and 0008 (timers), the per-order lock and
the inbox claim of a delivery's final write (``adapters.db.claim_event``, same transaction). Same
shape as every adapter: ``port`` (``SagaStore`` and its value types), ``pg`` (``PgSagaStore`` over asyncpg), ``memory``
(``MemorySagaStore``, the fake). Must not decide anything: which step runs next, what an error
means and when to wait belong to ``workers.fulfillment``.
"""

from adapters.saga_store.memory import MemorySagaStore
from adapters.saga_store.pg import PgSagaStore
from adapters.saga_store.port import (
    LOCK_NAMESPACE,
    HistoryEntry,
    InboxClaim,
    OrderBusy,
    SagaOrder,
    SagaRecord,
    SagaStore,
    SimCard,
    StepRecord,
    Timer,
)

__all__ = [
    "LOCK_NAMESPACE",
    "HistoryEntry",
    "InboxClaim",
    "MemorySagaStore",
    "OrderBusy",
    "PgSagaStore",
    "SagaOrder",
    "SagaRecord",
    "SagaStore",
    "SimCard",
    "StepRecord",
    "Timer",
]
