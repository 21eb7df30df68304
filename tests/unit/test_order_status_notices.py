"""Order-status notices for the portal's live order view (Activating / Activated / Failed), with fakes.

Contract: the saga announces ``OrderActivationStarted`` on the outcome topic when a request starts
work on an order that was not running (a new one, a parked or failed one it resumes), before the
delivery's first save, and never on a wake-up, a duplicate, a request for a fulfilled order or one
that finds the order running or waiting. The cache-invalidator turns each outcome into one
order-status notice on its own channel: Activating, Activated, Failed (with the code), a parked order
as Failed unless the park is a wait (``AWAITING_PROCESSED``: no notice). The notice goes in the
event's own pipeline span after its ``UNLINK``s and its invalidation notice, and goes out even when
the event made no key stale.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from adapters.cache import FakeCache, Invalidation, InvalidationNotice, OrderStatusNotice, RedisCache
from adapters.mappings import FakeIdMappings
from adapters.saga_store import SagaOrder
from adapters.whmcs import PayMethod
from events.base import DomainEvent, decode_event
from events.billing import InvoiceChanged, PaymentMethodChanged
from events.envelope import H_ID, H_TIME, Envelope, from_record
from events.errors import DependencyUnavailable
from events.fulfillment import OrderActivationStarted, OrderFulfilled, OrderFulfillmentFailed, OrderParked
from events.salesforce import OrderActivationRequested, SimActivationRequested
from events.topics import Topic
from sandbox import demo_data
from tests.unit.test_fulfillment_saga import Crash, World, snapshot_of
from workers import cache_keys as ck
from workers.cache_invalidation.route import bind_cache_invalidator
from workers.cache_invalidation.status import WAITS
from workers.fulfillment.model import OrderState, Step
from workers.fulfillment.policy import QUIET_PARKING_CODES
from workers.runtime.batch import BatchHandler
from workers.runtime.message import Message

TANAKA = demo_data.CUSTOMERS[0]
T_USER, T_CLIENT, T_ACCOUNT = TANAKA["user_id"], TANAKA["whmcs_client_id"], TANAKA["sf_account_id"]
ORDER = demo_data.sf_id("801", 91)
AT = "2026-03-10T09:00:00Z"


# --- the invalidator: outcome → notice ------------------------------------------------------------


class Invalidator:
    def __init__(self) -> None:
        self.cache = FakeCache()
        self.handler = bind_cache_invalidator(cache=self.cache, mappings=FakeIdMappings.of(demo_data.id_mappings()))[
            OrderFulfilled
        ]
        assert isinstance(self.handler, BatchHandler)
        for key in (ck.account_orders(T_ACCOUNT), ck.account_order(T_ACCOUNT, ORDER), ck.user_subscriptions(T_USER)):
            self.cache.values[key] = "{}"

    async def deliver(self, *events: DomainEvent) -> list[Message]:
        msgs = [message(e) for e in events]
        assert await self.handler.handle_batch(msgs) == [None] * len(msgs)
        return msgs

    def statuses(self) -> list[tuple[str, str | None]]:
        return [(n.status, n.error_code) for n in self.cache.status_notices]


def message(event: DomainEvent, *, at: str = AT) -> Message:
    event_id = str(uuid.uuid4())
    headers = [(H_ID, event_id.encode()), (H_TIME, at.encode())]
    return Message(
        event=event, group="fleet.cache-invalidator", topic="t", partition=0, offset=0, timestamp=0,
        key=event.key().encode(), value=None, headers=headers, header_map=dict(headers), event_type=event.TYPE,
    )  # fmt: skip


def started() -> OrderActivationStarted:
    return OrderActivationStarted(sf_order_id=ORDER, sf_account_id=T_ACCOUNT, order_type="Internet")


def parked(code: str) -> OrderParked:
    return OrderParked(sf_order_id=ORDER, sf_account_id=T_ACCOUNT, whmcs_client_id=T_CLIENT, error_code=code,
                       error_message=f"{code} message", step="payment_gate")  # fmt: skip


MAPPING: list[tuple[DomainEvent, tuple[str, str | None, str | None] | None]] = [
    (started(), ("Activating", None, None)),
    (OrderFulfilled(sf_order_id=ORDER, sf_account_id=T_ACCOUNT, whmcs_order_id=5), ("Activated", None, None)),
    (
        OrderFulfillmentFailed(
            sf_order_id=ORDER,
            sf_account_id=T_ACCOUNT,
            error_code="WHMCS_ORDER_REJECTED",
            error_message="AddOrder refused",
        ),
        ("Failed", "WHMCS_ORDER_REJECTED", "AddOrder refused"),
    ),  # fmt: skip
    (parked("PAYMENT_METHOD_MISSING"), ("Failed", "PAYMENT_METHOD_MISSING", "PAYMENT_METHOD_MISSING message")),
    (parked("AWAITING_PROCESSED"), None),  # a wait, not a failure: the portal keeps showing Activating
    (  # a request for a fulfilled order that Salesforce shows otherwise: the order stays Activated
        OrderFulfillmentFailed(
            sf_order_id=ORDER, sf_account_id=T_ACCOUNT, error_code="LEDGER_MISMATCH", error_message="x"
        ),
        None,
    ),
    (InvoiceChanged(whmcs_client_id=T_CLIENT, invoice_id=1), None),  # not an order outcome
]


@pytest.mark.parametrize(("event", "expected"), MAPPING, ids=lambda v: type(v).__name__ if v else "none")
async def test_each_outcome_maps_to_its_status(event: DomainEvent, expected: Any) -> None:
    inv = Invalidator()
    [msg] = await inv.deliver(event)

    if expected is None:
        assert inv.cache.status_notices == []
        return
    [notice] = inv.cache.status_notices
    assert (notice.status, notice.error_code, notice.error_message) == expected
    assert notice.event_id == msg.event_id and notice.sf_order_id == ORDER and notice.sf_account_id == T_ACCOUNT
    assert notice.at == AT


async def test_activating_busts_nothing_and_its_status_still_goes_out() -> None:
    inv = Invalidator()
    before = dict(inv.cache.values)

    await inv.deliver(started())

    assert inv.cache.values == before and inv.cache.invalidated_keys == []
    assert inv.cache.notices == [], "no invalidation notice: nothing was stale"
    assert inv.statuses() == [("Activating", None)]


async def test_an_outcome_of_an_account_with_nothing_cached_still_gets_its_status() -> None:
    inv = Invalidator()
    order = demo_data.sf_id("801", 92)
    other = OrderFulfillmentFailed(sf_order_id=order, error_code="ORDER_INVALID", error_message="x")

    await inv.deliver(other)  # no account, no client, an empty dependency SET: nothing stale

    assert inv.cache.notices == [] and inv.statuses() == [("Failed", "ORDER_INVALID")]


async def test_a_parked_wait_still_busts_the_order_keys_but_sends_no_status() -> None:
    inv = Invalidator()

    await inv.deliver(parked("AWAITING_PROCESSED"))

    [notice] = inv.cache.notices
    assert set(notice.keys) == {ck.account_orders(T_ACCOUNT), ck.account_order(T_ACCOUNT, ORDER)}
    assert inv.cache.status_notices == []


async def test_a_batch_gives_each_outcome_its_own_status_in_offset_order() -> None:
    inv = Invalidator()
    events: list[DomainEvent] = [
        started(),
        parked("PAYMENT_METHOD_MISSING"),
        InvoiceChanged(whmcs_client_id=T_CLIENT, invoice_id=1),
        started(),
        parked("AWAITING_PROCESSED"),
        OrderFulfilled(sf_order_id=ORDER, sf_account_id=T_ACCOUNT, whmcs_client_id=T_CLIENT, whmcs_order_id=5),
    ]

    msgs = await inv.deliver(*events)

    assert inv.statuses() == [
        ("Activating", None), ("Failed", "PAYMENT_METHOD_MISSING"), ("Activating", None), ("Activated", None)
    ]  # fmt: skip
    assert [n.event_id for n in inv.cache.status_notices] == [msgs[i].event_id for i in (0, 1, 3, 5)]
    assert inv.cache.calls == ["dependents", "invalidate"], "one pipeline for the whole batch, notices included"


async def test_redis_down_publishes_no_status_and_fails_the_record_for_a_retry() -> None:
    inv = Invalidator()
    inv.cache.fail_next_with = DependencyUnavailable("redis down", upstream="redis")

    [outcome] = await inv.handler.handle_batch([message(started())])

    assert isinstance(outcome, DependencyUnavailable) and inv.cache.status_notices == []


def test_the_waits_are_the_sagas_quiet_parks() -> None:
    assert {code.value for code in QUIET_PARKING_CODES} == WAITS


def test_the_notice_is_one_line_of_json_keyed_by_order() -> None:
    notice = OrderStatusNotice("evt-1", ORDER, T_ACCOUNT, "Failed", "PAYMENT_METHOD_MISSING", "no card", AT)

    text = notice.to_json()

    assert "\n" not in text
    assert json.loads(text) == {
        "event_id": "evt-1", "sf_order_id": ORDER, "sf_account_id": T_ACCOUNT, "status": "Failed",
        "error_code": "PAYMENT_METHOD_MISSING", "error_message": "no card", "at": AT,
    }  # fmt: skip


class _RecordingPipe:
    def __init__(self) -> None:
        self.commands: list[tuple[str, ...]] = []

    def unlink(self, key: str) -> None:
        self.commands.append(("UNLINK", key))

    def srem(self, index: str, *members: str) -> None:
        self.commands.append(("SREM", index, *members))

    def publish(self, channel: str, body: str) -> None:
        self.commands.append(("PUBLISH", channel, json.loads(body)["event_id"]))

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        return [1 if name != "PUBLISH" else 0 for name, *_ in self.commands]


class _Redis:
    def __init__(self) -> None:
        self.pipe = _RecordingPipe()

    def pipeline(self, transaction: bool = True) -> _RecordingPipe:
        return self.pipe


async def test_each_status_is_published_after_its_own_keys_are_unlinked_and_its_cache_notice() -> None:
    redis = _Redis()
    cache = RedisCache(redis, channel="cache", status_channel="status")  # type: ignore[arg-type]
    status = OrderStatusNotice("e1", ORDER, T_ACCOUNT, "Activated")

    results = await cache.invalidate(
        [
            Invalidation(InvalidationNotice("e1", "t", ("a", "b"), "r"), {"deps": ["b"]}, status),
            Invalidation(None, status=OrderStatusNotice("e2", ORDER, T_ACCOUNT, "Activating")),
            Invalidation(InvalidationNotice("e3", "t", ("c",), "r")),
        ]
    )

    assert redis.pipe.commands == [
        ("UNLINK", "a"), ("UNLINK", "b"), ("SREM", "deps", "b"),
        ("PUBLISH", "cache", "e1"), ("PUBLISH", "status", "e1"),
        ("PUBLISH", "status", "e2"),
        ("UNLINK", "c"), ("PUBLISH", "cache", "e3"),
    ]  # fmt: skip
    assert results == [2, 0, 1]


# --- the saga: Activating only when work starts ----------------------------------------------------


def announced(world: World, order_id: str) -> list[OrderActivationStarted]:
    events = [decode_event(from_record(k, v, h)) for k, v, h in world.producer.on(Topic.FULFILLMENT_OUTCOME)]
    return [e for e in events if isinstance(e, OrderActivationStarted) and e.sf_order_id == order_id]


def kinds(world: World, order_id: str) -> list[str]:
    """The order's outcome events, in publish order, by class name."""
    events = [decode_event(from_record(k, v, h)) for k, v, h in world.producer.on(Topic.FULFILLMENT_OUTCOME)]
    return [type(e).__name__ for e in events if getattr(e, "sf_order_id", None) == order_id]


@pytest.fixture
def world() -> World:
    return World()


async def test_a_new_orders_first_saves_do_not_wait_for_its_announcement_and_none_says_running_before_it(
    world: World,
) -> None:
    """Kafka acknowledges ``OrderActivationStarted`` late: the first step's attempt is saved before the
    acknowledgement (so the produce is off the activation's path) with the order stored as received,
    so a crash then announces again; no save stores any other state before the acknowledgement."""
    order_id = world.place_order("tanaka", "Internet", ["INT-1G-GOLD"])
    acknowledged = asyncio.Event()
    publish, save = world.producer.publish, world.store.save

    async def late_ack(topic: str, envelope: Envelope) -> Any:
        delivered = await publish(topic, envelope)
        if envelope.type == OrderActivationStarted.TYPE:
            await acknowledged.wait()
        return delivered

    stored: list[tuple[str, bool]] = []  # (the order's state as saved, acknowledged by then)

    async def watching_save(order: SagaOrder, *args: Any, **kwargs: Any) -> bool:
        stored.append((order.state, acknowledged.is_set()))
        await asyncio.sleep(0)  # a database round trip: the produce gets the loop meanwhile
        if len(stored) == 2:
            acknowledged.set()  # Kafka answers while the second step's attempt is being saved
        return await save(order, *args, **kwargs)

    world.producer.publish = late_ack  # type: ignore[method-assign]
    world.store.save = watching_save  # type: ignore[method-assign]
    request = OrderActivationRequested(sf_order_id=order_id, sf_account_id=TANAKA["sf_account_id"])
    await asyncio.wait_for(world.deliver(request), timeout=10)

    assert stored[0] == ("received", False), "the first save did not wait for the acknowledgement"
    assert [state for state, acked in stored if not acked and state != "received"] == []
    assert stored[-1] == ("fulfilled", True)
    [event] = announced(world, order_id)
    assert event.sf_account_id == TANAKA["sf_account_id"] and event.whmcs_client_id is None
    assert kinds(world, order_id) == ["OrderActivationStarted", "OrderFulfilled"]


async def test_a_crash_while_the_announcement_is_unacknowledged_announces_again(world: World) -> None:
    """The delivery dies after its first steps' saves stored the order as received (Kafka had not
    answered): the redelivery finds it received and announces again. Nothing lost."""
    order_id = world.place_order("tanaka", "Internet", ["INT-1G-GOLD"])
    publish = world.producer.publish
    never = asyncio.Event()

    async def no_ack(topic: str, envelope: Envelope) -> Any:
        delivered = await publish(topic, envelope)
        if envelope.type == OrderActivationStarted.TYPE:
            await asyncio.wait_for(never.wait(), timeout=0.01)  # the produce times out
        return delivered

    world.producer.publish = no_ack  # type: ignore[method-assign]
    world.crash_at = (Step.RESOLVE_CLIENT, "called")
    with pytest.raises(Crash):
        await world.request(order_id, event_id="evt-1")
    assert (await world.store.get(order_id)).order.state == "received"  # type: ignore[union-attr]
    world.producer.publish = publish  # type: ignore[method-assign]
    await world.request(order_id, event_id="evt-1")

    assert len(announced(world, order_id)) == 2, "at least once"
    assert await world.state(order_id) == OrderState.FULFILLED


async def test_a_new_order_takes_its_account_and_type_from_the_requests_snapshot(world: World) -> None:
    order_id = world.place_order("tanaka", "Internet", ["INT-1G-GOLD"])
    snapshot = await snapshot_of(world, order_id, world.clock.now)
    await world.deliver(OrderActivationRequested(sf_order_id=order_id, snapshot=snapshot))  # no account on the event

    [event] = announced(world, order_id)
    assert (event.sf_account_id, event.order_type) == (TANAKA["sf_account_id"], "Internet")


async def test_duplicates_and_requests_for_a_fulfilled_order_announce_nothing(world: World) -> None:
    order_id = world.place_order("tanaka", "Internet", ["INT-1G-GOLD"])
    await world.request(order_id, event_id="evt-1")
    await world.request(order_id, event_id="evt-1")  # a redelivery: duplicate
    await world.request(order_id, event_id="evt-2")  # a new request: the ledger calls it fulfilled

    assert len(announced(world, order_id)) == 1


async def test_wakeups_and_requests_for_a_waiting_order_announce_nothing(world: World) -> None:
    order_id = world.place_order("suzuki", "SIM", ["SIM-DV-5GB"], SIM_Type__c="Physical SIM")
    await world.request(order_id)
    assert await world.state(order_id) == OrderState.WAITING
    await world.request(order_id)  # a second request while Freebit is confirming
    await world.settle()  # every wake-up

    assert await world.state(order_id) == OrderState.FULFILLED
    assert len(announced(world, order_id)) == 1


async def test_a_crash_before_the_first_save_announces_again_on_the_redelivery(world: World) -> None:
    order_id = world.place_order("tanaka", "Internet", ["INT-1G-GOLD"])
    save = world.store.save
    crashed: list[bool] = []

    async def crash_once(*args: Any, **kwargs: Any) -> bool:
        if not crashed:
            crashed.append(True)
            raise Crash("killed before the first save committed")
        return await save(*args, **kwargs)

    world.store.save = crash_once  # type: ignore[method-assign]
    with pytest.raises(Crash):
        await world.request(order_id, event_id="evt-1")
    await world.request(order_id, event_id="evt-1")  # the redelivery: the order is still new

    assert len(announced(world, order_id)) == 2, "at least once"
    assert await world.state(order_id) == OrderState.FULFILLED


async def test_a_crash_after_a_save_stored_the_order_running_announces_nothing(world: World) -> None:
    """Kafka acknowledged the announcement during the first save's round trip, so the next save
    stored the order as running: the redelivery after a crash announces nothing."""
    order_id = world.place_order("tanaka", "Internet", ["INT-1G-GOLD"])
    save = world.store.save

    async def round_trip(*args: Any, **kwargs: Any) -> bool:
        await asyncio.sleep(0)  # a database round trip: the produce gets the loop meanwhile
        return await save(*args, **kwargs)

    world.store.save = round_trip  # type: ignore[method-assign]
    world.crash_at = (Step.WHMCS_CREATE, "called")
    with pytest.raises(Crash):
        await world.request(order_id, event_id="evt-1")
    assert (await world.store.get(order_id)).order.state == "running"  # type: ignore[union-attr]
    await world.request(order_id, event_id="evt-1")

    assert len(announced(world, order_id)) == 1
    assert await world.state(order_id) == OrderState.FULFILLED


async def test_a_failed_order_retriggered_is_announced_again(world: World) -> None:
    order_id = world.place_order("yamada", "VPN", ["VPN-TOKYO"])  # no WHMCS client: fails
    await world.request(order_id)
    assert await world.state(order_id) == OrderState.FAILED
    await world.request(order_id)  # staff re-trigger (still unmapped)

    assert kinds(world, order_id) == ["OrderActivationStarted", "OrderFulfillmentFailed"] * 2


async def test_the_portal_sees_a_payment_park_as_failed_and_every_resume_as_activating(world: World) -> None:
    """The saga's outcomes through the invalidator: the status sequence the portal's live view shows.
    A resume that finds still no pay method parks again and says so (else the view would stay on
    Activating); Salesforce is told once."""
    order_id = world.place_order("sato", "Internet", ["INT-1G-SILVER", "INT-INSTALL-SINGLE"])
    await world.request(order_id)
    await world.deliver(PaymentMethodChanged(whmcs_client_id=1003, paymethod_id=31))  # still none
    world.whmcs.pay_methods[1003].append(PayMethod(31, "CreditCard", "Visa ending 1111"))
    await world.deliver(PaymentMethodChanged(whmcs_client_id=1003, paymethod_id=31))

    assert await world.state(order_id) == OrderState.FULFILLED
    errors = [u for u in world.sf_updates(order_id) if u.get("Activation_Error_Code__c")]
    assert len(errors) == 1, "parked again for the same reason: Salesforce is told once"
    assert await portal_view(world, order_id) == [
        ("Activating", None), ("Failed", "PAYMENT_METHOD_MISSING"),
        ("Activating", None), ("Failed", "PAYMENT_METHOD_MISSING"),
        ("Activating", None), ("Activated", None),
    ]  # fmt: skip


async def test_a_sim_order_waiting_for_processed_stays_activating(world: World) -> None:
    order_id = world.place_order("suzuki", "SIM", ["SIM-DV-5GB"], SIM_Type__c="Physical SIM", Status="Approved")
    await world.deliver(OrderActivationRequested(sf_order_id=order_id, status="Approved"))
    await world.deliver(OrderActivationRequested(sf_order_id=order_id, status="Approved"))  # a duplicate trigger
    assert await world.state(order_id) == OrderState.PARKED
    world.salesforce.records["Order"][order_id]["Status"] = "Processed"
    await world.deliver(SimActivationRequested(sf_order_id=order_id, sim_type="Physical SIM", status="Processed"))
    await world.settle()

    assert await world.state(order_id) == OrderState.FULFILLED
    assert kinds(world, order_id).count("OrderParked") == 1, "a quiet park is said once"
    assert await portal_view(world, order_id) == [("Activating", None)] * 3 + [("Activated", None)]


async def portal_view(world: World, order_id: str) -> list[tuple[str, str | None]]:
    """The saga's outcome records, as published, through the invalidator (with its own fakes)."""
    inv = Invalidator()
    for k, v, h in world.producer.on(Topic.FULFILLMENT_OUTCOME):
        envelope = from_record(k, v, h)
        event = decode_event(envelope)
        if getattr(event, "sf_order_id", None) == order_id:
            msg = Message(event=event, group="g", topic="t", partition=0, offset=0, timestamp=0, key=k, value=v,
                          headers=h, header_map=dict(h), event_type=envelope.type)  # fmt: skip
            assert await inv.handler.handle_batch([msg]) == [None]
    return inv.statuses()
