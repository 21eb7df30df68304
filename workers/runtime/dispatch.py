"""What a partition task does: take records in offset order, run each key's records one at a time,
different keys at once (up to the route's ``max_in_flight_per_partition``).

Owns the per-key concurrency of one partition (Confluent Parallel Consumer's KEY ordering, Karafka's
virtual partitions by key). Must not commit (it marks records done in the ``OffsetTracker``; the
commits follow it) nor decide retries (``workers.runtime.retrying``).

Delivery rules (``tests/unit/test_runtime_key_concurrency.py`` checks them as properties):

* a key's records run strictly one after another, in offset order: a record whose key is in flight
  is queued behind it (``Lane.queue``) and the lane runs it next;
* records of other keys do not wait for it: up to ``limit`` keys are in flight per partition, and
  up to ``worker_limit`` over all the worker's partitions (checked before a handler starts, and a
  handler becomes a key in flight in the same step in which it first waits: never above the cap);
* a record is done when its handler returned, or when its retry/dead-letter copy was acknowledged;
  the committed offset never passes a record not done (``OffsetTracker``), so a crash redelivers
  every unfinished record (at-least-once; the inbox makes effects once);
* revocation and shutdown stop taking records and let every busy lane finish the record in its
  handler (bounded by the grace); records queued behind it and lanes waiting in a back-off are left
  not done. The commit stops at the first of them; records of other keys done after it travel in
  the commit's metadata (``workers.runtime.done_ahead``) and the next owner skips them;
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
partition to a successor task (``workers.runtime.lanes`` runs the lane). Python 3.12's eager tasks
do the same; 3.11 has none.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from bisect import bisect_left
from collections.abc import Callable
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
from workers.runtime.decode import Decoded, Decoder, invalid_payload
from workers.runtime.lanes import FirstStep, Lanes
from workers.runtime.message import Message, header_int
from workers.runtime.metrics import LATENCY_BUCKETS
from workers.runtime.partition import BUFFER_FULL, NOT_BEFORE, Partition, Sleep
from workers.runtime.retrying import FailurePath, Hold
from workers.runtime.route import Handler

if TYPE_CHECKING:
    from workers.runtime.commits import Commits

log = structlog.get_logger(__name__)


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
        worker_limit: int,
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
        self.lanes = Lanes(
            decoder, failures, breaker, worker_limit=worker_limit, sleep=sleep, finish=self.finish, start=self.start
        )
        self._on_task_done = on_task_done
        # Every partition task starts from the context the worker was built in (what the composition
        # root bound), not from the context of the task that starts it: a successor is started by a
        # handler's task at its first wait, inside whatever context variables that handler set.
        self._context = contextvars.copy_context()

    @property
    def worker_limit(self) -> int:
        """Keys in flight at most over all the worker's partitions (``Lanes``)."""
        return self.lanes.worker_limit

    def start(self, st: Partition) -> None:
        """Start (or hand on) the task that takes ``st``'s records."""
        name = f"partition {st.topic}[{st.partition}]"
        task = asyncio.create_task(self._take(st), name=name, context=self._context.copy())
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
        yield_every, perf, lanes_ = self.yield_every, time.perf_counter, self.lanes
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
            if lanes_.keys_in_flight >= lanes_.worker_limit:  # the worker's cap, over all its partitions
                lanes_.worker_room.clear()
                await lanes_.worker_room.wait()
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
                            first: FirstStep = partial(lanes_.fail_first, msg, handler, exc)
                        else:
                            first = partial(lanes_.resume, msg, handler, coro, yielded, started)
                    else:
                        first = partial(lanes_.admitted, msg, handler)
                    # The record waits: this task keeps it, as its key's lane; a successor takes the partition.
                    await lanes_.become(st, slot, rec, first)
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
            await self.lanes.become(st, slot, rec, partial(self.lanes.run_first, msg, handler))
            return True
        await self.lanes.settle(st, st, self.partition_hold(st), rec, decoded, slot)
        st.buffer.popleft()
        self.finish(st, rec)
        return False

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
