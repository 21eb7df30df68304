"""How polling paces itself: one ``getmany`` loop that feeds every partition's buffer, holds back a
partition whose backlog is full, keeps aiokafka fetching ahead while records flow, and commits on a
timer.

Owns the poll loop of one worker and aiokafka's fetch pacing (``FetchPacing``). Must not handle
records (the partition tasks do, ``workers.runtime.dispatch``) nor decide what is committable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from workers.runtime import gc_policy
from workers.runtime.consumer import ConsumerPort, TopicPartition
from workers.runtime.partition import BUFFER_FULL, Partition

if TYPE_CHECKING:
    import asyncio

    from workers.config import RuntimeSettings
    from workers.runtime.commits import Commits

_ONLY_FULL = {BUFFER_FULL}
#: the poll timeout while a partition waits for room in its backlog (see PollLoop.run)
FULL_POLL_TIMEOUT_MS = 5

#: while a worker is busy: the broker's long poll of a fetch for partitions without data (ms; the
#: configured ``fetch_max_wait_ms``, 100, applies when idle), see FetchPacing
BUSY_FETCH_WAIT_MS = 5


class FetchPacing:
    """Keeps aiokafka fetching ahead while records flow; restores its idle settings when they stop.

    aiokafka keeps one fetch in flight per broker, and while any partition of a broker holds
    prefetched records younger than ``prefetch_backoff`` (100 ms) it sends that broker no fetch at
    all. A busy worker drains its partitions one after another, so a drained one waited for the
    others, or for those 100 ms; and when the fetch finally went out while every source partition
    still held records, it asked only for the idle ones (the retry tiers), which the broker held for
    ``fetch_max_wait_ms`` while the source partitions drained behind it. Deep buffers on our side hid
    those stalls at a price: a record handled 16,000 records after aiokafka built it is out of the CPU
    cache (bench/runtime_bench.py: ~0.7 us more per record). While busy, a drained partition is
    therefore fetched at once (no prefetch backoff) and an empty fetch returns after 5 ms. Idle, the
    configured long poll applies again: a short one everywhere would poll the broker 200 times a
    second per idle worker (apache/openwhisk#3971 measured what idle polling costs a broker; centrifugo
    #997 and Dekaf#607 shortened the wait for the same head-of-line stall).

    aiokafka reads both values from its fetcher's attributes each time it builds a fetch (the
    backoff when a fetch result is stored) and has no public setter, so this sets those attributes;
    a consumer without them (the test fake, another client) keeps its configuration. aiokafka is held
    to 0.14.x in pyproject.toml, and tests/integration/test_runtime_kafka.py fails if the attributes go away."""

    def __init__(self, consumer: object, busy_wait_ms: int = BUSY_FETCH_WAIT_MS) -> None:
        self._consumer = consumer
        self.busy_wait_ms = busy_wait_ms
        self.idle: tuple[int, float] | None = None  # the consumer's own (wait ms, backoff s), read at the first switch
        self.busy = False

    def set(self, busy: bool) -> None:
        """Busy (the last poll returned records, or some wait in the worker's buffers) or idle."""
        if busy is self.busy:
            return
        fetcher: Any = getattr(self._consumer, "_fetcher", None)  # exists once the consumer started
        wait, backoff = getattr(fetcher, "_fetch_max_wait_ms", None), getattr(fetcher, "_prefetch_backoff", None)
        if not isinstance(wait, int) or not isinstance(backoff, int | float):
            return
        if self.idle is None:
            self.idle = (wait, float(backoff))
        idle_wait, idle_backoff = self.idle
        fetcher._fetch_max_wait_ms = min(self.busy_wait_ms, idle_wait) if busy else idle_wait
        fetcher._prefetch_backoff = 0.0 if busy else idle_backoff
        self.busy = busy


class PollLoop:
    """Fetch, buffer per partition, commit on a timer, until ``stop`` is set."""

    def __init__(
        self,
        consumer: ConsumerPort,
        parts: dict[TopicPartition, Partition],
        commits: Commits,
        settings: RuntimeSettings,
        *,
        open_partition: Callable[[TopicPartition], Partition],
        each_turn: Callable[[], None],
    ) -> None:
        self._consumer, self._parts, self._commits = consumer, parts, commits
        # the knobs, read once (a pydantic attribute costs ~3x a plain one)
        self._poll_timeout_ms, self._max_records = settings.poll_timeout_ms, settings.max_records
        self._high = settings.buffer_per_partition
        self._commit_interval_s, self._commit_every = settings.commit_interval_s, settings.commit_every
        self._gc_interval_s, self._gc_full_every = settings.gc_interval_s, settings.gc_full_every
        self._open = open_partition
        self._each_turn = each_turn  # the worker's own check per turn (a crash, the breaker's pauses)
        self.last_turn = time.perf_counter()  # liveness: when the loop last turned

    async def run(self, stop: asyncio.Event) -> None:
        consumer, parts, commits, high = self._consumer, self._parts, self._commits, self._high
        poll_timeout_ms, max_records = self._poll_timeout_ms, self._max_records
        commit_interval_s, commit_every = self._commit_interval_s, self._commit_every
        gc_interval_s, gc_full_every = self._gc_interval_s, self._gc_full_every
        pacing = FetchPacing(consumer)
        next_commit = time.perf_counter() + commit_interval_s
        self.last_turn = time.perf_counter()
        while not stop.is_set():
            # Back-pressure without pausing: drain only the partitions whose backlog has room; the
            # others keep at most one prefetched fetch result inside aiokafka, which fetches no more
            # for them until it is drained. Pausing instead would cost a stall on every resume:
            # aiokafka has one fetch in flight per broker, and with the source partitions paused
            # that fetch long-polls the (usually empty) retry tiers for fetch_max_wait_ms.
            room: list[TopicPartition] = []
            full = False  # some partition waits for room in its backlog, not for a back-off or the breaker
            for tp in consumer.assignment():
                st = parts.get(tp)
                if st is None or not st.paused and st.backlog < high:
                    room.append(tp)
                elif not st.paused or st.paused == _ONLY_FULL:
                    full = True
            if not room:
                # Everything full or waiting: pause the full ones and poll anyway (an all-paused
                # poll returns nothing), so the member keeps within max.poll.interval.ms.
                for st in parts.values():
                    if st.backlog >= high:
                        st.pause(BUFFER_FULL)
            # A full partition gets room as its tasks work through its backlog, but a long poll of
            # the others (often only the idle retry tiers) would not return for it: poll briefly then,
            # or the partition tasks run dry and idle until the poll times out.
            timeout_ms = min(poll_timeout_ms, FULL_POLL_TIMEOUT_MS) if full else poll_timeout_ms
            batch = await consumer.getmany(*room, timeout_ms=timeout_ms, max_records=max_records)
            # Busy while records flow: aiokafka fetches a drained partition at once and an empty
            # fetch does not hold up the busy partitions (FetchPacing).
            pacing.set(bool(batch) or any(st.buffer or st.lanes for st in parts.values()))
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
            # After the fetch, as the old loop did: a breaker opened before the first poll still lets
            # the first records in, and their handlers' admit() is what moves it to half-open.
            self._each_turn()
            now = self.last_turn = time.perf_counter()
            if now >= next_commit or commits.owed >= commit_every:
                commits.in_background()
                next_commit = now + commit_interval_s
            if gc_interval_s is not None:
                gc_policy.tick(now, gc_interval_s, gc_full_every)
