"""The saga's durable timers: scheduled activations and the re-checks of parked orders, hours or days
ahead, surviving restarts and redeploys; and the sweeper that reports orders stuck in a state.

Owns the loop that turns due rows of ``fulfillment_timers`` (migration 0008) into resume requests on
the group's first retry tier (due at once), and the stuck-order gauge. Runs beside the consume loop
in every fulfillment worker (a handler ``companion``, started and stopped by the runtime). Several
instances share the rows: a take is one statement that skips rows another instance holds and leases
each taken row ahead (``SagaStore.take_due_timers``), so a row fires once per lease, and a worker
that dies between the take and the produce loses nothing: the row falls due again. The sweep (orders
by state, parked, stuck: ``metrics.OrderGauges``) runs only in the instance holding the sweeper's
Postgres lease (``sweeper_lease``), so one instance exports those counts and a sum over instances is
right; another takes the lease over when its holder's connection dies. Must not run a
saga step: the resume request is handled like any other, by whichever instance owns the order's
partition, under the order's lock; the saga re-arms or clears the row.

Why not chained retry-tier hops: a day-long wait would be a few thousand records (30 s tiers), each
a decode and a lock; and the wait would not move when Salesforce moves the date.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from adapters.leader_lease import LeaderLease
from adapters.saga_store import SagaOrder, SagaStore, Timer
from events.salesforce import OrderActivationRequested
from workers.config import FulfillmentSettings
from workers.fulfillment.metrics import OrderGauges
from workers.fulfillment.run import Clock, child_envelope, utcnow
from workers.fulfillment.wakeup import TIMER_SOURCE, RetryTopicScheduler

log = structlog.get_logger(__name__)

#: at most this many stuck orders are logged per sweep (the gauge counts them all)
STUCK_LOGGED = 20
#: the Postgres lease whose holder sweeps (one per fulfillment group)
SWEEPER_LEASE = "fulfillment-sweeper"


class TimerLoop:
    """``run(stop)``: fire due timers every ``timer_interval_s``; sweep for stuck orders every
    ``stuck_check_interval_s``. A failed turn (Postgres or Kafka away) is logged and tried again on
    the next one: the rows are durable, nothing is lost by waiting."""

    def __init__(
        self,
        store: SagaStore,
        scheduler: RetryTopicScheduler,
        settings: FulfillmentSettings,
        clock: Clock = utcnow,
        lease: LeaderLease | None = None,
    ) -> None:
        self._store = store
        self._scheduler = scheduler
        self._settings = settings
        self._clock = clock
        #: None: this instance always sweeps (a single worker, the unit tests)
        self._lease = lease
        #: orders by state, parked, stuck at the last sweep; unregistered: the worker serves it (``collector``)
        self.gauges = OrderGauges()

    async def run(self, stop: asyncio.Event) -> None:
        s, next_sweep = self._settings, 0.0
        loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                try:
                    await self.fire_due()
                    if loop.time() >= next_sweep:
                        next_sweep = loop.time() + s.stuck_check_interval_s
                        await self.sweep()
                except Exception as exc:  # Postgres or Kafka away: the rows wait; look again next turn
                    log.warning("fulfillment_timers_failed", error=repr(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), s.timer_interval_s)
        finally:
            if self._lease is not None:
                await self._lease.release(clean=True)  # another instance sweeps from its next turn

    async def fire_due(self) -> list[Timer]:
        """Take the due timers (leased ahead) and send each order a resume request, acknowledged."""
        s = self._settings
        taken = await self._store.take_due_timers(self._clock(), s.timer_lease_s, s.timer_batch)
        await asyncio.gather(*(self._resume(timer) for timer in taken))
        for timer in taken:
            log.info("fulfillment_timer_fired", sf_order_id=timer.sf_order_id, reason=timer.reason, fired=timer.fired)
        return taken

    async def _resume(self, timer: Timer) -> None:
        event = OrderActivationRequested(sf_order_id=timer.sf_order_id)
        envelope = child_envelope(event, TIMER_SOURCE, None)  # a fresh id each time: never an inbox duplicate
        await self._scheduler.send(envelope, 1, now=True)

    async def sweep(self) -> list[tuple[SagaOrder, object]]:
        """In the lease holder only: count the orders by state and the parked ones by code, and count
        (and log a few of) the orders stuck beyond their state's deadline. Elsewhere: export nothing."""
        if not await self._leading():
            self.gauges.clear()
            return []
        stuck = await self._store.stuck_orders(self._clock(), dict(self._settings.stuck_after_s))
        counts = dict.fromkeys(self._settings.stuck_after_s, 0)
        for order, _since in stuck:
            counts[order.state] = counts.get(order.state, 0) + 1
        self.gauges.set(await self._store.count_orders(), counts)
        for order, since in stuck[:STUCK_LOGGED]:
            log.warning(
                "fulfillment_order_stuck",
                sf_order_id=order.sf_order_id,
                state=order.state,
                step=order.current_step,
                since=str(since),
                error_code=order.error_code,
            )
        return list(stuck)

    async def _leading(self) -> bool:
        lease = self._lease
        if lease is None:
            return True
        if lease.held and await lease.check():  # check never raises; False drops the lease
            return True
        try:
            return await lease.try_acquire()
        except Exception as exc:  # Postgres away: nobody can count now; this instance exports nothing
            log.warning("fulfillment_sweeper_lease_failed", error=repr(exc))
            return False
