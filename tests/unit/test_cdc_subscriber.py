"""The subscriber's delivery semantics with a fake source, producer, org and checkpoint store:
checkpoint only after Kafka acknowledged, duplicates once, bad deliveries to the DLQ, fallback with
alarm and resync, watchdog reconnects, graceful drain, health endpoints. And both transports: the
Pub/Sub API's bytes positions end to end, a switch of transport, a rejection reported mid-session."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from adapters.cdc_checkpoints import Checkpoint, MemoryCheckpointStore, ReplayId
from adapters.kafka import Delivered, FakeProducer
from adapters.salesforce import FakeSalesforce, OrderWithItems
from events import failure as fh
from events.envelope import Envelope, header_map
from events.errors import AuthenticationFailed, RejectedByUpstream, UpstreamUnavailable
from tests.unit.test_cdc_translate import (
    CHANNELS,
    ITEM_ID,
    ORDER_ID,
    change_message,
    eligibility_message,
    fake_org,
    over_pubsub,
    sf_id,
)
from workers.ingress.cdc_source import CometdSource, FakeSource, SourceError, SourceRefused
from workers.ingress.cdc_translate import Rules, Translator
from workers.ingress.sf_cdc import CdcOptions, CdcTopics, Subscriber
from workers.runtime.health import HealthServer

ORDER_CH = CHANNELS["Order"]
ALL_CHANNELS = [*CHANNELS.values(), "/event/Account_Eligibility_Update__e"]
TOPICS = CdcTopics()
FAST = CdcOptions(
    subscriber="unit",
    watchdog_s=60,
    watchdog_tick_s=0.02,
    checkpoint_interval_s=0.02,
    retry_initial_s=0.01,
    retry_max_s=0.02,
    reconnect_max_s=0.05,
    shutdown_grace_s=2,
)


class GatedProducer(FakeProducer):
    """A FakeProducer whose publishes wait until ``gate`` is set (Kafka slow to acknowledge)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def publish(self, topic: str, envelope: Envelope) -> Delivered:
        await self.gate.wait()
        return await super().publish(topic, envelope)


class GatedOrg(FakeSalesforce):
    """Reading ``blocked`` waits until ``gate`` is set (a slow re-read)."""

    def __init__(self, blocked: str) -> None:
        super().__init__()
        self.blocked = blocked
        self.gate = asyncio.Event()

    async def get_orders_with_items(self, order_ids: Sequence[str]) -> list[OrderWithItems]:
        if self.blocked in order_ids:
            await self.gate.wait()
        return await super().get_orders_with_items(order_ids)


@dataclass
class Rig:
    source: FakeSource
    producer: FakeProducer
    org: FakeSalesforce
    store: MemoryCheckpointStore
    subscriber: Subscriber
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(v or b"{}") for _, v, _ in self.producer.on(topic)]

    def ids(self, topic: str) -> list[str]:
        return [header_map(h)["ce_id"] for _, _, h in self.producer.on(topic)]

    def checkpoint(self, channel: str = ORDER_CH) -> ReplayId | None:
        row = self.store.rows.get(channel)
        return row.replay_id if row else None

    def metric(self, name: str, **labels: str) -> float:
        return self.subscriber.metrics.registry.get_sample_value(name, labels) or 0.0


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def build(
    *,
    producer: FakeProducer | None = None,
    org: FakeSalesforce | None = None,
    store: MemoryCheckpointStore | None = None,
    options: CdcOptions = FAST,
    kind: type[int] | type[bytes] = int,
) -> Rig:
    source = FakeSource(ALL_CHANNELS, position_kind=kind)
    producer = producer or FakeProducer()
    org = org or fake_org()
    store = store or MemoryCheckpointStore()
    rules = Rules(frozenset({"Approved", "Processed", "Reactivate"}), "fulfillment-fleet")
    subscriber = Subscriber(
        source=source,
        translator=Translator(rules, org),
        producer=producer,
        store=store,
        channels=ALL_CHANNELS,
        options=options,
        topics=TOPICS,
    )
    return Rig(source, producer, org, store, subscriber)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = build()
    async with running(r):
        yield r


class running:
    def __init__(self, rig: Rig) -> None:
        self.rig = rig

    async def __aenter__(self) -> Rig:
        self.rig.task = asyncio.create_task(self.rig.subscriber.run(self.rig.stop))
        await eventually(lambda: self.rig.subscriber.ready)
        return self.rig

    async def __aexit__(self, *exc: object) -> None:
        self.rig.stop.set()
        assert self.rig.task is not None
        await asyncio.wait_for(self.rig.task, 5)


def update(replay_id: ReplayId, **fields: Any) -> dict[str, Any]:
    return change_message("Order", fields=fields or {"Status": "Draft"}, replay_id=replay_id)


async def test_events_reach_their_topics_and_the_checkpoint_follows(rig: Rig) -> None:
    rig.source.push(update(11, Status="Approved", Activation_Status__c="Activating"))
    rig.source.push(change_message("Product2", record_ids=[sf_id("01t", 1)], fields={"Name": "x"}, replay_id=12))
    rig.source.push(eligibility_message(Eligibility_Status__c="Eligible"))
    await eventually(lambda: rig.checkpoint() == 11 and rig.checkpoint(CHANNELS["Product2"]) == 12)
    assert [e["sf_order_id"] for e in rig.on(TOPICS.order)] == [ORDER_ID, ORDER_ID]
    assert len(rig.on(TOPICS.catalog)) == 1
    await eventually(lambda: len(rig.on(TOPICS.account)) == 1)
    assert rig.metric("sf_cdc_events_emitted_total", channel=ORDER_CH, type="fleet.order.activation-requested.v2") == 1


async def test_nothing_is_checkpointed_before_kafka_acknowledged() -> None:
    r = build(producer=GatedProducer())
    async with running(r):
        r.source.push(update(21))
        await asyncio.sleep(0.2)
        assert r.checkpoint() is None and r.subscriber.in_flight == 1
        r.producer.gate.set()  # type: ignore[attr-defined]
        await eventually(lambda: r.checkpoint() == 21)


async def test_a_slow_reread_holds_the_checkpoint_but_not_the_other_records() -> None:
    org = GatedOrg(blocked=ORDER_ID)
    org.add_record("Order", {"Id": ORDER_ID, "Status": "Approved", "Activation_Status__c": None})
    other = sf_id("801", 5)
    org.add_record("Order", {"Id": other, "Status": "Approved"})
    r = build(org=org)
    async with running(r):
        r.source.push(
            change_message("Order", record_ids=[ORDER_ID], fields={"Activation_Status__c": "Activating"}, replay_id=31)
        )
        r.source.push(change_message("Order", record_ids=[other], fields={"Status": "Draft"}, replay_id=32))
        await eventually(lambda: len(r.on(TOPICS.order)) == 1)
        await asyncio.sleep(0.1)
        assert r.checkpoint() is None  # 32 is done, but 31 before it is not
        org.gate.set()
        await eventually(lambda: r.checkpoint() == 32)
        assert [e["sf_order_id"] for e in r.on(TOPICS.order)] == [other, ORDER_ID]


async def test_a_change_delivered_twice_is_emitted_once(rig: Rig) -> None:
    message = update(41)
    rig.source.push(message)
    rig.source.push(message)  # same replay id
    again = json.loads(json.dumps(message))
    again["data"]["event"]["replayId"] = 42  # same EventUuid, new replay id
    rig.source.push(again)
    await eventually(lambda: rig.checkpoint() == 42)
    assert len(rig.on(TOPICS.order)) == 1
    assert rig.metric("sf_cdc_events_skipped_total", channel=ORDER_CH, reason="duplicate") == 2


async def test_an_unparseable_delivery_is_dead_lettered_and_the_stream_goes_on(rig: Rig) -> None:
    bad = {"channel": ORDER_CH, "data": {"payload": {"no": "header"}, "event": {"replayId": 51}}}
    rig.source.push(bad)
    rig.source.push(update(52))
    await eventually(lambda: rig.checkpoint() == 52)
    ((key, value, headers),) = rig.producer.on(TOPICS.dlq)
    h = header_map(headers)
    assert key == ORDER_CH.encode() and json.loads(value or b"") == bad
    assert "ChangeEventHeader" in h[fh.ERROR_MESSAGE] and h[fh.ERROR_CODE] == "INVALID_PAYLOAD"
    assert h[fh.ERROR_STAGE] == "decode" and h[fh.SOURCE_REPLAY_ID] == "51" and h[fh.SOURCE_TOPIC] == ORDER_CH
    assert h[fh.ATTEMPTS] == "0" and h[fh.FIRST_FAILED_AT] == h[fh.LAST_FAILED_AT]
    # the provenance every dead letter carries (``events.failure.provenance``), same names, same order
    assert [n for n, _ in headers if n in fh.FLEET_HEADERS] == list(fh.PROVENANCE)
    assert len(rig.on(TOPICS.order)) == 1


async def test_a_change_the_rules_cannot_place_is_dead_lettered(rig: Rig) -> None:
    rig.source.push(change_message("OrderItem", "DELETE", [sf_id("802", 99)], replay_id=61))
    await eventually(lambda: rig.checkpoint(CHANNELS["OrderItem"]) == 61)
    ((_, _, headers),) = rig.producer.on(TOPICS.dlq)
    assert header_map(headers)["error_code"] == "CDC_UNRESOLVABLE"


async def test_transient_salesforce_and_kafka_failures_are_retried_in_place(rig: Rig) -> None:
    rig.org.fail_next_with(UpstreamUnavailable("503"), UpstreamUnavailable("503"))
    rig.producer.fail_next_with = UpstreamUnavailable("kafka away")
    rig.source.push(update(71, Activation_Status__c="Activating"))
    await eventually(lambda: rig.checkpoint() == 71)
    assert [e["sf_order_id"] for e in rig.on(TOPICS.order)] == [ORDER_ID]


async def test_an_overflow_publishes_a_resync_request_and_the_resynced_records(rig: Rig) -> None:
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    rig.source.push(change_message("Order", "GAP_OVERFLOW", record_ids=[], replay_id=81, commit_ms=now_ms))
    await eventually(lambda: rig.checkpoint() == 81)
    (request,) = rig.on(TOPICS.resync)
    assert request["entity"] == "Order" and request["reason"] == "GAP_OVERFLOW"
    types = {header_map(h)["ce_type"] for _, _, h in rig.producer.on(TOPICS.order)}
    assert types == {
        "fleet.order.activation-requested.v2",
        "fleet.order.sim-activation-requested.v2",
        "fleet.order.changed.v1",
    }


async def test_a_rejected_checkpoint_falls_back_raises_the_alarm_and_resyncs_the_window() -> None:
    since = datetime.now(UTC) - timedelta(hours=2)
    store = MemoryCheckpointStore({ORDER_CH: Checkpoint(ORDER_CH, 500, since)})
    r = build(store=store)
    r.source.reject(ORDER_CH)
    async with running(r):
        assert r.source.opens == [{ORDER_CH: 500}]
        assert r.metric("sf_cdc_replay_fallbacks_total", channel=ORDER_CH) == 1
        (request,) = r.on(TOPICS.resync)
        assert request["entity"] == "Order" and request["reason"] == "REPLAY_ID_REJECTED"
        assert datetime.fromisoformat(request["since"]) == since
        assert {e["sf_order_id"] for e in r.on(TOPICS.order)} == {ORDER_ID, sf_id("801", 2)}
        row = store.rows[ORDER_CH]
        assert row.replay_id is None and row.reset_reason == "REPLAY_ID_REJECTED" and row.position_time
        r.source.push(update(600))
        await eventually(lambda: r.checkpoint() == 600)


async def test_a_channel_without_replay_id_catches_up_from_its_time_without_alarm() -> None:
    since = datetime.now(UTC) - timedelta(hours=1)
    r = build(store=MemoryCheckpointStore({CHANNELS["OrderItem"]: Checkpoint(CHANNELS["OrderItem"], None, since)}))
    async with running(r):
        assert r.source.opens == [{}]
        assert r.metric("sf_cdc_replay_fallbacks_total", channel=CHANNELS["OrderItem"]) == 0
        assert r.on(TOPICS.resync)[0]["reason"] == "RESUMED_WITHOUT_REPLAY_ID"
        assert [(e["sf_order_id"], e["record_id"]) for e in r.on(TOPICS.order)] == [(ORDER_ID, ITEM_ID)]


async def test_the_watchdog_reopens_a_silent_stream_from_the_checkpoint() -> None:
    r = build(options=replace(FAST, watchdog_s=0.3))
    async with running(r):
        r.source.push(update(91))
        await eventually(lambda: r.checkpoint() == 91)
        r.source.stall()
        await eventually(lambda: len(r.source.opens) == 2)
        assert r.source.opens[1] == {ORDER_CH: 91} and r.source.closes >= 1
        assert r.metric("sf_cdc_reconnects_total", reason="StreamStalled") == 1
        await eventually(lambda: r.subscriber.ready)
        r.source.push(update(92))
        await eventually(lambda: r.checkpoint() == 92)


async def test_a_failing_stream_is_reopened(rig: Rig) -> None:
    rig.source.push_error(SourceError("connection reset"))
    await eventually(lambda: len(rig.source.opens) == 2)
    assert rig.metric("sf_cdc_reconnects_total", reason="SourceError") == 1


async def test_a_failing_open_is_retried_with_backoff() -> None:
    r = build()
    r.source.fail_next_open = SourceError("handshake denied")
    async with running(r):
        assert len(r.source.opens) == 1
        assert r.metric("sf_cdc_reconnects_total", reason="SourceError") == 1


async def test_a_refusal_no_retry_fixes_raises_the_alarm_and_waits_its_long_retry_out() -> None:
    """Pub/Sub's daily allocation spent (or a permission, an unknown topic): no quick reconnects."""
    r = build()
    r.source.fail_next_open = SourceRefused("limit", code="subscription.limit.exceeded", retry_after_s=1.5)
    r.task = asyncio.create_task(r.subscriber.run(r.stop))
    try:
        await eventually(lambda: r.metric("sf_cdc_source_refused_total", code="subscription.limit.exceeded") == 1)
        await asyncio.sleep(0.3)  # the fast reconnect back-off would have reopened by now
        assert r.source.opens == [] and not r.subscriber.ready
        assert r.metric("sf_cdc_reconnects_total", reason="SourceRefused") == 0
        await eventually(lambda: r.subscriber.ready)  # tried again once the wait was over
        assert len(r.source.opens) == 1
    finally:
        r.stop.set()
        await asyncio.wait_for(r.task, 5)


async def test_a_checkpoint_write_that_fails_is_retried_on_the_next_tick(rig: Rig) -> None:
    rig.store.fail_next_with = OSError("database away")
    rig.source.push(update(101))
    await eventually(lambda: rig.checkpoint() == 101)


async def test_stopping_drains_in_flight_work_and_writes_its_checkpoint() -> None:
    r = build(producer=GatedProducer())
    r.task = asyncio.create_task(r.subscriber.run(r.stop))
    await eventually(lambda: r.subscriber.ready)
    r.source.push(update(111))
    await eventually(lambda: r.subscriber.in_flight == 1)
    r.stop.set()
    await asyncio.sleep(0.05)
    r.producer.gate.set()  # type: ignore[attr-defined]
    await asyncio.wait_for(r.task, 5)
    assert r.checkpoint() == 111 and len(r.on(TOPICS.order)) == 1


async def test_health_and_metrics_endpoints(rig: Rig) -> None:
    health = HealthServer(rig.subscriber, "127.0.0.1", 0)
    port = await health.start()
    try:
        rig.source.push(update(121))
        await eventually(lambda: rig.checkpoint() == 121)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/livez")).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
            text = (await client.get("/metrics")).text
        assert f'sf_cdc_events_received_total{{channel="{ORDER_CH}"}} 1.0' in text
        assert f'sf_cdc_checkpoint_replay_id{{channel="{ORDER_CH}"}} 121.0' in text
        assert "sf_cdc_last_event_age_seconds" in text and "sf_cdc_ready 1.0" in text
    finally:
        await health.stop()


async def test_readyz_is_unavailable_before_subscribing() -> None:
    r = build()
    health = HealthServer(r.subscriber, "127.0.0.1", 0)
    port = await health.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/readyz")).status_code == 503
            assert (await client.get("/livez")).status_code == 503
    finally:
        await health.stop()


async def test_the_first_subscription_is_recorded_so_an_early_crash_resumes_with_a_catch_up() -> None:
    store = MemoryCheckpointStore()
    async with running(build(store=store)):
        assert set(store.rows) == set(ALL_CHANNELS)
        assert all(row.replay_id is None and row.position_time for row in store.rows.values())
    again = build(store=store)
    async with running(again):
        assert again.source.opens == [{}]
        reasons = {r["reason"] for r in again.on(TOPICS.resync)}
        assert reasons == {"RESUMED_WITHOUT_REPLAY_ID"}
        assert again.metric("sf_cdc_replay_fallbacks_total", channel=ORDER_CH) == 0


async def test_refused_credentials_are_waited_out_not_dead_lettered(rig: Rig) -> None:
    rig.org.fail_next_with(AuthenticationFailed("invalid_grant"), AuthenticationFailed("invalid_grant"))
    rig.source.push(update(131, Activation_Status__c="Activating"))
    await eventually(lambda: rig.checkpoint() == 131)
    assert rig.producer.on(TOPICS.dlq) == [] and len(rig.on(TOPICS.order)) == 1


# --- both transports ------------------------------------------------------------------------------
def rid(n: int) -> bytes:
    """An opaque Pub/Sub API replay id (its bytes mean nothing to us; these happen to count)."""
    return n.to_bytes(8, "big")


def refused() -> RejectedByUpstream:
    return RejectedByUpstream("GET /query answered 400", upstream="salesforce", code="MALFORMED_QUERY")


def test_each_source_says_which_kind_of_replay_id_it_resumes_from() -> None:
    cometd = CometdSource(object(), [ORDER_CH])  # type: ignore[arg-type]  # never opened here
    assert cometd.accepts(5) and not cometd.accepts(b"\x05") and not cometd.accepts(True)
    assert FakeSource([ORDER_CH]).accepts(5) and not FakeSource([ORDER_CH]).accepts(b"\x05")
    pubsub = FakeSource([ORDER_CH], position_kind=bytes)
    assert pubsub.accepts(b"\x05") and not pubsub.accepts(5)


async def test_a_source_refuses_to_open_from_a_position_of_the_other_kind() -> None:
    """Subscribing that channel from the preset instead would lose its window without an alarm."""
    with pytest.raises(TypeError):
        await FakeSource([ORDER_CH], position_kind=bytes).open({ORDER_CH: 5})
    with pytest.raises(TypeError):
        await CometdSource(object(), [ORDER_CH]).open({ORDER_CH: b"\x05"})  # type: ignore[arg-type]


async def test_pubsub_positions_flow_as_bytes_from_the_source_to_the_checkpoint_and_back() -> None:
    store = MemoryCheckpointStore()
    r = build(store=store, kind=bytes)
    async with running(r):
        r.source.push(update(rid(11), Status="Approved", Activation_Status__c="Activating"))
        r.source.push(update(rid(12)))  # a duplicate window key in hex: a distinct change, not a repeat
        r.source.push(over_pubsub(eligibility_message(Eligibility_Status__c="Eligible"), rid(13)))
        await eventually(lambda: r.checkpoint() == rid(12) and r.checkpoint(ALL_CHANNELS[-1]) == rid(13))
        await eventually(lambda: len(r.on(TOPICS.account)) == 1)
        events = r.on(TOPICS.order) + r.on(TOPICS.account)
        assert {e["replay_id"] for e in events} == {rid(11).hex(), rid(12).hex(), rid(13).hex()}
        assert all(e["change"]["event"]["replayIdHex"] == e["replay_id"] for e in events)
        # the gauge holds numbers: an opaque position is left out rather than faked
        gauge = r.subscriber.metrics.registry.get_sample_value("sf_cdc_checkpoint_replay_id", {"channel": ORDER_CH})
        assert gauge is None
    assert type(store.rows[ORDER_CH].replay_id) is bytes
    again = build(store=store, kind=bytes)
    async with running(again):
        assert again.source.opens[0][ORDER_CH] == rid(12)
        assert again.metric("sf_cdc_replay_fallbacks_total", channel=ORDER_CH) == 0
        # only the channels that never delivered catch up (routinely); the Order channel resumes
        assert {e["entity"] for e in again.on(TOPICS.resync)} == {"OrderItem", "Product2", "PricebookEntry"}


@pytest.mark.parametrize(("stored", "kind", "new"), [(500, bytes, rid(1)), (rid(500), int, 1)])
async def test_a_position_the_other_transport_wrote_falls_back_raises_the_alarm_and_resyncs(
    stored: ReplayId, kind: type[int] | type[bytes], new: ReplayId
) -> None:
    """The transport was switched: the stored id is never handed to the source; the channel is
    recovered as a rejected replay id is, and the switch is named in the log."""
    since = datetime.now(UTC) - timedelta(hours=2)
    store = MemoryCheckpointStore({ORDER_CH: Checkpoint(ORDER_CH, stored, since)})
    r = build(store=store, kind=kind)
    with capture_logs() as logs:
        async with running(r):
            assert r.source.opens == [{}]
            assert r.metric("sf_cdc_replay_fallbacks_total", channel=ORDER_CH) == 1
            (request,) = r.on(TOPICS.resync)
            assert request["reason"] == "REPLAY_ID_REJECTED" and datetime.fromisoformat(request["since"]) == since
            row = store.rows[ORDER_CH]
            assert row.replay_id is None and row.reset_reason == "REPLAY_ID_REJECTED"
            assert row.position_time is not None and row.position_time > since
            r.source.push(update(new))
            await eventually(lambda: r.checkpoint() == new)
    (switched,) = [e for e in logs if e["event"] == "sf_cdc_transport_switched"]
    assert switched["channel"] == ORDER_CH and switched["log_level"] == "warning"
    shown = stored.hex() if isinstance(stored, bytes) else stored
    assert switched["stored_replay_id"] == shown
    (fallback,) = [e for e in logs if e["event"] == "sf_cdc_replay_fallback"]
    assert fallback["rejected_replay_id"] == shown and "TRANSPORT_SWITCHED" in fallback["error"]


async def test_a_replay_id_rejected_on_the_stream_raises_the_alarm_and_resyncs_while_the_session_goes_on() -> None:
    """gRPC reports ``...replayid.corrupted`` after the open: the same recovery as at the open
    (alarm, resync from the row's time, row reset), and no reconnect."""
    since = datetime.now(UTC) - timedelta(hours=2)
    store = MemoryCheckpointStore({ORDER_CH: Checkpoint(ORDER_CH, rid(500), since)})
    r = build(store=store, kind=bytes)
    async with running(r):
        assert r.source.opens == [{ORDER_CH: rid(500)}] and r.on(TOPICS.resync) == []
        r.source.push_subscribed(ORDER_CH, rid(500))
        await eventually(lambda: store.rows[ORDER_CH].reset_reason == "REPLAY_ID_REJECTED")
        assert r.metric("sf_cdc_replay_fallbacks_total", channel=ORDER_CH) == 1
        (request,) = r.on(TOPICS.resync)
        assert request["reason"] == "REPLAY_ID_REJECTED" and datetime.fromisoformat(request["since"]) == since
        assert {e["sf_order_id"] for e in r.on(TOPICS.order)} == {ORDER_ID, sf_id("801", 2)}
        row = store.rows[ORDER_CH]
        assert row.replay_id is None and row.position_time is not None and row.position_time > since
        r.source.push(update(rid(1)))  # the stream goes on from the preset
        await eventually(lambda: r.checkpoint() == rid(1))
        assert len(r.source.opens) == 1 and r.source.closes == 0 and r.subscriber.ready
        assert r.metric("sf_cdc_reconnects_total", reason="SourceError") == 0


async def test_a_late_rejection_waits_for_the_changes_before_it_and_keeps_a_failed_window_durably() -> None:
    """Changes received before the rejection become durable first; a resync that fails then leaves
    the row pending at the window's start (no replay id: the rejected one is useless), and the
    retry recovers it."""
    since = datetime.now(UTC) - timedelta(hours=2)
    store = MemoryCheckpointStore({ORDER_CH: Checkpoint(ORDER_CH, rid(500), since)})
    r = build(store=store, options=replace(FAST, catch_up_retry_initial_s=0.3), kind=bytes)
    async with running(r):
        r.source.push(update(rid(501)))
        r.source.push_subscribed(ORDER_CH, rid(500))
        r.org.fail_next_with(refused())
        await eventually(lambda: r.metric("sf_cdc_catch_up_failures_total", channel=ORDER_CH) == 1)
        assert len(r.on(TOPICS.order)) == 1  # the change before it was produced first
        row = store.rows[ORDER_CH]
        assert row.replay_id is None and row.reset_reason == "CATCH_UP_PENDING:REPLAY_ID_REJECTED"
        window_start = row.position_time
        assert window_start is not None
        r.source.push(update(rid(2)))
        await eventually(lambda: r.checkpoint() == rid(2))
        assert store.rows[ORDER_CH].position_time == window_start  # a stream position keeps the window
        await eventually(lambda: store.rows[ORDER_CH].reset_reason == "REPLAY_ID_REJECTED")
        assert r.metric("sf_cdc_catch_up_pending", channel=ORDER_CH) == 0
        assert r.metric("sf_cdc_replay_fallbacks_total", channel=ORDER_CH) == 1 and len(r.source.opens) == 1


async def test_an_unparseable_pubsub_delivery_is_dead_lettered_with_a_hex_replay_id_and_a_json_body() -> None:
    r = build(kind=bytes)
    async with running(r):
        bad = {"channel": ORDER_CH, "data": {"payload": {"no": "header"}, "event": {"replayId": b"\x00\x01\xfe"}}}
        r.source.push(bad)
        r.source.push(update(rid(52)))
        await eventually(lambda: r.checkpoint() == rid(52))
        ((key, value, headers),) = r.producer.on(TOPICS.dlq)
    h = header_map(headers)
    assert key == ORDER_CH.encode() and h[fh.SOURCE_REPLAY_ID] == "0001fe" and h[fh.ERROR_STAGE] == "decode"
    body = {"channel": ORDER_CH, "data": {"payload": {"no": "header"}, "event": {"replayIdHex": "0001fe"}}}
    assert json.loads(value or b"") == body


async def test_the_stream_lag_histogram_times_commit_to_kafka_acknowledgement(rig: Rig) -> None:
    """``sf_cdc_stream_lag_seconds{channel}``: from the change's commitTimestamp to Kafka acknowledging
    its events; a change that emits nothing is not timed."""
    commit_ms = int((time.time() - 90) * 1000)  # committed in Salesforce a minute and a half ago
    rig.source.push(
        change_message(
            "Order",
            fields={"Status": "Approved", "Activation_Status__c": "Activating"},
            replay_id=131,
            commit_ms=commit_ms,
        )  # fmt: skip
    )
    rig.source.push(change_message("Order", fields={"Description": "internal"}, replay_id=132))  # emits nothing
    await eventually(lambda: rig.checkpoint() == 132)
    lag = "sf_cdc_stream_lag_seconds"
    assert rig.metric(f"{lag}_count", channel=ORDER_CH) == 1
    assert rig.metric(f"{lag}_bucket", channel=ORDER_CH, le="60.0") == 0
    assert rig.metric(f"{lag}_bucket", channel=ORDER_CH, le="300.0") == 1
    assert 90 <= rig.metric(f"{lag}_sum", channel=ORDER_CH) < 300


class CountingOrg(FakeSalesforce):
    """Records the ids of every bulk re-read (one list per SOQL query Salesforce would see)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[list[str]] = []

    async def get_orders_with_items(self, order_ids: Sequence[str]) -> list[OrderWithItems]:
        self.reads.append(list(order_ids))
        return await super().get_orders_with_items(order_ids)


async def test_what_the_source_already_holds_is_taken_at_once_so_its_activations_share_one_reread() -> None:
    org = CountingOrg()
    orders = [sf_id("801", 40 + i) for i in range(6)]
    for order in orders:
        org.add_record("Order", {"Id": order, "Status": "Approved", "Activation_Status__c": None})
    r = build(org=org)
    async with running(r):
        # one arrival (a gRPC response): every change is in the source before the pump looks
        for i, order in enumerate(orders):
            r.source.push(
                change_message(
                    "Order", record_ids=[order], fields={"Activation_Status__c": "Activating"}, replay_id=60 + i
                )
            )
        await eventually(lambda: r.checkpoint() == 65)
        assert sorted(e["sf_order_id"] for e in r.on(TOPICS.order)) == sorted(orders)
        assert sorted(id_ for query in org.reads for id_ in query) == sorted(orders)
        assert len(org.reads) == 1, org.reads


async def test_an_error_behind_what_the_source_holds_still_ends_the_session_after_it() -> None:
    r = build()
    async with running(r):
        for replay_id in range(70, 75):
            r.source.push(update(replay_id))
        r.source.push_error(SourceError("connection reset"))
        await eventually(lambda: r.checkpoint() == 74 and len(r.source.opens) == 2)
        assert r.metric("sf_cdc_reconnects_total", reason="SourceError") == 1
