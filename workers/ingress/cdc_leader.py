"""Leader election for ``fleet run sf-cdc``: one instance subscribes, the others stand by.

Two subscribers on one org would both produce every change and interleave their checkpoint writes,
so each instance runs ``Leadership`` over a ``LeaderLease`` (``adapters.leader_lease``: a Postgres
session advisory lock on a connection of its own, plus a fencing term):

    standby ──try_acquire every retry_s──▶ takeover ──grace, lease checked──▶ leader (subscribes)
       ▲                                       │                                    │
       └────────── lease lost / stop ──────────┴────── lease lost: abandon at once ─┘

Delivery semantics, and why the grace: Postgres frees the lock as soon as it notices the holder's
session is gone, and that can be *before* the holder notices (``pg_terminate_backend``, a server
restart, an idle-session kill: the server ends the session first). The holder notices within
``check_interval_s + check_timeout_s`` at worst (a check every interval, each bounded by the
timeout; usually at once, through asyncpg's termination listener), then stops subscribing at once:
it cancels the pipeline without draining and writes no further checkpoint, as a kill would. A
standby that takes the lock over waits ``takeover_grace_s`` (> that bound, plus a margin for the
cancellation itself) before it subscribes, so the old holder has stopped by then. When the old
holder is simply dead (``kill -9``: the kernel closes its socket and Postgres frees the lock at
once) the grace only delays the takeover. It is skipped when the previous term ended cleanly
(``release(clean=True)`` after the subscriber had stopped: a SIGTERM, a rolling update) and when
the lease was never held.

Timing alone cannot cover a holder that is frozen (a stopped VM, a long pause) past the grace and
then resumes before its next check. So every checkpoint write is also *fenced*: the new leader
begins a new term (``leader_terms.term + 1``) before it loads the checkpoint, and a write under an
older term is refused in the same transaction (``FencedCheckpointStore``). A late old leader can
then at most produce a few changes again, under the same CloudEvent ids (downstream inboxes drop
them), exactly as after a restart; it can never move the checkpoint, and a refused write makes it
step down at once.

Owns: the state machine, its gauge and its log lines, and readiness (a standby is live but not
ready, reason ``standby``). Must not: know what the leader runs (a ``Leading`` per term, built by
``start_term``) or read configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol
from urllib.parse import urlsplit

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy
from prometheus_client import CollectorRegistry, Counter, Gauge

from adapters.cdc_checkpoints import PgCheckpointStore
from adapters.leader_lease import LeaderLease, LeaseLost, fence
from events.errors import DependencyUnavailable

log = structlog.get_logger()


class State(StrEnum):
    STANDBY = "standby"
    TAKEOVER = "takeover"
    LEADER = "leader"
    STOPPED = "stopped"


@dataclass(frozen=True)
class LeaseTiming:
    """How often the lease is tried and checked, and how long a takeover waits.

    Holder's detection bound = ``check_interval_s + check_timeout_s`` (2 s by default); the grace
    must exceed it (3 s: 1 s for cancelling the pipeline and for scheduling delays). After a
    ``kill -9`` of the leader the standby subscribes within ``retry_s + takeover_grace_s`` plus
    the time to open the stream: about 4-5 s.
    """

    retry_s: float = 1.0
    check_interval_s: float = 1.0
    check_timeout_s: float = 1.0
    takeover_grace_s: float = 3.0
    #: how long an abandoned term may take to stop (its stream's close is bounded by 5 s itself)
    abandon_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        bound = self.check_interval_s + self.check_timeout_s
        if self.takeover_grace_s <= bound:
            raise ValueError(f"takeover grace {self.takeover_grace_s} s must exceed the detection bound {bound} s")

    @property
    def detection_bound_s(self) -> float:
        return self.check_interval_s + self.check_timeout_s


class Leading(Protocol):
    """What runs while this instance leads: one per term (the CDC ``Subscriber``)."""

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set (then finish cleanly and return)."""
        ...

    def abandon(self) -> None:
        """The lease is lost: stop producing and checkpointing now, without draining."""
        ...

    def readiness(self) -> tuple[bool, str]: ...


def lease_name(subscriber: str, instance_url: str) -> str:
    """``sf-cdc:<checkpoint subscriber>@<org host[:port]>``: one lease per org and checkpoint key,
    so instances for two orgs run side by side, and instances of one org exclude each other."""
    org = urlsplit(instance_url).netloc.lower() or instance_url
    return f"sf-cdc:{subscriber}@{org}"


def default_instance_id() -> str:
    """``<hostname>:<pid>``: the pod name in Kubernetes, unique per process on one host."""
    return f"{socket.gethostname()}:{os.getpid()}"


class LeaseMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.state = Gauge(
            "sf_cdc_lease_state",
            "1 for the state this instance is in (standby, takeover, leader)",
            ["state"],
            registry=registry,
        )
        self.term = Gauge("sf_cdc_lease_term", "The term this instance leads (0 while not leading)", registry=registry)
        self.transitions = Counter(
            "sf_cdc_lease_transitions_total",
            "State changes of this instance, by the state entered",
            ["state"],
            registry=registry,
        )
        self.lost = Counter("sf_cdc_lease_lost_total", "Leadership lost, by reason", ["reason"], registry=registry)


class Leadership:
    """Runs ``start_term(term).run(stop)`` only while this instance holds the lease."""

    def __init__(
        self,
        lease: LeaderLease,
        start_term: Callable[[int], Leading],
        *,
        registry: CollectorRegistry,
        instance_id: str | None = None,
        timing: LeaseTiming | None = None,
    ) -> None:
        self.lease = lease
        self._start_term = start_term
        self.instance_id = instance_id or default_instance_id()
        self.timing = timing or LeaseTiming()
        self.registry = registry
        self.metrics = LeaseMetrics(registry)
        self.state = State.STOPPED
        self.term: int | None = None
        self.current: Leading | None = None
        self.running = False
        self._step_down = asyncio.Event()
        self._unavailable = False
        for state in State:
            self.metrics.state.labels(state=state).set(0)

    # --- ``workers.runtime.health.Observable`` --------------------------------------------------
    def liveness(self) -> tuple[bool, str]:
        return (True, self.state.value) if self.running else (False, "the leader election loop is not running")

    def readiness(self) -> tuple[bool, str]:
        if self.state is State.LEADER and self.current is not None:
            return self.current.readiness()
        return False, self.state.value

    def step_down(self, reason: str = "fenced") -> None:
        """Leave leadership at once (a fenced write found a newer term)."""
        if self.state is State.LEADER:
            log.warning("sf_cdc_lease_step_down", instance_id=self.instance_id, lease=self.lease.name, reason=reason)
            self._step_down.set()

    # --- the loop -------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self.running = True
        try:
            self._enter(State.STANDBY, "started")
            while not stop.is_set():
                if not await self._acquire(stop):
                    break
                lost = await self._take_over(stop)
                self._enter(State.STANDBY, "stopping" if lost is None else f"lease lost ({lost})")
                if lost is not None:
                    # give the instances that have been standing by a turn first: they try every
                    # retry_s, so one of them takes the lease unless none is left
                    await sleep_unless(stop, self.timing.retry_s)
        finally:
            await self.lease.release(clean=False)  # no-op unless still held (cancelled mid-term)
            self._enter(State.STOPPED, "stopped")
            self.running = False

    async def _take_over(self, stop: asyncio.Event) -> str | None:
        """From lease acquired to lease released: why the lease was lost, or None (stopping)."""
        self._step_down.clear()  # a step-down concerns the term it was asked in, not the next one
        try:
            previous = await self.lease.previous_term()
            grace = 0.0 if previous is None or previous.released else self.timing.takeover_grace_s
            self._enter(
                State.TAKEOVER,
                f"lease acquired; grace {grace:g} s",
                previous_holder=previous.holder if previous else None,
            )
            lost = await self._hold(grace, stop)
            if lost is not None:
                return self._lost(lost)
            if stop.is_set():
                await self.lease.release(clean=False)
                return None
            term = await self.lease.begin_term(self.instance_id)
        except LeaseLost as exc:
            return self._lost(f"lease error: {exc}")
        self.term = term
        self._enter(State.LEADER, "takeover complete")
        try:
            lost, clean = await self._lead(term, stop)
        finally:
            self.term = None
        if lost is not None:
            await self.lease.release(clean=False)
            return self._lost(lost)
        await self.lease.release(clean=clean)
        return None

    async def _acquire(self, stop: asyncio.Event) -> bool:
        while not stop.is_set():
            try:
                if await self.lease.try_acquire():
                    self._unavailable = False
                    return True
            except DependencyUnavailable as exc:
                if not self._unavailable:  # once per outage, not every second
                    log.warning("sf_cdc_lease_unavailable", instance_id=self.instance_id, error=str(exc))
                self._unavailable = True
            await sleep_unless(stop, self.timing.retry_s)
        return False

    async def _hold(self, seconds: float, stop: asyncio.Event) -> str | None:
        """Keep the lease for ``seconds`` (checking it as a leader would); why it was lost, if it was."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0 and not stop.is_set():
            lost = await self._watch(min(left, self.timing.check_interval_s), stop)
            if lost is not None:
                return lost
        return None

    async def _watch(self, seconds: float, *waits: asyncio.Event | asyncio.Task[None]) -> str | None:
        """Wait up to ``seconds`` (or until one of ``waits`` is done), noticing a loss the moment
        the connection closes; then check the lease. Why it was lost, or None."""
        lost = asyncio.ensure_future(self.lease.wait_lost())
        stepped = asyncio.ensure_future(self._step_down.wait())
        others = [asyncio.ensure_future(w.wait()) if isinstance(w, asyncio.Event) else w for w in waits]
        try:
            await asyncio.wait({lost, stepped, *others}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in (lost, stepped, *(o for o, w in zip(others, waits, strict=True) if o is not w)):
                future.cancel()
        if lost.done() and not lost.cancelled():
            return "connection lost"
        if stepped.done() and not stepped.cancelled():
            return "fenced: a newer term began"
        if any(o.done() for o in others):
            return None
        if not await self.lease.check():
            return "check failed"
        return None

    async def _lead(self, term: int, stop: asyncio.Event) -> tuple[str | None, bool]:
        """Run the term's work while the lease holds: (why it was lost or None, stopped cleanly)."""
        leading = self._start_term(term)
        self.current = leading
        task = asyncio.create_task(leading.run(stop), name=f"sf-cdc-term-{term}")
        try:
            while not task.done():
                lost = await self._watch(self.timing.check_interval_s, task)
                if lost is not None:
                    await self._abandon(leading, task)
                    return lost, False
            task.result()  # the work failed: let it end the process (the lease is released below)
            return None, True
        except asyncio.CancelledError:  # serve itself was cancelled: stop the work before unlocking
            await self._abandon(leading, task)
            raise
        finally:
            self.current = None

    async def _abandon(self, leading: Leading, task: asyncio.Task[None]) -> None:
        # Stop producing and checkpointing now (no drain, no final checkpoint): another instance
        # may take over as soon as the grace is over, and it resumes from the last checkpoint.
        leading.abandon()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=self.timing.abandon_timeout_s)
        if not done:
            log.error("sf_cdc_abandon_slow", instance_id=self.instance_id, timeout_s=self.timing.abandon_timeout_s)
        elif not task.cancelled() and task.exception() is not None:
            log.warning("sf_cdc_abandoned_with_error", error=repr(task.exception()))

    def _lost(self, reason: str) -> str:
        self.metrics.lost.labels(reason=reason.split(":")[0]).inc()
        log.warning("sf_cdc_lease_lost", instance_id=self.instance_id, lease=self.lease.name, reason=reason)
        return reason

    def _enter(self, state: State, reason: str, **fields: object) -> None:
        if state is self.state:
            return
        previous, self.state = self.state, state
        self.metrics.state.labels(state=previous).set(0)
        self.metrics.state.labels(state=state).set(1)
        self.metrics.transitions.labels(state=state).inc()
        self.metrics.term.set(self.term or 0)
        log.info(
            "sf_cdc_lease_state",
            instance_id=self.instance_id,
            lease=self.lease.name,
            previous=previous.value,
            state=state.value,
            term=self.term,
            reason=reason,
            **fields,
        )


# --- fenced checkpoints -------------------------------------------------------------------------
class FencedCheckpointStore(PgCheckpointStore):
    """``PgCheckpointStore`` whose writes commit only while ``term`` is the lease's current term.

    A refused write raises ``LeaseLost`` and calls ``on_fenced`` (the leader steps down). Reads
    are not fenced: only the leader loads, after its term began."""

    def __init__(self, pool: asyncpg.Pool, lease: str, term: int, on_fenced: Callable[[], None]) -> None:
        super().__init__(pool)
        self._lease, self._term, self._on_fenced = lease, term, on_fenced

    async def before_write(self, conn: asyncpg.Connection | PoolConnectionProxy) -> None:
        try:
            await fence(conn, self._lease, self._term)
        except LeaseLost:
            self._on_fenced()
            raise


async def sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
