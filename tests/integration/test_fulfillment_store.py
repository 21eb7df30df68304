"""``PgSagaStore`` against the local stack's PostgreSQL (migration 0005).

Contract: an order, its steps and its timeline round-trip; the final write and the inbox claim
commit in one transaction (a duplicate claim says so, and a failed transaction leaves neither);
the per-order lock excludes a second holder until released, and dies with a killed holder's
connection; SIM numbers are unique across orders; an inventory card goes to one order, which
keeps it; parked orders are found by WHMCS client.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import pytest_asyncio

from adapters.db import migrate
from adapters.saga_store import (
    LOCK_NAMESPACE,
    HistoryEntry,
    InboxClaim,
    OrderBusy,
    PgSagaStore,
    SagaOrder,
    SimCard,
    StepRecord,
)

pytestmark = pytest.mark.integration


def order_id() -> str:
    return ("801T" + uuid.uuid4().hex.upper())[:18]


@pytest_asyncio.fixture
async def pool(stack_env: dict[str, str]) -> AsyncIterator[asyncpg.Pool]:
    await migrate(stack_env["DATABASE_URL"])
    pool = await asyncpg.create_pool(stack_env["DATABASE_URL"], min_size=1, max_size=6)
    assert pool is not None
    yield pool
    await pool.close()


@pytest.fixture
def store(pool: asyncpg.Pool) -> PgSagaStore:
    return PgSagaStore(pool, poll_s=0.05)


async def test_an_order_with_steps_and_timeline_round_trips(store: PgSagaStore) -> None:
    oid, now = order_id(), datetime.now(UTC)
    order = SagaOrder(oid, state="waiting", sf_account_id="0015g00000000001AA", order_type="SIM",
                      current_step="sim_confirm", whmcs_client_id=1002, plan={"lines": [{"pid": 301}]},
                      requests=2, created_at=now)  # fmt: skip
    step = StepRecord("sim_register", 4, "done", 1, {"account": "07012345678", "submitted": True},
                      started_at=now, finished_at=now)  # fmt: skip
    assert await store.save(order, [step], [HistoryEntry("step_done", "sim_register", {"account": "07012345678"})])

    record = await store.get(oid)
    assert record is not None
    assert record.order.state == "waiting" and record.order.plan == {"lines": [{"pid": 301}]}
    assert record.order.whmcs_client_id == 1002 and record.order.requests == 2
    assert record.steps["sim_register"].external_ids == {"account": "07012345678", "submitted": True}
    assert record.steps["sim_register"].finished_at == now
    [entry] = await store.history(oid)
    assert (entry.kind, entry.step, entry.detail) == ("step_done", "sim_register", {"account": "07012345678"})

    order.state, step.attempts = "fulfilled", 2
    await store.save(order, [step])
    record = await store.get(oid)
    assert record is not None and record.order.state == "fulfilled" and record.steps["sim_register"].attempts == 2
    assert await store.get(order_id()) is None


async def test_one_save_writes_many_steps_and_keeps_the_timeline_in_order(store: PgSagaStore) -> None:
    # the save is one statement (unnested arrays): every row lands, the timeline in the given order
    oid, now = order_id(), datetime.now(UTC)
    steps = [StepRecord(f"step_{i}", i, "done", i + 1, {"n": i}, started_at=now) for i in range(5)]
    kinds = [f"kind_{i}" for i in range(12)]
    assert await store.save(SagaOrder(oid, state="running"), steps, [HistoryEntry(k, None, {"k": k}) for k in kinds])
    assert await store.save(SagaOrder(oid, state="running"), [], [HistoryEntry("later", None, {})])
    record = await store.get(oid)
    assert record is not None
    assert {name: (s.seq, s.attempts, s.external_ids) for name, s in record.steps.items()} == {
        f"step_{i}": (i, i + 1, {"n": i}) for i in range(5)
    }
    assert [h.kind for h in await store.history(oid)] == [*kinds, "later"]
    assert all(h.at is not None for h in await store.history(oid)), "a missing time is the database's now()"


async def test_the_inbox_claim_commits_with_the_final_write(store: PgSagaStore, pool: asyncpg.Pool) -> None:
    oid = order_id()
    claim = InboxClaim("fleet.fulfillment.it", str(uuid.uuid4()), "t", "sf.order.v1", 1, 42)
    assert not await store.processed(claim)
    assert await store.save(SagaOrder(oid, state="fulfilled"), claim=claim)
    assert await store.processed(claim)
    assert not await store.save(SagaOrder(oid, state="fulfilled"), claim=claim), "a duplicate says so"

    other = InboxClaim("fleet.fulfillment.it", str(uuid.uuid4()), "t", "sf.order.v1", 1, 43)
    with pytest.raises(asyncpg.CheckViolationError):
        await store.save(SagaOrder(oid, state="bogus"), claim=other)
    assert not await store.processed(other), "the claim rolled back with the write"
    record = await store.get(oid)
    assert record is not None and record.order.state == "fulfilled"


async def test_the_order_lock_excludes_a_second_holder_until_released(store: PgSagaStore) -> None:
    oid = order_id()
    async with store.locked(oid):
        with pytest.raises(OrderBusy):
            async with store.locked(oid, wait_s=0.2):
                pass
        async with store.locked(order_id(), wait_s=0.2):
            pass  # another order is not blocked
    async with store.locked(oid, wait_s=0.2):
        pass


async def test_a_waiting_holder_gets_the_lock_when_it_is_released(store: PgSagaStore) -> None:
    oid, order = order_id(), []

    async def hold(name: str, seconds: float) -> None:
        async with store.locked(oid, wait_s=5):
            order.append(f"{name}+")
            await asyncio.sleep(seconds)
            order.append(f"{name}-")

    first = asyncio.create_task(hold("a", 0.3))
    await asyncio.sleep(0.05)
    await asyncio.gather(first, hold("b", 0))
    assert order == ["a+", "a-", "b+", "b-"]


async def test_a_killed_holders_lock_dies_with_its_connection(stack_env: dict[str, str], store: PgSagaStore) -> None:
    oid = order_id()
    conn = await asyncpg.connect(stack_env["DATABASE_URL"])
    assert await conn.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))", LOCK_NAMESPACE, oid)
    with pytest.raises(OrderBusy):
        async with store.locked(oid, wait_s=0.2):
            pass
    conn.terminate()  # the socket closes without an unlock, as after kill -9
    async with store.locked(oid, wait_s=5):
        pass


async def test_sim_numbers_are_unique_across_orders(store: PgSagaStore) -> None:
    a, b, number = order_id(), order_id(), "070" + str(uuid.uuid4().int)[:8]
    await store.save(SagaOrder(a))
    await store.save(SagaOrder(b))
    assert await store.reserve_sim_account(a, number)
    assert await store.reserve_sim_account(a, number)
    assert not await store.reserve_sim_account(b, number)
    record = await store.get(a)
    assert record is not None and record.order.sim_account == number


def cards(n: int) -> list[SimCard]:
    tag = uuid.uuid4().hex[:10].upper()
    return [
        SimCard(f"a0S{tag}{i:05d}", f"SIM-{tag}-{i}", f"080{uuid.uuid4().int % 10**8:08d}", f"AX{i:013d}")
        for i in range(n)
    ]


async def test_many_orders_racing_for_the_same_free_cards_each_get_their_own(store: PgSagaStore) -> None:
    """Twelve orders read the same page of 8 free cards at once (the Salesforce write-back of a taken
    card lags): 8 get a card each, no card twice, the other 4 get None (they page on)."""
    page, orders = cards(8), [order_id() for _ in range(12)]
    taken = await asyncio.gather(*(store.reserve_sim_card(o, page) for o in orders))
    got = [c for c in taken if c is not None]
    assert len(got) == 8 and len({c.card_id for c in got}) == 8
    winner = next(o for o, c in zip(orders, taken, strict=True) if c is not None)
    mine = next(c for c in taken if c is not None)
    assert await store.reserve_sim_card(winner, cards(3)) == mine, "a retried order gets its own card back"


async def test_parked_orders_are_found_by_client_and_listed_by_state(store: PgSagaStore) -> None:
    client = int(str(uuid.uuid4().int)[:8])
    parked, failed = order_id(), order_id()
    await store.save(SagaOrder(parked, state="parked", whmcs_client_id=client, error_code="PAYMENT_METHOD_MISSING"))
    await store.save(SagaOrder(failed, state="failed", whmcs_client_id=client))
    assert await store.parked_for_client(client) == [parked]
    assert parked in [o.sf_order_id for o in await store.list_orders("parked", 1000)]
    assert parked not in [o.sf_order_id for o in await store.list_orders("failed", 1000)]


async def test_an_audit_note_needs_a_known_order(store: PgSagaStore) -> None:
    oid = order_id()
    assert not await store.append_history(oid, HistoryEntry("retry_requested", None, {"by": "ops"}))
    await store.save(SagaOrder(oid, state="failed"))
    assert await store.append_history(oid, HistoryEntry("retry_requested", None, {"by": "ops"}))
    assert [h.kind for h in await store.history(oid)] == ["retry_requested"]


async def test_postgres_going_away_is_a_retryable_dependency_error(stack_env: dict[str, str]) -> None:
    from events.errors import DependencyUnavailable

    pool = await asyncpg.create_pool(stack_env["DATABASE_URL"], min_size=1, max_size=1)
    assert pool is not None
    store = PgSagaStore(pool)
    await pool.close()
    with pytest.raises(DependencyUnavailable) as caught:
        await store.get(order_id())
    assert caught.value.retriable and caught.value.upstream == "postgres"
    with pytest.raises(DependencyUnavailable):
        async with store.locked(order_id(), wait_s=0.1):
            pass


async def test_a_delivery_holding_the_lock_reads_and_writes_on_its_one_connection(stack_env: dict[str, str]) -> None:
    """Inside ``locked()`` the store uses the lock's connection: a pool of one connection is enough
    for a delivery (it used to take a second per read and write, and many orders at once waited
    on the pool's last free connection). Another task's calls still take their own."""
    pool = await asyncpg.create_pool(stack_env["DATABASE_URL"], min_size=1, max_size=1)
    assert pool is not None
    store = PgSagaStore(pool)
    oid = order_id()
    try:
        async with asyncio.timeout(5), store.locked(oid, wait_s=1):
            assert await store.save(SagaOrder(oid, state="running", current_step="whmcs_create"))
            record = await store.get(oid)
            assert record is not None and record.order.state == "running"
            assert await store.append_history(oid, HistoryEntry("step_done", "whmcs_create", {}))
            other = asyncio.create_task(store.get(oid))  # another delivery: waits for the pool
            await asyncio.sleep(0.05)
            assert not other.done()
        record = await asyncio.wait_for(other, 5)  # the lock's connection is back in the pool
        assert record is not None and [h.kind for h in await store.history(oid)] == ["step_done"]
    finally:
        await pool.close()


async def test_due_timers_are_taken_once_per_lease_across_concurrent_takers(store: PgSagaStore) -> None:
    """Three takers at once (three fulfillment instances): every due timer goes to exactly one of
    them, leased ahead; a timer not yet due stays; after the lease it falls due again."""
    now = datetime.now(UTC)
    due = [order_id() for _ in range(6)]
    later = order_id()
    for oid in [*due, later]:
        await store.save(SagaOrder(oid, state="parked"))
    for oid in due:
        await store.set_timer(oid, "payment_recheck", now - timedelta(seconds=5))
    await store.set_timer(later, "scheduled", now + timedelta(hours=1))

    takes = await asyncio.gather(*(store.take_due_timers(now, 60.0, 100) for _ in range(3)))
    taken = [t.sf_order_id for take in takes for t in take if t.sf_order_id in {*due, later}]
    assert sorted(taken) == sorted(due), "each due timer once, the later one not at all"
    assert [t for take in takes for t in take if t.sf_order_id in due][0].fired == 1

    again = await store.take_due_timers(now + timedelta(seconds=30), 60.0, 100)
    assert not {t.sf_order_id for t in again} & set(due), "still leased"
    after_lease = await store.take_due_timers(now + timedelta(seconds=61), 60.0, 100)
    assert set(due) <= {t.sf_order_id for t in after_lease}, "a taker that died lost nothing"


async def test_rearming_keeps_the_count_and_since_and_another_reason_starts_afresh(store: PgSagaStore) -> None:
    oid, now = order_id(), datetime.now(UTC)
    await store.save(SagaOrder(oid, state="parked"))
    await store.set_timer(oid, "payment_recheck", now - timedelta(seconds=1))
    first = await store.timer(oid)
    await store.take_due_timers(now, 60.0, 100)
    await store.set_timer(oid, "payment_recheck", now + timedelta(hours=1))
    rearmed = await store.timer(oid)
    assert first is not None and rearmed is not None
    assert (rearmed.fired, rearmed.since, rearmed.due_at) == (1, first.since, now + timedelta(hours=1))
    await store.set_timer(oid, "scheduled", now + timedelta(days=1))
    other = await store.timer(oid)
    assert other is not None and other.fired == 0 and other.reason == "scheduled"
    await store.clear_timer(oid)
    assert await store.timer(oid) is None


async def test_stuck_orders_are_those_past_their_states_deadline(store: PgSagaStore) -> None:
    now = datetime.now(UTC)
    parked, waiting, fresh = order_id(), order_id(), order_id()
    await store.save(SagaOrder(parked, state="parked"))
    await store.set_timer(parked, "payment_recheck", now + timedelta(hours=1))
    await store.save(SagaOrder(waiting, state="waiting", updated_at=now - timedelta(hours=2)))
    await store.save(SagaOrder(fresh, state="waiting"))
    deadlines = {"waiting": 3600.0, "parked": 3600.0}

    stuck = {o.sf_order_id: since for o, since in await store.stuck_orders(now, deadlines)}
    assert waiting in stuck and fresh not in stuck and parked not in stuck
    later = {o.sf_order_id for o, _ in await store.stuck_orders(now + timedelta(hours=2), deadlines)}
    assert parked in later, "parked since its wait began, however often it was re-checked"
