"""The state of ``fleet dlq`` in PostgreSQL: the per-group job lock, replay progress and purge marks.

System: PostgreSQL (tables ``dlq_replay_progress`` and ``dlq_purged`` of migration 0003, session
advisory locks), through asyncpg. Owns those rows and the lock. Must not talk to Kafka or decide
what is replayed or purged (``workers.dlq`` does, and tells this store before and after it sends).
Same shape as every adapter: ``port`` (``DlqStore`` and its rows), ``pg`` (``PgDlqStore``); no fake,
since no unit test needs one (the replay and purge jobs are tested against the stack's Postgres).
"""

from adapters.dlq_store.pg import PgDlqStore
from adapters.dlq_store.port import Coordinates, DlqStore, InDoubt, ProgressRow, Sending

__all__ = ["Coordinates", "DlqStore", "InDoubt", "PgDlqStore", "ProgressRow", "Sending"]
