"""sf-cdc's leader election with fake leases: a standby waits, the holder subscribes from the
checkpoint, a lost lease stops the subscriber at once (no further checkpoint), a takeover waits out
the grace unless the last leader let go cleanly, a fenced write makes the leader step down, and
/readyz says "standby" while /livez stays 200. Also the fake lease's own contract."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import pytest
from structlog.testing import capture_logs

from adapters.cdc_checkpoints import Checkpoint, MemoryCheckpointStore
from adapters.kafka import FakeProducer
from adapters.leader_lease import FakeLease, FakeLockServer, LeaseLost, Term
from events.errors import DependencyUnavailable
from tests.unit.test_cdc_subscriber import ALL_CHANNELS, FAST, ORDER_CH, TOPICS, GatedProducer, eventually, update
from tests.unit.test_cdc_translate import fake_org
from workers.ingress.cdc_leader import Leadership, LeaseTiming, State
from workers.ingress.cdc_source import FakeSource, Subscribed
from workers.ingress.cdc_translate import Rules, Translator
from workers.ingress.sf_cdc import CdcMetrics, Subscriber
from workers.runtime.health import HealthServer

TIMING = LeaseTiming(retry_s=0.02, check_interval_s=0.03, check_timeout_s=0.02, takeover_grace_s=0.3)
LEASE = "sf-cdc:unit@org.example"


class Timeline:
    """When things happened, across instances: (monotonic time, instance, what)."""

    def __init__(self) -> None:
        self.entries: list[tuple[float, str, str]] = []

    def add(self, who: str, what: str) -> None:
        self.entries.append((time.monotonic(), who, what))

    def at(self, who: str, what: str) -> list[float]:
        return [t for t, w, x in self.entries if w == who and x == what]


class TimedSource(FakeSource):
    """A FakeSource that writes its opens and closes on the timeline; ``hold_close`` makes a close
    wait for it (a disconnect that takes a while)."""

    def __init__(self, who: str, timeline: Timeline) -> None:
        super().__init__(ALL_CHANNELS)
        self.who, self.timeline = who, timeline
        self.hold_close: asyncio.Event | None = None

    async def open(self, positions: Mapping[str, int]) -> list[Subscribed]:
        outcomes = await super().open(positions)
        self.timeline.add(self.who, "open")
        return outcomes

    async def close(self) -> None:
        if self.hold_close is not None:
            await self.hold_close.wait()
        await super().close()
        self.timeline.add(self.who, "close")


class TimedLease(FakeLease):
    def __init__(self, who: str, timeline: Timeline, server: FakeLockServer) -> None:
        super().__init__(LEASE, server)
        self.who, self.timeline = who, timeline

    async def try_acquire(self) -> bool:
        was_held = self.held
        got = await super().try_acquire()
        if got and not was_held:
            self.timeline.add(self.who, "acquired")
        return got


class FencedMemoryStore:
    """``MemoryCheckpointStore`` whose writes are refused once a newer term began (the fake side of
    ``FencedCheckpointStore``)."""

    def __init__(self, rows: MemoryCheckpointStore, server: FakeLockServer, term: int, on_fenced: Callable[[], None]):
        self.rows, self.server, self.term, self.on_fenced = rows, server, term, on_fenced

    async def load(self, subscriber: str) -> dict[str, Checkpoint]:
        return await self.rows.load(subscriber)

    async def save(self, subscriber: str, checkpoints: Sequence[Checkpoint]) -> None:
        if self.server.current_term(LEASE) != self.term:
            self.on_fenced()
            raise LeaseLost("fenced")
        await self.rows.save(subscriber, checkpoints)


@dataclass
class Instance:
    """One sf-cdc process: its lease, source, producer and election loop."""

    who: str
    lease: TimedLease
    source: TimedSource
    producer: FakeProducer
    store: MemoryCheckpointStore
    leadership: Leadership
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    subscribers: list[Subscriber] = field(default_factory=list)

    @property
    def state(self) -> State:
        return self.leadership.state

    def metric(self, name: str, **labels: str) -> float:
        return self.leadership.registry.get_sample_value(name, labels) or 0.0


def instance(
    who: str,
    server: FakeLockServer,
    timeline: Timeline,
    store: MemoryCheckpointStore,
    *,
    producer: FakeProducer | None = None,
    timing: LeaseTiming = TIMING,
) -> Instance:
    lease = TimedLease(who, timeline, server)
    source = TimedSource(who, timeline)
    producer = producer or FakeProducer()
    metrics = CdcMetrics()
    rules = Rules(frozenset({"Approved", "Processed", "Reactivate"}), "fulfillment-fleet")
    subscribers: list[Subscriber] = []

    def start_term(term: int) -> Subscriber:
        subscriber = Subscriber(
            source=source,
            translator=Translator(rules, fake_org()),
            producer=producer,
            store=FencedMemoryStore(store, server, term, leadership.step_down),  # type: ignore[arg-type]
            channels=ALL_CHANNELS,
            options=FAST,
            topics=TOPICS,
            metrics=metrics,
        )
        subscribers.append(subscriber)
        return subscriber

    leadership = Leadership(lease, start_term, registry=metrics.registry, instance_id=who, timing=timing)
    return Instance(who, lease, source, producer, store, leadership, subscribers=subscribers)


@asynccontextmanager
async def running(*instances: Instance) -> AsyncIterator[None]:
    for i in instances:
        i.task = asyncio.create_task(i.leadership.run(i.stop))
    try:
        yield
    finally:
        for i in instances:
            i.stop.set()
        for i in instances:
            assert i.task is not None
            await asyncio.wait_for(i.task, 5)


def subscribed(i: Instance) -> bool:
    return i.state is State.LEADER and i.leadership.readiness()[0]


@pytest.fixture
def server() -> FakeLockServer:
    return FakeLockServer()


@pytest.fixture
def timeline() -> Timeline:
    return Timeline()


async def test_a_standby_keeps_trying_and_never_subscribes_while_another_holds_the_lease(
    server: FakeLockServer, timeline: Timeline
) -> None:
    holder = FakeLease(LEASE, server)
    assert await holder.try_acquire()
    b = instance("b", server, timeline, MemoryCheckpointStore())
    async with running(b):
        await asyncio.sleep(10 * TIMING.retry_s)
        assert b.state is State.STANDBY and b.leadership.readiness() == (False, "standby")
        assert b.leadership.liveness()[0]
        assert b.source.opens == [] and b.lease.acquired == 0
        assert b.metric("sf_cdc_lease_state", state="standby") == 1
        assert b.metric("sf_cdc_lease_state", state="leader") == 0
        await holder.release(clean=True)
        await eventually(lambda: subscribed(b))
    assert b.source.opens != []


async def test_the_holder_subscribes_from_the_durable_checkpoint(server: FakeLockServer, timeline: Timeline) -> None:
    store = MemoryCheckpointStore({ORDER_CH: Checkpoint(ORDER_CH, 41)})
    a = instance("a", server, timeline, store)
    async with running(a):
        await eventually(lambda: subscribed(a))
        assert a.source.opens == [{ORDER_CH: 41}]
        assert a.metric("sf_cdc_lease_state", state="leader") == 1 and a.metric("sf_cdc_lease_term") == 1
        a.source.push(update(42))
        await eventually(lambda: store.rows[ORDER_CH].replay_id == 42)
    # a graceful stop lets go cleanly, so a successor needs no grace
    assert a.lease.released == [True] and server.terms[LEASE] == Term(1, "a", released=True)
    assert a.state is State.STOPPED


async def test_a_lost_lease_stops_the_subscriber_at_once_and_checkpoints_nothing_more(
    server: FakeLockServer, timeline: Timeline
) -> None:
    store = MemoryCheckpointStore()
    producer = GatedProducer()
    a = instance("a", server, timeline, store, producer=producer)
    async with running(a):
        await eventually(lambda: subscribed(a))
        producer.gate.set()
        a.source.push(update(51))
        await eventually(lambda: store.rows[ORDER_CH].replay_id == 51)
        producer.gate.clear()
        a.source.push(update(52))  # in flight: Kafka has not acknowledged it when the lease goes
        await eventually(lambda: a.subscribers[0].in_flight == 1)
        saves = len(store.saves)
        a.source.hold_close = asyncio.Event()  # the stream's disconnect takes a while
        with capture_logs() as logs:
            a.lease.sever(notice=True)  # the server ended the session; asyncpg tells us at once
            await eventually(lambda: not a.subscribers[0].ready, timeout=1)
            producer.gate.set()  # Kafka would acknowledge now: too late, the work was abandoned
            await asyncio.sleep(5 * FAST.checkpoint_interval_s)
            assert len(store.saves) == saves and store.rows[ORDER_CH].replay_id == 51
            assert len(producer.on(TOPICS.order)) == 1  # only 51's event, even before the close ended
            a.source.hold_close.set()
            await eventually(lambda: a.source.closes == 1 and not a.subscribers[0].running, timeout=1)
            # nobody else wants it: it takes the lease back after the grace (its own term did not
            # end cleanly) and resumes from the checkpoint
            await eventually(lambda: subscribed(a))
        lost = [e for e in logs if e["event"] == "sf_cdc_lease_lost"]
        assert [(e["instance_id"], e["reason"]) for e in lost] == [("a", "connection lost")]
        states = [(e["previous"], e["state"]) for e in logs if e["event"] == "sf_cdc_lease_state"]
        assert states == [("leader", "standby"), ("standby", "takeover"), ("takeover", "leader")]
        assert a.metric("sf_cdc_lease_lost_total", reason="connection lost") == 1
        assert a.source.opens[-1] == {ORDER_CH: 51} and a.metric("sf_cdc_lease_term") == 2


async def test_a_silent_loss_is_noticed_by_the_next_check_within_the_detection_bound(
    server: FakeLockServer, timeline: Timeline
) -> None:
    a = instance("a", server, timeline, MemoryCheckpointStore())
    async with running(a):
        await eventually(lambda: subscribed(a))
        checks = a.lease.checks
        a.lease.sever(notice=False)  # e.g. a network cut: only a check can tell
        cut = time.monotonic()
        await eventually(lambda: a.source.closes == 1, timeout=1)
        assert time.monotonic() - cut <= TIMING.detection_bound_s + 0.05
        assert a.lease.checks > checks


async def test_a_check_that_fails_counts_as_a_loss(server: FakeLockServer, timeline: Timeline) -> None:
    a = instance("a", server, timeline, MemoryCheckpointStore())
    async with running(a):
        await eventually(lambda: subscribed(a))
        a.lease.fail_checks = True  # a timeout or an error of the check query
        await eventually(lambda: a.state is not State.LEADER, timeout=1)
        assert a.source.closes == 1
        assert a.metric("sf_cdc_lease_lost_total", reason="check failed") == 1


async def test_a_takeover_waits_the_grace_so_the_old_leader_stopped_first(
    server: FakeLockServer, timeline: Timeline
) -> None:
    store = MemoryCheckpointStore()
    a = instance("a", server, timeline, store)
    b = instance("b", server, timeline, store)
    async with running(a):
        await eventually(lambda: subscribed(a))
        async with running(b):
            await asyncio.sleep(5 * TIMING.retry_s)
            assert b.state is State.STANDBY and b.source.opens == []
            a.lease.sever(notice=False)  # the lock is free before a knows it
            await eventually(lambda: subscribed(b), timeout=3)
            (acquired,) = timeline.at("b", "acquired")
            (b_open,) = timeline.at("b", "open")
            (a_close,) = timeline.at("a", "close")
            assert a_close < acquired + TIMING.detection_bound_s + 0.05  # a noticed within its bound
            assert b_open - acquired >= TIMING.takeover_grace_s  # b waited the grace out
            assert a_close < b_open  # never both subscribed
            assert server.terms[LEASE].number == 2 and server.terms[LEASE].holder == "b"
            assert a.state is State.STANDBY  # a stands by now, b leads


async def test_after_a_clean_release_the_successor_needs_no_grace(server: FakeLockServer, timeline: Timeline) -> None:
    store = MemoryCheckpointStore()
    slow = LeaseTiming(retry_s=0.02, check_interval_s=0.03, check_timeout_s=0.02, takeover_grace_s=5.0)
    a = instance("a", server, timeline, store, timing=slow)
    b = instance("b", server, timeline, store, timing=slow)
    async with running(a):
        await eventually(lambda: subscribed(a))
        async with running(b):
            await asyncio.sleep(5 * slow.retry_s)
            a.stop.set()  # SIGTERM: drain, final checkpoint, release cleanly
            await eventually(lambda: subscribed(b), timeout=2)  # well within the 5 s grace
            (a_close,) = timeline.at("a", "close")
            (b_open,) = timeline.at("b", "open")
            assert a_close < b_open and b_open - a_close < 1.0


async def test_the_first_holder_ever_needs_no_grace(server: FakeLockServer, timeline: Timeline) -> None:
    slow = LeaseTiming(retry_s=0.02, check_interval_s=0.03, check_timeout_s=0.02, takeover_grace_s=5.0)
    a = instance("a", server, timeline, MemoryCheckpointStore(), timing=slow)
    async with running(a):
        await eventually(lambda: subscribed(a), timeout=2)


async def test_a_write_fenced_by_a_newer_term_makes_the_leader_step_down(
    server: FakeLockServer, timeline: Timeline
) -> None:
    store = MemoryCheckpointStore()
    a = instance("a", server, timeline, store)
    async with running(a):
        await eventually(lambda: subscribed(a))
        # a newer term began elsewhere (a frozen leader resuming after its successor took over)
        server.terms[LEASE] = Term(7, "b", released=False)
        a.source.push(update(61))
        await eventually(lambda: a.source.closes == 1, timeout=10)
        assert store.rows[ORDER_CH].replay_id is None  # 61's write was refused (the row is the first start's)
        assert a.metric("sf_cdc_lease_lost_total", reason="fenced") == 1


async def test_the_database_away_keeps_a_standby_trying_and_logs_once(
    server: FakeLockServer, timeline: Timeline
) -> None:
    a = instance("a", server, timeline, MemoryCheckpointStore())
    failures = [DependencyUnavailable("connection refused") for _ in range(3)]

    original = a.lease.try_acquire

    async def flaky() -> bool:
        if failures:
            raise failures.pop()
        return await original()

    a.lease.try_acquire = flaky  # type: ignore[method-assign]
    with capture_logs() as logs:
        async with running(a):
            await eventually(lambda: subscribed(a))
    assert len([e for e in logs if e["event"] == "sf_cdc_lease_unavailable"]) == 1


async def test_cancelling_the_leader_stops_its_subscriber_before_the_lease_is_released(
    server: FakeLockServer, timeline: Timeline
) -> None:
    a = instance("a", server, timeline, MemoryCheckpointStore())
    task = asyncio.create_task(a.leadership.run(a.stop))
    await eventually(lambda: subscribed(a))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert a.source.closes == 1 and not a.subscribers[0].running
    assert a.lease.released == [False] and LEASE not in server.holders  # unclean: a successor waits


async def test_health_says_standby_not_ready_but_live(server: FakeLockServer, timeline: Timeline) -> None:
    holder = FakeLease(LEASE, server)
    assert await holder.try_acquire()
    b = instance("b", server, timeline, MemoryCheckpointStore())
    async with running(b), HealthServer(b.leadership, "127.0.0.1", 0) as health:
        await eventually(lambda: b.state is State.STANDBY)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{health.port}") as http:
            ready, live = await http.get("/readyz"), await http.get("/livez")
            assert (ready.status_code, ready.json()["reason"]) == (503, "standby")
            assert (live.status_code, live.json()["reason"]) == (200, "standby")
            metrics = (await http.get("/metrics")).text
            assert 'sf_cdc_lease_state{state="standby"} 1.0' in metrics and "sf_cdc_ready 0.0" in metrics
            await holder.release(clean=True)
            await eventually(lambda: subscribed(b))
            ready = await http.get("/readyz")
            assert (ready.status_code, ready.json()["reason"]) == (200, "subscribed")


def test_the_grace_must_exceed_the_detection_bound() -> None:
    with pytest.raises(ValueError, match="must exceed"):
        LeaseTiming(check_interval_s=1.0, check_timeout_s=1.0, takeover_grace_s=2.0)


# --- the fake's contract (the Postgres lease honours it in tests/integration/test_cdc_lease_pg.py)
async def test_two_fake_leases_contend_and_the_loser_gets_it_once_it_is_free(server: FakeLockServer) -> None:
    a, b = FakeLease(LEASE, server), FakeLease(LEASE, server)
    assert await a.try_acquire() and await a.try_acquire()  # idempotent
    assert not await b.try_acquire()
    assert await a.check() and await a.previous_term() is None
    assert await a.begin_term("a") == 1
    a.sever(notice=False)
    assert await b.try_acquire()
    assert not await a.check() and not a.held
    assert (await b.previous_term()) == Term(1, "a", released=False)
    assert await b.begin_term("b") == 2
    await b.release(clean=True)
    assert server.terms[LEASE] == Term(2, "b", released=True)
    with pytest.raises(LeaseLost):
        await b.begin_term("b")
