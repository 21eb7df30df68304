"""The one consume loop: fetch, decode, dispatch, and commit only what is done.

Owns offsets, pausing, retries and dead letters for one route. Must not contain business rules.

Shape: one poll loop (``getmany`` batches) feeds a bounded buffer per partition; one task per
partition handles its records strictly in order (concurrency across partitions, order within
one); an ``InOrderTracker`` per partition says which offset is safe to commit (the first not done:
records finish in fetch order, so that is one past the last finished record),
and the poll loop commits those on a timer, on revocation and on shutdown. Never auto-commit:
a record is committed only after its handler returned, or after its retry/dead-letter copy was
acknowledged by Kafka, so a crash at any point redelivers it (at-least-once; the inbox makes the
handler's effects once).

A partition is paused (fetching stops, the poll loop keeps polling so the member never exceeds
``max.poll.interval.ms``) while its buffer is full, while its head record waits for an in-place
back-off or a retry tier's ``retry_not_before``, and while the circuit breaker is open.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

import asyncpg
import structlog
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from structlog.contextvars import bind_contextvars

from adapters.kafka import ProducerPort
from events import failure as fh
from events.base import REGISTRY, event_types
from events.envelope import H_CORRELATION, H_ID, H_TYPE, binary_type, check_binary_headers, ordered_binary_type
from events.errors import DependencyUnavailable, InvalidPayload, UnknownEventType, is_systemic
from events.failure import Stage
from events.topics import retry_topic
from workers.config import RuntimeSettings
from workers.logs import open_record_slot, set_record_context
from workers.runtime import gc_policy
from workers.runtime.batch import BatchHandler, run_batch
from workers.runtime.breaker import BreakerConfig, CircuitBreaker
from workers.runtime.consumer import (
    ConsumerPort,
    ConsumerRebalanceListener,
    ConsumerRecord,
    FetchPacing,
    TopicPartition,
)
from workers.runtime.failure import (
    FailedRecord,
    FailureInfo,
    dead_letter_headers,
    error_class,
    retry_record_headers,
    target_partition,
)
from workers.runtime.inbox import purge_once
from workers.runtime.message import Message, header_int
from workers.runtime.metrics import LATENCY_BUCKETS, PartitionGauge, RuntimeMetrics, Snapshot, TopicStats
from workers.runtime.offsets import InOrderTracker
from workers.runtime.policy import Decision, RetryPolicy, Verdict
from workers.runtime.route import Handler, Route

log = structlog.get_logger(__name__)

Sleep = Callable[[float], Awaitable[None]]
PartitionsFor = Callable[[str], Awaitable[int | None]]
#: the loop's dispatch entry: the model's core JSON validator, the handler, ``ce_type``, batch mode
_FastEntry = tuple[Callable[[bytes], Any], Handler, str, bool]

# why a partition is paused; it resumes when no reason is left
BUFFER_FULL = "buffer_full"
BACKOFF = "backoff"
NOT_BEFORE = "not_before"
BREAKER = "breaker"
_ONLY_FULL = {BUFFER_FULL}
#: the poll timeout while a partition waits for room in its buffer (see Worker._poll_loop)
FULL_POLL_TIMEOUT_MS = 5


@dataclass(frozen=True)
class Tuning:
    """Loop knobs with production defaults; tests shrink them."""

    poll_timeout_ms: int = 100  # how long one getmany waits for data (also the stop-signal latency)
    # Shallow on purpose: a record is decoded and handled soon after aiokafka built it, while it is
    # still in the CPU cache (with 4,000 buffered per partition and 10,000 per getmany the same loop
    # cost ~0.7 us more per record in bench/runtime_bench.py). Deep buffers used to hide a fetch
    # stall (consumer.FetchPacing, which fixes it instead). A partition's buffer may overshoot
    # buffer_per_partition by up to max_records.
    max_records: int = 500
    buffer_per_partition: int = 500  # pause fetching above this, resume below half
    commit_interval_s: float = 0.2  # commit done offsets at least this often...
    commit_every: int = 5_000  # ...or after this many done records
    revoke_grace_s: float | None = None  # wait for in-flight records of revoked partitions (None: see Worker)
    liveness_timeout_s: float = 60.0  # /livez fails when the loop or a handler is stuck longer
    purge_interval_s: float = 3_600.0  # inbox purge period (with a pool)
    purge_batch: int = 1_000
    purge_max_batches: int = 100
    yield_every: int = 64  # records a partition task handles before letting other tasks run
    freeze_gc: bool = True  # see gc_policy.freeze
    # Young collections every this many seconds from the poll loop instead of CPython's allocation
    # counter (None: the counter), see workers.runtime.gc_policy
    gc_interval_s: float | None = 0.1
    # gen-1 (or timed) collections between two full ones (CPython's threshold2, default 10), see gc_policy
    gc_full_every: int = 100
    breaker: BreakerConfig = field(default_factory=BreakerConfig)


class _Partition:
    """The state of one assigned partition: its buffer, tracker, task and pause reasons."""

    __slots__ = (
        "tp",
        "topic",
        "partition",
        "tier",
        "buffer",
        "tracker",
        "stats",
        "wakeup",
        "paused",
        "task",
        "stopping",
        "busy_since",
    )

    def __init__(self, tp: TopicPartition, tier: int, stats: TopicStats) -> None:
        self.tp = tp
        self.topic: str = tp.topic
        self.partition: int = tp.partition
        self.tier = tier  # 0 source topic, n = <group>.retry.<n>
        self.buffer: deque[ConsumerRecord] = deque()
        self.tracker = InOrderTracker()
        self.stats = stats
        self.wakeup = asyncio.Event()
        self.paused: set[str] = set()
        self.task: asyncio.Task[None] | None = None
        self.stopping = False
        self.busy_since: float | None = None  # perf_counter() while a handler or a produce runs


class _Abandon(asyncio.CancelledError):
    """The partition is stopping (revoked or shutdown) while its record waits: leave it not done."""


class Worker:
    """Runs one ``Route`` on one consumer until ``stop`` is set.

    The worker owns the consumer's lifecycle (subscribe with its rebalance listener, start, stop =
    leave the group); the composition root owns the producer and the pool. ``sleep`` and ``clock``
    (wall time, seconds) are injectable so back-offs, retry delays and the breaker run instantly
    in unit tests.
    """

    def __init__(
        self,
        route: Route,
        consumer: ConsumerPort,
        producer: ProducerPort,
        settings: RuntimeSettings,
        *,
        pool: asyncpg.Pool | None = None,
        registry: CollectorRegistry | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        partitions_for: PartitionsFor | None = None,
        tuning: Tuning | None = None,
    ) -> None:
        event_types()  # import every vocabulary module so unknown-type detection sees them all
        self.route = route
        self.settings = settings
        self.tuning = tuning or Tuning()
        self._consumer = consumer
        self._producer = producer
        self._pool = pool
        self._sleep = sleep
        self._clock = clock
        self._partitions_for = partitions_for
        self._table = route.handled_types
        # The hot path calls each model's core validator directly: exactly what model_validate_json
        # delegates to (same errors, same result), minus a Python wrapper that costs ~0.35 µs/record.
        # Keyed by the raw ``ce_type`` bytes: the loop looks the header value up without decoding it.
        self._fast: dict[bytes | None, _FastEntry] = {
            event_type.encode(): (
                model.__pydantic_validator__.validate_json,
                handler,
                event_type,
                isinstance(handler, BatchHandler),
            )
            for event_type, (model, handler) in self._table.items()
        }
        delays = route.tier_delays_ms(settings.retry_tier_delays_ms)
        self.policy = RetryPolicy(
            attempts=route.in_place_attempts or settings.in_place_attempts,
            backoff_initial_s=settings.backoff_initial_s,
            backoff_max_s=settings.backoff_max_s,
            tier_delays_ms=delays,
            dead_letter=route.dead_letter,
        )
        self._tier_of = {topic: 0 for topic in route.topics}
        self._tier_of.update({retry_topic(route.group, i + 1): i + 1 for i in range(len(delays))})
        self.topics: tuple[str, ...] = tuple(self._tier_of)
        self.metrics = RuntimeMetrics(route.group, registry)
        self.metrics.snapshot = self._snapshot
        # A handler may carry a ``collector`` of its own metrics (the sf-writer's API usage and
        # deferrals): this worker's /metrics serves it beside the runtime's, once per handler.
        for handler in {id(h): h for h in route.handlers.values()}.values():
            collector = getattr(handler, "collector", None)
            if collector is not None:
                self.metrics.registry.register(collector)
        self.breaker = CircuitBreaker(self.tuning.breaker, clock=clock, sleep=sleep)
        self._revoke_grace_s = (
            self.tuning.revoke_grace_s
            if self.tuning.revoke_grace_s is not None
            else min(settings.shutdown_grace_s, 5.0)
        )
        self._low_water = max(1, self.tuning.buffer_per_partition // 2)
        self._parts: dict[TopicPartition, _Partition] = {}
        self._listener = _Listener(self)
        self._partition_counts: dict[str, int | None] = {}
        self._breaker_paused = False
        self._done_since_commit = 0
        self._commit_failures = 0
        self._last_commit: float | None = None
        self._last_loop = time.perf_counter()
        self._crash: BaseException | None = None
        self._commit_task: asyncio.Task[None] | None = None  # the poll loop's commit in flight
        self.started = False
        self.stopping = False

    @property
    def registry(self) -> CollectorRegistry:
        return self.metrics.registry

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then drain in-flight work (bounded), commit and leave."""
        self._consumer.subscribe(list(self.topics), listener=self._listener)
        try:
            await self._consumer.start()
        except BaseException:
            await self._consumer.stop()  # release what a half-started client opened
            raise
        if self.settings.max_in_flight_per_partition > 1:
            # Per-key concurrency inside a partition is not built: records run one at a time per
            # partition (order per partition, hence per key, holds either way).
            log.warning("max_in_flight_per_partition_ignored", value=self.settings.max_in_flight_per_partition)
        if self.tuning.freeze_gc:
            gc_policy.freeze(self.tuning.gc_full_every)
        if self.tuning.gc_interval_s is not None:
            gc_policy.start_timed()
        self.started = True
        self._last_loop = time.perf_counter()
        log.info("worker_started", route=self.route.name, group=self.route.group, topics=list(self.topics))
        purge = asyncio.create_task(self._purge_loop(), name="inbox-purge") if self._pool is not None else None
        try:
            await self._poll_loop(stop)
        finally:
            self.stopping = True
            if purge is not None:
                purge.cancel()
                await asyncio.gather(purge, return_exceptions=True)
            try:
                await self._shutdown()
            finally:  # even when leaving the group fails: the process's collector must not stay off
                if self.tuning.gc_interval_s is not None:
                    gc_policy.stop_timed()
                if self.tuning.freeze_gc:
                    gc_policy.unfreeze()

    async def _poll_loop(self, stop: asyncio.Event) -> None:
        consumer, parts, tuning = self._consumer, self._parts, self.tuning
        high = tuning.buffer_per_partition
        pacing = FetchPacing(consumer)
        gc_interval_s, gc_full_every = tuning.gc_interval_s, tuning.gc_full_every
        next_commit = time.perf_counter() + tuning.commit_interval_s
        while not stop.is_set():
            if self._crash is not None:
                raise self._crash
            # Back-pressure without pausing: drain only the partitions whose buffer has room; the
            # others keep at most one prefetched fetch result inside aiokafka, which fetches no more
            # for them until it is drained. Pausing instead would cost a stall on every resume:
            # aiokafka has one fetch in flight per broker, and with the source partitions paused
            # that fetch long-polls the (usually empty) retry tiers for fetch_max_wait_ms.
            room: list[TopicPartition] = []
            full = False  # some partition waits for room in its buffer, not for a back-off or the breaker
            for tp in consumer.assignment():
                st = parts.get(tp)
                if st is None or not st.paused and len(st.buffer) < high:
                    room.append(tp)
                elif not st.paused or st.paused == _ONLY_FULL:
                    full = True
            if not room:
                # Everything full or waiting: pause the full ones and poll anyway (an all-paused
                # poll returns nothing), so the member keeps within max.poll.interval.ms.
                for st in parts.values():
                    if len(st.buffer) >= high:
                        self._pause(st, BUFFER_FULL)
            # A full partition gets room as its task works through its buffer, but a long poll of the
            # others (often only the idle retry tiers) would not return for it: poll briefly then, or
            # the partition tasks run dry and idle until the poll times out.
            timeout_ms = min(tuning.poll_timeout_ms, FULL_POLL_TIMEOUT_MS) if full else tuning.poll_timeout_ms
            batch = await consumer.getmany(*room, timeout_ms=timeout_ms, max_records=tuning.max_records)
            # Busy while records flow: aiokafka fetches a drained partition at once and an empty
            # fetch does not hold up the busy partitions (consumer.FetchPacing).
            pacing.set(bool(batch) or any(st.buffer for st in parts.values()))
            for tp, records in batch.items():
                if not records:
                    continue
                st = parts.get(tp)
                if st is None:
                    st = self._open(tp)
                st.buffer.extend(records)
                st.tracker.received_up_to = records[-1].offset + 1
                st.stats.consumed += len(records)
                st.wakeup.set()
            now = self._last_loop = time.perf_counter()
            if self.breaker.closed == self._breaker_paused:
                self._sync_breaker_pause()
            if now >= next_commit or self._done_since_commit >= tuning.commit_every:
                self._commit_in_background()
                next_commit = now + tuning.commit_interval_s
            if gc_interval_s is not None:
                gc_policy.tick(now, gc_interval_s, gc_full_every)

    async def _shutdown(self) -> None:
        """SIGTERM path: stop taking records, let in-flight ones finish (bounded), commit, leave."""
        states = list(self._parts.values())
        await self._stop_partitions(states, self.settings.shutdown_grace_s)
        await self._commit_settled()
        await self._commit(states)
        self._parts.clear()
        try:
            await self._consumer.stop()  # leaves the group: the partitions move on at once
        finally:
            log.info("worker_stopped", route=self.route.name, group=self.route.group)

    def _open(self, tp: TopicPartition) -> _Partition:
        st = _Partition(tp, self._tier_of.get(tp.topic, 0), self.metrics.topic(tp.topic))
        self._parts[tp] = st
        if self._breaker_paused:
            self._pause(st, BREAKER)
        st.task = asyncio.create_task(self._partition_loop(st), name=f"partition {tp.topic}[{tp.partition}]")
        st.task.add_done_callback(self._partition_task_done)
        return st

    def _partition_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self._crash is None:
            # A bug in the runtime itself (handler errors never get here): stop the worker rather
            # than leave a partition silently unprocessed; nothing undone was committed.
            log.error("partition_task_crashed", task=task.get_name(), exc_info=exc)
            self._crash = exc

    async def _stop_partitions(self, states: Collection[_Partition], grace_s: float) -> None:
        """Stop the tasks of ``states``: idle or waiting ones at once, handling ones after their
        record (bounded by ``grace_s``; then cancelled, and their record stays uncommitted)."""
        tasks = []
        for st in states:
            st.stopping = True
            st.wakeup.set()
            if st.task is None or st.task.done():
                continue
            if st.busy_since is None:
                st.task.cancel()  # waiting (buffer, back-off, delay, breaker): nothing to finish
            tasks.append(st.task)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace_s)
        for task in pending:
            log.warning("in_flight_abandoned", task=task.get_name(), grace_s=grace_s)
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- rebalance ---------------------------------------------------------------------------

    async def _on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        """Before giving partitions up: finish (bounded) what is in flight and commit what is done,
        so the next owner starts exactly after it and no side effect runs twice."""
        states = [st for tp in revoked if (st := self._parts.pop(tp, None)) is not None]
        if not states:
            return
        await self._stop_partitions(states, self._revoke_grace_s)
        await self._commit_settled()
        await self._commit(states)
        log.info("partitions_revoked", partitions=sorted(f"{st.topic}[{st.partition}]" for st in states))

    def _on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Open every assigned partition at once (idle until records arrive), so an open breaker
        pauses all of them and the metrics show them all."""
        assigned = list(assigned)
        for tp in assigned:
            if tp not in self._parts:
                self._open(tp)
        log.info("partitions_assigned", partitions=sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))

    # --- commits -----------------------------------------------------------------------------

    def _commit_in_background(self) -> None:
        """The poll loop's periodic commit, as a task: the loop keeps fetching during the round trip
        (awaited, it left the partition tasks without new records for as long, and at 150k records/s
        a commit every 5,000 records is 30 round trips a second). One at a time, so committed offsets
        only move forward; revocation and shutdown wait for it (``_commit_settled``) before their own
        final commit. An unexpected error in it stops the worker like a crashed partition task."""
        task = self._commit_task
        if task is not None and not task.done():
            return
        self._commit_task = asyncio.create_task(self._commit(), name=f"commit-{self.route.group}")
        self._commit_task.add_done_callback(self._commit_task_done)

    def _commit_task_done(self, task: asyncio.Task[None]) -> None:
        exc = None if task.cancelled() else task.exception()
        if exc is not None and self._crash is None:
            log.error("commit_task_crashed", exc_info=exc)
            self._crash = exc

    async def _commit_settled(self) -> None:
        task = self._commit_task
        if task is not None and not task.done():
            await asyncio.wait([task])

    async def _commit(self, states: Collection[_Partition] | None = None) -> None:
        """Commit the first not-done offset of every partition that moved since its last commit."""
        parts = list(self._parts.values()) if states is None else list(states)
        done_before = self._done_since_commit
        offsets: dict[TopicPartition, int] = {}
        for st in parts:
            committable = st.tracker.committable
            if committable is not None and committable != st.tracker.committed:
                offsets[st.tp] = committable
        if not offsets:
            self._last_commit = time.perf_counter()  # nothing owed: committed offsets are current
            return
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:
            # Rebalancing or expelled: the revocation path commits (or the next owner re-reads
            # from the last commit; the inbox absorbs the duplicates). Never fatal.
            self._commit_failures += 1
            log.warning("commit_failed", error=repr(exc), partitions=len(offsets))
            return
        for st in parts:
            offset = offsets.get(st.tp)
            if offset is not None:
                st.tracker.mark_committed(offset)
        self._done_since_commit = max(0, self._done_since_commit - done_before)  # records done meanwhile still count
        self._last_commit = time.perf_counter()

    # --- pausing -----------------------------------------------------------------------------

    def _pause(self, st: _Partition, reason: str) -> None:
        if not st.paused and self._parts.get(st.tp) is st:
            try:
                self._consumer.pause(st.tp)
            except (KafkaError, KeyError, AssertionError):  # unassigned meanwhile
                pass
        st.paused.add(reason)

    def _resume(self, st: _Partition, reason: str) -> None:
        st.paused.discard(reason)
        if not st.paused and self._parts.get(st.tp) is st:
            try:
                self._consumer.resume(st.tp)
            except (KafkaError, KeyError, AssertionError):
                pass

    def _sync_breaker_pause(self) -> None:
        """Open breaker: pause every partition (a systemic outage; fetching more only piles up work)."""
        self._breaker_paused = not self.breaker.closed
        for st in self._parts.values():
            (self._pause if self._breaker_paused else self._resume)(st, BREAKER)

    async def _paused_sleep(self, st: _Partition, reason: str, seconds: float) -> None:
        """Wait with the partition paused, not slept on: the poll loop keeps polling meanwhile."""
        if st.stopping:
            raise _Abandon
        if seconds <= 0:
            return
        self._pause(st, reason)
        try:
            await self._sleep(seconds)
        finally:
            self._resume(st, reason)
        if st.stopping:
            raise _Abandon

    # --- the partition task ------------------------------------------------------------------

    async def _partition_loop(self, st: _Partition) -> None:
        """Handle the partition's records in order. The success path is inlined and allocation-light
        (it runs 100k times a second in the benchmark); everything else branches out."""
        # Log context: topic and partition bound once for the task (lines outside a record); each
        # record's keys come from the task's record slot, set to its Message (workers.logs renders
        # them only when a line is logged), instead of five structlog context variables per record.
        bind_contextvars(topic=st.topic, partition=st.partition)
        slot = open_record_slot()  # set_record_context in this task (slow paths, batch.py) updates it too
        buf, tracker, stats, table = st.buffer, st.tracker, st.stats, self._fast
        latency_counts, bounds = stats.latency_counts, LATENCY_BUCKETS
        breaker, group, tier, low = self.breaker, self.route.group, st.tier, self._low_water
        topic, partition = st.topic, st.partition
        yield_every, perf = self.tuning.yield_every, time.perf_counter
        handled = 0
        while True:
            if not buf:
                if st.stopping:
                    return
                st.wakeup.clear()
                await st.wakeup.wait()
                continue
            if st.stopping:
                return
            rec = buf[0]
            headers = rec.headers
            h: dict[str, bytes | None] | None = None  # the header dict, built only where needed
            attempts = 1
            if tier:
                h = dict(headers)
                attempts = header_int(h, fh.ATTEMPTS) + 1
                await self._wait_not_before(st, h)
            # Fast path: the header checks on the header list by position (ordered_binary_type; headers
            # in another order get the same checks on a header dict), the raw ce_type looked up
            # undecoded; then the model's validator straight from the value (no intermediate dict, no
            # Envelope: Message.envelope decodes that on demand, Message.header_map builds the header
            # dict). Anything else (bad headers, a type without a handler here) takes _decode_slow,
            # which dead-letters or skips it exactly as before.
            raw_type = ordered_binary_type(headers)
            if raw_type is None:
                if h is None:
                    h = dict(headers)
                raw_type = binary_type(h)
            entry = table.get(raw_type)
            msg: Message | None = None
            if entry is not None:
                validate, handler, event_type, batch = entry
                value = rec.value
                try:
                    event = validate(value if value is not None else b"")
                except ValidationError as exc:
                    h = dict(headers)
                    slot.current = _RecordLog(rec, h)
                    await self._reject(st, rec, h, *_invalid_payload(event_type, exc))
                else:
                    msg = Message(  # positional: event, group, topic, partition, offset, timestamp, key,
                        # value, headers, header_map, event_type, tier, attempts
                        event,
                        group,
                        topic,
                        partition,
                        rec.offset,
                        rec.timestamp,
                        rec.key,
                        value,
                        headers,
                        h,
                        event_type,
                        tier,
                        attempts,
                    )
            else:
                decoded = await self._decode_slow(st, rec, dict(headers) if h is None else h, raw_type)
                if decoded is not None:
                    msg, handler, batch = decoded
            if msg is None:
                pass  # dead-lettered or skipped: done
            elif batch:
                # Batch mode (workers.runtime.batch): the handler takes this record and the due ones
                # right behind it; run_batch finishes every one of them in offset order itself.
                assert isinstance(handler, BatchHandler)
                await run_batch(self, st, (rec, dict(headers) if h is None else h, msg), handler)
                await asyncio.sleep(0)  # a batch is a good moment to let the others run
                continue
            else:
                slot.current = msg
                if not breaker.closed:
                    await self._handle_admitted(st, rec, msg, handler)
                else:
                    started = st.busy_since = perf()
                    try:
                        await handler(msg.event, msg)
                    except Exception as exc:  # CancelledError (shutdown) is no Exception: never a failure
                        st.busy_since = None
                        stats.observe(perf() - started)
                        await self._failed(st, rec, msg.header_map, msg, handler, exc, False)
                    else:
                        elapsed = perf() - started
                        st.busy_since = None
                        latency_counts[bisect_left(bounds, elapsed)] += 1  # TopicStats.observe, inlined
                        stats.latency_sum += elapsed
                        stats.processed += 1
                        breaker.record_success()
            # Done: handled, skipped, or its failure copy acknowledged by Kafka. In fetch order, so one
            # past it is committable (InOrderTracker.done, inlined).
            tracker.committable = rec.offset + 1
            buf.popleft()
            self._done_since_commit += 1
            if st.paused and len(buf) <= low and BUFFER_FULL in st.paused:
                self._resume(st, BUFFER_FULL)
            handled += 1
            if handled >= yield_every:
                handled = 0
                await asyncio.sleep(0)  # let the poll loop and the other partitions run

    async def _decode_slow(
        self, st: _Partition, rec: ConsumerRecord, h: dict[str, bytes | None], raw_type: bytes | None
    ) -> tuple[Message, Handler, bool] | None:
        """A record the fast path did not take: headers that fail a check (dead letter), a type this
        route does not handle (skipped) or that nobody knows (dead letter). Returns the decoded record
        and its handler when it is one of ours after all (a ``ce_type`` that is not plain UTF-8)."""
        event_type = ""
        try:
            # raw_type is None when a header check failed: check_binary_headers raises saying which
            event_type = raw_type.decode("utf-8", "replace") if raw_type is not None else check_binary_headers(h)
            entry = self._table.get(event_type)
            if entry is not None:
                model, handler = entry
                event = model.model_validate_json(rec.value if rec.value is not None else b"")
                tier = st.tier
                attempts = header_int(h, fh.ATTEMPTS) + 1 if tier else 1
                msg = Message(
                    event,
                    self.route.group,
                    st.topic,
                    st.partition,
                    rec.offset,
                    rec.timestamp,
                    rec.key,
                    rec.value,
                    rec.headers,
                    h,
                    event_type,
                    tier,
                    attempts,
                )
                return msg, handler, isinstance(handler, BatchHandler)
        except InvalidPayload as exc:
            set_record_context(_RecordLog(rec, h))
            await self._reject(st, rec, h, exc, Stage.DECODE)
            return None
        except ValidationError as exc:
            set_record_context(_RecordLog(rec, h))
            await self._reject(st, rec, h, *_invalid_payload(event_type, exc))
            return None
        if event_type in REGISTRY:
            # Another group's type on a shared topic: acknowledged and counted, not handled (the
            # common case on shared topics, so no record context: its one log line names the record).
            set_record_context(None)
            st.stats.skipped += 1
            log.debug("record_skipped", event_type=event_type, offset=rec.offset)
        else:
            set_record_context(_RecordLog(rec, h))
            await self._unhandled(st, rec, h, event_type)
        return None

    async def _handle_admitted(self, st: _Partition, rec: ConsumerRecord, msg: Message, handler: Handler) -> None:
        """The breaker is not closed: wait to be admitted (maybe as the half-open trial), then handle.
        A trial that ends without an outcome (cancelled by revocation or shutdown) hands the permit on."""
        trial = await self.breaker.admit()
        try:
            started = st.busy_since = time.perf_counter()
            try:
                await handler(msg.event, msg)
            except Exception as exc:
                st.busy_since = None
                st.stats.observe(time.perf_counter() - started)
                trial, was_trial = False, trial  # _failed settles (or releases) the trial from here on
                await self._failed(st, rec, msg.header_map, msg, handler, exc, was_trial)
                return
            st.busy_since = None
            st.stats.observe(time.perf_counter() - started)
            st.stats.processed += 1
            self.breaker.record_success()
            trial = False
        finally:
            if trial:
                self.breaker.release_trial()

    async def _unhandled(
        self, st: _Partition, rec: ConsumerRecord, h: dict[str, bytes | None], event_type: str
    ) -> None:
        """A type nobody knows (not in the event registry) is a permanent decode failure."""
        await self._reject(st, rec, h, UnknownEventType(f"no model for event type {event_type!r}"), Stage.DECODE)

    async def _wait_not_before(self, st: _Partition, h: Mapping[str, bytes | None]) -> None:
        """A retry tier's head record waits for its ``retry_not_before``: the partition is paused
        (records behind it were scheduled later still), the member keeps polling."""
        due_s = header_int(h, fh.NOT_BEFORE) / 1000
        await self._paused_sleep(st, NOT_BEFORE, due_s - self._clock())

    # --- failures ----------------------------------------------------------------------------

    async def _failed(
        self,
        st: _Partition,
        rec: ConsumerRecord,
        h: Mapping[str, bytes | None],
        msg: Message,
        handler: Handler,
        first_error: Exception,
        trial: bool,
    ) -> None:
        """The handler raised: retry in place, then hold (breaker), move to a retry tier or dead-letter.

        Returns once the record is finished (handled, or its copy acknowledged by Kafka); raises
        (cancellation) when the partition stops first, leaving the record uncommitted.
        """
        run = _Attempts(st, handler, msg)
        first_failed_at = self._clock()
        error: BaseException | None = first_error
        try:
            while True:
                if error is not None:
                    error, _ = await self.policy.run_in_place(
                        run.attempt,
                        error,
                        sleep=partial(self._paused_sleep, st, BACKOFF),
                        on_retry=partial(_log_retry, st.stats),
                    )
                if error is None:
                    st.stats.processed += 1
                    self.breaker.record_success()
                    trial = False
                    return
                st.stats.failed += 1
                decision = self.policy.decide(error, st.tier)
                stage = _stage_of(error)
                if decision.verdict is Verdict.BLOCK:
                    log.error("record_blocked", error=str(error), error_class=error_class(error), attempts=run.count)
                    await self._paused_sleep(st, BACKOFF, self.policy.backoff_max_s)
                elif is_systemic(error) and self.breaker.record_failure(error_class(error)):
                    # Systemic outage: moving the record would only add work; hold it and retry it
                    # when the breaker lets a trial through (the record stays uncommitted meanwhile).
                    # Record-specific permanent errors (poison messages) never count: a run of them
                    # must reach the dead letter, not hold the good records behind them.
                    trial = False
                    log.warning("record_held_by_breaker", error_class=error_class(error))
                    trial = await self.breaker.admit()
                    if st.stopping:
                        raise _Abandon
                elif decision.verdict is Verdict.DROP:
                    log.error("record_dropped", error=str(error), error_class=error_class(error), attempts=run.count)
                    return
                else:
                    info = FailureInfo(error, stage, run.count, first_failed_at, self._clock())
                    await self._move(st, rec, h, decision, info)
                    return
                error = await run.once()  # a fresh round after a hold or a block
        finally:
            if trial:
                self.breaker.release_trial()

    async def _reject(
        self, st: _Partition, rec: ConsumerRecord, h: Mapping[str, bytes | None], error: Exception, stage: str
    ) -> None:
        """Dead-letter a record that cannot be decoded (no handler ran: zero attempts in this run)."""
        log.warning("record_undecodable", offset=rec.offset, stage=stage, error=str(error))
        decision = self.policy.decide(error, st.tier)
        if decision.verdict is Verdict.DROP:
            log.error("record_dropped", offset=rec.offset, stage=stage, error=str(error))
            return
        now = self._clock()
        await self._move(st, rec, h, Decision(Verdict.DEAD_LETTER), FailureInfo(error, stage, 0, now, now))

    async def _move(
        self,
        st: _Partition,
        rec: ConsumerRecord,
        h: Mapping[str, bytes | None],
        decision: Decision,
        info: FailureInfo,
    ) -> None:
        """Produce the record's copy to a retry tier or the dead letter; the original counts as
        done only after Kafka acknowledged the copy (so a crash in between re-handles it instead
        of losing it; the copy may then exist twice, which replay and the inbox tolerate)."""
        record = FailedRecord(rec.topic, rec.partition, rec.offset, rec.timestamp, rec.key, rec.value, rec.headers)
        group = self.route.group
        if decision.verdict is Verdict.RETRY_TOPIC:
            topic = retry_topic(group, decision.tier)
            not_before_ms = int((self._clock() + decision.delay_s) * 1000)
            headers = retry_record_headers(
                record, h, group=group, failure=info, tier=decision.tier, not_before_ms=not_before_ms
            )
        else:
            topic = self.route.dlq
            headers = dead_letter_headers(record, h, group=group, failure=info)
        partition = target_partition(h, record, await self._partition_count(topic))
        await self._produce(st, topic, rec.key, rec.value, headers, partition)
        if decision.verdict is Verdict.RETRY_TOPIC:
            st.stats.retried_to_topic += 1
            log.warning(
                "record_moved_to_retry",
                tier=decision.tier,
                delay_s=decision.delay_s,
                error_class=error_class(info.error),
                attempts=info.attempts,
            )
        else:
            st.stats.dead_lettered += 1
            log.error(
                "record_dead_lettered",
                dlq=topic,
                stage=info.stage,
                error_class=error_class(info.error),
                error=str(info.error),
                attempts=info.attempts,
            )

    async def _produce(
        self,
        st: _Partition,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        partition: int | None,
    ) -> None:
        """Produce until Kafka takes it: a failure copy must not be lost, and the original is not
        acknowledged before it is written (the partition waits, paused, meanwhile)."""
        delay = max(self.settings.backoff_initial_s, 0.05)
        while True:
            st.busy_since = time.perf_counter()
            try:
                await self._producer.publish_raw(topic, key, value, headers, partition)
                return
            except DependencyUnavailable as exc:
                log.error("failure_copy_not_produced", topic=topic, error=str(exc), retry_in_s=delay)
            finally:
                st.busy_since = None
            await self._paused_sleep(st, BACKOFF, delay)
            delay = min(delay * 2, max(self.settings.backoff_max_s, 1.0))

    async def _partition_count(self, topic: str) -> int | None:
        if topic not in self._partition_counts:
            count: int | None = None
            if self._partitions_for is not None:
                try:
                    count = await self._partitions_for(topic)
                except (KafkaError, TimeoutError) as exc:
                    log.warning("partition_count_unknown", topic=topic, error=repr(exc))
                    return None
            else:
                known = getattr(self._consumer, "partitions_for_topic", lambda _t: None)(topic)
                count = len(known) if known else None
            self._partition_counts[topic] = count
        return self._partition_counts[topic]

    # --- housekeeping ------------------------------------------------------------------------

    async def _purge_loop(self) -> None:
        """Delete inbox rows past the retention window, in bounded batches, every purge interval."""
        assert self._pool is not None
        retention = timedelta(days=self.settings.inbox_retention_days)
        while True:
            try:
                await purge_once(
                    self._pool, retention, batch=self.tuning.purge_batch, max_batches=self.tuning.purge_max_batches
                )
            except (asyncpg.PostgresError, OSError) as exc:
                log.warning("inbox_purge_failed", error=repr(exc))
            await asyncio.sleep(self.tuning.purge_interval_s)

    # --- health ------------------------------------------------------------------------------

    def liveness(self) -> tuple[bool, str]:
        """Alive = the poll loop turned recently and no handler is stuck (an orchestrator restarts us)."""
        if self._crash is not None:
            return False, f"crashed: {self._crash!r}"
        now, limit = time.perf_counter(), self.tuning.liveness_timeout_s
        if self.started and not self.stopping and now - self._last_loop > limit:
            return False, f"poll loop made no progress for {now - self._last_loop:.0f}s"
        for st in self._parts.values():
            if st.busy_since is not None and now - st.busy_since > limit:
                return False, f"handler on {st.topic}[{st.partition}] busy for {now - st.busy_since:.0f}s"
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        """Ready = the consumer is started, not stopping, and has partitions assigned."""
        if self._crash is not None:
            return False, "crashed"
        if not self.started:
            return False, "consumer not started"
        if self.stopping:
            return False, "shutting down"
        assigned = self._consumer.assignment()
        if not assigned:
            return False, "no partitions assigned"
        return True, f"{len(assigned)} partitions assigned"

    def _snapshot(self) -> Snapshot:
        now = time.perf_counter()
        gauges = []
        for st in self._parts.values():
            highwater = self._highwater(st.tp)
            # the buffer's head is the first record not done (records finish in fetch order)
            first_not_done = st.buffer[0].offset if st.buffer else st.tracker.committable
            position = st.tracker.received_up_to
            gauges.append(
                PartitionGauge(
                    st.topic,
                    st.partition,
                    _lag(highwater, first_not_done),
                    _lag(highwater, position),
                    len(st.buffer),
                    1 if st.busy_since is not None else 0,
                    bool(st.paused),
                )
            )
        return Snapshot(
            partitions=gauges,
            last_commit_age_s=None if self._last_commit is None else now - self._last_commit,
            breaker_state=int(self.breaker.state),
            breaker_trips=self.breaker.trips,
            commit_failures=self._commit_failures,
        )

    def _highwater(self, tp: TopicPartition) -> int | None:
        try:
            value = self._consumer.highwater(tp)
        except (KafkaError, KeyError, AssertionError):
            return None
        return int(value) if value is not None else None


class _Attempts:
    """The handler invocations of one record in this worker (every round), timed and counted."""

    __slots__ = ("st", "handler", "msg", "prior", "count")

    def __init__(self, st: _Partition, handler: Handler, msg: Message) -> None:
        self.st, self.handler, self.msg = st, handler, msg
        self.prior = msg.attempts - 1  # invocations on earlier tiers
        self.count = 1  # the inline first attempt already ran

    async def attempt(self, _number: int = 0) -> None:
        self.count += 1
        self.msg.attempts = self.prior + self.count
        st = self.st
        started = st.busy_since = time.perf_counter()
        try:
            await self.handler(self.msg.event, self.msg)
        finally:
            st.busy_since = None
            st.stats.observe(time.perf_counter() - started)

    async def once(self) -> BaseException | None:
        try:
            await self.attempt()
        except Exception as exc:
            return exc
        return None


class _RecordLog:
    """The log context of a record that has no ``Message`` (it failed to decode): see ``workers.logs``."""

    __slots__ = ("rec", "h")

    def __init__(self, rec: ConsumerRecord, h: Mapping[str, bytes | None]) -> None:
        self.rec, self.h = rec, h

    def log_context(self) -> dict[str, Any]:
        rec, h = self.rec, self.h
        return {
            "topic": rec.topic,
            "partition": rec.partition,
            "offset": rec.offset,
            "event_id": _text(h.get(H_ID)),
            "event_type": _text(h.get(H_TYPE)),
            "correlation_id": _text(h.get(H_CORRELATION)),
            "key": _text(rec.key),
        }


def _text(raw: bytes | None) -> str | None:
    return raw.decode("utf-8", "replace") if raw is not None else None


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """aiokafka awaits these inside the rebalance: commit before the partitions leave."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        try:
            await self._worker._on_revoked(revoked)
        except Exception:  # aiokafka would swallow it; say so loudly instead
            log.exception("revocation_failed")

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._worker._on_assigned(assigned)


def _lag(highwater: int | None, offset: int | None) -> int | None:
    return max(highwater - offset, 0) if highwater is not None and offset is not None else None


def _stage_of(error: BaseException) -> str:
    """``produce`` when the handler's own publish to Kafka failed, ``handle`` otherwise."""
    if isinstance(error, DependencyUnavailable) and error.upstream == "kafka":
        return Stage.PRODUCE
    return Stage.HANDLE


def _invalid_payload(event_type: str, exc: ValidationError) -> tuple[InvalidPayload, str]:
    """Map a pydantic error onto the error tree, and tell bad JSON (decode) from a bad field (validate)."""
    first = exc.errors()[0]
    if first["type"] == "json_invalid":
        return InvalidPayload(f"record value is not JSON: {first['msg']}"), Stage.DECODE
    if first["type"] in ("model_type", "model_attributes_type") and not first["loc"]:
        return InvalidPayload("record value must be a JSON object"), Stage.DECODE
    where = ".".join(str(p) for p in first["loc"]) or "<root>"
    return InvalidPayload(f"{event_type}: {where}: {first['msg']}"), Stage.VALIDATE


def _log_retry(stats: TopicStats, error: BaseException, attempt: int, wait_s: float) -> None:
    stats.retried_in_place += 1
    log.info("record_retrying_in_place", error_class=error_class(error), attempt=attempt, wait_s=round(wait_s, 3))


__all__ = ["Tuning", "Worker"]
