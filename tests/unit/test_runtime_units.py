"""The runtime's pure parts: offset tracking, retry decisions, failure headers, the circuit breaker."""

from __future__ import annotations

import asyncio
import traceback

import pytest

from events import failure as fh
from events.errors import InvalidPayload, RateLimited, RejectedByUpstream, UpstreamUnavailable
from workers.config import BreakerSettings
from workers.runtime.breaker import CircuitBreaker, State
from workers.runtime.failure import (
    FailedRecord,
    FailureInfo,
    dead_letter_headers,
    original_headers,
    retry_record_headers,
    target_partition,
)
from workers.runtime.offsets import OffsetTracker
from workers.runtime.policy import Backoff, RetryPolicy, Verdict
from workers.runtime.testing import FakeClock

# --- offsets ---------------------------------------------------------------------------------


def test_records_finished_in_order_without_being_started_cost_no_bookkeeping() -> None:
    t = OffsetTracker()
    t.finish(5)
    t.finish(6)
    assert t.committable == 7
    assert t.pending == 0
    assert t.first_not_done is None


def test_out_of_order_completion_waits_for_the_gap_to_close() -> None:
    """A later record done first moves nothing: committing it would skip the earlier one on a crash."""
    t = OffsetTracker()
    for offset in (0, 1):
        t.start(offset)  # in flight
    t.finish(2)  # finished at once while 0 and 1 are in flight
    t.finish(3)
    assert t.committable is None
    assert t.first_not_done == 0
    t.finish(0)
    assert t.committable == 1
    t.finish(1)
    assert t.committable == 4
    assert t.pending == 0


def test_offsets_with_gaps_commit_one_past_the_last_done() -> None:
    """Compaction and transaction markers leave holes; the tracker follows what it was given."""
    t = OffsetTracker()
    t.start(10)
    t.finish(13)
    assert t.committable is None
    t.finish(10)
    assert t.committable == 14
    t.finish(20)
    assert t.committable == 21
    t.mark_committed(21)
    assert t.committed == 21


# --- policy ----------------------------------------------------------------------------------


def policy(**kw: object) -> RetryPolicy:
    options: dict[str, object] = {
        "attempts": 3,
        "backoff_initial_s": 0.2,
        "backoff_max_s": 5.0,
        "tier_delays_ms": (5_000, 30_000),
    }
    options.update(kw)
    return RetryPolicy(**options)  # type: ignore[arg-type]


def test_permanent_errors_skip_every_retry_tier() -> None:
    assert policy().decide(InvalidPayload("bad"), tier=0).verdict is Verdict.DEAD_LETTER
    assert policy().decide(RejectedByUpstream("no"), tier=1).verdict is Verdict.DEAD_LETTER


def test_transient_errors_climb_the_tiers_then_dead_letter() -> None:
    p = policy()
    first = p.decide(UpstreamUnavailable("down"), tier=0)
    assert (first.verdict, first.tier, first.delay_s) == (Verdict.RETRY_TOPIC, 1, 5.0)
    second = p.decide(UpstreamUnavailable("down"), tier=1)
    assert (second.verdict, second.tier, second.delay_s) == (Verdict.RETRY_TOPIC, 2, 30.0)
    assert p.decide(UpstreamUnavailable("down"), tier=2).verdict is Verdict.DEAD_LETTER


def test_unclassified_exceptions_count_as_transient() -> None:
    assert policy().decide(KeyError("x"), tier=0).verdict is Verdict.RETRY_TOPIC


def test_retry_after_longer_than_the_tier_delay_wins() -> None:
    decision = policy().decide(RateLimited("slow down", retry_after=120), tier=0)
    assert decision.delay_s == 120


def test_without_dead_letters_transient_blocks_and_permanent_drops() -> None:
    p = policy(dead_letter=False, tier_delays_ms=())
    assert p.decide(UpstreamUnavailable("down"), tier=0).verdict is Verdict.BLOCK
    assert p.decide(InvalidPayload("bad"), tier=0).verdict is Verdict.DROP


async def test_in_place_attempts_back_off_with_jitter_and_stop_at_the_limit() -> None:
    clock = FakeClock()
    calls: list[int] = []

    async def call(n: int) -> None:
        calls.append(n)
        raise UpstreamUnavailable("down")

    error, made = await policy().run_in_place(call, UpstreamUnavailable("first"), sleep=clock.sleep)
    assert isinstance(error, UpstreamUnavailable)
    assert made == 3 and calls == [2, 3]
    assert len(clock.sleeps) == 2
    assert 0.2 <= clock.sleeps[0] <= 0.4 and 0.4 <= clock.sleeps[1] <= 0.6  # initial*2^(n-1) + jitter


def test_the_back_off_doubles_from_initial_adds_at_most_the_jitter_and_stops_at_the_cap() -> None:
    backoff = Backoff(initial_s=0.2, max_s=5.0, jitter_s=0.2)
    no_jitter, full_jitter = (lambda lo, hi: lo), (lambda lo, hi: hi)
    assert [backoff.delay_s(n, uniform=no_jitter) for n in (1, 2, 3, 4)] == pytest.approx([0.2, 0.4, 0.8, 1.6])
    assert backoff.delay_s(1, uniform=full_jitter) == pytest.approx(0.4)
    assert backoff.delay_s(6, uniform=no_jitter) == 5.0  # 6.4 capped
    assert backoff.delay_s(100_000) == 5.0  # past float range: the cap, not an OverflowError
    assert all(0.2 <= backoff.delay_s(1) <= 0.4 for _ in range(200))


def test_the_policy_backs_off_with_the_settings_jitter_and_a_floor_on_the_first_wait() -> None:
    assert policy().backoff == Backoff(initial_s=0.2, max_s=5.0, jitter_s=0.2)
    assert policy(backoff_initial_s=0.0).backoff == Backoff(initial_s=1e-3, max_s=5.0, jitter_s=0.0)


async def test_each_wait_in_place_is_announced_with_the_failed_attempt_and_its_length() -> None:
    clock = FakeClock()
    told: list[tuple[str, int, float]] = []

    async def call(n: int) -> None:
        raise UpstreamUnavailable(f"down {n}")

    await policy().run_in_place(
        call, UpstreamUnavailable("down 1"), sleep=clock.sleep, on_retry=lambda e, n, w: told.append((str(e), n, w))
    )
    assert [(e, n) for e, n, _ in told] == [("down 1", 1), ("down 2", 2)]
    assert [w for _, _, w in told] == clock.sleeps


async def test_in_place_success_after_a_transient_error() -> None:
    clock = FakeClock()

    async def call(n: int) -> None:
        return None

    error, made = await policy().run_in_place(call, UpstreamUnavailable("blip"), sleep=clock.sleep)
    assert error is None and made == 2


async def test_retry_after_is_the_in_place_wait_when_short() -> None:
    clock = FakeClock()

    async def call(n: int) -> None:
        return None

    await policy().run_in_place(call, RateLimited("429", retry_after=1.5), sleep=clock.sleep)
    assert clock.sleeps == [1.5]


async def test_retry_after_beyond_the_in_place_cap_stops_waiting_in_place() -> None:
    """A long Retry-After belongs on a retry topic: the partition moves on instead of holding."""
    clock = FakeClock()

    async def call(n: int) -> None:
        raise AssertionError("must not be called")

    error, made = await policy().run_in_place(call, RateLimited("429", retry_after=60), sleep=clock.sleep)
    assert isinstance(error, RateLimited) and made == 1 and clock.sleeps == []


async def test_permanent_error_is_not_retried_in_place() -> None:
    clock = FakeClock()

    async def call(n: int) -> None:
        raise AssertionError("must not be called")

    error, made = await policy().run_in_place(call, InvalidPayload("bad"), sleep=clock.sleep)
    assert isinstance(error, InvalidPayload) and made == 1


async def test_cancellation_propagates_and_is_never_retried() -> None:
    clock = FakeClock()

    async def call(n: int) -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await policy().run_in_place(call, UpstreamUnavailable("blip"), sleep=clock.sleep)


# --- failure headers -------------------------------------------------------------------------


def _raised(exc: Exception) -> Exception:
    try:
        raise exc
    except Exception as caught:
        return caught


SOURCE = FailedRecord(
    topic="sf.order.v1",
    partition=3,
    offset=42,
    timestamp=1_700_000_000_123,
    key=b"8015g00000000001AA",
    value=b'{"a":1}',
    headers=(("ce_id", b"id-1"), ("ce_type", b"t"), ("custom", b"\x00\xff")),
)


def test_dead_letter_headers_keep_the_original_ones_first_and_add_provenance() -> None:
    info = FailureInfo(_raised(RejectedByUpstream("no such product", code="E42")), "handle", 3, 100.0, 101.5)
    headers = dead_letter_headers(SOURCE, dict(SOURCE.headers), group="fleet.g", failure=info)
    assert headers[:3] == [("ce_id", b"id-1"), ("ce_type", b"t"), ("custom", b"\x00\xff")]
    h = dict(headers)
    assert h[fh.SOURCE_TOPIC] == b"sf.order.v1"
    assert h[fh.SOURCE_PARTITION] == b"3"
    assert h[fh.SOURCE_OFFSET] == b"42"
    assert h[fh.SOURCE_TIMESTAMP] == b"1700000000123"
    assert h[fh.SOURCE_GROUP] == b"fleet.g"
    assert h[fh.ATTEMPTS] == b"3"
    assert h[fh.ERROR_CLASS] == b"events.errors.RejectedByUpstream"
    assert h[fh.ERROR_CODE] == b"E42"
    assert h[fh.ERROR_MESSAGE] == b"no such product code=E42"
    assert b"RejectedByUpstream: no such product" in h[fh.ERROR_STACKTRACE]
    assert h[fh.ERROR_STAGE] == b"handle"
    assert h[fh.FIRST_FAILED_AT] == fh.iso_utc(100.0).encode() == b"1970-01-01T00:01:40.000Z"
    assert h[fh.LAST_FAILED_AT] == b"1970-01-01T00:01:41.500Z"
    assert h[fh.REPLAY_COUNT] == b"0"
    assert set(h) - {"ce_id", "ce_type", "custom"} == set(fh.PROVENANCE)


def test_a_record_failing_again_keeps_its_origin_and_accumulates_attempts() -> None:
    info1 = FailureInfo(_raised(UpstreamUnavailable("down")), "handle", 3, 100.0, 101.0)
    hop1 = retry_record_headers(SOURCE, dict(SOURCE.headers), group="g", failure=info1, tier=1, not_before_ms=106_000)
    on_retry = FailedRecord("g.retry.1", 0, 7, 1_700_000_999_000, SOURCE.key, SOURCE.value, hop1)
    info2 = FailureInfo(_raised(UpstreamUnavailable("still down")), "handle", 2, 200.0, 201.0)
    hop2 = dict(dead_letter_headers(on_retry, dict(hop1), group="g", failure=info2))
    assert hop2[fh.SOURCE_TOPIC] == b"sf.order.v1"
    assert hop2[fh.SOURCE_PARTITION] == b"3"
    assert hop2[fh.SOURCE_OFFSET] == b"42"
    assert hop2[fh.SOURCE_TIMESTAMP] == b"1700000000123"
    assert hop2[fh.ATTEMPTS] == b"5"
    assert hop2[fh.FIRST_FAILED_AT] == fh.iso_utc(100.0).encode()
    assert hop2[fh.LAST_FAILED_AT] == fh.iso_utc(201.0).encode()
    assert hop2[fh.ERROR_MESSAGE] == b"still down"
    assert fh.NOT_BEFORE not in hop2 and fh.RETRY_TIER not in hop2
    # the earlier hop's headers are replaced, never duplicated
    names = [n for n, _ in dead_letter_headers(on_retry, dict(hop1), group="g", failure=info2)]
    assert len(names) == len(set(names))


def test_a_replayed_dead_letter_keeps_its_replay_count_and_job() -> None:
    replayed = dict(SOURCE.headers) | {fh.REPLAY_COUNT: b"2", fh.REPLAY_JOB: b"job-7", fh.ATTEMPTS: b"4"}
    info = FailureInfo(_raised(InvalidPayload("bad")), "handle", 1, 1.0, 1.0)
    h = dict(dead_letter_headers(SOURCE, replayed, group="g", failure=info))
    assert h[fh.REPLAY_COUNT] == b"2" and h[fh.REPLAY_JOB] == b"job-7" and h[fh.ATTEMPTS] == b"5"


def test_retry_headers_schedule_the_tier() -> None:
    info = FailureInfo(_raised(UpstreamUnavailable("down")), "handle", 3, 1.0, 2.0)
    h = dict(retry_record_headers(SOURCE, dict(SOURCE.headers), group="g", failure=info, tier=2, not_before_ms=99))
    assert h[fh.RETRY_TIER] == b"2" and h[fh.NOT_BEFORE] == b"99"


def test_truncation_keeps_valid_utf8_and_the_useful_end() -> None:
    assert fh.truncate_head("é" * 10, 5).decode() == "éé"
    tail = fh.truncate_tail("x" * 100 + "KeyError: 'boom'", 30)
    assert len(tail) <= 30 and tail.startswith(b"...\n") and tail.endswith(b"KeyError: 'boom'")


def test_error_class_is_fully_qualified_except_builtins() -> None:
    assert fh.class_of(KeyError()) == "KeyError"
    assert fh.class_of(UpstreamUnavailable("x")) == "events.errors.UpstreamUnavailable"
    assert (fh.code_of(KeyError()), fh.code_of(UpstreamUnavailable("x"))) == (fh.UNCLASSIFIED, "UPSTREAM_UNAVAILABLE")


def test_target_partition_is_the_source_partition_modulo_the_target_count() -> None:
    assert target_partition({}, SOURCE, 2) == 1
    assert target_partition({fh.SOURCE_PARTITION: b"7"}, SOURCE, 4) == 3
    assert target_partition({}, SOURCE, None) is None


def test_original_headers_drop_only_fleet_failure_headers() -> None:
    headers = [("ce_id", b"1"), (fh.ATTEMPTS, b"3"), ("x", b"y"), (fh.NOT_BEFORE, b"5")]
    assert original_headers(headers) == [("ce_id", b"1"), ("x", b"y")]


def test_stack_trace_header_names_the_failing_frame() -> None:
    exc = _raised(ValueError("boom"))
    info = FailureInfo(exc, "handle", 1, 1.0, 1.0)
    h = dict(dead_letter_headers(SOURCE, {}, group="g", failure=info))
    assert h[fh.ERROR_STACKTRACE].decode().strip().endswith("ValueError: boom")
    assert "_raised" in h[fh.ERROR_STACKTRACE].decode()
    assert traceback  # imported for readers: the header is traceback.format_exception output


# --- circuit breaker -------------------------------------------------------------------------


def breaker(clock: FakeClock, **kw: object) -> CircuitBreaker:
    return CircuitBreaker(BreakerSettings(**kw), clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]


def test_breaker_needs_a_full_window_before_it_judges() -> None:
    b = breaker(FakeClock())
    assert not any(b.record_failure("E") for _ in range(9))
    assert b.record_failure("E") is True and b.state is State.OPEN and b.trips == 1


def test_a_poison_message_among_successes_does_not_trip_it() -> None:
    b = breaker(FakeClock())
    for i in range(40):
        if i % 4 == 0:
            assert b.record_failure("Poison") is False
        else:
            b.record_success()
    assert b.closed


def test_different_error_classes_do_not_add_up() -> None:
    b = breaker(FakeClock())
    for i in range(20):
        assert b.record_failure("A" if i % 2 else "B") is False
    assert b.closed


async def test_open_breaker_lets_one_trial_through_after_the_cooldown_and_closes_on_success() -> None:
    clock = FakeClock()
    b = breaker(clock, cooldown_s=30)
    for _ in range(10):
        b.record_failure("E")
    assert b.state is State.OPEN
    waiter = asyncio.create_task(b.admit())
    trial = await b.admit()
    assert trial is True and b.state is State.HALF_OPEN and clock.now >= 1_700_000_030
    await asyncio.sleep(0)
    assert not waiter.done()  # only one trial at a time
    b.record_success()
    assert b.closed
    assert await waiter is False


async def test_failed_trial_reopens_with_a_longer_cooldown() -> None:
    clock = FakeClock()
    b = breaker(clock, cooldown_s=10, max_cooldown_s=15)
    for _ in range(10):
        b.record_failure("E")
    assert await b.admit() is True
    assert b.record_failure("E") is True and b.state is State.OPEN
    start = clock.now
    assert await b.admit() is True
    assert clock.now - start == pytest.approx(15)  # doubled, capped
    assert b.trips == 1


async def test_released_trial_goes_to_the_next_waiter() -> None:
    clock = FakeClock()
    b = breaker(clock, cooldown_s=1)
    for _ in range(10):
        b.record_failure("E")
    assert await b.admit() is True
    waiter = asyncio.create_task(b.admit())
    await asyncio.sleep(0)
    b.release_trial()
    assert await waiter is True


# --- the hot path's helpers ------------------------------------------------------------------


def _good_headers() -> dict[str, bytes | None]:
    return {
        "ce_specversion": b"1.0",
        "ce_id": b"e-1",
        "ce_source": b"/test",
        "ce_type": b"fleet.order.changed.v1",
        "ce_time": b"2025-11-26T07:27:01.123Z",
        "content-type": b"application/json",
    }


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"content-type": None},
        {"ce_time": None},
        {"ce_time": b""},
        {"content-type": b"application/json; charset=utf-8"},
        {"ce_type": None},
        {"ce_type": b""},
        {"ce_id": b""},
        {"ce_source": None},
        {"ce_specversion": b"0.3"},
        {"content-type": b"text/plain"},
        {"ce_time": b"yesterday"},
        {"ce_time": b"2025-11-26\xff07:27:01"},  # any separator, even an undecodable byte
        {"ce_type": b"fleet.\xff"},
    ],
)
def test_the_fast_header_check_agrees_with_check_binary_headers(change: dict[str, bytes | None]) -> None:
    from events.envelope import binary_type, check_binary_headers

    h: dict[str, bytes | None] = {k: v for k, v in {**_good_headers(), **change}.items() if v is not None}
    raw = binary_type(h)
    try:
        expected: str | None = check_binary_headers(h)
    except InvalidPayload:
        expected = None
    assert (raw.decode("utf-8", "replace") if raw is not None else None) == expected


def test_the_record_context_processor_renders_the_record_keys_lazily() -> None:
    import contextvars

    contextvars.copy_context().run(_record_context_checks)  # nothing set here leaks into other tests


def _record_context_checks() -> None:
    import structlog

    from events.salesforce import OrderChanged
    from workers.logs import get_log_context, merge_record_context, set_record_context
    from workers.runtime.message import Message

    msg = Message(
        OrderChanged(sf_order_id="801"),
        "g",
        "t",
        2,
        7,
        0,
        b"801",
        b"{}",
        [],
        {"ce_id": b"e-1", "ce_correlationid": b"c-1"},
        OrderChanged.TYPE,
    )
    set_record_context(msg)
    structlog.contextvars.bind_contextvars(offset=-1, order_id="801")  # a stale bind of a record key
    event = merge_record_context(None, "info", {"event": "x", "key": "explicit"})
    assert event == {
        "event": "x",
        "key": "explicit",  # passed in the call: wins
        "topic": "t",
        "partition": 2,
        "offset": 7,
        "event_id": "e-1",
        "event_type": OrderChanged.TYPE,
        "correlation_id": "c-1",
    }
    merged = structlog.contextvars.merge_contextvars(None, "info", event)
    assert merged["offset"] == 7 and merged["order_id"] == "801"  # record beats stale; other binds kept
    assert get_log_context()["offset"] == 7 and get_log_context()["order_id"] == "801"
    set_record_context(None)
    assert merge_record_context(None, "info", {"event": "y"}) == {"event": "y"}


class _Ctx:
    def __init__(self, name: str) -> None:
        self.name = name

    def log_context(self) -> dict[str, str]:
        return {"record": self.name}


async def test_a_record_slot_is_updated_in_place_in_its_task_and_is_a_snapshot_elsewhere() -> None:
    import asyncio

    from workers.logs import get_log_context, open_record_slot, set_record_context

    async def consume_task(seen: list[object]) -> None:
        slot = open_record_slot()
        slot.current = _Ctx("r1")
        seen.append(get_log_context().get("record"))
        set_record_context(_Ctx("r2"))  # a slow path in the same task: the slot, not a new value
        seen.append(slot.current.log_context()["record"] if slot.current else None)
        seen.append(get_log_context().get("record"))
        slot.current = None
        seen.append(get_log_context().get("record"))

    seen: list[object] = []
    await asyncio.create_task(consume_task(seen))
    assert seen == ["r1", "r2", "r2", None]
    assert get_log_context().get("record") is None  # the task's slot did not leak out

    # Without a slot: ContextVar semantics, a child task keeps the value it copied
    set_record_context(_Ctx("parent"))
    gate, later = asyncio.Event(), []

    async def child() -> None:
        await gate.wait()
        later.append(get_log_context().get("record"))

    task = asyncio.create_task(child())
    set_record_context(_Ctx("changed"))
    gate.set()
    await task
    assert later == ["parent"] and get_log_context()["record"] == "changed"
    set_record_context(None)


def test_message_event_id_is_decoded_on_access() -> None:
    from events.salesforce import OrderChanged
    from workers.runtime.message import Message

    event = OrderChanged(sf_order_id="801")
    msg = Message(event, "g", "t", 0, 0, 0, None, None, [], {"ce_id": b"e-\xff"}, OrderChanged.TYPE)
    assert msg.event_id == "e-\ufffd"
    assert Message(event, "g", "t", 0, 0, 0, None, None, [], {}, OrderChanged.TYPE).event_id == ""
    assert msg.log_context()["key"] is None


def test_gc_freezing_is_counted_per_process() -> None:
    """The first worker freezes the heap and spaces full collections out; the last one to stop restores both."""
    import gc

    from workers.runtime import gc_policy

    assert gc_policy._freezes == 0
    before = gc.get_threshold()
    gc_policy.freeze(100)
    try:
        frozen = gc.get_freeze_count()
        assert frozen > 0
        assert gc.get_threshold() == (before[0], before[1], max(before[2], 100))
        gc_policy.freeze(1_000)  # a second worker: freezes nothing more, changes nothing
        assert gc.get_freeze_count() == frozen
        assert gc.get_threshold()[2] == max(before[2], 100)
        gc_policy.unfreeze()  # the first one stops: the other still runs frozen
        assert gc.get_freeze_count() == frozen
        assert gc.get_threshold()[2] == max(before[2], 100)
    finally:
        gc_policy.unfreeze()
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before


def test_timed_collections_replace_the_allocation_counter_while_workers_run_and_collect_on_the_interval() -> None:
    """Automatic collection is off from the first timed worker to the last; tick collects the young
    generations once per interval (whichever worker calls it) and everything every full_every-th time."""
    import gc

    from workers.runtime import gc_policy

    collected: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collected.append(info["generation"])

    assert gc.isenabled()
    gc_policy.start_timed()
    gc_policy.start_timed()
    gc.callbacks.append(seen)
    try:
        assert not gc.isenabled()
        gc_policy._next = 0.0
        gc_policy._young = 0
        gc_policy.tick(100.0, 0.1, full_every=3)  # due: young
        gc_policy.tick(100.05, 0.1, full_every=3)  # another worker, within the interval: nothing
        gc_policy.tick(100.1, 0.1, full_every=3)  # due: young
        gc_policy.tick(100.2, 0.1, full_every=3)  # the third: full
        assert collected == [1, 1, 2]
        gc_policy.stop_timed()  # one worker left: still timed
        assert not gc.isenabled()
    finally:
        gc.callbacks.remove(seen)
        gc_policy.stop_timed()
    assert gc.isenabled()


# --- FetchPacing ---------------------------------------------------------------------------------


def test_fetch_pacing_shortens_the_fetchers_waits_while_busy_and_restores_its_own_values_when_idle() -> None:
    from types import SimpleNamespace

    from workers.runtime.polling import FetchPacing

    fetcher = SimpleNamespace(_fetch_max_wait_ms=250, _prefetch_backoff=0.1)
    pacing = FetchPacing(SimpleNamespace(_fetcher=fetcher))
    pacing.set(False)  # already idle: the consumer's configuration is untouched
    assert (fetcher._fetch_max_wait_ms, fetcher._prefetch_backoff) == (250, 0.1)
    pacing.set(True)
    assert (fetcher._fetch_max_wait_ms, fetcher._prefetch_backoff) == (5, 0.0)
    pacing.set(True)
    pacing.set(False)
    assert (fetcher._fetch_max_wait_ms, fetcher._prefetch_backoff) == (250, 0.1)


def test_fetch_pacing_never_lengthens_a_shorter_configured_wait_and_ignores_a_consumer_without_a_fetcher() -> None:
    from types import SimpleNamespace

    from workers.runtime.polling import FetchPacing

    fetcher = SimpleNamespace(_fetch_max_wait_ms=2, _prefetch_backoff=0.1)
    FetchPacing(SimpleNamespace(_fetcher=fetcher)).set(True)
    assert fetcher._fetch_max_wait_ms == 2
    not_started = FetchPacing(SimpleNamespace())
    not_started.set(True)
    assert not not_started.busy  # nothing to pace yet: it switches once the fetcher exists
