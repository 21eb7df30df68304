"""The consume loop against a fake consumer and producer: what is committed, retried, dead-lettered."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import ClientSession
from aiokafka.errors import CommitFailedError
from structlog.testing import capture_logs

from events import failure as fh
from events.errors import InvalidPayload, MappingMissing, RateLimited, RejectedByUpstream, UpstreamUnavailable
from events.salesforce import CatalogChanged, OrderChanged
from events.topics import dlq_topic, retry_topic
from workers.config import BreakerSettings, RuntimeSettings
from workers.runtime import HealthServer, Message, Route, Worker, done_ahead
from workers.runtime.consumer import TopicPartition
from workers.runtime.testing import FakeClock, FakeConsumer, LoopbackProducer, WorkerRun

GROUP = "t.group"
SRC = "t.src"
RETRY1, RETRY2, DLQ = retry_topic(GROUP, 1), retry_topic(GROUP, 2), dlq_topic(GROUP)


class Recorder:
    """A handler that records what it saw and fails as scripted per sf_order_id."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, int]] = []  # (order id, offset, attempts)
        self.fail: dict[str, list[BaseException]] = {}
        self.messages: list[Message] = []
        self.gate: asyncio.Event | None = None
        self.on_call: Callable[[], None] | None = None

    async def __call__(self, event: OrderChanged, msg: Message) -> None:
        self.seen.append((event.sf_order_id, msg.offset, msg.attempts))
        if self.on_call is not None:
            self.on_call()
        self.messages.append(msg)
        if self.gate is not None:
            await self.gate.wait()
        errors = self.fail.get(event.sf_order_id)
        if errors:
            raise errors.pop(0)

    def ids(self) -> list[str]:
        return [i for i, _, _ in self.seen]


def order(i: int | str) -> OrderChanged:
    return OrderChanged(sf_order_id=f"801{i}", changed_fields=["Status"])


class Harness(WorkerRun):
    source_topic = SRC
    until_timeout_s = 3.0

    def __init__(
        self,
        *,
        partitions: int = 1,
        attempts: int = 3,
        delays: tuple[int, ...] = (5_000, 30_000),
        dead_letter: bool = True,
        breaker: BreakerSettings | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.handler = Recorder()
        counts = {SRC: partitions, RETRY1: partitions, RETRY2: partitions, DLQ: partitions}
        self.consumer = FakeConsumer(counts)
        self.producer = LoopbackProducer(consumer=self.consumer)
        self.route = Route(
            "test",
            GROUP,
            (SRC,),
            {OrderChanged: self.handler},
            in_place_attempts=attempts,
            retry_delays_ms=delays,
            dead_letter=dead_letter,
        )
        self.worker = Worker(
            self.route,
            self.consumer,
            self.producer,
            RuntimeSettings(
                **{
                    "poll_timeout_ms": 2,
                    "commit_interval_s": 0.005,
                    "breaker": breaker or BreakerSettings(enabled=False),
                    **(settings or {}),
                }
            ),
            sleep=self.clock.sleep,
            clock=self.clock,
        )

    def send(self, i: int | str, *, partition: int = 0, topic: str = SRC, **envelope: Any) -> None:
        self.consumer.append_event(topic, order(i), partition=partition, **envelope)


# --- consume and commit ----------------------------------------------------------------------


async def test_handles_every_record_in_order_and_commits_one_past_the_last() -> None:
    h = Harness()
    for i in range(5):
        h.send(i)
    await h.until(lambda: h.committed() == 5)
    await h.finish()
    assert h.handler.ids() == [f"801{i}" for i in range(5)]
    assert h.consumer.stopped  # left the group


async def test_partitions_run_concurrently_but_each_in_order() -> None:
    """A slow partition does not hold the others; within one, order is the produced order."""
    h = Harness(partitions=2)
    h.handler.gate = asyncio.Event()
    h.send("a0", partition=0)
    h.send("b0", partition=1)
    await h.until(lambda: len(h.handler.seen) == 2)  # both started before either finished
    h.handler.gate.set()
    for i in range(1, 4):
        h.send(f"a{i}", partition=0)
        h.send(f"b{i}", partition=1)
    await h.until(lambda: h.committed(SRC, 0) == 4 and h.committed(SRC, 1) == 4)
    await h.finish()
    assert [i for i in h.handler.ids() if i.startswith("801a")] == [f"801a{i}" for i in range(4)]
    assert [i for i in h.handler.ids() if i.startswith("801b")] == [f"801b{i}" for i in range(4)]


async def test_nothing_is_committed_before_its_record_is_done() -> None:
    h = Harness(settings={"max_in_flight_per_partition": 8})
    h.handler.gate = asyncio.Event()
    h.send(0)
    h.send(1)
    await h.until(lambda: len(h.handler.seen) == 2)  # two keys: both in flight
    await asyncio.sleep(0.03)  # several commit ticks pass
    assert h.committed() is None
    h.handler.gate.set()
    await h.until(lambda: h.committed() == 2)
    await h.finish()


async def test_a_slow_commit_does_not_stop_the_loop_and_shutdown_waits_for_it_before_the_final_commit() -> None:
    """The periodic commit runs beside the poll loop: records fetched while it is out are handled;
    only one is out at a time; the shutdown commit goes after it, so offsets only move forward."""
    h = Harness()
    gate = asyncio.Event()
    commit = h.consumer.commit
    calls: list[dict[Any, int]] = []

    async def slow_commit(offsets: Any = None) -> None:
        calls.append(dict(offsets or {}))
        if len(calls) == 1:
            await gate.wait()  # the first commit hangs until released
        await commit(offsets)

    h.consumer.commit = slow_commit  # type: ignore[method-assign]
    h.send(0)
    await h.until(lambda: len(calls) == 1)
    for i in range(1, 6):
        h.send(i)
    await h.until(lambda: len(h.handler.seen) == 6)  # handled while the first commit is out
    await asyncio.sleep(0.03)  # several commit ticks pass
    assert len(calls) == 1  # no second commit while one is out
    stopping = asyncio.create_task(h.finish())
    await asyncio.sleep(0.02)
    assert not stopping.done()  # shutdown waits for the commit in flight
    gate.set()
    await stopping
    assert [list(c.values()) for c in calls][-1] == [(6, "")]  # (offset, metadata): nothing done ahead
    assert h.committed() == 6
    committed = [offset for c in h.consumer.commits for offset in c.values()]
    assert committed == sorted(committed)


READS: list[str] = []


class CountedSettings(RuntimeSettings):
    """``RuntimeSettings`` that counts reads of its fields (a pydantic attribute costs ~3x a plain one)."""

    def __getattribute__(self, name: str) -> Any:
        if name in RuntimeSettings.model_fields:
            READS.append(name)
        return super().__getattribute__(name)


class CountedBreaker(BreakerSettings):
    def __getattribute__(self, name: str) -> Any:
        if name in BreakerSettings.model_fields:
            READS.append(f"breaker.{name}")
        return super().__getattribute__(name)


async def test_the_worker_reads_its_settings_when_built_not_per_record() -> None:
    """Every knob is copied out of ``RuntimeSettings`` when the worker is built (and a few once per run):
    handling records, failing ones included, reads none of them."""
    h = Harness(attempts=1, delays=())
    h.handler.fail["8013"] = [UpstreamUnavailable("whmcs")]  # a failure path too: the breaker counts it
    # two records per fetch: the poll loop turns 150 times
    settings = CountedSettings(poll_timeout_ms=2, commit_interval_s=0.005, max_records=2, breaker=CountedBreaker())
    h.worker = Worker(h.route, h.consumer, h.producer, settings, sleep=h.clock.sleep, clock=h.clock)
    READS.clear()
    for i in range(300):
        h.send(i)
    await h.until(lambda: h.committed() == 300)
    await h.finish()
    assert len(READS) < 10, READS  # the run's own: the GC policy, the shutdown grace


async def test_the_collector_is_back_on_even_when_leaving_the_group_fails() -> None:
    """Timed collections switch CPython's automatic GC off while a worker runs; a failing shutdown
    must not leave the process without it."""
    import gc

    h = Harness(settings={"gc_interval_s": 0.1})

    async def failing_stop() -> None:
        raise RuntimeError("broker gone")

    h.consumer.stop = failing_stop  # type: ignore[method-assign]
    h.send(0)
    await h.until(lambda: h.committed() == 1)
    assert not gc.isenabled()
    with pytest.raises(RuntimeError, match="broker gone"):
        await h.finish()
    assert gc.isenabled()


async def test_records_of_types_without_a_handler_are_acknowledged_and_skipped() -> None:
    h = Harness()
    h.consumer.append_event(SRC, CatalogChanged(entity="Product2", record_id="01t1"))
    h.send(1)
    await h.until(lambda: h.committed() == 2)
    await h.finish()
    assert h.handler.ids() == ["8011"]
    assert h.worker.metrics.topic(SRC).skipped == 1
    assert h.producer.records == []


async def test_the_handler_sees_the_message_and_the_log_context_is_bound() -> None:
    h = Harness()
    seen: list[dict[str, Any]] = []

    async def handler(event: OrderChanged, msg: Message) -> None:
        from workers.logs import get_log_context

        seen.append(get_log_context())
        assert msg.envelope.data["sf_order_id"] == event.sf_order_id
        assert msg.envelope.correlationid == "corr-1"

    h.route = Route("test", GROUP, (SRC,), {OrderChanged: handler})
    h.worker = Worker(h.route, h.consumer, h.producer, RuntimeSettings(poll_timeout_ms=2))
    h.send(7, correlationid="corr-1")
    await h.until(lambda: bool(seen))
    await h.finish()
    ctx = seen[0]
    assert ctx["topic"] == SRC and ctx["partition"] == 0 and ctx["offset"] == 0
    assert ctx["event_type"] == "fleet.order.changed.v1" and ctx["correlation_id"] == "corr-1"
    assert ctx["key"] == "8017" and ctx["event_id"]


async def test_a_failed_commit_is_retried_on_the_next_tick() -> None:
    h = Harness()
    h.consumer.fail_next_commit_with = CommitFailedError("rebalancing")
    h.send(0)
    with capture_logs() as logs:
        await h.until(lambda: h.committed() == 1)
    await h.finish()
    assert any(e["event"] == "commit_failed" for e in logs)


async def test_a_full_buffer_stops_draining_the_partition_until_it_has_room() -> None:
    """Back-pressure: the loop leaves a full partition's records in the consumer instead of pausing."""
    h = Harness(settings={"buffer_per_partition": 4, "max_records": 10, "max_in_flight_per_partition": 2})
    h.handler.gate = asyncio.Event()
    for i in range(30):
        h.send(i)
    tp = TopicPartition(SRC, 0)
    await h.until(lambda: len(h.handler.seen) == 2)  # the two key slots are taken
    polls = h.consumer.polls
    await h.until(lambda: h.consumer.polls > polls + 5)  # the loop keeps polling (max.poll.interval)...
    assert h.consumer.positions[tp] == 10  # ...but took no more of the full partition
    assert tp not in h.consumer.paused()
    h.handler.gate.set()
    await h.until(lambda: h.committed() == 30)
    await h.finish()


async def test_when_every_partition_is_full_they_are_paused_and_polling_goes_on() -> None:
    h = Harness(delays=(), settings={"buffer_per_partition": 4, "max_records": 10})
    h.handler.gate = asyncio.Event()
    for i in range(30):
        h.send(i)
    tp = TopicPartition(SRC, 0)
    await h.until(lambda: tp in h.consumer.paused())
    polls = h.consumer.polls
    await h.until(lambda: h.consumer.polls > polls + 3)
    assert h.consumer.positions[tp] == 10
    h.handler.gate.set()
    await h.until(lambda: h.committed() == 30)
    await h.finish()
    assert tp not in h.consumer.paused()


# --- failures --------------------------------------------------------------------------------


async def test_transient_error_is_retried_in_place_with_backoff_then_succeeds() -> None:
    h = Harness()
    h.handler.fail["8010"] = [UpstreamUnavailable("blip"), UpstreamUnavailable("blip")]
    h.send(0)
    await h.until(lambda: h.committed() == 1)
    await h.finish()
    assert [a for _, _, a in h.handler.seen] == [1, 2, 3]
    assert len(h.clock.sleeps) == 2  # injected sleep: instant
    assert h.producer.records == []
    assert h.worker.metrics.topic(SRC).retried_in_place == 2


async def test_a_key_backing_off_in_place_holds_only_itself() -> None:
    """The key that retries waits (its later records queue behind it, in order); the partition is not
    paused and other keys are handled meanwhile; nothing is committed past the waiting record."""
    h = Harness(settings={"max_in_flight_per_partition": 8})
    backoff = asyncio.Event()
    real_sleep = h.clock.sleep
    paused_during_sleep: list[bool] = []

    async def held_sleep(seconds: float) -> None:
        paused_during_sleep.append(TopicPartition(SRC, 0) in h.consumer.paused())
        await backoff.wait()
        await real_sleep(seconds)

    h.worker.dispatcher.lanes.sleep = held_sleep
    h.handler.fail["8010"] = [UpstreamUnavailable("blip")]
    h.send(0)
    h.send(0)  # the same key again: waits behind the first
    h.send(1)
    h.send(2)
    await h.until(lambda: h.handler.ids().count("8011") == 1 and h.handler.ids().count("8012") == 1)
    await asyncio.sleep(0.02)  # several commit ticks pass
    assert h.handler.ids() == ["8010", "8011", "8012"]  # the second 8010 waits for the first
    # offset 0 is not done: the commit stays at it, carrying the offsets done after it for the next owner
    assert h.committed() == 0
    assert done_ahead.decode(0, h.consumer.metadata[TopicPartition(SRC, 0)]) == {2, 3}
    assert paused_during_sleep == [False]
    backoff.set()
    await h.until(lambda: h.committed() == 4)
    await h.finish()
    assert [(i, off) for i, off, _ in h.handler.seen if i == "8010"] == [("8010", 0), ("8010", 0), ("8010", 1)]


async def test_retry_after_is_honoured_in_place() -> None:
    h = Harness()
    h.handler.fail["8010"] = [RateLimited("429", retry_after=2.5)]
    h.send(0)
    await h.until(lambda: h.committed() == 1)
    await h.finish()
    assert h.clock.sleeps == [2.5]


async def test_exhausted_transient_moves_along_the_retry_tiers_then_to_the_dead_letter() -> None:
    """Same group consumes its retry tiers; provenance keeps pointing at the source record."""
    h = Harness(attempts=2)
    h.handler.fail["8010"] = [UpstreamUnavailable(f"down {i}") for i in range(6)]
    h.send(0)
    await h.until(lambda: len(h.producer.on(DLQ)) == 1)
    await h.until(lambda: h.committed(RETRY2) == 1)
    await h.finish()
    retry1, retry2, dead = h.on(RETRY1)[0], h.on(RETRY2)[0], h.on(DLQ)[0]
    assert retry1[fh.RETRY_TIER] == b"1" and retry2[fh.RETRY_TIER] == b"2"
    assert int(retry1[fh.NOT_BEFORE]) >= 1_700_000_000_000 + 5_000
    for h_ in (retry1, retry2, dead):
        assert h_[fh.SOURCE_TOPIC] == SRC.encode() and h_[fh.SOURCE_OFFSET] == b"0"
    assert (retry1[fh.ATTEMPTS], retry2[fh.ATTEMPTS], dead[fh.ATTEMPTS]) == (b"2", b"4", b"6")
    assert dead[fh.FIRST_FAILED_AT] == retry1[fh.FIRST_FAILED_AT]
    assert dead[fh.ERROR_MESSAGE] == b"down 5" and fh.NOT_BEFORE not in dead
    assert [a for _, _, a in h.handler.seen] == [1, 2, 3, 4, 5, 6]
    assert h.committed() == 1 and h.committed(RETRY1) == 1
    # each tier waited for its retry_not_before (fake clock): 5 s then 30 s
    assert pytest.approx(5.0, abs=0.5) in h.clock.sleeps and pytest.approx(30.0, abs=0.5) in h.clock.sleeps


async def test_a_retry_tier_record_is_not_handled_before_its_not_before() -> None:
    h = Harness()
    handled_at: list[float] = []
    h.handler.on_call = lambda: handled_at.append(h.clock.now)
    due_ms = int((h.clock.now + 42) * 1000)
    h.consumer.append_event(RETRY1, order(0))
    rec = h.consumer.logs[TopicPartition(RETRY1, 0)][0]
    rec.headers = (*rec.headers, (fh.NOT_BEFORE, str(due_ms).encode()), (fh.RETRY_TIER, b"1"))
    await h.until(lambda: h.committed(RETRY1) == 1)
    await h.finish()
    assert handled_at and handled_at[0] * 1000 >= due_ms


async def test_permanent_error_goes_straight_to_the_dead_letter_byte_for_byte() -> None:
    h = Harness(partitions=4)
    h.handler.fail["8010"] = [MappingMissing("no product mapping for SKU-1")]
    h.send(0, partition=2, correlationid="c-9")
    await h.until(lambda: h.committed(SRC, 2) == 1)
    await h.finish()
    ((key, value, headers),) = h.producer.on(DLQ)
    src = h.consumer.logs[TopicPartition(SRC, 2)][0]
    assert key == src.key and value == src.value
    assert headers[: len(src.headers)] == list(src.headers)
    h_ = dict(headers)
    assert h_[fh.ERROR_CLASS] == b"events.errors.MappingMissing"
    assert h_[fh.ERROR_CODE] == b"MAPPING_MISSING"
    assert h_[fh.ERROR_STAGE] == b"handle" and h_[fh.ATTEMPTS] == b"1"
    assert h_[fh.SOURCE_PARTITION] == b"2"
    assert h.producer.partitions == [2]  # same partition as the source (mod 4)
    assert len(h.handler.seen) == 1  # never retried


@pytest.mark.parametrize(
    ("value", "headers", "stage", "message"),
    [
        (b"{}", [("ce_id", b"1")], "decode", "not a CloudEvents binary record"),
        (b"not json", None, "decode", "record value is not JSON"),
        (b"[1, 2]", None, "decode", "record value must be a JSON object"),
        (b'{"sf_order_id": 5}', None, "validate", "fleet.order.changed.v1: sf_order_id"),
        (b"{}", "unknown", "decode", "no model for event type"),
    ],
)
async def test_undecodable_records_are_dead_lettered_with_their_stage(
    value: bytes, headers: Any, stage: str, message: str
) -> None:
    h = Harness()
    good = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"x-1"),
        ("ce_source", b"/t"),
        ("ce_type", b"fleet.order.changed.v1"),
    ]
    if headers == "unknown":
        headers = [*good[:3], ("ce_type", b"fleet.nobody.knows.v1")]
    h.consumer.append(SRC, value, key=b"k", headers=headers if headers is not None else good)
    h.send(1)
    await h.until(lambda: h.committed() == 2)
    await h.finish()
    ((_, dead_value, dead_headers),) = h.producer.on(DLQ)
    d = dict(dead_headers)
    assert dead_value == value
    assert d[fh.ERROR_STAGE] == stage.encode() and d[fh.ATTEMPTS] == b"0"
    assert message in d[fh.ERROR_MESSAGE].decode()
    assert d[fh.ERROR_CLASS].startswith(b"events.errors.")
    assert h.handler.ids() == ["8011"]  # the next record was not held up


async def test_a_replayed_dead_letter_that_fails_permanently_returns_with_its_replay_count() -> None:
    """What `fleet dlq replay` sends: the DLQ copy on retry.1, not_before=now, replay_count+1."""
    h = Harness()
    h.handler.fail["8010"] = [InvalidPayload("still wrong")]
    h.send(0)
    src = h.consumer.logs[TopicPartition(SRC, 0)][0]
    provenance = [
        (fh.SOURCE_TOPIC, SRC.encode()),
        (fh.SOURCE_PARTITION, b"0"),
        (fh.SOURCE_OFFSET, b"0"),
        (fh.SOURCE_TIMESTAMP, str(src.timestamp).encode()),
        (fh.SOURCE_GROUP, GROUP.encode()),
        (fh.ATTEMPTS, b"3"),
        (fh.FIRST_FAILED_AT, b"2025-01-01T00:00:00.000Z"),
        (fh.REPLAY_COUNT, b"1"),
        (fh.REPLAY_JOB, b"job-1"),
        (fh.NOT_BEFORE, str(int(h.clock.now * 1000)).encode()),
    ]
    h.consumer.logs[TopicPartition(SRC, 0)].clear()
    h.consumer.append(RETRY1, src.value, key=src.key, headers=[*src.headers, *provenance])
    await h.until(lambda: h.committed(RETRY1) == 1)
    await h.finish()
    assert h.handler.seen[0][2] == 4  # attempts accumulate across replays
    d = h.on(DLQ)[0]
    assert d[fh.REPLAY_COUNT] == b"1" and d[fh.REPLAY_JOB] == b"job-1"
    assert d[fh.ATTEMPTS] == b"4" and d[fh.FIRST_FAILED_AT] == b"2025-01-01T00:00:00.000Z"
    assert d[fh.SOURCE_TOPIC] == SRC.encode()


async def test_a_failure_copy_is_produced_before_the_original_is_acknowledged() -> None:
    from events.errors import DependencyUnavailable

    h = Harness()
    h.handler.fail["8010"] = [InvalidPayload("bad")]
    h.producer.fail_next_with = DependencyUnavailable("kafka down", upstream="kafka")
    h.send(0)
    await h.until(lambda: h.committed() == 1)
    await h.finish()
    assert len(h.producer.on(DLQ)) == 1
    assert h.clock.sleeps  # waited (paused) before producing again


async def test_without_dead_letters_a_transient_failure_blocks_and_a_permanent_one_is_dropped() -> None:
    h = Harness(dead_letter=False, attempts=2)
    h.handler.fail["8010"] = [UpstreamUnavailable("down")] * 5
    h.handler.fail["8011"] = [InvalidPayload("bad")]
    h.send(0)
    h.send(1)
    with capture_logs() as logs:
        await h.until(lambda: h.committed() == 2)
    await h.finish()
    assert h.producer.records == []
    assert h.handler.ids().count("8010") == 6  # never skipped: retried until it worked
    assert any(e["event"] == "record_dropped" for e in logs)
    assert RETRY1 not in h.worker.topics


# --- shutdown and rebalance ------------------------------------------------------------------


async def test_shutdown_lets_the_in_flight_record_finish_and_commits_it() -> None:
    h = Harness(settings={"max_in_flight_per_partition": 1})
    h.handler.gate = asyncio.Event()
    h.send(0)
    h.send(1)
    await h.until(lambda: len(h.handler.seen) == 1)
    h.stop.set()
    # the worker has begun its shutdown (its partitions stop in the same step), not a 10 ms sleep:
    # on a loaded machine the poll loop may not have seen ``stop`` by then
    await h.until(lambda: h.worker.vitals.stopping)
    h.handler.gate.set()
    assert h.task is not None
    await asyncio.wait_for(h.task, 2)
    assert h.committed() == 1  # the in-flight one, not the buffered one behind it
    assert h.handler.ids() == ["8010"]
    assert h.producer.records == []


async def test_shutdown_past_the_grace_cancels_without_dead_lettering_or_committing() -> None:
    h = Harness(settings={"shutdown_grace_s": 0.05})
    h.handler.gate = asyncio.Event()  # never opened
    h.send(0)
    await h.until(lambda: len(h.handler.seen) == 1)
    with capture_logs() as logs:
        await h.finish()
    assert h.committed() is None
    assert h.producer.records == []
    assert any(e["event"] == "in_flight_abandoned" for e in logs)


async def test_shutdown_during_a_backoff_abandons_the_record_uncommitted() -> None:
    h = Harness()
    h.handler.fail["8010"] = [UpstreamUnavailable("down")] * 10
    never = asyncio.Event()

    async def slow_sleep(seconds: float) -> None:
        await never.wait()

    h.worker.dispatcher.lanes.sleep = slow_sleep
    h.send(0)
    await h.until(lambda: len(h.handler.seen) == 1)
    await asyncio.sleep(0.01)
    await h.finish()
    assert h.committed() is None and h.producer.records == []


async def test_revocation_leaves_queued_records_and_the_next_owner_skips_what_was_done_ahead() -> None:
    """Revocation lets the busy key finish its record, not the ones queued behind it: the commit
    stops at the first record left, and carries the later record of another key that is done, so
    the next owner handles the one left and skips the one done."""
    h = Harness(partitions=2, settings={"commit_interval_s": 3600.0, "max_in_flight_per_partition": 8})
    h.handler.gate = asyncio.Event()
    h.send("a", partition=0)
    h.send("a", partition=0)  # queued behind the first
    h.send("b", partition=0)
    await h.until(lambda: sorted(h.handler.ids()) == ["801a", "801b"])
    rebalance = asyncio.create_task(h.consumer.rebalance([TopicPartition(SRC, 1)]))
    await asyncio.sleep(0.01)
    assert not rebalance.done()
    h.handler.gate.set()
    await asyncio.wait_for(rebalance, 2)
    assert h.committed(SRC, 0) == 1
    assert done_ahead.decode(1, h.consumer.metadata[TopicPartition(SRC, 0)]) == {2}
    assert sorted(off for _, off, _ in h.handler.seen) == [0, 2]
    await h.consumer.rebalance([TopicPartition(SRC, 0), TopicPartition(SRC, 1)])  # back, as a new owner
    await h.until(lambda: h.worker.metrics.topic(SRC).skipped == 1)
    await h.finish()
    assert h.committed(SRC, 0) == 3
    assert sorted(off for _, off, _ in h.handler.seen) == [0, 1, 2]  # offset 2 not delivered again
    assert h.worker.metrics.topic(SRC).skipped == 1


async def test_revocation_waits_for_in_flight_work_and_commits_before_giving_partitions_up() -> None:
    h = Harness(partitions=2, settings={"commit_interval_s": 3600.0, "max_in_flight_per_partition": 1})
    h.handler.gate = asyncio.Event()
    for i in range(3):
        h.send(f"a{i}", partition=0)  # three keys, one slot: the later two wait in the buffer
    await h.until(lambda: len(h.handler.seen) == 1)
    rebalance = asyncio.create_task(h.consumer.rebalance([TopicPartition(SRC, 1)]))
    await asyncio.sleep(0.01)
    assert not rebalance.done()  # waiting for the in-flight record
    h.handler.gate.set()
    await asyncio.wait_for(rebalance, 2)
    assert h.committed(SRC, 0) == 1  # the in-flight one finished and was committed at revocation
    assert h.handler.ids() == ["801a0"]  # the buffered ones were left to the next owner
    await h.finish()


async def test_reassigned_partition_restarts_from_the_committed_offset() -> None:
    h = Harness(settings={"commit_interval_s": 3600.0})
    h.send(0)
    await h.until(lambda: len(h.handler.seen) == 1)
    await h.consumer.rebalance([TopicPartition(SRC, 0)])
    h.send(1)
    await h.until(lambda: len(h.handler.seen) == 2)
    await h.finish()
    assert h.handler.ids() == ["8010", "8011"]
    assert h.committed() == 2


# --- circuit breaker -------------------------------------------------------------------------


async def test_a_systemic_outage_trips_the_breaker_instead_of_moving_records() -> None:
    h = Harness(attempts=1, delays=(), breaker=BreakerSettings(window=10, min_outcomes=5, cooldown_s=60))
    for i in range(8):
        if i < 5:  # the outage ends after the fifth record's first attempt
            h.handler.fail[f"801{i}"] = [UpstreamUnavailable("whmcs down")]
        h.send(i)
    with capture_logs() as logs:
        await h.until(lambda: h.committed() == 8, timeout=5)
    await h.finish()
    # four were dead-lettered before the window filled; the fifth tripped the breaker, was held,
    # retried as the half-open trial after the cool-down, succeeded and closed the breaker
    assert [k for k, _, _ in h.producer.on(DLQ)] == [b"8010", b"8011", b"8012", b"8013"]
    assert h.handler.ids().count("8014") == 2  # failed, held (not moved), then the successful trial
    assert h.worker.breaker.trips == 1 and h.worker.breaker.closed
    assert 60.0 in [round(s) for s in h.clock.sleeps]
    events = [e["event"] for e in logs]
    assert "circuit_breaker_opened" in events and "record_held_by_breaker" in events
    assert "circuit_breaker_closed" in events


async def test_a_run_of_poison_messages_is_dead_lettered_without_tripping_the_breaker() -> None:
    """Record-specific permanent errors say nothing about the environment: no hold, no pause."""
    h = Harness(attempts=1, delays=(), breaker=BreakerSettings(window=10, min_outcomes=5, cooldown_s=60))
    for i in range(8):
        h.handler.fail[f"801{i}"] = [RejectedByUpstream("ENTITY_IS_DELETED")]
        h.send(i)
    await h.until(lambda: h.committed() == 8, timeout=5)
    await h.finish()
    assert len(h.producer.on(DLQ)) == 8
    assert h.worker.breaker.trips == 0 and h.worker.breaker.closed


async def test_an_open_breaker_pauses_every_partition() -> None:
    h = Harness(attempts=1, partitions=2, breaker=BreakerSettings(window=4, min_outcomes=1, cooldown_s=60))
    hold = asyncio.Event()

    async def held_sleep(seconds: float) -> None:
        await hold.wait()

    h.worker.breaker._sleep = held_sleep
    h.handler.fail["8010"] = [UpstreamUnavailable("down")] * 3
    h.handler.fail["8011"] = [UpstreamUnavailable("down")] * 3
    h.send(0, partition=0)
    h.send(1, partition=1)
    await h.until(lambda: not h.worker.breaker.closed)
    await h.until(lambda: h.consumer.paused() == h.consumer.assignment())
    assert h.producer.records == []
    health = h.worker.metrics.snapshot()
    assert health.breaker_state == 1
    hold.set()
    await h.finish()


# --- health and metrics ----------------------------------------------------------------------


async def test_health_endpoints_and_metrics() -> None:
    h = Harness()
    h.handler.fail["8011"] = [InvalidPayload("bad")]
    async with HealthServer(h.worker, "127.0.0.1", 0) as server:
        assert server.port
        base = f"http://127.0.0.1:{server.port}"
        async with ClientSession() as http:
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 503 and (await r.json())["reason"] == "consumer not started"
            for i in range(3):
                h.send(i)
            await h.until(lambda: h.committed() == 3)
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 200
            async with http.get(f"{base}/livez") as r:
                assert r.status == 200 and (await r.json())["status"] == "ok"
            async with http.get(f"{base}/metrics") as r:
                text = await r.text()
            await h.finish()
    labels = f'group="{GROUP}",topic="{SRC}"'
    assert f"fleet_records_consumed_total{{{labels}}} 3.0" in text
    assert f"fleet_records_processed_total{{{labels}}} 2.0" in text
    assert f"fleet_records_dead_lettered_total{{{labels}}} 1.0" in text
    assert f"fleet_handler_duration_seconds_count{{{labels}}} 3.0" in text
    assert f'fleet_consumer_lag{{group="{GROUP}",partition="0",topic="{SRC}"}} 0.0' in text
    assert f'fleet_consumer_fetch_lag{{group="{GROUP}",partition="0",topic="{SRC}"}} 0.0' in text
    assert f'fleet_circuit_breaker_state{{group="{GROUP}"}} 0.0' in text
    assert "fleet_last_commit_age_seconds" in text and "fleet_records_in_flight" in text


async def test_liveness_fails_with_a_reason_when_a_handler_is_stuck() -> None:
    h = Harness(settings={"liveness_timeout_s": 0.02})
    h.handler.gate = asyncio.Event()
    h.send(0)
    await h.until(lambda: len(h.handler.seen) == 1)
    await asyncio.sleep(0.05)
    ok, reason = h.worker.liveness()
    assert not ok and "busy for" in reason
    h.handler.gate.set()
    await h.finish()
    body = json.dumps({"ok": ok})
    assert body


async def test_inbox_purge_runs_on_schedule_when_a_pool_is_given() -> None:
    calls: list[tuple[Any, ...]] = []

    class Pool:
        async def execute(self, *args: Any) -> str:
            calls.append(args)
            return "DELETE 0"

    h = Harness()
    h.worker._pool = Pool()  # type: ignore[assignment]
    h.send(0)
    await h.until(lambda: bool(calls))
    await h.finish()
    assert "DELETE FROM inbox" in calls[0][0]


async def test_lag_counts_what_is_not_done_and_what_is_not_fetched() -> None:
    h = Harness(settings={"buffer_per_partition": 2, "max_records": 2, "max_in_flight_per_partition": 1})
    h.handler.gate = asyncio.Event()
    for i in range(6):
        h.send(i)
    await h.until(lambda: len(h.handler.seen) == 1)
    (gauge,) = [p for p in h.worker.metrics.snapshot().partitions if p.topic == SRC]
    assert gauge.lag == 6  # nothing done yet
    assert gauge.fetch_lag == 4  # two fetched (the full buffer stops the rest)
    assert gauge.in_flight == 1 and gauge.buffered == 2
    h.handler.gate.set()
    await h.until(lambda: h.committed() == 6)
    await h.finish()


async def test_a_half_open_trial_cancelled_by_shutdown_hands_its_permit_on() -> None:
    """Otherwise every partition would wait for a trial outcome that never comes."""
    h = Harness(breaker=BreakerSettings(window=4, min_outcomes=1, cooldown_s=5), settings={"shutdown_grace_s": 0.05})
    for _ in range(4):
        h.worker.breaker.record_failure("events.errors.UpstreamUnavailable")  # an outage seen elsewhere
    h.handler.gate = asyncio.Event()  # the trial record hangs
    h.send(0)
    await h.until(lambda: len(h.handler.seen) == 1)
    assert h.worker.breaker.state.name == "HALF_OPEN"
    await h.finish()
    assert h.committed() is None and h.producer.records == []
    assert await asyncio.wait_for(h.worker.breaker.admit(), 1) is True  # the permit is free again


# --- the hot path's shortcuts keep their promises ----------------------------------------------


async def test_a_handler_log_line_carries_the_record_context_and_explicit_keys_win() -> None:
    """One context variable per record (workers.logs.merge_record_context) renders the same keys the
    five structlog context variables did; keys passed in the call and other bound keys still show."""
    import io

    import structlog

    from workers.logs import configure_logging

    out = io.StringIO()
    configure_logging("INFO", "json", [], stream=out)
    h = Harness()

    async def handler(event: OrderChanged, msg: Message) -> None:
        with structlog.contextvars.bound_contextvars(order_id=event.sf_order_id):
            structlog.get_logger("handler").info("handled", partition="explicit")

    h.route = Route("test", GROUP, (SRC,), {OrderChanged: handler})
    h.worker = Worker(h.route, h.consumer, h.producer, RuntimeSettings(poll_timeout_ms=2))
    h.send(1, correlationid="corr-1")
    h.send(2)
    await h.until(lambda: h.committed() == 2)
    await h.finish()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    handled = [line for line in lines if line["event"] == "handled"]
    assert [(line["offset"], line["key"], line["order_id"]) for line in handled] == [
        (0, "8011", "8011"),
        (1, "8012", "8012"),
    ]
    first, second = handled
    assert first["topic"] == SRC and first["partition"] == "explicit"
    assert first["event_type"] == "fleet.order.changed.v1" and first["correlation_id"] == "corr-1"
    assert first["event_id"] and first["event_id"] != second["event_id"]
    assert second["correlation_id"] is None  # not the previous record's


async def test_an_undecodable_record_is_logged_under_its_own_context() -> None:
    import io

    from workers.logs import configure_logging

    out = io.StringIO()
    configure_logging("INFO", "json", [], stream=out)
    h = Harness()
    h.send(1, correlationid="corr-1")
    good = list(h.consumer.logs[TopicPartition(SRC, 0)][0].headers)
    bad = [(k, b"evt-bad" if k == "ce_id" else v) for k, v in good]
    h.consumer.append(SRC, b"not json", key=b"bad-key", headers=bad)
    await h.until(lambda: h.committed() == 2)
    await h.finish()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    (undecodable,) = [line for line in lines if line["event"] == "record_undecodable"]
    assert (undecodable["offset"], undecodable["event_id"], undecodable["key"]) == (1, "evt-bad", "bad-key")
    assert undecodable["topic"] == SRC and undecodable["partition"] == 0


async def test_a_full_buffer_shortens_the_poll_so_the_partition_never_runs_dry() -> None:
    """A partition over its buffer limit is not polled; the poll of the others (here the idle retry
    tiers) must not then wait the whole poll timeout, or the partition's task works through its buffer
    and idles until that poll returns, while more of its records wait in the consumer."""
    h = Harness(settings={"buffer_per_partition": 2, "poll_timeout_ms": 2_000, "max_records": 5})
    for i in range(20):
        h.send(i)
    # four fetches of five records, each filling the buffer: without the short poll, 2 s per fetch
    await h.until(lambda: len(h.handler.seen) == 20, timeout=1.0)
    await h.finish()
    assert h.committed() == 20


# --- keys in flight: the worker's cap ---------------------------------------------------------------


async def test_the_worker_cap_bounds_keys_in_flight_over_all_partitions() -> None:
    """Eight keys may run per partition, but three at most in the whole worker: the others wait
    (in offset order on their partition) until a key ends anywhere."""
    h = Harness(partitions=2, settings={"max_in_flight_per_partition": 8, "max_in_flight": 3})
    h.handler.gate = asyncio.Event()
    for i in range(4):
        h.send(f"a{i}", partition=0)
        h.send(f"b{i}", partition=1)
    await h.until(lambda: len(h.handler.seen) == 3)
    await asyncio.sleep(0.02)  # many loop turns: nobody else starts
    assert len(h.handler.seen) == 3
    h.handler.gate.set()
    await h.until(lambda: h.committed(SRC, 0) == 4 and h.committed(SRC, 1) == 4)
    await h.finish()
    assert sorted(h.handler.ids()) == sorted([f"801a{i}" for i in range(4)] + [f"801b{i}" for i in range(4)])


def test_a_worker_with_a_pool_holds_fewer_keys_than_the_pool_has_connections() -> None:
    class Pool:
        def get_max_size(self) -> int:
            return 4

    def cap(pool: Any, **settings: Any) -> int:
        worker = Worker(
            Route("t", GROUP, (SRC,), {OrderChanged: Recorder()}),
            FakeConsumer({SRC: 1}),
            LoopbackProducer(),
            RuntimeSettings(**settings),
            pool=pool,
        )
        return worker.dispatcher.worker_limit

    assert cap(Pool(), max_in_flight=64) == 3  # a handler may hold one connection and take a second
    assert cap(Pool(), max_in_flight=2) == 2
    assert cap(None, max_in_flight=64) == 64


async def test_a_partition_whose_done_ahead_offsets_cannot_be_read_is_handled_all_the_same() -> None:
    """Reading the commit metadata on assignment may fail (or the rebalance callback be cancelled):
    the partition's task starts anyway, and only the skip is lost (redelivery, never a stuck partition)."""
    h = Harness()

    async def broken(partitions: Any) -> dict[Any, Any]:
        raise RuntimeError("coordinator gone")

    h.consumer.committed_metadata = broken  # type: ignore[method-assign]
    for i in range(3):
        h.send(i)
    with capture_logs() as logs:
        await h.until(lambda: h.committed() == 3)
    await h.finish()
    assert any(e["event"] == "done_ahead_unread" for e in logs)
