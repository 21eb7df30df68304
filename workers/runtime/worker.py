"""One worker: the lifecycle and wiring of the consume runtime for one route.

Owns the consumer's lifecycle (subscribe with its rebalance listener, start, stop = leave the group),
the assigned partitions (open on assignment, stop and commit on revocation and shutdown) and the
worker's health. Must not contain business rules, nor the loop's details: each question a newcomer
asks has its own module:

* how a record is decoded: ``decode`` (the dispatch table, the slow path);
* what a partition task does: ``dispatch`` (offset order, keys at once, one key at a time);
* what happens when it fails: ``retrying`` (in place, breaker hold, retry tier, dead letter);
* when offsets move: ``offsets`` (what is committable) and ``commits`` (committing it);
* how polling paces itself: ``polling`` (the getmany loop, back-pressure, fetch pacing);
* batch handlers: ``batch``; the state of a partition and its pauses: ``partition``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import cast

import asyncpg
import structlog
from prometheus_client import CollectorRegistry

from adapters.kafka import ProducerPort
from events.topics import retry_topic
from workers.config import RuntimeSettings
from workers.runtime import done_ahead, gc_policy
from workers.runtime.breaker import CircuitBreaker
from workers.runtime.commits import Commits
from workers.runtime.companions import Companions
from workers.runtime.consumer import ConsumerPort, ConsumerRebalanceListener, TopicPartition
from workers.runtime.dead_letters import DeadLetterGauges, OffsetsReader
from workers.runtime.decode import Decoder
from workers.runtime.dispatch import Dispatcher
from workers.runtime.inbox import start_purge
from workers.runtime.metrics import RuntimeMetrics
from workers.runtime.partition import BREAKER, Partition, Sleep, stop_partitions
from workers.runtime.policy import RetryPolicy
from workers.runtime.polling import PollLoop
from workers.runtime.retrying import FailurePath, PartitionCounts, PartitionsFor
from workers.runtime.route import Route
from workers.runtime.vitals import Vitals

log = structlog.get_logger(__name__)

#: what the dead-letter gauges need of the consumer (aiokafka's has them; the unit tests' fake not)
_LIST_OFFSETS = ("beginning_offsets", "end_offsets", "offsets_for_times")


class Worker:
    """Runs one ``Route`` on one consumer until ``stop`` is set.

    The composition root owns the producer and the pool. ``sleep`` and ``clock`` (wall time,
    seconds) are injectable so back-offs, retry delays and the breaker run instantly in unit tests.
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
    ) -> None:
        self.route = route
        self.settings = settings
        self._consumer = consumer
        self._pool = pool
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
        # A handler may carry a ``collector`` of its own metrics (the sf-writer's API usage and
        # deferrals): this worker's /metrics serves it beside the runtime's, once per handler.
        for handler in {id(h): h for h in route.handlers.values()}.values():
            collector = getattr(handler, "collector", None)
            if collector is not None:
                self.metrics.registry.register(collector)
        self.breaker = CircuitBreaker(settings.breaker, clock=clock, sleep=sleep)
        grace = settings.revoke_grace_s
        self._revoke_grace_s = grace if grace is not None else min(settings.shutdown_grace_s, 5.0)
        self._parts: dict[TopicPartition, Partition] = {}
        self.commits = Commits(consumer, route.group, self._parts, self._crashed)
        counts = PartitionCounts(partitions_for, getattr(consumer, "partitions_for_topic", lambda _t: None))
        self.failures = FailurePath(
            route.group,
            route.dlq,
            self.policy,
            self.breaker,
            producer,
            clock=clock,
            partition_count=counts,
            produce_backoff_s=(max(settings.backoff_initial_s, 0.05), max(settings.backoff_max_s, 1.0)),
        )
        # the group's dead letters as Kafka keeps them, read by the owner of the first partition only
        self.dead_letters: DeadLetterGauges | None = None
        if route.dead_letter and all(hasattr(consumer, m) for m in _LIST_OFFSETS):
            first = TopicPartition(route.topics[0], 0)
            self.dead_letters = DeadLetterGauges(
                route.group,
                route.dlq,
                cast(OffsetsReader, consumer),
                counts,
                lambda: first in consumer.assignment(),
                settings.dead_letter_check_interval_s,
                clock,
            )
            self.metrics.registry.register(self.dead_letters)
        self.dispatcher = Dispatcher(
            Decoder(route),
            self.failures,
            self.breaker,
            self.commits,
            limit=settings.max_in_flight_per_partition or route.max_in_flight_per_partition or 1,
            worker_limit=in_flight_cap(settings.max_in_flight, pool),
            low_water=max(1, settings.buffer_per_partition // 2),
            yield_every=settings.yield_every,
            sleep=sleep,
            clock=clock,
            on_task_done=self._partition_task_done,
        )
        self._poll = PollLoop(
            consumer,
            self._parts,
            self.commits,
            settings,
            open_partition=self._open,
            each_turn=self._each_turn,
        )
        self._listener = _Listener(self)
        self._breaker_paused = False
        self.vitals = Vitals(consumer, self._parts, self._poll, self.commits, self.breaker, settings.liveness_timeout_s)
        self.metrics.snapshot = self.vitals.snapshot

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
        s = self.settings
        # restored even when leaving the group fails: the process's collector must not stay off
        with gc_policy.running(freeze_heap=s.freeze_gc, full_every=s.gc_full_every, timed=s.gc_interval_s is not None):
            self.vitals.started = True
            log.info(
                "worker_started",
                route=self.route.name,
                group=self.route.group,
                topics=list(self.topics),
                max_in_flight_per_partition=self.dispatcher.limit,
                max_in_flight=self.dispatcher.worker_limit,
            )
            purge = start_purge(self._pool, s) if self._pool is not None else None
            companions = Companions([*self.route.handlers.values(), self.dead_letters], self._crashed)
            companions.start()
            try:
                await self._poll.run(stop)
            finally:
                self.vitals.stopping = True
                await companions.stop()
                if purge is not None:
                    purge.cancel()
                    await asyncio.gather(purge, return_exceptions=True)
                await self._shutdown()

    def _each_turn(self) -> None:
        if self.vitals.crash is not None:
            raise self.vitals.crash
        if self.breaker.closed == self._breaker_paused:
            # Open breaker: pause every partition (a systemic outage; fetching more only piles up work).
            self._breaker_paused = not self.breaker.closed
            for st in self._parts.values():
                (st.pause if self._breaker_paused else st.resume)(BREAKER)

    async def _shutdown(self) -> None:
        """SIGTERM path: stop taking records, let in-flight ones finish (bounded), commit, leave."""
        states = list(self._parts.values())
        await stop_partitions(states, self.settings.shutdown_grace_s)
        await self.commits.settled()
        await self.commits.commit(states)
        self._parts.clear()
        try:
            await self._consumer.stop()  # leaves the group: the partitions move on at once
        finally:
            log.info("worker_stopped", route=self.route.name, group=self.route.group)

    def _open(self, tp: TopicPartition, *, start: bool = True) -> Partition:
        st = Partition(tp, self._tier_of.get(tp.topic, 0), self.metrics.topic(tp.topic), self._consumer)
        self._parts[tp] = st
        if self._breaker_paused:
            st.pause(BREAKER)
        if start:
            self.dispatcher.start(st)
        return st

    def _crashed(self, exc: BaseException) -> None:
        if self.vitals.crash is None:
            self.vitals.crash = exc

    def _partition_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self.vitals.crash is None:
            # A bug in the runtime itself (handler errors never get here): stop the worker rather
            # than leave a partition silently unprocessed; nothing undone was committed.
            log.error("partition_task_crashed", task=task.get_name(), exc_info=exc)
            self.vitals.crash = exc

    # --- rebalance ---------------------------------------------------------------------------

    async def _on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        """Before giving partitions up: finish (bounded) what is in flight and commit what is done,
        so the next owner starts exactly after it and no side effect runs twice."""
        states = [st for tp in revoked if (st := self._parts.pop(tp, None)) is not None]
        if not states:
            return
        for st in states:
            st.assigned = False
        await stop_partitions(states, self._revoke_grace_s)
        await self.commits.settled()
        await self.commits.commit(states)
        log.info("partitions_revoked", partitions=sorted(f"{st.topic}[{st.partition}]" for st in states))

    async def _on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Open every assigned partition at once (idle until records arrive), so an open breaker
        pauses all of them and the metrics show them all. Each skips the records its previous owner
        did beyond its commit (``workers.runtime.done_ahead``): its task starts once they are known
        (records fetched meanwhile wait in its buffer)."""
        assigned = list(assigned)
        log.info("partitions_assigned", partitions=sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))
        opened = [self._open(tp, start=False) for tp in assigned if tp not in self._parts]
        if not opened:
            return
        points: dict[TopicPartition, tuple[int, str]] = {}
        try:
            points = await asyncio.wait_for(
                self._consumer.committed_metadata([st.tp for st in opened]), self._revoke_grace_s
            )
        except Exception as exc:  # costs only redelivery (the inbox keeps effects once), never a partition
            log.warning("done_ahead_unread", error=repr(exc), partitions=len(opened))
        finally:  # even when cancelled: a partition opened without its task would never be handled
            for st in opened:
                offset, metadata = points.get(st.tp, (None, ""))
                if offset is not None and metadata:
                    st.skip.update(done_ahead.decode(offset, metadata))
                if not st.stopping and st.task is None:
                    self.dispatcher.start(st)

    # --- health ----------------------------------------------------------------------------

    def liveness(self) -> tuple[bool, str]:
        return self.vitals.liveness()

    def readiness(self) -> tuple[bool, str]:
        return self.vitals.readiness()


def in_flight_cap(max_in_flight: int, pool: asyncpg.Pool | None) -> int:
    """``max_in_flight``, at most the pool's size - 1 (see ``RuntimeSettings.max_in_flight``)."""
    if pool is None:
        return max_in_flight
    cap = max(1, min(max_in_flight, pool.get_max_size() - 1))
    if cap < max_in_flight:
        log.info("in_flight_capped_by_pool", max_in_flight=max_in_flight, pool_max=pool.get_max_size(), cap=cap)
    return cap


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
        await self._worker._on_assigned(assigned)


__all__ = ["Worker"]
