"""What a worker says about itself: alive (``/livez``), ready (``/readyz``), and the partition gauges
of ``/metrics`` (lag, backlog, in flight, paused).

Owns the worker's outward state (started, stopping, the crash that stops it) and the judgement of
health from it. Must not change anything it reads: the partitions, the poll loop, the commits and
the breaker belong to the worker's other parts; ``workers.runtime.health`` serves the answers.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

from workers.runtime.breaker import CircuitBreaker
from workers.runtime.commits import Commits
from workers.runtime.consumer import ConsumerPort, TopicPartition
from workers.runtime.metrics import PartitionGauge, Snapshot
from workers.runtime.partition import Partition
from workers.runtime.polling import PollLoop


class Vitals:
    """One worker's health, read from its parts."""

    def __init__(
        self,
        consumer: ConsumerPort,
        parts: Mapping[TopicPartition, Partition],
        poll: PollLoop,
        commits: Commits,
        breaker: CircuitBreaker,
        liveness_timeout_s: float,
    ) -> None:
        self._consumer, self._parts, self._poll = consumer, parts, poll
        self._commits, self._breaker, self._limit = commits, breaker, liveness_timeout_s
        self.started = False  # the consumer started (joined or joining its group)
        self.stopping = False  # shutdown began
        #: the error that stops the worker (a runtime bug, a crashed commit task), raised by the poll loop
        self.crash: BaseException | None = None

    def liveness(self) -> tuple[bool, str]:
        """Alive = the poll loop turned recently and no handler is stuck (an orchestrator restarts us)."""
        if self.crash is not None:
            return False, f"crashed: {self.crash!r}"
        now, limit = time.perf_counter(), self._limit
        last_turn = self._poll.last_turn
        if self.started and not self.stopping and now - last_turn > limit:
            return False, f"poll loop made no progress for {now - last_turn:.0f}s"
        for st in self._parts.values():
            busy_for = st.busy_for(now)
            if busy_for > limit:
                return False, f"handler on {st.topic}[{st.partition}] busy for {busy_for:.0f}s"
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        """Ready = the consumer is started, not stopping, and has partitions assigned."""
        if self.crash is not None:
            return False, "crashed"
        if not self.started:
            return False, "consumer not started"
        if self.stopping:
            return False, "shutting down"
        assigned = self._consumer.assignment()
        if not assigned:
            return False, "no partitions assigned"
        return True, f"{len(assigned)} partitions assigned"

    def snapshot(self) -> Snapshot:
        """The gauges ``RuntimeMetrics`` renders at each scrape."""
        now = time.perf_counter()
        gauges = []
        for st in self._parts.values():
            highwater = self._highwater(st.tp)
            gauges.append(
                PartitionGauge(
                    st.topic,
                    st.partition,
                    _lag(highwater, st.first_not_done),
                    _lag(highwater, st.tracker.received_up_to),
                    st.backlog,
                    st.in_flight(),
                    bool(st.paused),
                )
            )
        last_commit = self._commits.last_commit
        return Snapshot(
            partitions=gauges,
            last_commit_age_s=None if last_commit is None else now - last_commit,
            breaker_state=int(self._breaker.state),
            breaker_trips=self._breaker.trips,
            commit_failures=self._commits.failures,
        )

    def _highwater(self, tp: TopicPartition) -> int | None:
        try:
            value = self._consumer.highwater(tp)
        except (KafkaError, KeyError, AssertionError):
            return None
        return int(value) if value is not None else None


def _lag(highwater: int | None, offset: int | None) -> int | None:
    return max(highwater - offset, 0) if highwater is not None and offset is not None else None
