"""The state of one assigned partition, and why it is paused.

Owns what the poll loop, the partition task and the commits share about one partition: its buffer
of fetched records, its offset tracker, the keys in flight (``Lane``), its pause reasons; and how its
tasks stop on revocation and shutdown (``stop_partitions``). Must not handle records
(``workers.runtime.dispatch``) or commit (``workers.runtime.commits``).

A partition is paused (fetching stops; the poll loop keeps polling so the member never exceeds
``max.poll.interval.ms``) while a reason is set: its buffer is full, its head record waits for a
retry tier's ``retry_not_before``, a batch (which holds the whole partition) backs off, or the
circuit breaker is open. It resumes when no reason is left. A key that backs off does not pause
the partition: only that key waits (``Lane``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING

import structlog
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

from workers.runtime.consumer import ConsumerRecord, TopicPartition
from workers.runtime.offsets import OffsetTracker

if TYPE_CHECKING:
    from workers.runtime.consumer import ConsumerPort
    from workers.runtime.metrics import TopicStats

log = structlog.get_logger(__name__)

Sleep = Callable[[float], Awaitable[None]]

# why a partition is paused; it resumes when no reason is left
BUFFER_FULL = "buffer_full"
BACKOFF = "backoff"
NOT_BEFORE = "not_before"
BREAKER = "breaker"


class Abandon(asyncio.CancelledError):
    """The partition is stopping (revoked or shutdown) while a record waits: leave it not done."""


class Lane:
    """One key in flight on a partition: the task handling its records, strictly one after another,
    and the records of the same key that arrived meanwhile (queued in offset order)."""

    __slots__ = ("key", "queue", "task", "busy_since")

    def __init__(self, key: bytes | None) -> None:
        self.key = key
        self.queue: deque[ConsumerRecord] = deque()
        self.task: asyncio.Task[None] | None = None
        self.busy_since: float | None = None  # perf_counter() while its handler or a produce runs


class Partition:
    """One assigned partition: its buffer, tracker, tasks and pause reasons."""

    __slots__ = (
        "tp",
        "topic",
        "partition",
        "tier",
        "buffer",
        "tracker",
        "stats",
        "wakeup",
        "room",
        "lanes",
        "paused",
        "task",
        "stopping",
        "assigned",
        "busy_since",
        "skip",
        "_consumer",
    )

    def __init__(self, tp: TopicPartition, tier: int, stats: TopicStats, consumer: ConsumerPort) -> None:
        self.tp = tp
        self.topic: str = tp.topic
        self.partition: int = tp.partition
        self.tier = tier  # 0 source topic, n = <group>.retry.<n>
        self.buffer: deque[ConsumerRecord] = deque()
        self.tracker = OffsetTracker()
        self.stats = stats
        self.wakeup = asyncio.Event()  # records arrived, or the partition is stopping
        self.room = asyncio.Event()  # a lane ended: another key may start
        self.lanes: dict[bytes | None, Lane] = {}
        self.paused: set[str] = set()
        self.task: asyncio.Task[None] | None = None
        self.stopping = False
        self.assigned = True  # False once revoked: pausing it then is a no-op
        self.busy_since: float | None = None  # perf_counter() while the partition task itself waits on a call
        #: offsets the previous owner did beyond its committed offset (``workers.runtime.done_ahead``):
        #: acknowledged without handling, each removed as it passes
        self.skip: set[int] = set()
        self._consumer = consumer

    @property
    def backlog(self) -> int:
        """Records held for this partition: buffered, in flight or queued behind their key (what
        back-pressure bounds)."""
        return len(self.buffer) + self.tracker.pending

    @property
    def first_not_done(self) -> int | None:
        """The first offset not done (what lag is measured from)."""
        started = self.tracker.first_not_done
        if started is not None:
            return started
        return self.buffer[0].offset if self.buffer else self.tracker.committable

    def in_flight(self) -> int:
        """Handlers running now (the partition task's own call and every busy lane)."""
        return (self.busy_since is not None) + sum(1 for lane in self.lanes.values() if lane.busy_since is not None)

    def busy_for(self, now: float) -> float:
        """How long the longest running call on this partition has run (0 when none runs)."""
        starts = [lane.busy_since for lane in self.lanes.values() if lane.busy_since is not None]
        if self.busy_since is not None:
            starts.append(self.busy_since)
        return now - min(starts) if starts else 0.0

    def pause(self, reason: str) -> None:
        if not self.paused and self.assigned:
            try:
                self._consumer.pause(self.tp)
            except (KafkaError, KeyError, AssertionError):  # unassigned meanwhile
                pass
        self.paused.add(reason)

    def resume(self, reason: str) -> None:
        self.paused.discard(reason)
        if not self.paused and self.assigned:
            try:
                self._consumer.resume(self.tp)
            except (KafkaError, KeyError, AssertionError):
                pass

    async def paused_sleep(self, sleep: Sleep, reason: str, seconds: float) -> None:
        """Wait with the partition paused, not slept on: the poll loop keeps polling meanwhile."""
        if self.stopping:
            raise Abandon
        if seconds <= 0:
            return
        self.pause(reason)
        try:
            await sleep(seconds)
        finally:
            self.resume(reason)
        if self.stopping:
            raise Abandon

    async def key_sleep(self, sleep: Sleep, seconds: float) -> None:
        """Wait holding only the current key (a lane's back-off): fetching and other keys go on."""
        if self.stopping:
            raise Abandon
        if seconds > 0:
            await sleep(seconds)
        if self.stopping:
            raise Abandon

    def tasks(self) -> list[asyncio.Task[None]]:
        """The partition task and every lane task still running."""
        found = [lane.task for lane in self.lanes.values() if lane.task is not None and not lane.task.done()]
        if self.task is not None and not self.task.done():
            found.append(self.task)
        return found


async def stop_partitions(states: Collection[Partition], grace_s: float) -> None:
    """Stop the tasks of ``states`` (revoked, or every partition at shutdown): idle or waiting ones at
    once, handling ones after their record (bounded by ``grace_s``; then cancelled, and their record
    stays uncommitted)."""
    tasks = []
    for st in states:
        st.stopping = True
        st.wakeup.set()
        st.room.set()
        for lane in list(st.lanes.values()):
            if lane.task is not None and not lane.task.done() and lane.busy_since is None:
                lane.task.cancel()  # waiting (back-off, breaker): nothing to finish
        if st.task is not None and not st.task.done() and st.busy_since is None:
            st.task.cancel()  # waiting (buffer, room, delay): nothing to finish
        tasks.extend(st.tasks())
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=grace_s)
    for task in pending:
        log.warning("in_flight_abandoned", task=task.get_name(), grace_s=grace_s)
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
