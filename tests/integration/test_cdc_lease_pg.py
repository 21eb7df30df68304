"""The Postgres leader lease (``PgAdvisoryLease``) against the stack's PostgreSQL.

Contract: of two leases on one name exactly one holds the lock, under the key ``pg_locks`` shows;
when the server ends the holder's session (``pg_terminate_backend``) the holder notices within its
detection bound (at once, through the termination listener) and the other lease gets the lock only
after the server let go; a holder whose server stops answering gives the lease up within its check
timeout; terms count up per takeover, a clean release is recorded, and a checkpoint write fenced by
an old term is refused while one in flight delays the takeover until it commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from adapters.cdc_checkpoints import Checkpoint, PgCheckpointStore
from adapters.db import migrate
from adapters.leader_lease import FENCE_IDLE_TIMEOUT_MS, LeaseLost, PgAdvisoryLease, fence, lease_key, lock_parts
from workers.ingress.cdc_leader import FencedCheckpointStore

pytestmark = pytest.mark.integration

CHECK_TIMEOUT_S = 1.0


@pytest.fixture
async def dsn(stack_env: dict[str, str]) -> str:  # noqa: F811
    await migrate(stack_env["DATABASE_URL"])
    return stack_env["DATABASE_URL"]


@pytest.fixture
async def admin(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def name() -> str:
    return f"sf-cdc:it-{uuid.uuid4().hex[:8]}@org.example"


@contextlib.asynccontextmanager
async def leases(dsn: str, name: str, count: int = 2) -> AsyncIterator[list[PgAdvisoryLease]]:
    made = [
        PgAdvisoryLease(dsn, name, application_name=f"lease-it-{i}", check_timeout_s=CHECK_TIMEOUT_S)
        for i in range(count)
    ]
    try:
        yield made
    finally:
        for lease in made:
            await lease.release(clean=False)


async def holder_pids(admin: asyncpg.Connection, name: str) -> list[int]:
    classid, objid = lock_parts(lease_key(name))
    rows = await admin.fetch(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = $1::oid"
        " AND objid = $2::oid AND objsubid = 1",
        classid,
        objid,
    )
    return [r["pid"] for r in rows]


async def test_two_leases_contend_and_exactly_one_holds_the_lock(
    dsn: str, name: str, admin: asyncpg.Connection
) -> None:
    async with leases(dsn, name) as (a, b):
        assert await a.try_acquire()
        assert await a.try_acquire()  # idempotent: the session does not stack a second lock
        assert not await b.try_acquire()
        assert a.held and not b.held
        assert await holder_pids(admin, name) == [a.backend_pid]  # the key pg_locks shows is ours
        assert await a.check() and await a.check()
        # letting go: the other gets it at once
        await a.release(clean=False)
        assert await holder_pids(admin, name) == []
        assert await b.try_acquire() and await holder_pids(admin, name) == [b.backend_pid]


async def test_a_terminated_holder_notices_at_once_and_the_other_acquires_only_after(
    dsn: str, name: str, admin: asyncpg.Connection
) -> None:
    async with leases(dsn, name) as (a, b):
        assert await a.try_acquire()
        for _ in range(3):
            assert not await b.try_acquire()
            await asyncio.sleep(0.05)
        (pid,) = await holder_pids(admin, name)
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        terminated = time.monotonic()
        await asyncio.wait_for(a.wait_lost(), CHECK_TIMEOUT_S)  # the termination listener
        noticed = time.monotonic() - terminated
        assert not a.held and not await a.check()
        assert noticed < 1.0 + CHECK_TIMEOUT_S  # within one check interval plus the timeout
        while await holder_pids(admin, name) == [pid]:  # the server may take a moment to let go
            await asyncio.sleep(0.01)
        assert await b.try_acquire()
        assert await holder_pids(admin, name) == [b.backend_pid]


async def test_a_holder_whose_server_stops_answering_gives_up_within_the_check_timeout(
    dsn: str, name: str, admin: asyncpg.Connection
) -> None:
    """The silent case (a network cut looks the same to the client): the backend is frozen."""
    async with leases(dsn, name) as (a, b):
        assert await a.try_acquire()
        pid = a.backend_pid
        assert pid is not None
        try:
            os.kill(pid, signal.SIGSTOP)
        except PermissionError:
            pytest.skip("cannot signal the PostgreSQL backend (the server runs as another user)")
        try:
            started = time.monotonic()
            assert not await a.check()
            assert time.monotonic() - started < CHECK_TIMEOUT_S + 0.5
            assert not a.held
            # the frozen session still holds the lock: nobody else may have it yet
            assert not await b.try_acquire()
        finally:
            os.kill(pid, signal.SIGCONT)
        # once it runs again it finds its client gone and lets go
        deadline = time.monotonic() + 5
        while not await b.try_acquire():
            assert time.monotonic() < deadline, "the lock outlived its session"
            await asyncio.sleep(0.05)
        assert await holder_pids(admin, name) == [b.backend_pid]


async def test_terms_count_up_per_takeover_and_a_clean_release_is_recorded(dsn: str, name: str) -> None:
    async with leases(dsn, name) as (a, b):
        assert await a.try_acquire()
        assert await a.previous_term() is None
        assert await a.begin_term("host-a:1") == 1
        await a.release(clean=True)
        assert await b.try_acquire()
        previous = await b.previous_term()
        assert previous is not None and (previous.number, previous.holder, previous.released) == (1, "host-a:1", True)
        assert await b.begin_term("host-b:2") == 2
        await b.release(clean=False)  # e.g. lost: not recorded as clean
        assert await a.try_acquire()
        previous = await a.previous_term()
        assert previous is not None and (previous.number, previous.released) == (2, False)
        with pytest.raises(LeaseLost):
            await b.begin_term("host-b:2")  # not held


async def test_a_write_fenced_by_an_old_term_is_refused_and_one_in_flight_delays_the_takeover(
    dsn: str, name: str, admin: asyncpg.Connection
) -> None:
    subscriber, channel = f"it-{uuid.uuid4().hex[:8]}", "/data/OrderChangeEvent"
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=3)
    assert pool is not None
    fenced: list[bool] = []
    try:
        async with leases(dsn, name) as (a, b):
            assert await a.try_acquire()
            old = await a.begin_term("a")
            store = FencedCheckpointStore(pool, name, old, lambda: fenced.append(True))
            await store.save(subscriber, [Checkpoint(channel, 10)])

            # a write of the old term is in flight (fence taken, not committed) while b takes over
            async with admin.transaction():
                await fence(admin, name, old)
                await a.release(clean=False)
                assert await b.try_acquire()
                takeover = asyncio.create_task(b.begin_term("b"))
                await asyncio.sleep(0.3)
                assert not takeover.done()  # waits for the write in flight
            assert await asyncio.wait_for(takeover, 5) == old + 1

            with pytest.raises(LeaseLost):
                await store.save(subscriber, [Checkpoint(channel, 11)])
            assert fenced == [True]
            rows = await PgCheckpointStore(pool).load(subscriber)
            assert rows[channel].replay_id == 10  # the old term's late write did not land
            await FencedCheckpointStore(pool, name, old + 1, lambda: None).save(subscriber, [Checkpoint(channel, 12)])
            assert (await PgCheckpointStore(pool).load(subscriber))[channel].replay_id == 12
    finally:
        await pool.execute("DELETE FROM sf_cdc_checkpoints WHERE subscriber = $1", subscriber)
        await pool.close()


async def test_a_fenced_writer_that_goes_silent_mid_transaction_holds_up_a_takeover_for_2_s_at_most(
    dsn: str, name: str
) -> None:
    writer = await asyncpg.connect(dsn)
    try:
        async with leases(dsn, name) as (a, b):
            assert await a.try_acquire()
            term = await a.begin_term("a")
            await a.release(clean=False)
            assert await b.try_acquire()
            transaction = writer.transaction()
            await transaction.start()
            await fence(writer, name, term)  # then nothing: the writer's host is gone, say
            started = time.monotonic()
            assert await b.begin_term("b") == term + 1  # the server ended the idle transaction
            waited = time.monotonic() - started
            assert FENCE_IDLE_TIMEOUT_MS / 1000 - 0.5 < waited < FENCE_IDLE_TIMEOUT_MS / 1000 + 1.5
    finally:
        writer.terminate()
