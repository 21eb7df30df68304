"""A leader lease on PostgreSQL: one holder of a named lease at a time, and a fencing term for writers.

System: PostgreSQL (session advisory locks, ``pg_locks``), through asyncpg. Owns: the lease's own
connection, the lock key, the ``leader_terms`` table (migration 0006) and the fence writers run
inside their transactions. Must not: decide what a holder does, sleep or retry (the caller's loop
does), read configuration, or use a pooled connection.

* **The lock** is ``pg_try_advisory_lock(key)``, a *session* lock: it belongs to one backend and
  dies with it. So it lives on a connection of its own, opened by this module and never taken from
  or given back to a pool (a pool would reuse the session, and asyncpg's reset on release runs
  ``pg_advisory_unlock_all()``). Never the blocking ``pg_advisory_lock``: a session waiting in it
  can be neither checked nor stopped. Postgres drops the lock as soon as it notices the session is
  gone: at once after a ``kill -9`` of the holder (the kernel closes the socket),
  ``pg_terminate_backend`` or a server restart; after a vanished host only when TCP keepalive gives
  up, which the connection bounds to ~11 s (``tcp_keepalives_*`` below). Through a connection
  pooler the session must be pinned (pgbouncer session mode), or the lock means nothing.
* **The key** is a stable function of the lease name: the first 8 bytes of BLAKE2b(name, UTF-8)
  read as a signed big-endian 64-bit integer (``lease_key``). Not Python's ``hash()`` (salted per
  process) and not ``hashtext()`` (32 bits, and not promised stable across major versions). In
  ``pg_locks`` such a lock shows as ``locktype = 'advisory'``, ``classid`` = the key's high 32
  bits, ``objid`` = its low 32 bits, ``objsubid = 1`` (the two-``int4`` form, which the saga store
  uses, has ``objsubid = 2``, so the two never meet).
* **The term** is a fencing token: ``leader_terms`` holds one row per lease, whose ``term`` goes
  up by one at every takeover (``begin_term``, called while holding the lock). A writer whose work
  must stop when leadership moves runs ``fence(conn, lease, term)`` first in its transaction: it
  is refused once a newer term began, and the share lock it takes on the row makes a takeover wait
  for the write in flight. ``released_at`` says the last holder let go cleanly (everything it ran
  had stopped before it unlocked), so a successor needs no grace period.

Same shape as every adapter: ``port`` (``LeaderLease``, ``Term``, ``LeaseLost``, the key), ``pg``
(``PgAdvisoryLease`` and ``fence``), ``fake`` (``FakeLease`` on a ``FakeLockServer``).
"""

from adapters.leader_lease.fake import FakeLease, FakeLockServer
from adapters.leader_lease.pg import FENCE_IDLE_TIMEOUT_MS, KEEPALIVE, PgAdvisoryLease, fence
from adapters.leader_lease.port import UPSTREAM, LeaderLease, LeaseLost, Term, lease_key, lock_parts

__all__ = [
    "FENCE_IDLE_TIMEOUT_MS",
    "KEEPALIVE",
    "UPSTREAM",
    "FakeLease",
    "FakeLockServer",
    "LeaderLease",
    "LeaseLost",
    "PgAdvisoryLease",
    "Term",
    "fence",
    "lease_key",
    "lock_parts",
]
