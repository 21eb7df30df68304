"""A key in flight on a partition (a lane): its first record, then the records of the same key queued
behind it, strictly one after another; and the worker's cap on keys in flight.

Owns running a handler once its partition task handed it over (``workers.runtime.dispatch`` starts
every handler itself and hands over those that wait), with its timing, the breaker's admission and
the failure path of each record. Must not take records from a buffer (``dispatch`` does) nor
commit: a record done here is reported through ``finish``, which the offsets follow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

import structlog

from events.envelope import binary_type
from workers.logs import RecordSlot
from workers.runtime.breaker import CircuitBreaker
from workers.runtime.consumer import ConsumerRecord
from workers.runtime.decode import Decoder, RecordLog, Rejected
from workers.runtime.message import Message
from workers.runtime.partition import Lane, Partition, Sleep
from workers.runtime.retrying import FailurePath, Hold
from workers.runtime.route import Handler

log = structlog.get_logger(__name__)

#: finishes the first record of a lane (continue its coroutine, or its failure path)
FirstStep = Callable[[Partition, Lane, ConsumerRecord], Awaitable[None]]


class Lanes:
    """The lanes of one worker, over all its partitions."""

    def __init__(
        self,
        decoder: Decoder,
        failures: FailurePath,
        breaker: CircuitBreaker,
        *,
        worker_limit: int,
        sleep: Sleep,
        finish: Callable[[Partition, ConsumerRecord], None],
        start: Callable[[Partition], None],
    ) -> None:
        if worker_limit < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.decoder, self.failures, self.breaker, self.sleep = decoder, failures, breaker, sleep
        self._finish, self._start = finish, start  # a record done; start a partition's successor task
        #: keys in flight over every partition of the worker, and their cap (``max_in_flight``): a
        #: handler that waits holds what it took (a pooled connection, a vendor slot) until it ends
        self.worker_limit, self.keys_in_flight = worker_limit, 0
        self.worker_room = asyncio.Event()  # a key ended somewhere: a partition waiting for the cap may go on

    async def settle(
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

    async def become(self, st: Partition, slot: RecordSlot, rec: ConsumerRecord, first: FirstStep) -> None:
        st.tracker.start(rec.offset)
        lane = Lane(rec.key)
        lane.task = asyncio.current_task()  # type: ignore[assignment]
        st.lanes[rec.key] = lane
        self.keys_in_flight += 1  # no await since the caller checked the cap: never above it
        self._start(st)  # the successor takes the partition's next records
        await self._lane(st, lane, slot, rec, first)

    async def _lane(self, st: Partition, lane: Lane, slot: RecordSlot, rec: ConsumerRecord, first: FirstStep) -> None:
        """Finish ``rec``, then the key's queued records one by one; then free the slot."""
        try:
            await first(st, lane, rec)
            self._finish(st, rec)
            # Once the partition is stopping (revoked or shut down) the records queued behind the key
            # are left not done, as the buffer is: a queue can hold hundreds of records of a hot key,
            # and an eager rebalance stops the whole group while a member revokes.
            queue = lane.queue
            while queue and not st.stopping:
                rec = queue.popleft()
                await self._run_queued(st, lane, slot, rec)
                self._finish(st, rec)
        finally:
            # Nothing between the last queue check and this: the partition task cannot queue a
            # record behind a lane that has already ended (one thread, no await in between).
            if st.lanes.get(lane.key) is lane:
                del st.lanes[lane.key]
            st.room.set()
            self.keys_in_flight -= 1
            self.worker_room.set()

    async def _run_queued(self, st: Partition, lane: Lane, slot: RecordSlot, rec: ConsumerRecord) -> None:
        h = dict(rec.headers)
        decoded = self.decoder.slow(rec, h, binary_type(h), st.tier)
        if not isinstance(decoded, tuple):
            await self.settle(st, lane, self._key_hold(st), rec, decoded, slot)
            return
        msg, handler, _ = decoded  # a batch handler here runs as a batch of one
        slot.current = msg
        await self.run_first(msg, handler, st, lane, rec)

    async def run_first(self, msg: Message, handler: Handler, st: Partition, lane: Lane, rec: ConsumerRecord) -> None:
        if not self.breaker.closed:
            await self.admitted(msg, handler, st, lane, rec)
        else:
            await self._run(st, lane, rec, msg, handler, handler(msg.event, msg), time.perf_counter())

    async def resume(
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
        await self._run(st, lane, rec, msg, handler, Resumed(coro, yielded), started)

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

    async def fail_first(
        self, msg: Message, handler: Handler, exc: Exception, st: Partition, lane: Lane, rec: ConsumerRecord
    ) -> None:
        await self.failures.failed(st, lane, self._key_hold(st), rec, msg.header_map, msg, handler, exc, False)

    async def admitted(self, msg: Message, handler: Handler, st: Partition, lane: Lane, rec: ConsumerRecord) -> None:
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


class Resumed:
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
