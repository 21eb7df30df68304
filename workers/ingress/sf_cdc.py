"""The Salesforce CDC subscriber (``fleet run sf-cdc``): source -> translate -> produce -> checkpoint.

Reads change events from a ``ChangeSource`` (CometD, or the Pub/Sub API whose replay ids are
opaque bytes), turns each into domain events with ``cdc_translate`` (re-reading Salesforce where a
guard needs a field), produces them with the durable producer, and writes the channel's replay id
to Postgres only once Kafka acknowledged everything up to it. Changes are worked on in lanes keyed
by record id: a slow re-read does not hold the whole stream, and one record's events stay in order.
A watchdog tears a silent stream down; a rejected checkpoint (at the open, or later on the stream)
or one the other transport wrote falls back, raises the alarm and resyncs the missing window. A
catch-up that fails is not forgotten: its window stays in the checkpoint row and is retried with
back-off while the stream goes on (and after a restart) until it succeeds.
Serves /livez, /readyz and /metrics. Rules live in ``cdc_translate``; this module only moves data.
Several instances may run: only the holder of the lease subscribes (``cdc_leader``), each term with
a fresh ``Subscriber`` whose checkpoint writes are fenced by the term. The holder also exports the
dead-letter gauges of ``ingress.dlq.v1`` (``fleet_dead_letters{group="ingress"}``, the name
``fleet dlq -g ingress`` uses), with the runtime's collector (``workers.runtime.dead_letters``): one
instance by construction, whichever ingress wrote the records.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import traceback
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from adapters import tracing
from adapters.cdc_checkpoints import Checkpoint, CheckpointStore, ReplayId, pending, replay_id_text
from adapters.kafka import ProducerPort
from adapters.leader_lease import LeaderLease, PgAdvisoryLease
from adapters.salesforce import TokenSource
from events import failure as fh
from events.base import DomainEvent, to_envelope
from events.errors import AuthenticationFailed, InvalidPayload, PermanentError, RetryableError
from events.failure import Stage
from events.salesforce import AccountEligibilityChanged, CatalogChanged, ResyncRequested
from events.topics import Topic
from workers import bootstrap
from workers.config import Settings
from workers.dlq.names import INGRESS
from workers.dlq.reader import TopicMissing, partitions_of
from workers.ingress.cdc_leader import (
    FencedCheckpointStore,
    Leadership,
    LeaseTiming,
    State,
    default_instance_id,
    lease_name,
    sleep_unless,
)
from workers.ingress.cdc_source import ChangeSource, Delivery, SourceRefused, Subscribed
from workers.ingress.cdc_translate import (
    RESYNC_FIELDS,
    RETENTION,
    Change,
    Emission,
    RecordReader,
    Rules,
    Translator,
    json_safe,
    parse,
)
from workers.ingress.watermark import RecentIds, Watermark
from workers.runtime.dead_letters import DeadLetterGauges
from workers.runtime.health import HealthServer

log = structlog.get_logger()
T = TypeVar("T")

#: resync reason when a channel had no replay id to resume from (quiet since its last catch-up)
QUIET_CATCH_UP = "RESUMED_WITHOUT_REPLAY_ID"
#: resync reason when the stored replay id was refused (never issued, or past the retention)
REPLAY_ID_REJECTED = "REPLAY_ID_REJECTED"
#: items the pump takes from the source in one turn after a ``receive`` (a Pub/Sub window's worth)
READY_AT_ONCE = 100


@dataclass(frozen=True)
class CdcTopics:
    """Where each kind of event goes; tests inject unique names."""

    order: str = Topic.SF_ORDER
    catalog: str = Topic.SF_CATALOG
    account: str = Topic.SF_ACCOUNT
    resync: str = Topic.SF_RESYNC
    dlq: str = Topic.INGRESS_DLQ

    def for_event(self, event: DomainEvent) -> str:
        if isinstance(event, CatalogChanged):
            return self.catalog
        if isinstance(event, AccountEligibilityChanged):
            return self.account
        if isinstance(event, ResyncRequested):
            return self.resync
        return self.order

    def all(self) -> list[str]:
        return [self.order, self.catalog, self.account, self.resync, self.dlq]


@dataclass(frozen=True)
class CdcOptions:
    """Tuning of the subscriber (defaults suit production; tests shrink the times)."""

    subscriber: str = "sf-cdc"  # checkpoint key: one row per (subscriber, channel)
    watchdog_s: float = 180.0  # > Salesforce's 110 s long poll: silence longer than this is a stall
    watchdog_tick_s: float = 1.0
    connection_timeout_s: float = 10.0  # aiosfstream's own bound on a reconnecting transport
    checkpoint_interval_s: float = 0.25
    # lanes wait on Kafka's acknowledgement (acks=all) one change at a time, so their number, not
    # the CPU, capped a backlog that arrives in whole responses: 8 lanes held a Pub/Sub backlog at
    # ~900 changes/s with the process 74-85 % busy; 32 at 1,140-1,200/s, 64 at 1,240-1,280/s, 94 %
    # busy (bench/cdc_bench.py, 2026-12-08). A lane is one task; the order within a record holds.
    lanes: int = 64
    max_in_flight: int = 256
    dedupe_window: int = 10_000
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0
    max_unclassified_attempts: int = 5
    reconnect_max_s: float = 30.0
    shutdown_grace_s: float = 20.0
    # a failed catch-up resync is retried after catch_up_retry_initial_s, doubling up to
    # catch_up_retry_max_s, until it succeeds (its window is kept in the checkpoint row meanwhile)
    catch_up_retry_initial_s: float = 5.0
    catch_up_retry_max_s: float = 300.0
    health_host: str = "127.0.0.1"
    health_port: int = 0
    # the lease (``cdc_leader``): a standby tries every lease_retry_s; the leader checks its lease
    # every lease_check_interval_s, each check bounded by lease_check_timeout_s; a takeover waits
    # lease_takeover_grace_s (> interval + timeout) unless the last leader let go cleanly
    # (FLEET_SALESFORCE__CDC_LEASE_*)
    lease_retry_s: float = 1.0
    lease_check_interval_s: float = 1.0
    lease_check_timeout_s: float = 1.0
    lease_takeover_grace_s: float = 3.0

    @property
    def lease_timing(self) -> LeaseTiming:
        return LeaseTiming(
            retry_s=self.lease_retry_s,
            check_interval_s=self.lease_check_interval_s,
            check_timeout_s=self.lease_check_timeout_s,
            takeover_grace_s=self.lease_takeover_grace_s,
        )

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> CdcOptions:
        runtime, sf = settings.runtime, settings.salesforce
        base = {
            # the silence that means "stalled" must outlast the transport's own quiet: CometD holds
            # a connect 110 s, an idle Pub/Sub stream sends its keepalive within ~270 s
            "watchdog_s": sf.cdc_watchdog_s or (330.0 if sf.cdc_transport == "pubsub" else 180.0),
            "checkpoint_interval_s": sf.cdc_checkpoint_interval_s,
            "lanes": sf.cdc_lanes,
            "subscriber": sf.cdc_subscriber,
            "lease_retry_s": sf.cdc_lease_retry_s,
            "lease_check_interval_s": sf.cdc_lease_check_interval_s,
            "lease_check_timeout_s": sf.cdc_lease_check_timeout_s,
            "lease_takeover_grace_s": sf.cdc_lease_takeover_grace_s,
            "shutdown_grace_s": runtime.shutdown_grace_s,
            "health_host": runtime.health_host,
            "health_port": runtime.health_port,
        }
        return cls(**{**base, **overrides})


class StreamStalled(RetryableError):
    """No successful connect and no delivery within the watchdog bound."""

    default_code = "STREAM_STALLED"


# --- metrics ------------------------------------------------------------------------------------
#: commit → produce ack (seconds): live changes arrive in about a second, a replay after an outage in hours
STREAM_LAG_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0)


class CdcMetrics:
    """The subscriber's Prometheus metrics in their own registry (served on /metrics)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter("sf_cdc_events_received_total", "Deliveries received", ["channel"], registry=r)
        self.emitted = Counter(
            "sf_cdc_events_emitted_total", "Domain events acknowledged by Kafka", ["channel", "type"], registry=r
        )
        self.skipped = Counter(
            "sf_cdc_events_skipped_total", "Deliveries that emitted nothing", ["channel", "reason"], registry=r
        )
        self.dead_letters = Counter(
            "sf_cdc_dead_letters_total", "Deliveries sent to the ingress DLQ", ["channel", "code"], registry=r
        )
        self.fallbacks = Counter(
            "sf_cdc_replay_fallbacks_total",
            "ALARM: a stored replay id was rejected (invalid or past retention); fell back and resynced",
            ["channel"],
            registry=r,
        )
        self.resyncs = Counter("sf_cdc_resyncs_total", "Resyncs run", ["entity", "reason"], registry=r)
        self.catch_up_failures = Counter(
            "sf_cdc_catch_up_failures_total",
            "ALARM: a catch-up resync failed; its window is kept in the checkpoint and retried",
            ["channel"],
            registry=r,
        )
        self.catch_up_pending = Gauge(
            "sf_cdc_catch_up_pending",
            "ALARM while 1: a window of the channel waits for its catch-up resync to succeed",
            ["channel"],
            registry=r,
        )
        self.reconnects = Counter("sf_cdc_reconnects_total", "Stream teardowns and reopens", ["reason"], registry=r)
        self.refused = Counter(
            "sf_cdc_source_refused_total",
            "ALARM: the platform refused the subscription for a reason no quick retry fixes (Pub/Sub error code)",
            ["code"],
            registry=r,
        )
        self.checkpoint = Gauge(
            "sf_cdc_checkpoint_replay_id",
            "Last replay id written (CometD; never set from the Pub/Sub API's opaque bytes)",
            ["channel"],
            registry=r,
        )
        self.last_event = Gauge(
            "sf_cdc_last_event_timestamp_seconds", "When the channel last delivered", ["channel"], registry=r
        )
        self.stream_lag = Histogram(
            "sf_cdc_stream_lag_seconds",
            "A change's Salesforce commitTimestamp to Kafka acknowledging its events (replays after a gap count too)",
            ["channel"],
            buckets=STREAM_LAG_BUCKETS,
            registry=r,
        )
        self.live = _LiveValues()
        r.register(self.live)


class _LiveValues(Collector):
    """Values read at scrape time from the running subscriber (the current term's, if any)."""

    def __init__(self) -> None:
        self.subscriber: Subscriber | None = None
        self._earlier_rereads = 0  # of the subscribers of earlier terms, so the count never drops
        self._last_event_at = 0.0

    def attach(self, subscriber: Subscriber) -> None:
        if self.subscriber is not None:
            self._earlier_rereads += self.subscriber.rereads
            self._last_event_at = max(self._last_event_at, self.subscriber.last_event_at)
        self.subscriber = subscriber

    def collect(self) -> Iterable[Metric]:
        s = self.subscriber
        last = max(self._last_event_at, s.last_event_at if s else 0.0)
        age = GaugeMetricFamily("sf_cdc_last_event_age_seconds", "Seconds since any channel delivered")
        age.add_metric([], time.time() - last if last else float("nan"))
        yield age
        in_flight, ready = (s.in_flight, s.ready) if s else (0, False)
        rereads = self._earlier_rereads + (s.rereads if s else 0)
        yield GaugeMetricFamily("sf_cdc_in_flight", "Changes received, not yet durable", value=in_flight)
        yield GaugeMetricFamily("sf_cdc_ready", "1 while subscribed and consuming", value=float(ready))
        # a count that never drops (earlier terms included): a counter, so rate() works across restarts
        yield CounterMetricFamily("sf_cdc_salesforce_rereads", "Re-reads and resync queries made", value=rereads)


# --- the subscriber -----------------------------------------------------------------------------
@dataclass
class CatchUp:
    """A window the stream cannot replay: the channel's records modified since ``since`` (None: the
    retention), to resync by SOQL. ``durable`` once the checkpoint row records it as pending."""

    channel: str
    since: datetime | None
    reason: str
    alarm: bool  # the window exists because changes were lost (not a quiet channel's routine)
    basis: str  # of the resync requests' ids (and so of every resynced event's id)
    replay_id: ReplayId | None  # where the stream resumed (None after a fallback)
    durable: bool = False
    failures: int = 0
    due: float = 0.0  # time.monotonic() of the next attempt

    def window(self, until: datetime) -> dict[str, Any]:
        """The window for log lines."""
        return {"channel": self.channel, "since": self.since, "until": until, "reason": self.reason}


@dataclass
class _Work:
    delivery: Delivery
    change: Change | None
    error: InvalidPayload | None
    watermark: Watermark | None
    token: int | None


class Subscriber:
    """One subscriber process: sessions (open -> recover -> pump -> drain), lanes, checkpointer."""

    def __init__(
        self,
        *,
        source: ChangeSource,
        translator: Translator,
        producer: ProducerPort,
        store: CheckpointStore,
        channels: list[str],
        options: CdcOptions,
        topics: CdcTopics | None = None,
        metrics: CdcMetrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._source, self._translator, self._producer, self._store = source, translator, producer, store
        self._channels, self._options = channels, options
        self._topics = topics or CdcTopics()
        self.metrics = metrics or CdcMetrics()
        self._clock = clock
        self._lanes: list[asyncio.Queue[_Work]] = [asyncio.Queue() for _ in range(max(1, options.lanes))]
        self._slots = asyncio.Semaphore(options.max_in_flight)
        self._idle = asyncio.Event()
        self._idle.set()
        self._flush_lock = asyncio.Lock()
        self._watermarks: dict[str, Watermark] = {}
        self._seen = RecentIds(options.dedupe_window)
        self.in_flight = 0
        self.ready = False
        self._was_ready = False
        self.running = False
        self.last_event_at = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._abandoned = False
        self._catch_ups: dict[str, CatchUp] = {}  # channel -> its failed catch-up, to retry
        self.metrics.live.attach(self)

    @property
    def rereads(self) -> int:
        return self._translator.rereads

    # --- what /livez, /readyz and /metrics show (``workers.runtime.health.Observable``) -----------
    @property
    def registry(self) -> CollectorRegistry:
        return self.metrics.registry

    def liveness(self) -> tuple[bool, str]:
        return (True, "running") if self.running else (False, "the subscriber loop is not running")

    def readiness(self) -> tuple[bool, str]:
        return (True, "subscribed") if self.ready else (False, "connecting, recovering or draining")

    def abandon(self) -> None:
        """The lease is lost: from now on nothing is produced and nothing is checkpointed (the
        lanes and the checkpointer are cancelled at once; cancel ``run`` too, as for a kill). The
        next leader resumes from the last checkpoint written, as after a crash."""
        self._abandoned = True
        for task in self._tasks:
            task.cancel()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; reconnect with capped back-off on any stream failure."""
        self.running = True
        self._tasks = tasks = [
            asyncio.create_task(self._lane(q), name=f"sf-cdc-lane-{i}") for i, q in enumerate(self._lanes)
        ]
        tasks.append(asyncio.create_task(self._checkpointer(), name="sf-cdc-checkpointer"))
        try:
            failures = 0
            while not stop.is_set():
                self._was_ready = False
                try:
                    await self._session(stop)
                except SourceRefused as exc:  # no quick retry helps: alarm, and try again much later
                    failures += 1
                    self.metrics.refused.labels(code=exc.code).inc()
                    log.error("sf_cdc_source_refused", code=exc.code, error=str(exc), retry_in_s=exc.retry_after_s)
                    await sleep_unless(stop, exc.retry_after_s)
                except Exception as exc:  # every stream failure means: tear down, back off, reopen
                    failures = 1 if self._was_ready else failures + 1
                    self.metrics.reconnects.labels(reason=type(exc).__name__).inc()
                    log.warning("sf_cdc_reconnecting", error=repr(exc), failures=failures)
                    await sleep_unless(stop, min(self._options.reconnect_max_s, 0.2 * 2 ** (failures - 1)))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.running = False

    async def _session(self, stop: asyncio.Event) -> None:
        checkpoints = await self._store.load(self._options.subscriber)
        positions, switched = self._positions(checkpoints)
        opened_at = self._clock()
        outcomes = [switched.get(o.channel, o) for o in await self._source.open(positions)]
        cancelled = False
        try:
            # a session starts with an empty pipeline (the last one drained), so fresh watermarks
            # are right, and necessary after a fallback, when replay ids may restart lower
            self._watermarks = {channel: Watermark() for channel in self._channels}
            await self._recover(outcomes, checkpoints, opened_at)
            self.ready = self._was_ready = True
            log.info("sf_cdc_subscribed", channels=[(o.channel, _shown(o.requested), o.fallback) for o in outcomes])
            await self._pump(stop)
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            self.ready = False
            await self._source.close()
            if not cancelled:  # killed rather than stopped: no drain, no final checkpoint; the
                await self._drain(stop)  # next start replays from the last periodic one
                await self._flush()

    def _positions(self, checkpoints: dict[str, Checkpoint]) -> tuple[dict[str, ReplayId], dict[str, Subscribed]]:
        """Each channel's stored replay id, when the source accepts its kind; and, as fallback
        outcomes, the channels whose stored id is of the other transport's kind (CometD's ints, the
        Pub/Sub API's bytes: the transport was switched). Such an id means nothing to this source,
        so the channel subscribes from the preset and is recovered as a rejected id is (alarm,
        resync from the row's time), never silently resumed at the preset."""
        positions: dict[str, ReplayId] = {}
        switched: dict[str, Subscribed] = {}
        for channel in self._channels:
            replay_id = checkpoints[channel].replay_id if channel in checkpoints else None
            if replay_id is None:
                continue
            if self._source.accepts(replay_id):
                positions[channel] = replay_id
                continue
            kind = "bytes (Pub/Sub API)" if isinstance(replay_id, bytes) else "int (CometD)"
            log.warning("sf_cdc_transport_switched", channel=channel, stored_replay_id=_shown(replay_id), kind=kind)
            error = f"TRANSPORT_SWITCHED: the stored replay id is {kind}, which this source cannot resume from"
            switched[channel] = Subscribed(channel, replay_id, fallback=True, error=error)
        return positions, switched

    # --- receiving ------------------------------------------------------------------------------
    async def _pump(self, stop: asyncio.Event) -> None:
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while (item := await self._next(stopping)) is not None:
                await self._take(item)
                # then what the source already holds (a gRPC response's other events), in this
                # event-loop turn: no task and wait per event, and the activations among them ask
                # for their re-reads together. Stopping ends it between items: the rest were never
                # begun, so no checkpoint passes them, and the next session receives them again.
                for item in self._source.ready(READY_AT_ONCE):
                    if stopping.done():
                        break
                    await self._take(item)
        finally:
            stopping.cancel()

    async def _take(self, item: Delivery | Subscribed) -> None:
        if isinstance(item, Subscribed):
            await self._late_outcome(item)
        else:
            await self._dispatch(item)

    async def _late_outcome(self, outcome: Subscribed) -> None:
        """A subscription outcome the source reported after the open (gRPC rejects a replay id on
        the stream, ``...replayid.corrupted``). A fallback is recovered as one at the open is, and
        the session goes on: first every change received before it becomes durable (or
        dead-lettered), so the resync overtakes no streamed event and the channel's positions can
        start afresh (ids from the preset may restart lower) without a checkpoint past unfinished
        work; then the alarm and the resync, from the row's time as this session left it (a pending
        catch-up's row keeps its window's start, so that window is covered too)."""
        if not outcome.fallback:
            log.info("sf_cdc_subscription_confirmed", channel=outcome.channel, requested=_shown(outcome.requested))
            return
        await self._idle.wait()
        self._watermarks[outcome.channel] = Watermark()
        checkpoints = await self._store.load(self._options.subscriber)
        await self._fall_back(outcome, checkpoints.get(outcome.channel), late=True)

    async def _next(self, stopping: asyncio.Future[Any]) -> Delivery | Subscribed | None:
        # receive() is never cancelled while the session goes on: a message dequeued at the moment
        # of a cancel would vanish, and later changes could then carry the checkpoint past it
        receive = asyncio.ensure_future(self._source.receive())
        try:
            while True:
                await self._retry_catch_ups(stopping)
                done, _ = await asyncio.wait(
                    {receive, stopping}, timeout=self._options.watchdog_tick_s, return_when=asyncio.FIRST_COMPLETED
                )
                if receive in done:
                    return receive.result()
                if stopping in done:
                    return None
                self._watchdog()
        finally:
            if not receive.done():
                receive.cancel()

    def _watchdog(self) -> None:
        silent = time.monotonic() - self._source.last_alive
        if silent > self._options.watchdog_s and self.in_flight == 0:
            raise StreamStalled(f"no successful connect or delivery for {silent:.1f} s", upstream="salesforce")

    async def _dispatch(self, delivery: Delivery) -> None:
        self.metrics.received.labels(channel=delivery.channel).inc()
        self.metrics.last_event.labels(channel=delivery.channel).set_to_current_time()
        self.last_event_at = time.time()
        try:
            change: Change | None = parse(delivery.message)
            error = None
        except InvalidPayload as exc:
            change, error = None, exc
        watermark, token = self._begin(delivery, change)
        if change is not None and self._seen.seen(change.dedupe_keys()):
            self.metrics.skipped.labels(channel=delivery.channel, reason="duplicate").inc()
            _done(watermark, token)
            return
        if change is not None:
            self._seen.add(change.dedupe_keys())
        work = _Work(delivery, change, error, watermark, token)
        if change is None or _is_wide(change):
            # a change touching many records (merged, overflow, wildcard) or an unparseable one
            # runs alone once the lanes are empty, so no record's events overtake another's
            await self._idle.wait()
            await self._slots.acquire()
            self._enter()
            await self._run(work)
            return
        await self._slots.acquire()
        self._enter()
        self._lanes[zlib.crc32(_lane_key(change).encode()) % len(self._lanes)].put_nowait(work)

    def _begin(self, delivery: Delivery, change: Change | None) -> tuple[Watermark | None, int | None]:
        replay_id = change.replay_id if change is not None else delivery.replay_id
        if replay_id is None:
            return None, None  # not even a replay id: nothing to checkpoint past
        watermark = self._watermarks.setdefault(delivery.channel, Watermark())
        return watermark, watermark.begin(replay_id, change.occurred_at if change else None)

    def _enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def _exit(self) -> None:
        self.in_flight -= 1
        self._slots.release()
        if self.in_flight == 0:
            self._idle.set()

    async def _lane(self, queue: asyncio.Queue[_Work]) -> None:
        while True:
            work = await queue.get()
            try:
                await self._run(work)
            except Exception as exc:  # a bug: the change stays un-done, so it is never checkpointed
                # past and a restart replays it; the lane itself must keep serving
                log.critical("sf_cdc_lane_failed", error=repr(exc), replay_id=_shown(work.delivery.replay_id))

    async def _run(self, work: _Work) -> None:
        try:
            context = {"channel": work.delivery.channel, "replay_id": _shown(work.delivery.replay_id)}
            with structlog.contextvars.bound_contextvars(**context), tracing.span("sf-cdc delivery", _span_tags(work)):
                if work.change is None:
                    assert work.error is not None
                    await self._dead_letter(work.delivery, work.error, Stage.DECODE)
                else:
                    await self._handle(work.change, work.delivery)
            # only now, with every event acknowledged (or the delivery dead-lettered), may the
            # checkpoint move past this change; a cancellation skips this line on purpose
            _done(work.watermark, work.token)
        finally:
            self._exit()

    # --- handling -------------------------------------------------------------------------------
    async def _handle(self, change: Change, delivery: Delivery) -> None:
        if tracing.enabled() and change.entity == "Order" and change.header is not None:
            tracing.set_attributes({tracing.ORDER_ID: ",".join(change.header.record_ids) or None})
        try:
            translation = await self._retrying(lambda: self._translator.translate(change), "translate")
        except Exception as exc:  # permanent, or a bug that kept failing: park it, keep streaming
            await self._dead_letter(delivery, exc, Stage.HANDLE)
            return
        await self._publish_all(change.channel, translation.emissions)
        if translation.emissions and change.header is not None:  # every event of the change acknowledged
            lag = time.time() - change.header.commit_timestamp / 1000
            self.metrics.stream_lag.labels(channel=change.channel).observe(max(lag, 0.0))
        for request in translation.resyncs:
            try:
                await self._resync(change.channel, request)
            except Exception as exc:
                await self._dead_letter(delivery, exc, Stage.HANDLE)
        if translation.note is not None:
            self.metrics.skipped.labels(channel=change.channel, reason=translation.note).inc()

    async def _resync(self, channel: str, request: Emission) -> None:
        event = request.event
        assert isinstance(event, ResyncRequested)
        self.metrics.resyncs.labels(entity=event.entity, reason=event.reason).inc()
        # a quiet channel's routine catch-up is information; anything else means changes were lost
        level = log.info if event.reason == QUIET_CATCH_UP else log.warning
        window = {"entity": event.entity, "since": event.since, "until": event.until, "reason": event.reason}
        level("sf_cdc_resync", request_id=request.event_id, **window)
        # the request on sf.resync.v1 is the resync's audit record (nobody consumes it: the work
        # is done right here, so the change that caused it is checkpointed only after its events)
        await self._publish_all(channel, [request])
        emissions = await self._retrying(lambda: self._translator.resync(request), "resync")
        await self._publish_all(channel, emissions)
        log.info("sf_cdc_resync_done", request_id=request.event_id, emitted=len(emissions), **window)

    async def _publish_all(self, channel: str, emissions: Iterable[Emission]) -> None:
        for emission in emissions:
            envelope = to_envelope(
                emission.event,
                source=f"/salesforce{channel}",
                correlationid=emission.correlation_id,
                id=emission.event_id,
            )
            topic = self._topics.for_event(emission.event)
            await self._retrying(lambda: self._producer.publish(topic, envelope), "publish")  # noqa: B023
            self.metrics.emitted.labels(channel=channel, type=emission.event.TYPE).inc()

    async def _dead_letter(self, delivery: Delivery, exc: BaseException, stage: str) -> None:
        code = getattr(exc, "code", None) or type(exc).__name__
        headers = _dead_letter_headers(delivery, exc, stage, code)
        key = delivery.channel.encode()
        # JSON cannot hold bytes: a Pub/Sub API replay id travels as ``event.replayIdHex`` (``json_safe``)
        value = _json_bytes(json_safe(delivery.message))
        await self._retrying(lambda: self._producer.publish_raw(self._topics.dlq, key, value, headers), "dead_letter")
        self.metrics.dead_letters.labels(channel=delivery.channel, code=code).inc()
        log.error("sf_cdc_dead_lettered", code=code, error=str(exc), stage=stage, replay_id=_shown(delivery.replay_id))

    async def _retrying(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        """Retry with capped back-off: forever for ``RetryableError`` (Kafka or Salesforce away:
        nothing may be checkpointed past this change anyway) and for ``AuthenticationFailed`` (our
        credentials are broken, not the change: dead-lettering every change would be wrong), a few
        times for an unclassified exception (then treated as permanent), never for the rest."""
        attempt = 0
        while True:
            try:
                return await call()
            except PermanentError as exc:
                if not isinstance(exc, AuthenticationFailed):
                    raise
                attempt += 1
                log.error("sf_cdc_authentication_failed", what=what, attempt=attempt, error=str(exc))
                await asyncio.sleep(self._options.retry_max_s)
                continue
            except Exception as exc:
                attempt += 1
                if not isinstance(exc, RetryableError) and attempt >= self._options.max_unclassified_attempts:
                    raise
                delay = min(self._options.retry_max_s, self._options.retry_initial_s * 2 ** (attempt - 1))
                log.warning("sf_cdc_retrying", what=what, attempt=attempt, delay_s=delay, error=repr(exc))
                await asyncio.sleep(delay)

    # --- recovery after a lost position ---------------------------------------------------------
    async def _recover(
        self, outcomes: list[Subscribed], checkpoints: dict[str, Checkpoint], opened_at: datetime
    ) -> None:
        first_seen: list[Checkpoint] = []
        for outcome in outcomes:
            channel, checkpoint = outcome.channel, checkpoints.get(outcome.channel)
            since = checkpoint.position_time if checkpoint else None
            if outcome.fallback:
                await self._fall_back(outcome, checkpoint)
            elif checkpoint is None:
                # the very first subscription: record when it started, so a crash before the
                # first replay id is written resumes with a catch-up rather than at "latest"
                first_seen.append(Checkpoint(channel, None, opened_at))
            elif (reason := checkpoint.pending_catch_up) is not None:
                # an earlier catch-up of this window failed: the row kept its start; resume it
                log.warning("sf_cdc_catch_up_resumed", channel=channel, since=since, reason=reason)
                basis = self._retry_basis(channel, since)
                await self._catch_up(CatchUp(channel, since, reason, True, basis, outcome.requested, durable=True))
            elif outcome.requested is None and since is not None:
                await self._catch_up(
                    CatchUp(channel, since, QUIET_CATCH_UP, False, self._basis(channel, checkpoint), None)
                )
        if first_seen:
            async with self._flush_lock:
                await self._store.save(self._options.subscriber, first_seen)

    async def _fall_back(self, outcome: Subscribed, checkpoint: Checkpoint | None, *, late: bool = False) -> None:
        """The channel's stored replay id is of no use (rejected at the open, or later on the stream:
        ``late``; or written by the other transport) and the stream goes on from the preset: raise
        the alarm and resync the window from the row's time (the retention when it has none)."""
        channel, rejected = outcome.channel, _shown(outcome.requested)
        self.metrics.fallbacks.labels(channel=channel).inc()
        log.error(
            "sf_cdc_replay_fallback", channel=channel, rejected_replay_id=rejected, error=outcome.error, late=late
        )
        since = checkpoint.position_time if checkpoint else None
        await self._catch_up(CatchUp(channel, since, REPLAY_ID_REJECTED, True, self._basis(channel, checkpoint), None))

    def _basis(self, channel: str, checkpoint: Checkpoint | None) -> str:
        since = checkpoint.position_time if checkpoint else None
        replay = checkpoint.replay_id if checkpoint else None
        # "None" as before bytes existed: a catch-up repeated after an upgrade keeps its event ids
        shown = "None" if replay is None else replay_id_text(replay)
        return f"catchup:{self._options.subscriber}:{channel}:{shown}:{since.isoformat() if since else '-'}"

    def _retry_basis(self, channel: str, since: datetime | None) -> str:
        # derived from what the row keeps, so a retry after a restart emits the same ids
        return f"catchup:{self._options.subscriber}:{channel}:retry:{since.isoformat() if since else '-'}"

    async def _catch_up(self, catch_up: CatchUp) -> None:
        """Resync what the stream can no longer replay: records modified between the window's start
        and now (we are already subscribed, so later changes arrive on the stream). The new
        position (consistent until now) is written only after the resync is on Kafka; a crash in
        between repeats the catch-up, with the same event ids. A failure keeps the window: the row
        records it as pending (``_defer``) and the catch-up is retried until it succeeds."""
        until = self._clock()
        if catch_up.durable:
            self.metrics.catch_up_pending.labels(channel=catch_up.channel).set(1)
        try:
            for entity in entities_of(catch_up.channel):
                request = self._translator.resync_request(
                    entity, catch_up.since, until, catch_up.reason, catch_up.basis
                )
                await self._resync(catch_up.channel, request)
        except Exception as exc:  # permanent, or unclassified and still failing: keep the window
            await self._defer(catch_up, until, exc)
            return
        async with self._flush_lock:
            # a pending row's marker is cleared only by naming a reason (a None keeps it)
            reason = catch_up.reason if catch_up.alarm or catch_up.durable else None
            position = self._position(catch_up)
            await self._store.save(self._options.subscriber, [Checkpoint(catch_up.channel, position, until, reason)])
            self._catch_ups.pop(catch_up.channel, None)
        self.metrics.catch_up_pending.labels(channel=catch_up.channel).set(0)
        if catch_up.durable:
            log.warning("sf_cdc_catch_up_recovered", attempts=catch_up.failures + 1, **catch_up.window(until))

    async def _defer(self, catch_up: CatchUp, until: datetime, exc: Exception) -> None:
        """Keep a failed catch-up's window: durably (the row's time stays at the window's start
        and its reason says pending, whatever the stream checkpoints meanwhile) and in memory, to
        retry after a capped, doubling delay."""
        catch_up.failures += 1
        options = self._options
        delay = min(options.catch_up_retry_max_s, options.catch_up_retry_initial_s * 2 ** (catch_up.failures - 1))
        catch_up.due = time.monotonic() + delay
        catch_up.since = catch_up.since or until - RETENTION  # the row needs a time to resume from
        self.metrics.catch_up_failures.labels(channel=catch_up.channel).inc()
        self.metrics.catch_up_pending.labels(channel=catch_up.channel).set(1)
        log.error(
            "sf_cdc_catch_up_failed",
            attempt=catch_up.failures,
            retry_in_s=delay,
            error=str(exc) or repr(exc),
            **catch_up.window(until),
        )
        async with self._flush_lock:
            if not catch_up.durable:
                marker = Checkpoint(
                    catch_up.channel, self._position(catch_up), catch_up.since, pending(catch_up.reason)
                )
                await self._store.save(options.subscriber, [marker])
                catch_up.durable = True
                catch_up.basis = self._retry_basis(catch_up.channel, catch_up.since)
            self._catch_ups[catch_up.channel] = catch_up

    def _position(self, catch_up: CatchUp) -> ReplayId | None:
        """The channel's stream position: what this session made durable, else where it resumed."""
        watermark = self._watermarks.get(catch_up.channel)
        position = watermark.position if watermark is not None else None
        return position if position is not None else catch_up.replay_id

    async def _retry_catch_ups(self, stopping: asyncio.Future[Any]) -> None:
        """Retry the failed catch-ups that are due, each alone once the lanes are empty (as a
        change touching many records runs), so no resynced event overtakes a streamed one."""
        for catch_up in list(self._catch_ups.values()):
            if stopping.done() or catch_up.due > time.monotonic():
                continue
            await self._idle.wait()
            log.info("sf_cdc_catch_up_retrying", attempt=catch_up.failures + 1, **catch_up.window(self._clock()))
            await self._catch_up(catch_up)

    # --- checkpoints ----------------------------------------------------------------------------
    async def _checkpointer(self) -> None:
        while True:
            await asyncio.sleep(self._options.checkpoint_interval_s)
            await self._flush()

    async def _flush(self) -> None:
        # the lock keeps two flushes from committing out of order (an older id written last)
        async with self._flush_lock:
            if self._abandoned:  # the lease is gone: another instance owns the checkpoint now
                return
            ready = [cp for channel, wm in self._watermarks.items() if (cp := wm.take(channel)) is not None]
            if not ready:
                return
            # a channel whose catch-up is pending moves its replay id only: the row's time stays at
            # the window's start and its reason (None keeps it) says pending, so a restart resumes it
            ready = [
                Checkpoint(cp.channel, cp.replay_id, c.since) if (c := self._catch_ups.get(cp.channel)) else cp
                for cp in ready
            ]
            try:
                await self._store.save(self._options.subscriber, ready)
            except Exception as exc:  # the database is away: keep the positions, try next tick
                for checkpoint in ready:
                    self._watermarks[checkpoint.channel].restore(checkpoint)
                log.warning("sf_cdc_checkpoint_failed", error=repr(exc))
                return
            for checkpoint in ready:
                # a number only for CometD's ids: the Pub/Sub API's bytes are opaque (left as they are)
                if not isinstance(checkpoint.replay_id, bytes):
                    self.metrics.checkpoint.labels(channel=checkpoint.channel).set(checkpoint.replay_id or 0)

    async def _drain(self, stop: asyncio.Event) -> None:
        """Wait until every received change is durable. Without ``stop``, as long as it takes (a
        new session must start from an empty pipeline); when stopping, at most the grace period."""
        if not stop.is_set():
            stopping = asyncio.ensure_future(stop.wait())
            idle = asyncio.ensure_future(self._idle.wait())
            await asyncio.wait({stopping, idle}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            idle.cancel()
        if not self._idle.is_set():
            try:
                await asyncio.wait_for(self._idle.wait(), self._options.shutdown_grace_s)
            except TimeoutError:
                log.warning("sf_cdc_drain_timeout", in_flight=self.in_flight)


def _done(watermark: Watermark | None, token: int | None) -> None:
    if watermark is not None and token is not None:
        watermark.done(token)


def _is_wide(change: Change) -> bool:
    header = change.header
    return header is not None and (header.is_overflow or len(header.record_ids) != 1 or "*" in header.record_ids[0])


def _lane_key(change: Change) -> str:
    if change.header is not None and change.header.record_ids:
        return change.header.record_ids[0]
    return str(change.values.get("Account_Id__c") or change.channel)


def entities_of(channel: str) -> list[str]:
    """The entity a channel carries (``/data/OrderChangeEvent`` -> Order); every CDC entity we
    handle for ``/data/ChangeEvents``; the event name for a platform event channel."""
    name = channel.rsplit("/", 1)[-1]
    if name == "ChangeEvents":
        return list(RESYNC_FIELDS)
    if name.endswith("__ChangeEvent"):
        return [name.removesuffix("__ChangeEvent") + "__c"]
    return [name.removesuffix("ChangeEvent")]


def _shown(replay_id: ReplayId | None) -> int | str | None:
    """A replay id for a log line: an int as it is, bytes in hex (``replay_id_text``)."""
    return replay_id.hex() if isinstance(replay_id, bytes) else replay_id


def _json_bytes(message: Any) -> bytes:
    try:
        return json.dumps(message, separators=(",", ":"), ensure_ascii=False, default=str).encode()
    except (TypeError, ValueError):
        return repr(message).encode()


def _dead_letter_headers(delivery: Delivery, exc: BaseException, stage: str, code: str) -> list[tuple[str, bytes]]:
    """The value's content type, the provenance every dead letter carries (``events.failure.provenance``;
    the channel as source topic, no partition, offset or group) and the delivery's replay id
    (``replay_id_text``: decimal for CometD, lowercase hex for the Pub/Sub API's bytes)."""
    stamp = fh.iso_utc(time.time())
    headers = [
        ("content-type", b"application/json"),
        *fh.provenance(
            source_topic=delivery.channel,
            # how often the translation was tried is the retry loop's business; a decode ran nothing
            attempts=0 if stage == Stage.DECODE else None,
            error_class=fh.class_of(exc),
            error_code=code,
            error_message=str(exc) or fh.class_of(exc),
            error_stacktrace="".join(traceback.format_exception(exc)),
            stage=stage,
            first_failed_at=stamp,
            last_failed_at=stamp,
        ),
    ]
    if delivery.replay_id is not None:
        headers.append((fh.SOURCE_REPLAY_ID, replay_id_text(delivery.replay_id).encode()))
    return headers


def _span_tags(work: _Work) -> dict[str, object] | None:
    """The CDC delivery span's attributes (None when tracing is off: nothing is computed)."""
    if not tracing.enabled():
        return None
    change = work.change
    return {
        "fleet.cdc.channel": work.delivery.channel,
        "fleet.cdc.replay_id": _shown(work.delivery.replay_id),
        "fleet.cdc.entity": change.entity if change is not None else None,
        "fleet.cdc.change_type": change.change_type if change is not None else None,
        "fleet.cdc.event_uuid": change.event_uuid if change is not None else None,
    }


# --- composition --------------------------------------------------------------------------------
async def serve(
    settings: Settings,
    stop: asyncio.Event,
    *,
    source: ChangeSource | None = None,
    producer: ProducerPort | None = None,
    salesforce: RecordReader | None = None,
    pool: asyncpg.Pool | None = None,
    topics: CdcTopics | None = None,
    options: CdcOptions | None = None,
    metrics: CdcMetrics | None = None,
    lease: LeaderLease | None = None,
    instance_id: str | None = None,
) -> None:
    """Run the CDC subscriber until ``stop`` is set, building whatever is not injected.

    Subscribes only while this instance holds the lease ``lease_name(subscriber, instance_url)``
    (a Postgres advisory lock on a connection of its own); until then it stands by, live but not
    ready (``/readyz``: ``standby``). An injected ``lease`` must be one the checkpoint fence can
    see: its terms are read from ``leader_terms`` through ``pool``."""
    sf = settings.salesforce
    options = options or CdcOptions.from_settings(settings)
    metrics = metrics or CdcMetrics()
    instance_id = instance_id or default_instance_id()
    async with contextlib.AsyncExitStack() as stack:
        tokens: TokenSource | None = None
        if salesforce is None or source is None:
            client, tokens = await bootstrap.open_salesforce(stack, settings)
            salesforce = salesforce or client
        if source is None:
            assert tokens is not None
            source = bootstrap.change_source(settings, tokens, connection_timeout_s=options.connection_timeout_s)
        if producer is None:
            # a refused credential stops the process here (one line)
            producer = await bootstrap.open_producer(stack, settings, "sf-cdc")
        if pool is None:
            pool = await bootstrap.open_pool(stack, settings, 1, 2)
        dsn = settings.postgres.dsn.get_secret_value()
        if lease is None:
            lease = PgAdvisoryLease(
                dsn,
                lease_name(options.subscriber, sf.instance_url),
                application_name=f"sf-cdc lease {instance_id}",
                check_timeout_s=options.lease_check_timeout_s,
            )
        rules = Rules(frozenset(sf.activation_trigger_statuses), sf.call_options_client)
        assert salesforce is not None and pool is not None and lease is not None

        def start_term(term: int) -> Subscriber:
            # a fresh pipeline per term (an abandoned one may have left work half done), reading
            # the checkpoint only after the term began, and writing it only while the term lasts
            assert source is not None and producer is not None and salesforce is not None
            assert pool is not None and lease is not None
            return Subscriber(
                source=source,
                translator=Translator(rules, salesforce),
                producer=producer,
                store=FencedCheckpointStore(pool, lease.name, term, leadership.step_down),
                channels=list(sf.channels),
                options=options,
                topics=topics,
                metrics=metrics,
            )

        leadership = Leadership(
            lease, start_term, registry=metrics.registry, instance_id=instance_id, timing=options.lease_timing
        )
        dead_letters = DeadLetterGauges(
            INGRESS,
            (topics or CdcTopics()).dlq,
            await bootstrap.open_offsets_reader(stack, settings, "sf-cdc-offsets"),
            _partition_counter(settings),
            lambda: leadership.state is State.LEADER,
            settings.runtime.dead_letter_check_interval_s,
        )
        metrics.registry.register(dead_letters)
        health = await stack.enter_async_context(HealthServer(leadership, options.health_host, options.health_port))
        log.info(
            "sf_cdc_started",
            channels=sf.channels,
            health_port=health.port,
            subscriber=options.subscriber,
            lease=lease.name,
            instance_id=instance_id,
        )
        gauges = asyncio.create_task(dead_letters.companion(stop), name="ingress-dead-letter-gauges")
        try:
            await leadership.run(stop)
        finally:
            gauges.cancel()
            await asyncio.gather(gauges, return_exceptions=True)


def _partition_counter(settings: Settings) -> Callable[[str], Awaitable[int | None]]:
    """The dead-letter topic's partition count from the admin API (``fleet dlq``'s own lookup: an
    assign-less consumer knows no topic's metadata), asked until it answers, then kept."""
    known: dict[str, int] = {}

    async def count(topic: str) -> int | None:
        if topic not in known:
            try:
                known[topic] = len(await partitions_of(settings.kafka.connection(), topic))
            except TopicMissing:
                return None  # not created yet: no sample, asked again next turn
        return known[topic]

    return count
