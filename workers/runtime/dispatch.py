"""What a partition task does: take records in offset order, run each key's records one at a time,
different keys at once (up to the route's ``max_in_flight_per_partition``).

Owns the per-key concurrency of one partition (Confluent Parallel Consumer's KEY ordering, Karafka's
virtual partitions by key). Must not commit (it marks records done in the ``OffsetTracker``; the
commits follow it) nor decide retries (``workers.runtime.retrying``).

Delivery rules (``tests/unit/test_runtime_key_concurrency.py`` checks them as properties):

* a key's records run strictly one after another, in offset order: a record whose key is in flight
  is queued behind it (``Lane.queue``) and the lane runs it next;
* records of other keys do not wait for it: up to ``limit`` keys are in flight per partition;
* a record is done when its handler returned, or when its retry/dead-letter copy was acknowledged;
  the committed offset never passes a record not done (``OffsetTracker``), so a crash redelivers
  every unfinished record (at-least-once; the inbox makes effects once);
* revocation and shutdown stop taking records and let every busy lane finish the record in its
  handler (bounded by the grace); records queued behind it and lanes waiting in a back-off are left
  not done. The commit stops at the first of them, so records of other keys done after it are
  delivered again to the next owner (at-least-once; the inbox keeps their effects once);
* a key that retries in place or waits for the breaker holds only itself: its later records wait
  in its lane, other keys go on. Back-pressure still bounds the partition: records held (buffered,
  in flight, queued, done but not yet committable) are at most ``buffer_per_partition`` plus one
  fetch, and the poll loop stops draining the partition above that.

Shape, and why it costs nothing when handlers do not wait (the benchmark's no-op handler): the
partition task starts each handler coroutine itself (``coro.send(None)``) and, when it finishes
without waiting, records it done on the spot, as the old one-record-at-a-time loop did. Only when
the handler waits (its first ``await`` that suspends) does the task turn into that key's lane: it
keeps the coroutine (so the handler stays in the task, with the context and ``current_task`` it
started in: cancel scopes of asyncio, anyio and httpx that span the wait stay valid) and hands the
partition to a successor task. Python 3.12's eager tasks do the same; 3.11 has none.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Coroutine, Generator
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import ValidationError
from structlog.contextvars import bind_contextvars

from events import failure as fh
from events.envelope import binary_type, ordered_binary_type
from workers.logs import RecordSlot, open_record_slot
from workers.runtime.batch import BatchHandler, run_batch
from workers.runtime.breaker import CircuitBreaker
from workers.runtime.consumer import ConsumerRecord
from workers.runtime.decode import Decoded, Decoder, RecordLog, Rejected, invalid_payload
from workers.runtime.message import Message, header_int
from workers.runtime.metrics import LATENCY_BUCKETS
from workers.runtime.partition import BUFFER_FULL, NOT_BEFORE, Lane, Partition, Sleep
from workers.runtime.retrying import FailurePath, Hold
from workers.runtime.route import Handler

if TYPE_CHECKING:
    from workers.runtime.commits import Commits

log = structlog.get_logger(__name__)

#: finishes the first record of a lane (continue its coroutine, or its failure path)
_FirstStep = Callable[[Partition, Lane, ConsumerRecord], Awaitable[None]]


class Dispatcher:
    """Runs the partition tasks of one worker (one instance, shared by its partitions)."""

    def __init__(
        self,
        decoder: Decoder,
        failures: FailurePath,
        breaker: CircuitBreaker,
        commits: Commits,
        *,
        limit: int,
        low_water: int,
        yield_every: int,
        sleep: Sleep,
        clock: Callable[[], float],
        on_task_done: Callable[[asyncio.Task[None]], None],
    ) -> None:
        if limit < 1:
            raise ValueError("max_in_flight_per_partition must be at least 1")
        self.decoder, self.failures, self.breaker, self.commits = decoder, failures, breaker, commits
        self.limit, self.low_water, self.yield_every = limit, low_water, yield_every
        self.sleep, self.clock = sleep, clock
        self._on_task_done = on_task_done

    def start(self, st: Partition) -> None:
        """Start (or hand on) the task that takes ``st``'s records."""
        task = asyncio.create_task(self._take(st), name=f"partition {st.topic}[{st.partition}]")
        task.add_done_callback(self._on_task_done)
        st.task = task

    # --- the partition task -------------------------------------------------------------------

    async def _take(self, st: Partition) -> None:
        """Take the partition's records in offset order. The path of a record whose handler finishes
        without waiting is inlined and allocation-light (it runs 100k times a second in the
        benchmark); everything else branches out."""
        # Log context: topic and partition bound once for the task (lines outside a record); each
        # record's keys come from the task's record slot, set to its Message (workers.logs renders
        # them only when a line is logged), instead of five structlog context variables per record.
        bind_contextvars(topic=st.topic, partition=st.partition)
        slot = open_record_slot()  # set_record_context in this task (slow paths, batch.py) updates it too
        buf, tracker, stats, fast, lanes, skip = st.buffer, st.tracker, st.stats, self.decoder.fast, st.lanes, st.skip
        latency_counts, bounds = stats.latency_counts, LATENCY_BUCKETS
        breaker, commits, group, tier, low = self.breaker, self.commits, self.decoder.group, st.tier, self.low_water
        topic, partition, limit = st.topic, st.partition, self.limit
        yield_every, perf = self.yield_every, time.perf_counter
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
            if skip and rec.offset in skip:  # the previous owner did it (done ahead of its commit)
                buf.popleft()
                skip.discard(rec.offset)
                stats.skipped += 1
                self.finish(st, rec)
                continue
            headers = rec.headers
            h: dict[str, bytes | None] | None = None  # the header dict, built only where needed
            attempts = 1
            if tier:
                h = dict(headers)
                attempts = header_int(h, fh.ATTEMPTS) + 1
                # the head waits for its retry_not_before, the partition paused (records behind it
                # were scheduled later still)
                await st.paused_sleep(self.sleep, NOT_BEFORE, header_int(h, fh.NOT_BEFORE) / 1000 - self.clock())
            if lanes:
                lane = lanes.get(rec.key)
                if lane is not None:  # its key is in flight: queue it behind, in offset order
                    buf.popleft()
                    tracker.start(rec.offset)
                    lane.queue.append(rec)
                    continue
                if len(lanes) >= limit:  # every slot taken: wait for a key to finish
                    st.room.clear()
                    await st.room.wait()
                    continue
            # Fast path: the header checks on the header list by position (ordered_binary_type; headers
            # in another order get the same checks on a header dict), the raw ce_type looked up
            # undecoded; then the model's validator straight from the value (no intermediate dict, no
            # Envelope: Message.envelope decodes that on demand, Message.header_map builds the header
            # dict). Anything else takes the slow path, which dead-letters or skips it.
            raw_type = ordered_binary_type(headers)
            if raw_type is None:
                if h is None:
                    h = dict(headers)
                raw_type = binary_type(h)
            entry = fast.get(raw_type)
            decoded: Decoded
            if entry is not None:
                validate, handler, event_type, batch = entry
                value = rec.value
                try:
                    event = validate(value if value is not None else b"")
                except ValidationError as exc:
                    decoded = invalid_payload(event_type, exc)
                else:
                    if batch:
                        await self._batch(st, rec, h, event, event_type, attempts, handler)
                        continue
                    msg = Message(  # positional: the hot path
                        event, group, topic, partition, rec.offset, rec.timestamp, rec.key, value, headers, h,
                        event_type, tier, attempts,
                    )  # fmt: skip
                    buf.popleft()
                    slot.current = msg
                    if breaker.closed:
                        started = perf()
                        coro: Any = handler(event, msg)  # a coroutine: handlers are async def
                        try:
                            yielded = coro.send(None)
                        except StopIteration:  # done without waiting: the hot path
                            elapsed = perf() - started
                            latency_counts[bisect_left(bounds, elapsed)] += 1  # TopicStats.observe, inlined
                            stats.latency_sum += elapsed
                            stats.processed += 1
                            breaker.record_success()
                            tracker.finish(rec.offset)
                            commits.owed += 1
                            if st.paused and BUFFER_FULL in st.paused and st.backlog <= low:
                                st.resume(BUFFER_FULL)
                            handled += 1
                            if handled >= yield_every:
                                handled = 0
                                await asyncio.sleep(0)  # let the poll loop and the other partitions run
                            continue
                        except Exception as exc:  # CancelledError is no Exception: never a failure
                            stats.observe(perf() - started)
                            first: _FirstStep = partial(self._fail_first, msg, handler, exc)
                        else:
                            first = partial(self._continue_first, msg, handler, coro, yielded, started)
                    else:
                        first = partial(self._admitted, msg, handler)
                    # The record waits: this task keeps it, as its key's lane; a successor takes the partition.
                    await self._become_lane(st, slot, rec, first)
                    return
            else:
                decoded = self.decoder.slow(rec, dict(headers) if h is None else h, raw_type, tier)
            if await self._slow(st, rec, decoded, slot):
                return

    async def _slow(self, st: Partition, rec: ConsumerRecord, decoded: Decoded, slot: RecordSlot) -> bool:
        """The head record did not take the fast path: dead-letter it, skip it, or (a ``ce_type``
        that is not plain UTF-8) handle it like any other record. True: this task became its lane
        and handed the partition on."""
        if isinstance(decoded, tuple):
            msg, handler, batch = decoded
            if batch:
                assert isinstance(handler, BatchHandler)
                await self._batch_from(st, rec, msg, handler)
                return False
            st.buffer.popleft()
            slot.current = msg
            await self._become_lane(st, slot, rec, partial(self._run_first, msg, handler))
            return True
        await self._settle(st, st, self.partition_hold(st), rec, decoded, slot)
        st.buffer.popleft()
        self.finish(st, rec)
        return False

    async def _settle(
        self, st: Partition, busy: Any, hold: Hold, rec: ConsumerRecord, decoded: Rejected | str, slot: RecordSlot
    ) -> None:
        if isinstance(decoded, Rejected):
            h = dict(rec.headers)
            slot.current = RecordLog(rec, h)
            await self.failures.reject(st, busy, hold, rec, h, decoded.error, decoded.stage)
        else:
            # Another group's type on a shared topic: acknowledged and counted, not handled (the
            # common case on shared topics, so no record context: its one log line names the record).
            slot.current = None
            st.stats.skipped += 1
            log.debug("record_skipped", offset=rec.offset)

    async def _become_lane(self, st: Partition, slot: RecordSlot, rec: ConsumerRecord, first: _FirstStep) -> None:
        st.tracker.start(rec.offset)
        lane = Lane(rec.key)
        lane.task = asyncio.current_task()  # type: ignore[assignment]
        st.lanes[rec.key] = lane
        self.start(st)  # the successor takes the partition's next records
        await self._lane(st, lane, slot, rec, first)

    # --- a key's lane -------------------------------------------------------------------------

    async def _lane(self, st: Partition, lane: Lane, slot: RecordSlot, rec: ConsumerRecord, first: _FirstStep) -> None:
        """Finish ``rec``, then the key's queued records one by one; then free the slot."""
        try:
            await first(st, lane, rec)
            self.finish(st, rec)
            # Once the partition is stopping (revoked or shut down) the records queued behind the key
            # are left not done, as the buffer is: a queue can hold hundreds of records of a hot key,
            # and an eager rebalance stops the whole group while a member revokes.
            queue = lane.queue
            while queue and not st.stopping:
                rec = queue.popleft()
                await self._run_queued(st, lane, slot, rec)
                self.finish(st, rec)
        finally:
            # Nothing between the last queue check and this: the partition task cannot queue a
            # record behind a lane that has already ended (one thread, no await in between).
            if st.lanes.get(lane.key) is lane:
                del st.lanes[lane.key]
            st.room.set()

    async def _run_queued(self, st: Partition, lane: Lane, slot: RecordSlot, rec: ConsumerRecord) -> None:
        h = dict(rec.headers)
        decoded = self.decoder.slow(rec, h, binary_type(h), st.tier)
        if not isinstance(decoded, tuple):
            await self._settle(st, lane, self._key_hold(st), rec, decoded, slot)
            return
        msg, handler, _ = decoded  # a batch handler here runs as a batch of one
        slot.current = msg
        await self._run_first(msg, handler, st, lane, rec)

    async def _run_first(self, msg: Message, handler: Handler, st: Partition, lane: Lane, rec: ConsumerRecord) -> None:
        if not self.breaker.closed:
            await self._admitted(msg, handler, st, lane, rec)
        else:
            await self._run(st, lane, rec, msg, handler, handler(msg.event, msg), time.perf_counter())

    async def _continue_first(
        self,
        msg: Message,
        handler: Handler,
        coro: Coroutine[Any, Any, None],
        yielded: Any,
        started: float,
        st: Partition,
        lane: Lane,
        rec: ConsumerRecord,
    ) -> None:
        await self._run(st, lane, rec, msg, handler, _Resumed(coro, yielded), started)

    async def _run(
        self,
        st: Partition,
        lane: Lane,
        rec: ConsumerRecord,
        msg: Message,
        handler: Handler,
        call: Awaitable[None],
        started: float,
    ) -> None:
        lane.busy_since = started
        try:
            await call
        except Exception as exc:
            lane.busy_since = None
            st.stats.observe(time.perf_counter() - started)
            await self.failures.failed(st, lane, self._key_hold(st), rec, msg.header_map, msg, handler, exc, False)
            return
        lane.busy_since = None
        st.stats.observe(time.perf_counter() - started)
        st.stats.processed += 1
        self.breaker.record_success()

    async def _fail_first(
        self, msg: Message, handler: Handler, exc: Exception, st: Partition, lane: Lane, rec: ConsumerRecord
    ) -> None:
        await self.failures.failed(st, lane, self._key_hold(st), rec, msg.header_map, msg, handler, exc, False)

    async def _admitted(self, msg: Message, handler: Handler, st: Partition, lane: Lane, rec: ConsumerRecord) -> None:
        """The breaker is not closed: wait to be admitted (maybe as the half-open trial), then handle.
        A trial that ends without an outcome (cancelled by revocation or shutdown) hands the permit on."""
        trial = await self.breaker.admit()
        try:
            started = lane.busy_since = time.perf_counter()
            try:
                await handler(msg.event, msg)
            except Exception as exc:
                lane.busy_since = None
                st.stats.observe(time.perf_counter() - started)
                trial, was_trial = False, trial  # failed() settles (or releases) the trial from here on
                hold = self._key_hold(st)
                await self.failures.failed(st, lane, hold, rec, msg.header_map, msg, handler, exc, was_trial)
                return
            lane.busy_since = None
            st.stats.observe(time.perf_counter() - started)
            st.stats.processed += 1
            self.breaker.record_success()
            trial = False
        finally:
            if trial:
                self.breaker.release_trial()

    def _key_hold(self, st: Partition) -> Hold:
        sleep = self.sleep

        async def hold(_reason: str, seconds: float) -> None:
            await st.key_sleep(sleep, seconds)

        return hold

    # --- batch mode and bookkeeping -----------------------------------------------------------

    async def _batch(
        self,
        st: Partition,
        rec: ConsumerRecord,
        h: dict[str, bytes | None] | None,
        event: Any,
        event_type: str,
        attempts: int,
        handler: Handler,
    ) -> None:
        assert isinstance(handler, BatchHandler)
        h = dict(rec.headers) if h is None else h
        await self._batch_from(st, rec, self.decoder.message(event, rec, h, event_type, st.tier, attempts), handler)

    async def _batch_from(self, st: Partition, rec: ConsumerRecord, msg: Message, handler: BatchHandler) -> None:
        """A batch handler takes the head and the due records behind it (``workers.runtime.batch``);
        it holds the whole partition, so it starts once no key is in flight."""
        while st.lanes:
            st.room.clear()
            await st.room.wait()
        if st.stopping:
            return
        await run_batch(self, st, (rec, dict(msg.header_map), msg), handler)
        await asyncio.sleep(0)  # a batch is a good moment to let the others run

    def finish(self, st: Partition, rec: ConsumerRecord) -> None:
        """``rec`` is done: its offset may be committed once every earlier record is done too."""
        st.tracker.finish(rec.offset)
        self.commits.owed += 1
        if st.paused and BUFFER_FULL in st.paused and st.backlog <= self.low_water:
            st.resume(BUFFER_FULL)

    def partition_hold(self, st: Partition) -> Hold:
        """Back-offs that hold the whole partition (batch mode): paused, the poll loop polling on."""
        return partial(st.paused_sleep, self.sleep)


class _Resumed:
    """Awaits a handler coroutine the partition task already started (it yielded ``first``).

    The coroutine continues in the task that awaits this (the lane: the same task it started in),
    as if ``await coro`` had been written in the first place: the Task sees ``first`` (the future the
    coroutine waits on) and resumes, throws and cancels through here."""

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Coroutine[Any, Any, None], first: Any) -> None:
        self._coro, self._first = coro, first

    def __await__(self) -> Generator[Any, Any, None]:
        coro, value = self._coro, self._first
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancellation (or anything thrown in) goes to the handler
                try:
                    value = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    value = coro.send(sent)
                except StopIteration:
                    return
