"""When offsets move: commit each partition's first not-done offset, never past it, never backwards.

Owns the commits of one worker: periodic ones from the poll loop (as a background task, one at a
time), and the final ones on revocation and shutdown. Must not decide what is done
(``workers.runtime.offsets`` does, fed by the partition tasks). Never auto-commit: a record is
committed only after its handler returned or its retry/dead-letter copy was acknowledged by Kafka,
so a crash at any point redelivers it (at-least-once; the inbox makes the handler's effects once).
Each commit carries, in its metadata, the offsets done beyond the committed one
(``workers.runtime.done_ahead``), so the next owner skips them. A failed commit is never fatal: the
revocation path commits again, or the next owner re-reads from the last commit and the inbox
absorbs the duplicates.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Mapping

import structlog
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

from workers.runtime import done_ahead
from workers.runtime.consumer import ConsumerPort, TopicPartition
from workers.runtime.partition import Partition

log = structlog.get_logger(__name__)


class Commits:
    """The offsets a worker committed, and the ones it owes."""

    def __init__(
        self,
        consumer: ConsumerPort,
        group: str,
        parts: Mapping[TopicPartition, Partition],
        on_crash: Callable[[BaseException], None],
    ) -> None:
        self._consumer = consumer
        self._group = group
        self._parts = parts  # the worker's assigned partitions (read, never changed here)
        self._on_crash = on_crash
        self._task: asyncio.Task[None] | None = None  # the poll loop's commit in flight
        #: records done since the last successful commit (the poll loop commits every N of them)
        self.owed = 0
        self.failures = 0
        self.last_commit: float | None = None  # perf_counter() of the last commit (or "nothing owed")

    def in_background(self) -> None:
        """The poll loop's periodic commit, as a task: the loop keeps fetching during the round trip
        (awaited, it left the partition tasks without new records for as long, and at 150k records/s
        a commit every 5,000 records is 30 round trips a second). One at a time, so committed offsets
        only move forward; revocation and shutdown wait for it (``settled``) before their own final
        commit. An unexpected error in it stops the worker like a crashed partition task."""
        task = self._task
        if task is not None and not task.done():
            return
        self._task = asyncio.create_task(self.commit(), name=f"commit-{self._group}")
        self._task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            log.error("commit_task_crashed", exc_info=exc)
            self._on_crash(exc)

    async def settled(self) -> None:
        """Wait for the background commit in flight, if any."""
        task = self._task
        if task is not None and not task.done():
            await asyncio.wait([task])

    async def commit(self, states: Collection[Partition] | None = None) -> None:
        """Commit the first not-done offset of every partition that moved since its last commit."""
        parts = list(self._parts.values()) if states is None else list(states)
        owed_before = self.owed
        offsets: dict[TopicPartition, tuple[int, str]] = {}
        for st in parts:
            tracker = st.tracker
            offset, ahead = tracker.commit_point()
            if offset is None:
                continue
            metadata = done_ahead.encode(offset, ahead) if ahead else ""
            if offset != tracker.committed or metadata != tracker.committed_metadata:
                offsets[st.tp] = (offset, metadata)
        if not offsets:
            self.last_commit = time.perf_counter()  # nothing owed: committed offsets are current
            return
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:
            self.failures += 1
            log.warning("commit_failed", error=repr(exc), partitions=len(offsets))
            return
        for st in parts:
            point = offsets.get(st.tp)
            if point is not None:
                st.tracker.mark_committed(*point)
        self.owed = max(0, self.owed - owed_before)  # records done meanwhile still count
        self.last_commit = time.perf_counter()
