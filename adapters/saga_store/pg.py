"""``PgSagaStore``: the saga store over an asyncpg pool (tables of migration 0005, inbox of 0001).

Owns the SQL, the advisory lock and the mapping of connection failures onto ``DependencyUnavailable``.
Receives its pool from the composition root; must not build it or read configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from adapters.db import INBOX_COLUMNS
from adapters.saga_store.port import (
    LOCK_NAMESPACE,
    UPSTREAM,
    HistoryEntry,
    InboxClaim,
    OrderBusy,
    SagaOrder,
    SagaRecord,
    SimCard,
    StepRecord,
    Timer,
)
from events.errors import DependencyUnavailable

#: PostgreSQL could not answer (down, restarting, out of connections, a deadlock victim): retrying
#: the same write later can succeed. Constraint violations are not here: they are bugs.
_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.TransactionRollbackError,
)


@contextlib.contextmanager
def _db(operation: str) -> Iterator[None]:
    try:
        yield
    except _TRANSIENT as exc:
        raise DependencyUnavailable(f"saga store {operation} failed: {exc!r}", upstream=UPSTREAM) from exc


_ORDER_COLUMNS = (
    "sf_order_id, sf_account_id, order_type, state, current_step, whmcs_client_id, whmcs_order_id,"
    " sim_account, error_code, error_message, plan, requests, created_at, updated_at, finished_at"
)
_UPSERT_ORDER = (
    "INSERT INTO fulfillment_orders (sf_order_id, sf_account_id, order_type, state, current_step,"
    " whmcs_client_id, whmcs_order_id, sim_account, error_code, error_message, plan, requests,"
    " updated_at, finished_at)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12, coalesce($13, now()), $14)"
    " ON CONFLICT (sf_order_id) DO UPDATE SET sf_account_id = EXCLUDED.sf_account_id,"
    " order_type = EXCLUDED.order_type, state = EXCLUDED.state, current_step = EXCLUDED.current_step,"
    " whmcs_client_id = EXCLUDED.whmcs_client_id, whmcs_order_id = EXCLUDED.whmcs_order_id,"
    " sim_account = EXCLUDED.sim_account, error_code = EXCLUDED.error_code,"
    " error_message = EXCLUDED.error_message, plan = EXCLUDED.plan, requests = EXCLUDED.requests,"
    " updated_at = EXCLUDED.updated_at, finished_at = EXCLUDED.finished_at"
)
#: One delivery's save as ONE statement (one round trip, its own transaction): the order's upsert,
#: its steps and history from arrays, and the inbox claim, as data-modifying CTEs. They all run to
#: completion whether or not the final SELECT reads them, and the foreign keys of steps and history
#: are checked at the end of the statement, after the order's row exists. The same writes as
#: BEGIN / upsert / executemany / executemany / claim / COMMIT took six round trips; with many
#: orders in flight the saga's saves were a quarter of the fulfillment worker's CPU (py-spy, 1,000
#: orders at 16 per partition), most of it the loopback sends. A claim that was already taken
#: returns 0 and, as before, the order's writes still commit (the caller decides what that means).
_SAVE = (
    "WITH o AS (" + _UPSERT_ORDER + " RETURNING 1),"
    " s AS (INSERT INTO fulfillment_steps (sf_order_id, step, seq, status, attempts, external_ids,"
    " last_error_code, last_error_message, started_at, last_attempt_at, finished_at)"
    " SELECT $1, t.step, t.seq, t.status, t.attempts, t.ext::jsonb, t.code, t.message, t.started_at,"
    " t.last_attempt_at, t.finished_at FROM unnest($15::text[], $16::smallint[], $17::text[], $18::int[],"
    " $19::text[], $20::text[], $21::text[], $22::timestamptz[], $23::timestamptz[], $24::timestamptz[])"
    " AS t(step, seq, status, attempts, ext, code, message, started_at, last_attempt_at, finished_at)"
    " ON CONFLICT (sf_order_id, step) DO UPDATE SET seq = EXCLUDED.seq, status = EXCLUDED.status,"
    " attempts = EXCLUDED.attempts, external_ids = EXCLUDED.external_ids,"
    " last_error_code = EXCLUDED.last_error_code, last_error_message = EXCLUDED.last_error_message,"
    " started_at = EXCLUDED.started_at, last_attempt_at = EXCLUDED.last_attempt_at,"
    " finished_at = EXCLUDED.finished_at),"
    # history ids (bigserial, the timeline's order) follow the entries' order
    " h AS (INSERT INTO fulfillment_history (sf_order_id, at, step, kind, detail)"
    " SELECT $1, coalesce(t.at, now()), t.step, t.kind, t.detail::jsonb"
    " FROM unnest($25::timestamptz[], $26::text[], $27::text[], $28::text[]) WITH ORDINALITY"
    " AS t(at, step, kind, detail, n) ORDER BY t.n),"
    f" c AS (INSERT INTO inbox ({INBOX_COLUMNS}) SELECT $29, $30, $31, $32, $33, $34 WHERE $29::text IS NOT NULL"
    " ON CONFLICT DO NOTHING RETURNING 1)"
    " SELECT count(*) FROM c"
)


#: The order's card if it holds one, else the first candidate nobody holds, inserted: one statement.
#: Two orders that read the same free card race on the primary key; the loser's insert does nothing
#: (ON CONFLICT) and it gets no row back, so the caller tries its next page of candidates.
_RESERVE_CARD = (
    "WITH mine AS (SELECT card_id, card_name, phone_number, serial_number FROM sim_card_assignments"
    " WHERE sf_order_id = $1),"
    " taken AS (INSERT INTO sim_card_assignments (card_id, sf_order_id, card_name, phone_number, serial_number)"
    " SELECT c.id, $1, c.name, c.phone, c.serial"
    " FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) WITH ORDINALITY AS c(id, name, phone, serial, n)"
    " WHERE NOT EXISTS (SELECT 1 FROM mine)"
    " AND NOT EXISTS (SELECT 1 FROM sim_card_assignments a WHERE a.card_id = c.id)"
    " ORDER BY c.n LIMIT 1"
    " ON CONFLICT DO NOTHING RETURNING card_id, card_name, phone_number, serial_number)"
    " SELECT * FROM mine UNION ALL SELECT * FROM taken"
)


_TIMER_COLUMNS = "sf_order_id, due_at, reason, fired, created_at AS since"
_SET_TIMER = (
    "INSERT INTO fulfillment_timers AS t (sf_order_id, due_at, reason) VALUES ($1, $2, $3)"
    " ON CONFLICT (sf_order_id) DO UPDATE SET due_at = EXCLUDED.due_at, reason = EXCLUDED.reason,"
    " fired = CASE WHEN t.reason = EXCLUDED.reason THEN t.fired ELSE 0 END,"
    " created_at = CASE WHEN t.reason = EXCLUDED.reason THEN t.created_at ELSE now() END, updated_at = now()"
)
#: due rows, oldest first, each leased ahead in the same statement (SKIP LOCKED: instances share the work)
_TAKE_TIMERS = (
    "UPDATE fulfillment_timers AS t SET due_at = $1::timestamptz + make_interval(secs => $2::float8),"
    " fired = t.fired + 1, updated_at = now()"
    " FROM (SELECT sf_order_id FROM fulfillment_timers WHERE due_at <= $1 ORDER BY due_at LIMIT $3"
    " FOR UPDATE SKIP LOCKED) AS due WHERE t.sf_order_id = due.sf_order_id"
    " RETURNING t.sf_order_id, t.due_at, t.reason, t.fired, t.created_at AS since"
)
#: since when each order has been in its state: a parked or scheduled order's wait began when its
#: timer was first armed (re-checks re-arm it and touch updated_at); anything else, its last change
_STUCK = (
    f"SELECT {', '.join('o.' + c.strip() for c in _ORDER_COLUMNS.split(','))},"
    " CASE WHEN o.state = 'scheduled' THEN t.due_at ELSE coalesce(t.created_at, o.updated_at) END AS since"
    " FROM fulfillment_orders o LEFT JOIN fulfillment_timers t USING (sf_order_id)"
    " JOIN unnest($2::text[], $3::float8[]) AS d(state, seconds) ON d.state = o.state"
    " WHERE CASE WHEN o.state = 'scheduled' THEN t.due_at ELSE coalesce(t.created_at, o.updated_at) END"
    " < $1::timestamptz - make_interval(secs => d.seconds)"
    " ORDER BY since"
)


class PgSagaStore:
    """``SagaStore`` over an asyncpg pool built by the composition root.

    Inside ``locked()`` every call of the same task runs on the lock's connection: a delivery holds
    one pooled connection, not one for its lock plus one per read and write. With many orders in
    flight (``max_in_flight_per_partition``) the other way left the pool's last free connection to
    every order's writes in turn (measured: 31 orders at once made 20 orders/s, not 90)."""

    def __init__(self, pool: asyncpg.Pool, *, poll_s: float = 0.2) -> None:
        self._pool = pool
        self._poll_s = poll_s
        # the lock's connection and the task holding it (a delivery runs in one task); a task it
        # starts inherits the variable, not the connection: asyncpg runs one call at a time on it
        self._held: contextvars.ContextVar[tuple[Any, Any] | None] = contextvars.ContextVar(
            f"saga_lock_conn_{id(self)}", default=None
        )

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[Any]:
        """The held lock's connection in the task holding it, else one from the pool for this call."""
        held = self._held.get()
        if held is not None and held[0] is asyncio.current_task():
            yield held[1]
            return
        async with self._pool.acquire() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def locked(self, sf_order_id: str, wait_s: float = 30.0) -> AsyncIterator[None]:
        # A session-level advisory lock on a connection held for the whole delivery: the saga's own
        # reads and writes run on it too (short transactions; see the class), and a killed
        # worker's lock dies with its socket.
        # Releasing the connection to the pool also runs asyncpg's reset (pg_advisory_unlock_all,
        # or the connection is closed), so no pooled connection ever keeps an order locked.
        with _db("lock"):
            conn = await self._pool.acquire()
        try:
            with _db("lock"):
                await self._take(conn, sf_order_id, wait_s)
            token = self._held.set((asyncio.current_task(), conn))
            try:
                yield
            finally:
                self._held.reset(token)
                with contextlib.suppress(*_TRANSIENT):  # the pool's reset unlocks if this cannot
                    await conn.execute("SELECT pg_advisory_unlock($1, hashtext($2))", LOCK_NAMESPACE, sf_order_id)
        finally:
            await self._pool.release(conn)

    async def _take(self, conn: Any, sf_order_id: str, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        take = "SELECT pg_try_advisory_lock($1, hashtext($2))"
        while not await conn.fetchval(take, LOCK_NAMESPACE, sf_order_id):
            if time.monotonic() >= deadline:
                raise OrderBusy(f"order {sf_order_id} is being handled by another delivery", upstream=UPSTREAM)
            await asyncio.sleep(self._poll_s)

    async def get(self, sf_order_id: str) -> SagaRecord | None:
        with _db("get"):
            return await self._get(sf_order_id)

    async def _get(self, sf_order_id: str) -> SagaRecord | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(
                f"SELECT {_ORDER_COLUMNS} FROM fulfillment_orders WHERE sf_order_id = $1", sf_order_id
            )
            if row is None:
                return None
            steps = await conn.fetch("SELECT * FROM fulfillment_steps WHERE sf_order_id = $1 ORDER BY seq", sf_order_id)
        return SagaRecord(_order(row), {s["step"]: _step(s) for s in steps})

    async def save(
        self,
        order: SagaOrder,
        steps: Sequence[StepRecord] = (),
        history: Sequence[HistoryEntry] = (),
        claim: InboxClaim | None = None,
    ) -> bool:
        with _db("save"):
            return await self._save(order, steps, history, claim)

    async def _save(
        self, order: SagaOrder, steps: Sequence[StepRecord], history: Sequence[HistoryEntry], claim: InboxClaim | None
    ) -> bool:
        step_columns = list(zip(*(_step_args(s) for s in steps), strict=True)) if steps else [()] * 10
        history_columns = (
            [h.at for h in history],
            [h.step for h in history],
            [h.kind for h in history],
            [json.dumps(h.detail, default=str) for h in history],
        )
        inbox = (
            (claim.group, claim.event_id, claim.event_type, claim.topic, claim.partition, claim.offset)
            if claim is not None
            else (None,) * 6
        )
        args = (*_order_args(order), *(list(c) for c in step_columns), *history_columns, *inbox)
        async with self._conn() as conn:
            claimed = await conn.fetchval(_SAVE, *args)
        return claim is None or claimed == 1

    async def processed(self, claim: InboxClaim) -> bool:
        with _db("inbox lookup"):
            async with self._conn() as conn:
                found = await conn.fetchval(
                    "SELECT 1 FROM inbox WHERE consumer_group = $1 AND event_id = $2", claim.group, claim.event_id
                )
        return found is not None

    async def reserve_sim_account(self, sf_order_id: str, account: str) -> bool:
        try:
            with _db("reserve SIM number"):
                async with self._conn() as conn:
                    status = await conn.execute(
                        "UPDATE fulfillment_orders SET sim_account = $2"
                        " WHERE sf_order_id = $1 AND (sim_account IS NULL OR sim_account = $2)",
                        sf_order_id,
                        account,
                    )
        except asyncpg.UniqueViolationError:
            return False
        return bool(status == "UPDATE 1")

    async def reserve_sim_card(self, sf_order_id: str, candidates: Sequence[SimCard]) -> SimCard | None:
        with _db("reserve SIM card"):
            async with self._conn() as conn:
                row = await conn.fetchrow(
                    _RESERVE_CARD,
                    sf_order_id,
                    [c.card_id for c in candidates],
                    [c.name for c in candidates],
                    [c.phone_number for c in candidates],
                    [c.serial_number for c in candidates],
                )
        if row is None:
            return None
        return SimCard(row["card_id"], row["card_name"], row["phone_number"], row["serial_number"])

    async def set_timer(self, sf_order_id: str, reason: str, due_at: datetime) -> None:
        with _db("set timer"):
            async with self._conn() as conn:
                await conn.execute(_SET_TIMER, sf_order_id, due_at, reason)

    async def clear_timer(self, sf_order_id: str) -> None:
        with _db("clear timer"):
            async with self._conn() as conn:
                await conn.execute("DELETE FROM fulfillment_timers WHERE sf_order_id = $1", sf_order_id)

    async def timer(self, sf_order_id: str) -> Timer | None:
        with _db("timer lookup"):
            async with self._conn() as conn:
                row = await conn.fetchrow(
                    f"SELECT {_TIMER_COLUMNS} FROM fulfillment_timers WHERE sf_order_id = $1", sf_order_id
                )
        return _timer(row) if row is not None else None

    async def take_due_timers(self, now: datetime, lease_s: float, limit: int) -> list[Timer]:
        with _db("take due timers"):
            async with self._conn() as conn:
                rows = await conn.fetch(_TAKE_TIMERS, now, lease_s, limit)
        return [_timer(r) for r in rows]

    async def stuck_orders(self, now: datetime, deadlines: dict[str, float]) -> list[tuple[SagaOrder, datetime]]:
        states, seconds = list(deadlines), [float(deadlines[s]) for s in deadlines]
        with _db("stuck orders"):
            async with self._conn() as conn:
                rows = await conn.fetch(_STUCK, now, states, seconds)
        return [(_order({k: v for k, v in dict(r).items() if k != "since"}), r["since"]) for r in rows]

    async def parked_for_client(self, whmcs_client_id: int) -> list[str]:
        with _db("parked lookup"):
            async with self._conn() as conn:
                rows = await conn.fetch(
                    "SELECT sf_order_id FROM fulfillment_orders WHERE state = 'parked' AND whmcs_client_id = $1"
                    " ORDER BY updated_at",
                    whmcs_client_id,
                )
        return [str(r["sf_order_id"]) for r in rows]

    async def count_orders(self) -> dict[tuple[str, str | None], int]:
        with _db("order counts"):
            async with self._conn() as conn:
                rows = await conn.fetch(
                    "SELECT state, CASE WHEN state = 'parked' THEN error_code END AS code, count(*) AS n"
                    " FROM fulfillment_orders GROUP BY 1, 2"
                )
        return {(str(r["state"]), r["code"]): int(r["n"]) for r in rows}

    async def list_orders(self, state: str | None = None, limit: int = 50) -> list[SagaOrder]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"SELECT {_ORDER_COLUMNS} FROM fulfillment_orders WHERE ($1::text IS NULL OR state = $1)"
                " ORDER BY updated_at DESC LIMIT $2",
                state,
                limit,
            )
        return [_order(r) for r in rows]

    async def search_orders(self, text: str, limit: int = 50) -> list[SagaOrder]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"SELECT {_ORDER_COLUMNS} FROM fulfillment_orders WHERE sf_order_id = $1 OR sf_account_id = $1"
                " OR whmcs_client_id::text = $1 OR whmcs_order_id::text = $1 ORDER BY updated_at DESC LIMIT $2",
                text.strip(),
                limit,
            )
        return [_order(r) for r in rows]

    async def history(self, sf_order_id: str) -> list[HistoryEntry]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT at, step, kind, detail FROM fulfillment_history WHERE sf_order_id = $1 ORDER BY id", sf_order_id
            )
        return [HistoryEntry(r["kind"], r["step"], json.loads(r["detail"]), r["at"]) for r in rows]

    async def append_history(self, sf_order_id: str, entry: HistoryEntry) -> bool:
        async with self._conn() as conn:
            status = await conn.execute(
                "INSERT INTO fulfillment_history (sf_order_id, at, step, kind, detail)"
                " SELECT $1::varchar, coalesce($2, now()), $3, $4, $5::jsonb"
                " WHERE EXISTS (SELECT 1 FROM fulfillment_orders WHERE sf_order_id = $1::varchar)",
                sf_order_id,
                entry.at,
                entry.step,
                entry.kind,
                json.dumps(entry.detail, default=str),
            )
        return bool(status == "INSERT 0 1")


def _order_args(o: SagaOrder) -> tuple[Any, ...]:
    return (
        o.sf_order_id, o.sf_account_id, o.order_type, o.state, o.current_step, o.whmcs_client_id,
        o.whmcs_order_id, o.sim_account, o.error_code, o.error_message, json.dumps(o.plan, default=str),
        o.requests, o.updated_at, o.finished_at,
    )  # fmt: skip


def _step_args(s: StepRecord) -> tuple[Any, ...]:
    return (
        s.step, s.seq, s.status, s.attempts, json.dumps(s.external_ids, default=str), s.last_error_code,
        s.last_error_message, s.started_at, s.last_attempt_at, s.finished_at,
    )  # fmt: skip


def _order(r: asyncpg.Record | dict[str, Any]) -> SagaOrder:
    values = dict(r)
    values["plan"] = json.loads(values["plan"]) if isinstance(values["plan"], str) else values["plan"]
    return SagaOrder(**values)


def _timer(r: asyncpg.Record) -> Timer:
    return Timer(r["sf_order_id"], r["due_at"], r["reason"], r["fired"], r["since"])


def _step(r: asyncpg.Record) -> StepRecord:
    values = {k: v for k, v in dict(r).items() if k != "sf_order_id"}
    raw = values["external_ids"]
    values["external_ids"] = json.loads(raw) if isinstance(raw, str) else raw
    return StepRecord(**values)
