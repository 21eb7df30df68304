"""``PgAdvisoryLease``: the lease as a session advisory lock on a connection of its own; ``fence``.

Owns the SQL, the lease connection (its keepalive bound and termination listener) and the
``leader_terms`` rows. Must not use a pooled connection, sleep or retry (see the package docstring).
"""

from __future__ import annotations

import asyncio

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from adapters.leader_lease.port import UPSTREAM, LeaseLost, Term, lease_key, lock_parts
from events.errors import DependencyUnavailable

#: how quickly the *server* notices a client that vanished without closing its socket (host down,
#: network cut): 5 s idle, then 3 probes 2 s apart. Without it the lock would outlive a dead host
#: for the kernel default (2 h). Ignored on a Unix socket, where there is no such silent death.
KEEPALIVE = {"tcp_keepalives_idle": "5", "tcp_keepalives_interval": "2", "tcp_keepalives_count": "3"}

_TRY_LOCK = "SELECT pg_try_advisory_lock($1)"
# Held by *this* backend, granted: the check that the lock is still ours (not just that the
# connection answers). classid/objid are oids (unsigned 32-bit), hence the two halves.
_HELD = """
SELECT EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
      AND classid = $1::oid AND objid = $2::oid AND objsubid = 1
)
"""
_PREVIOUS = "SELECT term, holder, released_at IS NOT NULL AS released FROM leader_terms WHERE lease = $1"
_BEGIN = """
INSERT INTO leader_terms AS t (lease, term, holder, started_at, released_at)
VALUES ($1, 1, $2, now(), NULL)
ON CONFLICT (lease) DO UPDATE
    SET term = t.term + 1, holder = EXCLUDED.holder, started_at = now(), released_at = NULL
RETURNING term
"""
_RELEASED = "UPDATE leader_terms SET released_at = now() WHERE lease = $1 AND term = $2"
#: how long a fenced transaction may sit idle before the server ends it: its share lock on the
#: lease's row would otherwise hold up every takeover for as long as a vanished writer's session
#: lingers (its pooled connection has no keepalive bound of ours). A checkpoint write takes ms.
FENCE_IDLE_TIMEOUT_MS = 2000
# set_config(..., true) is transaction-local; evaluated only when the row exists (else: refused)
_FENCE = f"""
SELECT term FROM leader_terms, set_config('idle_in_transaction_session_timeout', '{FENCE_IDLE_TIMEOUT_MS}', true)
WHERE lease = $1 FOR SHARE OF leader_terms
"""


class PgAdvisoryLease:
    """``LeaderLease`` over ``pg_try_advisory_lock`` on a connection of its own."""

    def __init__(
        self,
        dsn: str,
        name: str,
        *,
        application_name: str = "fleet-lease",
        connect_timeout_s: float = 2.0,
        check_timeout_s: float = 1.0,
        term_timeout_s: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._name = name
        self.key = lease_key(name)
        self._parts = lock_parts(self.key)
        self._application_name = application_name[:63]
        self._connect_timeout_s = connect_timeout_s
        self._check_timeout_s = check_timeout_s
        self._term_timeout_s = term_timeout_s
        self._conn: asyncpg.Connection | None = None
        self._held = False
        self._term: int | None = None
        self._lost = asyncio.Event()
        self._lost.set()

    @property
    def name(self) -> str:
        return self._name

    @property
    def held(self) -> bool:
        return self._held

    @property
    def backend_pid(self) -> int | None:
        """The server process of the lease's connection (for operators and tests)."""
        return self._conn.get_server_pid() if self._conn is not None and not self._conn.is_closed() else None

    async def try_acquire(self) -> bool:
        if self._held:
            return True
        try:
            conn = await self._connection()
            got = bool(await conn.fetchval(_TRY_LOCK, self.key, timeout=self._check_timeout_s))
        except Exception as exc:  # whatever it was, our session may hold the lock now: drop it
            await self._drop()
            raise DependencyUnavailable(f"lease {self._name}: {exc!r}", upstream=UPSTREAM) from exc
        if got:
            self._held, self._term = True, None
            self._lost.clear()
        return got

    async def check(self) -> bool:
        conn = self._conn
        if not self._held or conn is None or conn.is_closed():
            await self._drop()
            return False
        try:
            held = bool(await conn.fetchval(_HELD, *self._parts, timeout=self._check_timeout_s))
        except Exception:  # timeout, connection lost, server error: a lease we cannot confirm is lost
            held = False
        if not held:
            await self._drop()
        return held

    async def wait_lost(self) -> None:
        await self._lost.wait()

    async def previous_term(self) -> Term | None:
        conn = self._held_connection()
        try:
            row = await conn.fetchrow(_PREVIOUS, self._name, timeout=self._term_timeout_s)
        except Exception as exc:
            await self._drop()
            raise LeaseLost(f"lease {self._name}: reading the last term failed: {exc!r}", upstream=UPSTREAM) from exc
        return None if row is None else Term(row["term"], row["holder"], row["released"])

    async def begin_term(self, holder: str) -> int:
        conn = self._held_connection()
        try:
            term = int(await conn.fetchval(_BEGIN, self._name, holder, timeout=self._term_timeout_s))
        except Exception as exc:
            await self._drop()
            raise LeaseLost(f"lease {self._name}: beginning a term failed: {exc!r}", upstream=UPSTREAM) from exc
        self._term = term
        return term

    async def release(self, *, clean: bool) -> None:
        conn, term = self._conn, self._term
        if self._held and conn is not None and not conn.is_closed():
            try:
                if clean and term is not None:
                    await conn.execute(_RELEASED, self._name, term, timeout=self._check_timeout_s)
                await conn.fetchval("SELECT pg_advisory_unlock($1)", self.key, timeout=self._check_timeout_s)
            except Exception:  # closing the session below releases the lock anyway
                pass
        await self._drop()

    # --- the connection -------------------------------------------------------------------------
    async def _connection(self) -> asyncpg.Connection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        conn = await asyncpg.connect(
            self._dsn,
            timeout=self._connect_timeout_s,
            server_settings={"application_name": self._application_name, **KEEPALIVE},
        )
        conn.add_termination_listener(self._terminated)
        self._conn = conn
        return conn

    def _held_connection(self) -> asyncpg.Connection:
        if not self._held or self._conn is None or self._conn.is_closed():
            raise LeaseLost(f"lease {self._name} is not held", upstream=UPSTREAM)
        return self._conn

    def _terminated(self, conn: asyncpg.Connection | PoolConnectionProxy) -> None:
        # asyncpg calls this when the connection closes, ours or the server's doing; the socket
        # is read all the time, so a terminated backend or a restarting server is seen at once
        if conn is self._conn:
            self._conn = None
            self._held = False
            self._lost.set()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._held, self._term = False, None
        self._lost.set()
        if conn is not None and not conn.is_closed():
            conn.terminate()  # no goodbye round trip: the server sees the socket close at once


async def fence(conn: asyncpg.Connection | PoolConnectionProxy, lease: str, term: int) -> None:
    """First statement of a writer's transaction that only the holder of ``term`` may commit.

    Raises ``LeaseLost`` unless ``term`` is the lease's current term. The share lock it takes on
    the lease's row lasts until the transaction ends, so a takeover's ``begin_term`` (an update of
    that row) waits for this write, and every write after the takeover reads the newer term. The
    transaction may then sit idle for ``FENCE_IDLE_TIMEOUT_MS`` at most (the server ends the
    session after that), so a writer that vanished mid-transaction delays a takeover that long.
    """
    current = await conn.fetchval(_FENCE, lease)
    if current != term:
        raise LeaseLost(f"lease {lease}: term {term} is over (current: {current})", upstream=UPSTREAM)
