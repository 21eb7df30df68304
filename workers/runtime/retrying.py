"""What happens when a record fails: in-place attempts, a hold, a retry tier or the dead letter.

Owns the failure path of one record, shared by the partition task, its key lanes and batch mode:
retry in place with back-off (``RetryPolicy``), hold the record while the circuit breaker is open,
block (routes without dead letters), drop, or produce its copy to ``<group>.retry.<n>`` /
``<group>.dlq``. Must not decide offsets: it returns once the record is finished (handled, or its
copy acknowledged by Kafka), or raises (``Abandon``, cancellation) leaving it not done.

Who waits while a record backs off is the caller's choice (``Hold``): a key lane holds only its key,
the partition task (batch mode, undecodable records) pauses the whole partition.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Protocol

import structlog
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

from adapters.kafka import ProducerPort
from events.errors import DependencyUnavailable, is_systemic
from events.failure import Stage, class_of
from events.topics import retry_topic
from workers.runtime.breaker import CircuitBreaker
from workers.runtime.consumer import ConsumerRecord
from workers.runtime.failure import (
    FailedRecord,
    FailureInfo,
    dead_letter_headers,
    retry_record_headers,
    target_partition,
)
from workers.runtime.message import Message
from workers.runtime.partition import BACKOFF, Abandon, Partition
from workers.runtime.policy import Decision, RetryPolicy, Verdict
from workers.runtime.route import Handler

if TYPE_CHECKING:
    from workers.runtime.metrics import TopicStats

log = structlog.get_logger(__name__)

#: wait ``seconds`` for ``reason`` (a pause reason); raises ``Abandon`` when the partition stops
Hold = Callable[[str, float], Awaitable[None]]
PartitionsFor = Callable[[str], Awaitable[int | None]]


class Busy(Protocol):
    """Who is marked busy while a handler or a produce runs (liveness): a ``Partition`` or a ``Lane``."""

    busy_since: float | None


class FailurePath:
    """The route's failure handling: one instance per worker, shared by all its partitions."""

    def __init__(
        self,
        group: str,
        dlq: str,
        policy: RetryPolicy,
        breaker: CircuitBreaker,
        producer: ProducerPort,
        *,
        clock: Callable[[], float],
        partition_count: Callable[[str], Awaitable[int | None]],
        produce_backoff_s: tuple[float, float],
    ) -> None:
        self.group, self.dlq, self.policy, self.breaker = group, dlq, policy, breaker
        self._producer = producer
        self._clock = clock
        self._partition_count = partition_count
        self._produce_backoff_s = produce_backoff_s  # (first, max) delay between produce attempts

    async def failed(
        self,
        st: Partition,
        busy: Busy,
        hold: Hold,
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
        run = Attempts(busy, st.stats, handler, msg)
        first_failed_at = self._clock()
        error: BaseException | None = first_error
        try:
            while True:
                if error is not None:
                    error, _ = await self.policy.run_in_place(
                        run.attempt,
                        error,
                        sleep=partial(hold, BACKOFF),
                        on_retry=partial(_log_retry, st.stats),
                    )
                if error is None:
                    st.stats.processed += 1
                    self.breaker.record_success()
                    trial = False
                    return
                st.stats.failed += 1
                decision = self.policy.decide(error, st.tier)
                if decision.verdict is Verdict.BLOCK:
                    log.error("record_blocked", error=str(error), error_class=class_of(error), attempts=run.count)
                    await hold(BACKOFF, self.policy.backoff_max_s)
                elif is_systemic(error) and self.breaker.record_failure(class_of(error)):
                    # Systemic outage: moving the record would only add work; hold it and retry it
                    # when the breaker lets a trial through (the record stays uncommitted meanwhile).
                    # Record-specific permanent errors (poison messages) never count: a run of them
                    # must reach the dead letter, not hold the good records behind them.
                    trial = False
                    log.warning("record_held_by_breaker", error_class=class_of(error))
                    trial = await self.breaker.admit()
                    if st.stopping:
                        raise Abandon
                elif decision.verdict is Verdict.DROP:
                    log.error("record_dropped", error=str(error), error_class=class_of(error), attempts=run.count)
                    return
                else:
                    info = FailureInfo(error, stage_of(error), run.count, first_failed_at, self._clock())
                    await self.move(st, busy, hold, rec, h, decision, info)
                    return
                error = await run.once()  # a fresh round after a hold or a block
        finally:
            if trial:
                self.breaker.release_trial()

    async def reject(
        self,
        st: Partition,
        busy: Busy,
        hold: Hold,
        rec: ConsumerRecord,
        h: Mapping[str, bytes | None],
        error: Exception,
        stage: str,
    ) -> None:
        """Dead-letter a record that cannot be decoded (no handler ran: zero attempts in this run)."""
        log.warning("record_undecodable", offset=rec.offset, stage=stage, error=str(error))
        decision = self.policy.decide(error, st.tier)
        if decision.verdict is Verdict.DROP:
            log.error("record_dropped", offset=rec.offset, stage=stage, error=str(error))
            return
        now = self._clock()
        info = FailureInfo(error, stage, 0, now, now)
        await self.move(st, busy, hold, rec, h, Decision(Verdict.DEAD_LETTER), info)

    async def move(
        self,
        st: Partition,
        busy: Busy,
        hold: Hold,
        rec: ConsumerRecord,
        h: Mapping[str, bytes | None],
        decision: Decision,
        info: FailureInfo,
    ) -> None:
        """Produce the record's copy to a retry tier or the dead letter; the original counts as
        done only after Kafka acknowledged the copy (so a crash in between re-handles it instead
        of losing it; the copy may then exist twice, which replay and the inbox tolerate)."""
        record = FailedRecord(rec.topic, rec.partition, rec.offset, rec.timestamp, rec.key, rec.value, rec.headers)
        group = self.group
        if decision.verdict is Verdict.RETRY_TOPIC:
            topic = retry_topic(group, decision.tier)
            not_before_ms = int((self._clock() + decision.delay_s) * 1000)
            headers = retry_record_headers(
                record, h, group=group, failure=info, tier=decision.tier, not_before_ms=not_before_ms
            )
        else:
            topic = self.dlq
            headers = dead_letter_headers(record, h, group=group, failure=info)
        partition = target_partition(h, record, await self._partition_count(topic))
        await self._produce(busy, hold, topic, rec.key, rec.value, headers, partition)
        if decision.verdict is Verdict.RETRY_TOPIC:
            st.stats.retried_to_topic += 1
            log.warning(
                "record_moved_to_retry",
                tier=decision.tier,
                delay_s=decision.delay_s,
                error_class=class_of(info.error),
                attempts=info.attempts,
            )
        else:
            st.stats.dead_lettered += 1
            log.error(
                "record_dead_lettered",
                dlq=topic,
                stage=info.stage,
                error_class=class_of(info.error),
                error=str(info.error),
                attempts=info.attempts,
            )

    async def _produce(
        self,
        busy: Busy,
        hold: Hold,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        partition: int | None,
    ) -> None:
        """Produce until Kafka takes it: a failure copy must not be lost, and the original is not
        acknowledged before it is written (its key or partition waits meanwhile)."""
        delay, ceiling = self._produce_backoff_s
        while True:
            busy.busy_since = time.perf_counter()
            try:
                await self._producer.publish_raw(topic, key, value, headers, partition)
                return
            except DependencyUnavailable as exc:
                log.error("failure_copy_not_produced", topic=topic, error=str(exc), retry_in_s=delay)
            finally:
                busy.busy_since = None
            await hold(BACKOFF, delay)
            delay = min(delay * 2, ceiling)


class PartitionCounts:
    """Partition counts of the failure topics, asked once per topic (``target_partition`` keeps a
    dead letter on its key's partition when the counts match)."""

    def __init__(self, partitions_for: PartitionsFor | None, known: Callable[[str], set[int] | None]) -> None:
        self._partitions_for = partitions_for
        self._known = known  # the consumer's metadata, when no producer-side lookup is given
        self._counts: dict[str, int | None] = {}

    async def __call__(self, topic: str) -> int | None:
        if topic not in self._counts:
            count: int | None = None
            if self._partitions_for is not None:
                try:
                    count = await self._partitions_for(topic)
                except (KafkaError, TimeoutError) as exc:
                    log.warning("partition_count_unknown", topic=topic, error=repr(exc))
                    return None
            else:
                known = self._known(topic)
                count = len(known) if known else None
            self._counts[topic] = count
        return self._counts[topic]


class Attempts:
    """The handler invocations of one record in this worker (every round), timed and counted."""

    __slots__ = ("busy", "stats", "handler", "msg", "prior", "count")

    def __init__(self, busy: Busy, stats: TopicStats, handler: Handler, msg: Message) -> None:
        self.busy, self.stats, self.handler, self.msg = busy, stats, handler, msg
        self.prior = msg.attempts - 1  # invocations on earlier tiers
        self.count = 1  # the first attempt already ran

    async def attempt(self, _number: int = 0) -> None:
        self.count += 1
        self.msg.attempts = self.prior + self.count
        busy = self.busy
        started = busy.busy_since = time.perf_counter()
        try:
            await self.handler(self.msg.event, self.msg)
        finally:
            busy.busy_since = None
            self.stats.observe(time.perf_counter() - started)

    async def once(self) -> BaseException | None:
        try:
            await self.attempt()
        except Exception as exc:
            return exc
        return None


def stage_of(error: BaseException) -> str:
    """``produce`` when the handler's own publish to Kafka failed, ``handle`` otherwise."""
    if isinstance(error, DependencyUnavailable) and error.upstream == "kafka":
        return Stage.PRODUCE
    return Stage.HANDLE


def _log_retry(stats: TopicStats, error: BaseException, attempt: int, wait_s: float) -> None:
    stats.retried_in_place += 1
    log.info("record_retrying_in_place", error_class=class_of(error), attempt=attempt, wait_s=round(wait_s, 3))
