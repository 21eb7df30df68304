"""Keys at once, one key at a time: the delivery rules of ``workers.runtime.dispatch``, observed from outside.

A partition runs records of different keys concurrently (up to ``max_in_flight_per_partition``: the
setting when set, else the route's, else 1; and up to ``max_in_flight`` over all the worker's
partitions), a key's records strictly one after another in offset order, and the committed offset
never passes a record that is not done (nor does its done-ahead metadata name one). Everything here
is checked on what a worker shows from the outside: the start and end of each handler call (and what
it sampled while running), the offsets (and metadata) the fake consumer was asked to commit, and the
records the loopback producer saw.

* Properties (Hypothesis, each example a fresh event loop and a fresh worker): random records over a
  few keys and partitions, handlers that finish without suspending (the inline hot path), suspend a
  few times, or wait until the test releases them in a random order; random limits, fetch sizes and
  buffers; commits on every poll turn; with or without a retryable failure on the first attempt.
* Plain tests: a blocked key does not hold the others (nor is passed by the commit), the limits per
  partition and per worker, the shutdown drain (and its grace), cancel scopes and ``current_task``
  across the handler's first suspension, the context a handler's variables live in, and which limit
  wins (setting, route, default).
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st

from events.errors import UpstreamUnavailable
from events.salesforce import OrderChanged
from events.topics import dlq_topic, retry_topic
from workers.config import BreakerSettings, RuntimeSettings
from workers.runtime import Message, Route, Worker
from workers.runtime.consumer import TopicPartition
from workers.runtime.done_ahead import decode as decode_done_ahead
from workers.runtime.testing import FakeClock, FakeConsumer, LoopbackProducer, WorkerRun

GROUP = "kc.group"
SRC = "kc.src"
RETRY1, RETRY2, DLQ = retry_topic(GROUP, 1), retry_topic(GROUP, 2), dlq_topic(GROUP)

Handler = Callable[[OrderChanged, Message], Any]


def order(key: int | str) -> OrderChanged:
    """An OrderChanged record: its Kafka key is its sf_order_id, one per ``key``."""
    return OrderChanged(sf_order_id=f"801{key}", changed_fields=["Status"])


# --- a small harness (the pattern of test_runtime_worker.Harness) ---------------------------------


class CheckedConsumer(FakeConsumer):
    """A ``FakeConsumer`` that shows every commit to ``on_commit`` before storing it, as
    partition → (offset, metadata) (a commit may carry the offsets done ahead of it)."""

    on_commit: Callable[[Mapping[TopicPartition, tuple[int, str]]], None] | None = None

    async def commit(self, offsets: Mapping[TopicPartition, int | tuple[int, str]] | None = None) -> None:
        if self.on_commit is not None and offsets:
            self.on_commit({tp: p if isinstance(p, tuple) else (p, "") for tp, p in offsets.items()})
        await super().commit(offsets)


class Run(WorkerRun):
    """A worker for one route over ``SRC`` (plus its retry tiers), against fakes, with instant back-offs."""

    source_topic = SRC
    until_timeout_s = 5.0
    consumer: CheckedConsumer

    def __init__(
        self,
        handler: Handler,
        *,
        partitions: int = 1,
        limit: int | None = 8,
        route_limit: int | None = None,
        attempts: int = 3,
        settings: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.consumer = CheckedConsumer({SRC: partitions, RETRY1: partitions, RETRY2: partitions, DLQ: partitions})
        self.producer = LoopbackProducer(consumer=self.consumer)
        route = Route(
            "kc",
            GROUP,
            (SRC,),
            {OrderChanged: handler},
            in_place_attempts=attempts,
            retry_delays_ms=(5_000, 30_000),
            max_in_flight_per_partition=route_limit,
        )
        # explicit (unset: the route's value, else 1); None leaves it unset
        runtime = {
            "poll_timeout_ms": 2,
            "commit_interval_s": 0.005,
            "breaker": BreakerSettings(enabled=False),
            "freeze_gc": False,  # no process-wide GC switches from a hundred short-lived workers
            "gc_interval_s": None,
            **({"max_in_flight_per_partition": limit} if limit is not None else {}),
            **(settings or {}),
        }
        self.worker = Worker(
            route,
            self.consumer,
            self.producer,
            RuntimeSettings(**runtime),
            sleep=self.clock.sleep,
            clock=self.clock,
        )

    def send(self, key: int | str, *, partition: int = 0) -> None:
        self.consumer.append_event(SRC, order(key), partition=partition)


class Gated:
    """A handler whose keys wait on a gate each (``block``) and that logs every start and end."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int, str, int]] = []  # (start|end, partition, key, offset)
        self.gates: dict[str, asyncio.Event] = {}

    def block(self, *keys: int | str) -> None:
        for key in keys:
            self.gates[f"801{key}"] = asyncio.Event()

    def release(self, *keys: int | str) -> None:
        for key in keys:
            self.gates[f"801{key}"].set()

    async def __call__(self, event: OrderChanged, msg: Message) -> None:
        self.log.append(("start", msg.partition, event.sf_order_id, msg.offset))
        gate = self.gates.get(event.sf_order_id)
        if gate is not None:
            await gate.wait()
        self.log.append(("end", msg.partition, event.sf_order_id, msg.offset))

    def started(self, partition: int | None = None) -> list[int]:
        return [o for kind, p, _, o in self.log if kind == "start" and partition in (None, p)]

    def ended(self, partition: int | None = None) -> list[int]:
        return [o for kind, p, _, o in self.log if kind == "end" and partition in (None, p)]

    def running(self, partition: int | None = None) -> list[int]:
        done = set(self.ended(partition))
        return [o for o in self.started(partition) if o not in done]

    def max_running(self, partition: int | None = 0) -> int:
        """The most handlers running at once on ``partition`` (None: over all partitions)."""
        running = most = 0
        for kind, p, _, _ in self.log:
            if partition in (None, p):
                running += 1 if kind == "start" else -1
                most = max(most, running)
        return most


# --- the properties ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Rec:
    key: int
    partition: int
    steps: int  # asyncio.sleep(0) calls in the handler (0: it returns without suspending, the inline path)
    gated: bool  # then waits until the test releases it (in a random order)
    fail_once: bool  # its first attempt raises UpstreamUnavailable (retried in place)


@dataclass(frozen=True)
class Scenario:
    records: list[Rec]
    partitions: int
    limit: int
    worker_limit: int  # RuntimeSettings.max_in_flight: keys in handlers over both partitions
    max_records: int  # records per fetch
    buffer: int  # buffer_per_partition (back-pressure)
    yield_every: int
    attempts: int
    choices: list[int]  # drives which waiting record the test releases, and when

    def offsets(self) -> dict[tuple[int, int], Rec]:
        """(partition, offset) → record, as FakeConsumer numbers them (append order per partition)."""
        counts: dict[int, int] = defaultdict(int)
        out = {}
        for rec in self.records:
            out[(rec.partition, counts[rec.partition])] = rec
            counts[rec.partition] += 1
        return out


@st.composite
def scenarios(draw: st.DrawFn, *, failures: bool = False) -> Scenario:
    keys = draw(st.integers(1, 6))
    partitions = draw(st.integers(1, 2))
    records = draw(
        st.lists(
            st.builds(
                Rec,
                key=st.integers(0, keys - 1),
                partition=st.integers(0, partitions - 1),
                steps=st.integers(0, 4),
                gated=st.booleans(),
                fail_once=st.booleans() if failures else st.just(False),
            ),
            min_size=1,
            max_size=40,
        )
    )
    return Scenario(
        records=records,
        partitions=partitions,
        limit=draw(st.integers(1, 4)),
        worker_limit=draw(st.integers(1, 6)),
        max_records=draw(st.sampled_from([1, 3, 500])),
        buffer=draw(st.sampled_from([2, 500])),
        yield_every=draw(st.sampled_from([1, 2, 64])),
        attempts=draw(st.integers(2, 3)) if failures else 3,
        choices=draw(st.lists(st.integers(0, 1_000), min_size=1, max_size=16)),
    )


@dataclass
class Observer:
    """The handler of a scenario. It checks the rules at every moment it runs and notes violations
    (it must not raise them: the runtime would take an AssertionError for a failed record)."""

    sc: Scenario
    consumer: FakeConsumer
    records: dict[tuple[int, int], Rec] = field(init=False)
    key_offsets: dict[tuple[int, str], list[int]] = field(init=False)
    totals: dict[int, int] = field(init=False)
    violations: list[str] = field(default_factory=list)
    starts: list[tuple[int, int, int]] = field(default_factory=list)  # (partition, offset, attempts)
    successes: dict[tuple[int, int], int] = field(default_factory=lambda: defaultdict(int))
    finished: set[tuple[int, int]] = field(default_factory=set)
    active: dict[int, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))  # partition → key → offset
    most_active: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    most_total: int = 0  # keys in handlers at once over every partition
    samples: int = 0
    waiting: list[asyncio.Event] = field(default_factory=list)
    gates: dict[tuple[int, int], asyncio.Event] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.records = self.sc.offsets()
        self.totals = defaultdict(int)
        self.key_offsets = defaultdict(list)
        for (p, offset), rec in self.records.items():
            self.totals[p] += 1
            self.key_offsets[(p, f"801{rec.key}")].append(offset)

    # what the test sees as not finished: the handler has not returned successfully yet
    def first_unfinished(self, partition: int) -> int:
        return next(
            (o for o in range(self.totals[partition]) if (partition, o) not in self.finished), self.totals[partition]
        )

    def first_unfinished_of_key(self, partition: int, key: str) -> int | None:
        return next((o for o in self.key_offsets[(partition, key)] if (partition, o) not in self.finished), None)

    def sample(self, partition: int, where: str) -> None:
        """(d): the committed offset never passes a record that is not finished."""
        self.samples += 1
        committed = self.consumer.committed_offset(SRC, partition)
        first = self.first_unfinished(partition)
        if committed is not None and committed > first:
            self.violations.append(f"{where}: committed {committed} on p{partition} passes unfinished offset {first}")

    def check_commit(self, offsets: Mapping[TopicPartition, tuple[int, str]]) -> None:
        """At the moment of each commit: it passes no unfinished record, nor claims one done ahead."""
        for tp, (offset, metadata) in offsets.items():
            if tp.topic != SRC:
                continue
            first = self.first_unfinished(tp.partition)
            if offset > first:
                self.violations.append(f"commit {offset} on p{tp.partition} passes unfinished offset {first}")
            claimed = decode_done_ahead(offset, metadata)
            wrong = sorted(o for o in claimed if (tp.partition, o) not in self.finished)
            if wrong:
                self.violations.append(f"commit {offset} on p{tp.partition} says {wrong} are done ahead")
            before = self.consumer.committed_offset(SRC, tp.partition)
            if before is not None and offset < before:
                self.violations.append(f"commit on p{tp.partition} went back from {before} to {offset}")

    async def __call__(self, event: OrderChanged, msg: Message) -> None:
        p, offset, key = msg.partition, msg.offset, event.sf_order_id
        rec = self.records.get((p, offset))
        if msg.topic != SRC or rec is None or f"801{rec.key}" != key:
            self.violations.append(f"unexpected record {msg.topic}[{p}]@{offset} key {key}")
            return
        self.starts.append((p, offset, msg.attempts))
        active = self.active[p]
        if key in active:  # (a)
            self.violations.append(f"p{p} key {key}: offset {offset} started while {active[key]} runs")
        expected = self.first_unfinished_of_key(p, key)
        if offset != expected:  # (b), and (c): a finished record never runs again
            self.violations.append(f"p{p} key {key}: offset {offset} started, next in key order is {expected}")
        active[key] = offset
        self.most_active[p] = max(self.most_active[p], len(active))
        if len(active) > self.sc.limit:  # (e)
            self.violations.append(f"p{p}: {len(active)} keys in handlers, limit {self.sc.limit}")
        total = sum(len(keys) for keys in self.active.values())
        self.most_total = max(self.most_total, total)
        if total > self.sc.worker_limit:  # (e) over the worker's partitions
            self.violations.append(
                f"{total} keys in handlers over the partitions, max_in_flight {self.sc.worker_limit}"
            )
        self.sample(p, f"start p{p}@{offset}")
        for _ in range(rec.steps):
            await asyncio.sleep(0)
            self.sample(p, f"step p{p}@{offset}")
        if rec.gated:
            gate = self.gates.setdefault((p, offset), asyncio.Event())
            if not gate.is_set():
                self.waiting.append(gate)
                await gate.wait()
            self.sample(p, f"gate p{p}@{offset}")
        if active.get(key) == offset:
            del active[key]
        else:
            self.violations.append(f"p{p} key {key}: offset {offset} was not the key's running record at its end")
        if rec.fail_once and msg.attempts == 1:
            raise UpstreamUnavailable("blip")
        self.successes[(p, offset)] += 1
        self.finished.add((p, offset))

    def all_done(self) -> bool:
        return len(self.finished) == len(self.records)


async def _play(sc: Scenario) -> tuple[Observer, Run]:
    handler: Observer | None = None

    async def call(event: OrderChanged, msg: Message) -> None:
        assert handler is not None
        await handler(event, msg)

    run = Run(
        call,
        partitions=sc.partitions,
        limit=sc.limit,
        attempts=sc.attempts,
        settings={
            "max_in_flight": sc.worker_limit,
            "max_records": sc.max_records,
            "buffer_per_partition": sc.buffer,
            "yield_every": sc.yield_every,
            # commit on every turn of the poll loop that finds a record done: commits land between
            # handler steps, while earlier records still wait
            "commit_every": 1,
            "commit_interval_s": 0.001,
        },
    )
    handler = obs = Observer(sc, run.consumer)
    run.consumer.on_commit = obs.check_commit
    for rec in sc.records:
        run.send(rec.key, partition=rec.partition)

    def settled() -> bool:
        return obs.all_done() and all(run.committed(SRC, p) == n for p, n in obs.totals.items())

    await run.start()
    assert run.task is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    choices = itertools.cycle(sc.choices)
    # release the waiting records one by one, in an order (and at moments) the scenario chose
    while not settled() and not obs.violations:  # a violation fails the example at once (fast shrinking)
        if run.task.done():
            run.task.result()
            raise AssertionError("worker stopped before every record was handled")
        if loop.time() > deadline:
            raise AssertionError(f"not settled in time: {len(obs.finished)}/{len(obs.records)} finished")
        waiting = [g for g in obs.waiting if not g.is_set()]
        obs.waiting = waiting
        if not waiting:
            await asyncio.sleep(0.001)
            continue
        choice = next(choices)
        if choice % 5 == 0:  # hold the waiting records long enough for the poll loop to turn and commit
            await asyncio.sleep(0.003)
        for _ in range(choice % 4):
            await asyncio.sleep(0)
        waiting[choice % len(waiting)].set()
        await asyncio.sleep(0)
    await run.finish()
    return obs, run


def play(sc: Scenario) -> tuple[Observer, Run]:
    """Run a scenario on a fresh event loop (Hypothesis calls the test many times; the loop of
    pytest-asyncio is not running here, and this one does not replace it as the current loop)."""
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        return runner.run(_play(sc))


PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def _check_common(sc: Scenario, obs: Observer, run: Run) -> None:
    assert obs.violations == []
    assert obs.samples >= len(sc.records)
    # (c) every record succeeded exactly once; the final commit of each partition is one past its last offset
    assert sorted(obs.successes) == sorted(obs.records)
    assert set(obs.successes.values()) == {1}
    for p, n in obs.totals.items():
        assert run.committed(SRC, p) == n
    # (b) per key, the handler saw its records in offset order (retries of a record right after it)
    for (p, key), offsets in obs.key_offsets.items():
        seen = [o for (q, o, _) in obs.starts if q == p and f"801{obs.records[(q, o)].key}" == key]
        assert seen == sorted(seen)
        assert sorted(set(seen)) == offsets
    # committed offsets only moved forward
    for p in obs.totals:
        history = [c[TopicPartition(SRC, p)] for c in run.consumer.commits if TopicPartition(SRC, p) in c]
        assert history == sorted(history)
    # (e) never above the limits (checked at every start); Hypothesis steers towards more keys at once
    assert all(n <= sc.limit for n in obs.most_active.values())
    assert obs.most_total <= sc.worker_limit
    target(float(max(obs.most_active.values(), default=0)), label="keys in handlers at once")


@PROPERTY_SETTINGS
@given(scenarios())
def test_keys_run_at_once_each_key_in_order_and_the_commit_never_passes_an_unfinished_record(sc: Scenario) -> None:
    obs, run = play(sc)
    _check_common(sc, obs, run)
    assert [a for (_, _, a) in obs.starts] == [1] * len(sc.records)  # exactly once, no retries
    assert run.producer.records == []


@PROPERTY_SETTINGS
@given(scenarios(failures=True))
def test_a_key_retrying_in_place_stays_in_order_and_every_record_succeeds_once(sc: Scenario) -> None:
    obs, run = play(sc)
    _check_common(sc, obs, run)
    for (p, offset), rec in obs.records.items():
        attempts = [a for (q, o, a) in obs.starts if (q, o) == (p, offset)]
        assert attempts == ([1, 2] if rec.fail_once else [1])
    assert run.producer.records == []  # all retried in place: nothing moved to a retry tier or the DLQ


# --- one key waits, the others go on -------------------------------------------------------------


async def test_another_key_proceeds_while_one_key_waits_and_the_commit_stops_at_the_waiting_record() -> None:
    h = Gated()
    run = Run(h)
    h.block("a")
    for key in ("b", "a", "b", "a", "c"):  # offsets 0..4; a@3 is queued behind a@1
        run.send(key)
    await run.until(lambda: sorted(h.ended()) == [0, 2, 4] and run.committed() == 1)
    await asyncio.sleep(0.03)  # several commit ticks pass
    assert h.running() == [1]  # a@1 waits; a@3 has not started (its key is busy)
    assert 3 not in h.started()
    assert run.committed() == 1  # up to the waiting record, not past it
    h.release("a")
    await run.until(lambda: run.committed() == 5)
    await run.finish()
    a = [(kind, o) for kind, _, key, o in h.log if key == "801a"]
    assert a == [("start", 1), ("end", 1), ("start", 3), ("end", 3)]
    committed = [c[TopicPartition(SRC, 0)] for c in run.consumer.commits]
    assert committed[0] == 1 and committed[-1] == 5 and 2 not in committed and 4 not in committed


async def test_no_more_keys_run_at_once_than_the_limit() -> None:
    h = Gated()
    run = Run(h, limit=2)
    h.block(*range(5))
    for key in range(5):
        run.send(key)
    await run.until(lambda: len(h.started()) == 2)
    await asyncio.sleep(0.03)
    assert h.running() == [0, 1]  # the other three wait for a slot
    h.release(0)
    await run.until(lambda: len(h.started()) == 3)
    await asyncio.sleep(0.03)
    assert h.running() == [1, 2]
    h.release(1, 2, 3, 4)
    await run.until(lambda: run.committed() == 5)
    await run.finish()
    assert h.max_running() == 2
    assert h.started() == [0, 1, 2, 3, 4]  # slots go to keys in offset order


async def test_no_more_keys_run_at_once_over_the_partitions_than_max_in_flight() -> None:
    h = Gated()
    run = Run(h, partitions=2, limit=8, settings={"max_in_flight": 3})
    h.block(*(f"{p}-{k}" for p in range(2) for k in range(3)))
    for k in range(3):
        for p in range(2):
            run.send(f"{p}-{k}", partition=p)
    await run.until(lambda: len(h.running(None)) == 3)
    await asyncio.sleep(0.03)
    assert len(h.running(None)) == 3  # the other three keys wait, whichever partition they are on
    h.release("0-0", "1-0")
    await run.until(lambda: len(h.started()) == 5)
    await asyncio.sleep(0.03)
    assert len(h.running(None)) == 3
    h.release(*(f"{p}-{k}" for p in range(2) for k in range(1, 3)))
    await run.until(lambda: run.committed(SRC, 0) == 3 and run.committed(SRC, 1) == 3)
    await run.finish()
    assert h.max_running(None) == 3


# --- shutdown ------------------------------------------------------------------------------------


async def test_shutdown_waits_for_the_handlers_of_every_key_in_flight_and_commits_what_is_contiguous() -> None:
    """Shutdown lets each busy key finish the record in its handler; the record queued behind a key
    and the one waiting for a slot are left not done, and the commit stops at the first of them."""
    h = Gated()
    run = Run(h, limit=3)
    h.block(0, 1, 2)
    for key in (0, 1, 1, 2, 3):  # 1@2 queued behind 1@1; 3@4 waits for a slot
        run.send(key)
    # offset 3 started, so 1@2 (taken before it, in offset order) is already queued behind 1@1; 3@4
    # waits for a slot or is still buffered: either way it is not started
    await run.until(lambda: h.running() == [0, 1, 3])
    stopping = asyncio.create_task(run.finish())
    await asyncio.sleep(0.02)
    assert not stopping.done()
    h.release(1)
    await run.until(lambda: 1 in h.ended())
    h.release(2)
    await run.until(lambda: 3 in h.ended())
    await asyncio.sleep(0.02)
    assert not stopping.done()  # still waiting for key 0
    assert run.committed() is None  # nothing is committable while offset 0 runs
    h.release(0)
    await asyncio.wait_for(stopping, 2)
    assert sorted(h.ended()) == [0, 1, 3]
    assert h.started() == [0, 1, 3]  # neither the queued record nor the one without a slot ran
    assert run.committed() == 2  # 0 and 1 are done, 2 is not
    # 3 is done after it: the commit's metadata says so (the next owner skips it), and nothing else
    assert decode_done_ahead(2, run.consumer.metadata[TopicPartition(SRC, 0)]) == {3}
    assert run.producer.records == []


async def test_shutdown_past_the_grace_commits_only_up_to_the_first_record_not_done() -> None:
    h = Gated()
    run = Run(h, settings={"shutdown_grace_s": 0.1})
    h.block(1, 2)
    for key in (0, 1, 2):
        run.send(key)
    await run.until(lambda: h.running() == [1, 2])
    stopping = asyncio.create_task(run.finish())
    await asyncio.sleep(0.01)
    h.release(2)  # key 1 never finishes: cancelled at the end of the grace
    await asyncio.wait_for(stopping, 2)
    assert h.ended() == [0, 2]
    assert run.committed() == 1  # offset 2 is done, but offset 1 is not
    assert decode_done_ahead(1, run.consumer.metadata[TopicPartition(SRC, 0)]) == {2}  # not 1: it was cancelled
    assert all(c[TopicPartition(SRC, 0)] <= 1 for c in run.consumer.commits)
    assert run.producer.records == []  # a cancelled record is neither retried nor dead-lettered


# --- the handler keeps its task across the hand-over --------------------------------------------


async def test_cancel_scopes_and_current_task_survive_the_first_suspension() -> None:
    """A handler starts in the partition task and, at its first suspension, that task becomes its
    key's lane: a timeout entered before the suspension cancels the right task, and fires."""
    seen: dict[tuple[str, int], dict[str, Any]] = {}
    release = asyncio.Event()
    never = asyncio.Event()

    async def handler(event: OrderChanged, msg: Message) -> None:
        note = seen[(event.sf_order_id, msg.offset)] = {"before": asyncio.current_task()}
        try:
            if event.sf_order_id == "801slow":
                async with asyncio.timeout(5):
                    await release.wait()
                note["outcome"] = "completed"
            elif event.sf_order_id == "801stuck":
                async with asyncio.timeout(0.05):
                    await never.wait()
                note["outcome"] = "completed"
            else:
                await asyncio.sleep(0)
                note["outcome"] = "completed"
        except TimeoutError:
            note["outcome"] = "timed out"
        task = asyncio.current_task()
        note["after"] = task
        note["cancelling"] = task.cancelling() if task is not None else None

    run = Run(handler)
    for key in ("slow", "stuck", "stuck", "quick"):  # stuck@2 is queued behind stuck@1
        run.send(key)
    await run.until(lambda: len(seen) == 4 and all("after" in n for k, n in seen.items() if k[0] != "801slow"))
    release.set()
    await run.until(lambda: run.committed() == 4)
    await run.finish()
    assert {k: n["outcome"] for k, n in seen.items()} == {
        ("801slow", 0): "completed",
        ("801stuck", 1): "timed out",
        ("801stuck", 2): "timed out",
        ("801quick", 3): "completed",
    }
    for note in seen.values():
        assert note["before"] is note["after"]
        assert note["cancelling"] == 0  # the timeout's cancellation was taken back in the same task
    assert seen[("801stuck", 1)]["before"] is seen[("801stuck", 2)]["before"]  # the lane runs its queue
    assert run.producer.records == []


async def test_a_handlers_context_variables_do_not_leak_into_the_handlers_of_other_keys() -> None:
    """The old one-record-at-a-time loop gave every handler the partition task's clean context; a
    handler that sets a variable and resets it before returning must leave none behind."""
    var: contextvars.ContextVar[str | None] = contextvars.ContextVar("kc_var", default=None)
    seen: dict[str, str | None] = {}
    gate = asyncio.Event()

    async def handler(event: OrderChanged, msg: Message) -> None:
        seen[event.sf_order_id] = var.get()
        token = var.set(event.sf_order_id)
        try:
            if event.sf_order_id == "801a":
                await gate.wait()
            else:
                await asyncio.sleep(0)
        finally:
            var.reset(token)

    run = Run(handler)
    for key in ("a", "b", "c"):
        run.send(key)
    await run.until(lambda: len(seen) == 3)
    gate.set()
    await run.until(lambda: run.committed() == 3)
    await run.finish()
    assert seen == {"801a": None, "801b": None, "801c": None}


# --- the route's limit ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route_limit", "settings_limit", "expected"),
    [(2, None, 2), (None, None, 1), (2, 3, 3), (3, 1, 1)],
    ids=["route-2", "default-1", "settings-3-over-route-2", "settings-1-over-route-3"],
)
async def test_the_settings_limit_wins_over_the_routes_and_the_route_over_the_default(
    route_limit: int | None, settings_limit: int | None, expected: int
) -> None:
    """An operator's setting wins over every route (they know their database); unset, the route's
    own value applies (workers/routes.py), else one record at a time."""
    h = Gated()
    run = Run(h, partitions=2, limit=settings_limit, route_limit=route_limit)
    h.block(*(f"{p}-{k}" for p in range(2) for k in range(3)))
    for k in range(3):
        for p in range(2):
            run.send(f"{p}-{k}", partition=p)
    await run.until(lambda: len(h.running(0)) == expected and len(h.running(1)) == expected)
    await asyncio.sleep(0.03)
    assert h.running(0) == h.running(1) == list(range(expected))

    def ended_on_both(offset: int) -> bool:
        return offset in h.ended(0) and offset in h.ended(1)

    for k in range(3):  # release key by key, each partition's keys in offset order
        h.release(*(f"{p}-{k}" for p in range(2)))
        await run.until(partial(ended_on_both, k))
    await run.until(lambda: run.committed(SRC, 0) == 3 and run.committed(SRC, 1) == 3)
    await run.finish()
    assert h.max_running(0) == h.max_running(1) == expected
    if expected == 1:  # one at a time: each record ends before the next starts
        for p in range(2):
            assert [(kind, o) for kind, q, _, o in h.log if q == p] == [
                (kind, o) for o in range(3) for kind in ("start", "end")
            ]
