"""The fulfillment saga end to end with fakes: every order type, parking, Freebit waits, failures, crashes.

Contract: a request runs the order's steps from the first unfinished one; business outcomes are
recorded, written back as ``UpdateSalesforceRecord`` commands and announced on the outcome topic;
waits are wake-ups on the group's retry tier, never sleeps; and no redelivery, replay, retry or
crash at any point creates a second WHMCS order or a second Freebit registration.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from adapters.freebit import FakeFreebit, MnpReservation
from adapters.kafka import FakeProducer
from adapters.mappings import FakeIdMappings
from adapters.saga_store import MemorySagaStore
from adapters.salesforce import FakeSalesforce
from adapters.whmcs import FakeWhmcs, PayMethod
from events import failure as fh
from events.base import DomainEvent, decode_event
from events.billing import PaymentMethodChanged
from events.envelope import Envelope, from_record, to_record
from events.errors import RejectedByUpstream, UpstreamUnavailable
from events.fulfillment import (
    OrderActivationStarted,
    OrderFulfilled,
    OrderFulfillmentFailed,
    OrderParked,
    UpdateSalesforceRecord,
)
from events.salesforce import (
    OrderActivationRequested,
    OrderActivationRequestedV1,
    OrderChanged,
    OrderSnapshot,
    SimActivationRequested,
    SimActivationRequestedV1,
)
from events.topics import ConsumerGroup, Topic, retry_topic
from sandbox import demo_data
from workers.config import FreebitSettings, Settings
from workers.fulfillment.model import OrderState, Step, StepStatus
from workers.fulfillment.policy import SNAPSHOT_MAX_AGE_S
from workers.fulfillment.route import bind_fulfillment
from workers.fulfillment.timers import TimerLoop
from workers.ingress.cdc_translate import order_snapshot
from workers.runtime.message import Message

GROUP = ConsumerGroup.FULFILLMENT
CUSTOMER = {c["key"]: c for c in demo_data.CUSTOMERS}
SIM_SERVICE_SKUS = {
    p["StockKeepingUnit"] for p in demo_data.PRODUCTS if p["Family"] == "SIM" and p["Item_Class__c"] == "Service"
}
EID = "89049032000001000000000000000001"
_order_numbers = itertools.count(1)
_offsets = itertools.count(1)


class Crash(BaseException):
    """A simulated kill -9: not an ``Exception``, so nothing in the saga records or handles it."""


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def epoch(self) -> float:
        return self.now.timestamp()


class CrashingWhmcs(FakeWhmcs):
    crash_after_add_order = False

    async def add_order(self, *args: Any, **kwargs: Any) -> Any:
        added = await super().add_order(*args, **kwargs)
        if self.crash_after_add_order:
            self.crash_after_add_order = False
            raise Crash("killed right after AddOrder answered")
        return added


class CrashingFreebit(FakeFreebit):
    crash_after_register = False

    async def register_physical_sim(self, *args: Any, **kwargs: Any) -> None:
        await super().register_physical_sim(*args, **kwargs)
        self._maybe_crash()

    async def register_esim(self, *args: Any, **kwargs: Any) -> None:
        await super().register_esim(*args, **kwargs)
        self._maybe_crash()

    def _maybe_crash(self) -> None:
        if self.crash_after_register:
            self.crash_after_register = False
            raise Crash("killed right after Freebit accepted the registration")


class World:
    def __init__(self, *, freebit_delay_s: float = 30.0, max_wait_s: int = 900) -> None:
        self.clock = Clock()
        self.salesforce = FakeSalesforce()
        self.whmcs = CrashingWhmcs()
        self.freebit = CrashingFreebit(activation_delay_s=freebit_delay_s, clock=self.clock.epoch)
        self.store = MemorySagaStore()
        self.mappings = FakeIdMappings.of(demo_data.id_mappings())
        self.producer = FakeProducer()
        self.crash_at: tuple[Step, str] | None = None
        self._wakeups_seen = 0
        settings = Settings(freebit=FreebitSettings(confirm_max_wait_s=max_wait_s))
        self.handlers = bind_fulfillment(
            salesforce=self.salesforce,
            whmcs=self.whmcs,
            freebit=self.freebit,
            producer=self.producer,
            settings=settings,
            store=self.store,
            mappings=self.mappings,
            clock=self.clock,
            hook=self._hook,
        )
        self._seed()

    def _hook(self, step: Step, phase: str) -> None:
        if self.crash_at == (step, phase):
            self.crash_at = None
            raise Crash(f"killed after {step} ({phase})")

    def _seed(self) -> None:
        self.salesforce.add_sim_cards(20, "Physical")
        self.salesforce.add_sim_cards(20, "eSIM")
        for customer in demo_data.CUSTOMERS:
            self.salesforce.add_record("Account", {"Id": customer["sf_account_id"], "Name": customer["name"]})
            if customer["whmcs_client_id"] is not None:
                methods = [PayMethod(p["id"], p["type"], p["description"]) for p in customer["paymethods"]]
                self.whmcs.add_client(customer["whmcs_client_id"], name=customer["name"], pay_methods=methods)
        for product in demo_data.PRODUCTS:
            self.salesforce.add_record("Product2", product)
            if product["WH_Product_ID__c"] is not None:
                sim = product["StockKeepingUnit"] in SIM_SERVICE_SKUS
                fields = ("OpportunityId", "SIM Number", "Serial Number", "EID") if sim else ("OpportunityId",)
                self.whmcs.add_product(int(product["WH_Product_ID__c"]), product["Name"], fields)

    # --- arranging -------------------------------------------------------------------------------
    def place_order(self, customer: str, order_type: str, skus: list[str], **fields: Any) -> str:
        n = next(_order_numbers)
        order_id = demo_data.sf_id("801", n)
        self.salesforce.add_record(
            "Order",
            {"Id": order_id, "AccountId": CUSTOMER[customer]["sf_account_id"], "Status": "Processed",
             "Type": order_type, "Activation_Status__c": "Activating", **fields},
        )  # fmt: skip
        for i, sku in enumerate(skus):
            product = demo_data.product_by_sku(sku)
            self.salesforce.add_record(
                "OrderItem",
                {"Id": demo_data.sf_id("802", n * 100 + i), "OrderId": order_id, "Product2Id": product["Id"],
                 "Quantity": 1, "UnitPrice": product["UnitPrice"]},
            )  # fmt: skip
        return order_id

    # --- delivering ------------------------------------------------------------------------------
    async def deliver(self, event: DomainEvent, *, event_id: str | None = None, source: str = "/sf-cdc") -> Message:
        envelope = Envelope(source=source, type=event.TYPE, key=event.key(), data=event.model_dump(mode="json"))
        if event_id is not None:
            envelope = envelope.model_copy(update={"id": event_id})
        topic = Topic.WHMCS_BILLING if isinstance(event, PaymentMethodChanged) else Topic.SF_ORDER
        return await self._deliver(envelope, topic, tier=0)

    async def _deliver(self, envelope: Envelope, topic: str, *, tier: int, extra: list[Any] | None = None) -> Message:
        key, value, headers = to_record(envelope)
        headers = headers + (extra or [])
        event = decode_event(envelope)
        msg = Message(
            event=event, group=GROUP, topic=topic, partition=0, offset=next(_offsets), timestamp=0, key=key,
            value=value, headers=headers, header_map=dict(headers), event_type=envelope.type, tier=tier,
        )  # fmt: skip
        await self.handlers[type(event)](event, msg)
        return msg

    async def request(self, order_id: str, **kwargs: Any) -> Message:
        return await self.deliver(OrderActivationRequested(sf_order_id=order_id), **kwargs)

    def pending_wakeups(self) -> list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]]:
        retry = {retry_topic(GROUP, n) for n in (1, 2)}
        mine = [r for r in self.producer.records if r[0] in retry]
        return mine[self._wakeups_seen :]

    async def deliver_wakeups(self) -> int:
        """Deliver every scheduled wake-up once it is due (the clock jumps to its not-before)."""
        delivered = 0
        for topic, key, value, headers in self.pending_wakeups():
            h = dict(headers)
            due = datetime.fromtimestamp(int(h[fh.NOT_BEFORE]) / 1000, UTC)
            if due > self.clock.now:
                self.clock.now = due
            envelope = from_record(key, value, headers)
            await self._deliver(envelope, topic, tier=int(h[fh.RETRY_TIER]))
            self._wakeups_seen += 1  # only once handled: a crash leaves it uncommitted, so it comes again
            delivered += 1
        return delivered

    async def settle(self, rounds: int = 500) -> None:
        for _ in range(rounds):
            if not await self.deliver_wakeups():
                return
        raise AssertionError("wake-ups never stopped")

    # --- observing -------------------------------------------------------------------------------
    def published(self, topic: str) -> list[DomainEvent]:
        return [decode_event(from_record(k, v, h)) for k, v, h in self.producer.on(topic)]

    def sf_updates(self, record_id: str) -> list[dict[str, Any]]:
        updates = [u for u in self.published(Topic.SF_WRITEBACK) if isinstance(u, UpdateSalesforceRecord)]
        return [u.fields for u in updates if u.record_id == record_id]

    def outcomes(self, order_id: str) -> list[DomainEvent]:
        """How deliveries ended (fulfilled, parked, failed); not the ``OrderActivationStarted`` notes."""
        return [
            e
            for e in self.published(Topic.FULFILLMENT_OUTCOME)
            if getattr(e, "sf_order_id", None) == order_id and not isinstance(e, OrderActivationStarted)
        ]

    def whmcs_orders(self, order_id: str) -> list[Any]:
        return [o for o in self.whmcs.orders.values() if f"sfOrderId={order_id}" in o.notes]

    def calls(self, fake: FakeWhmcs | FakeFreebit, name: str) -> list[dict[str, Any]]:
        return [kwargs for call, kwargs in fake.calls if call == name]

    async def state(self, order_id: str) -> str:
        record = await self.store.get(order_id)
        assert record is not None
        return record.order.state

    async def step(self, order_id: str, step: Step) -> Any:
        record = await self.store.get(order_id)
        assert record is not None
        return record.steps[step]


@pytest.fixture
def world() -> World:
    return World()


def _order_items(world: World, order_id: str) -> list[str]:
    return sorted(r["Id"] for r in world.salesforce.records["OrderItem"].values() if r["OrderId"] == order_id)


# --- the happy paths, one per order type -----------------------------------------------------------


async def test_an_internet_order_becomes_one_accepted_whmcs_order_and_is_written_back(world: World) -> None:
    order_id = world.place_order("tanaka", "Internet", ["INT-1G-GOLD", "INT-INSTALL-SINGLE", "INT-HIKARI-DENWA"])
    await world.request(order_id)

    [whmcs_order] = world.whmcs_orders(order_id)
    assert whmcs_order.status == "Active" and whmcs_order.client_id == 1001
    [add] = world.calls(world.whmcs, "add_order")
    assert [(line.pid, line.billing_cycle, line.qty) for line in add["lines"]] == [
        (182, "monthly", 1), (242, "onetime", 1), (246, "monthly", 1)
    ]  # fmt: skip
    assert add["notes"] == f"sfOrderId={order_id}" and add["payment_method"] == "mailin"
    # a first attempt has no earlier AddOrder to find: no GetOrders paging before it
    assert world.calls(world.whmcs, "find_order_by_note") == [] and world.calls(world.whmcs, "find_orders") == []
    [order_update] = world.sf_updates(order_id)
    assert order_update == {
        "Activation_Status__c": "Activated",
        "WHMCS_Order_ID__c": str(whmcs_order.order_id),
        "Activation_Error_Code__c": None,
        "Activation_Error_Message__c": None,
    }
    items = _order_items(world, order_id)
    assert [world.sf_updates(i) for i in items] == [[{"WHMCS_Service_ID__c": str(s)}] for s in whmcs_order.service_ids]
    [outcome] = world.outcomes(order_id)
    assert isinstance(outcome, OrderFulfilled) and outcome.whmcs_order_id == whmcs_order.order_id
    assert outcome.whmcs_service_ids == list(whmcs_order.service_ids)
    assert await world.state(order_id) == OrderState.FULFILLED
    assert world.freebit.calls == []


async def snapshot_of(world: World, order_id: str, read_at: datetime) -> OrderSnapshot:
    """The snapshot sf-cdc would attach (read in bulk, translated by ``cdc_translate``)."""
    (read,) = await world.salesforce.get_orders_with_items([order_id])
    return order_snapshot(read, read_at)


def sf_calls(world: World) -> int:
    usage = world.salesforce.api_usage()
    return usage[0] if usage else 0


async def test_a_request_with_a_fresh_snapshot_is_planned_without_reading_salesforce(world: World) -> None:
    """The plan comes from the request's snapshot: no Salesforce call at all, the same WHMCS order."""
    order_id = world.place_order("tanaka", "Internet", ["INT-1G-GOLD", "INT-INSTALL-SINGLE"])
    snapshot = await snapshot_of(world, order_id, world.clock.now)
    world.salesforce.records["Order"][order_id]["Type"] = "VPN"  # changed after the read: the snapshot counts
    before = sf_calls(world)

    await world.deliver(OrderActivationRequested(sf_order_id=order_id, snapshot=snapshot))

    assert sf_calls(world) == before
    [add] = world.calls(world.whmcs, "add_order")
    assert [(line.pid, line.billing_cycle) for line in add["lines"]] == [(182, "monthly"), (242, "onetime")]
    assert (await world.store.get(order_id)).order.order_type == "Internet"  # type: ignore[union-attr]
    assert await world.state(order_id) == OrderState.FULFILLED


async def test_a_stale_snapshot_or_a_v1_request_reads_the_order_instead(world: World) -> None:
    stale_id = world.place_order("tanaka", "Internet", ["INT-1G-GOLD"])
    snapshot = await snapshot_of(world, stale_id, world.clock.now - timedelta(seconds=SNAPSHOT_MAX_AGE_S + 1))
    v1_id = world.place_order("suzuki", "VPN", ["VPN-TOKYO", "VPN-ACTIVATION"])
    before = sf_calls(world)

    await world.deliver(OrderActivationRequested(sf_order_id=stale_id, snapshot=snapshot))
    await world.deliver(OrderActivationRequestedV1(sf_order_id=v1_id))

    assert sf_calls(world) == before + 4  # Order + lines, twice
    assert [len(world.whmcs_orders(i)) for i in (stale_id, v1_id)] == [1, 1]
    assert {await world.state(i) for i in (stale_id, v1_id)} == {OrderState.FULFILLED}


async def test_a_replayed_request_with_a_snapshot_creates_no_second_whmcs_order(world: World) -> None:
    """Same change delivered again under a new event id (replay): saga state and WHMCS lookup-before-create hold."""
    order_id = world.place_order("tanaka", "Internet", ["INT-1G-GOLD"])
    snapshot = await snapshot_of(world, order_id, world.clock.now)
    request = OrderActivationRequested(sf_order_id=order_id, snapshot=snapshot)
    world.crash_at = (Step.WHMCS_CREATE, "called")
    with pytest.raises(Crash):
        await world.deliver(request, event_id="first")
    await world.deliver(request, event_id="second")
    await world.deliver(request, event_id="third")

    assert len(world.whmcs_orders(order_id)) == 1
    assert len(world.calls(world.whmcs, "add_order")) == 1
    assert await world.state(order_id) == OrderState.FULFILLED


async def test_a_vpn_order_is_billed_in_whmcs_only(world: World) -> None:
    order_id = world.place_order("suzuki", "VPN", ["VPN-TOKYO", "VPN-ACTIVATION"], VPN_Region__c="Tokyo")
    await world.request(order_id)

    [whmcs_order] = world.whmcs_orders(order_id)
    assert whmcs_order.status == "Active" and whmcs_order.client_id == 1002
    assert world.freebit.calls == []
    assert await world.state(order_id) == OrderState.FULFILLED


async def test_a_physical_sim_with_voice_options_is_billed_then_takes_a_card_registers_and_confirms(
    world: World,
) -> None:
    """AddOrder/AcceptOrder, a card from SIM_Inventory__c (assigned back in Salesforce), PA02-01 with
    the card's number and serial, PA03-02 until active (via wake-ups), PA05-05, then the card's SIM
    Number / Serial Number on the WHMCS service."""
    order_id = world.place_order(
        "suzuki", "SIM", ["SIM-DV-5GB", "SIM-ACTIVATION"], SIM_Type__c="Physical SIM",
        SIM_Voice_Mail__c=True, SIM_Call_Waiting__c=True,
    )  # fmt: skip
    await world.deliver(SimActivationRequested(sf_order_id=order_id, sim_type="Physical SIM", status="Processed"))

    assert await world.state(order_id) == OrderState.WAITING
    [whmcs_order] = world.whmcs_orders(order_id)  # billed first, as the portal since March 2026
    assert whmcs_order.status == "Active"
    [wakeup] = world.pending_wakeups()
    assert wakeup[0] == retry_topic(GROUP, 1) and wakeup[1] == order_id.encode()

    await world.settle()

    card = world.salesforce.records["SIM_Inventory__c"]["a0S5g0P000000001AA"]  # the first free card, by Name
    [register] = world.calls(world.freebit, "register_physical_sim")
    [account] = world.freebit.accounts.values()
    assert (account.account, account.serial_number) == (card["Phone_Number__c"], card["Serial_Number__c"])
    assert account.state == "active" and account.voice_mail and account.call_waiting
    assert register["plan_code"] == "SIM-DV-5GB"
    account_id = CUSTOMER["suzuki"]["sf_account_id"]
    assert world.sf_updates(card["Id"]) == [
        {"Status__c": "Assigned", "Assigned_Order__c": order_id, "Assigned_Account__c": account_id,
         "SIM_Type__c": "Physical"}
    ]  # fmt: skip
    assert len(world.calls(world.freebit, "add_voice_options")) == 1
    sim_service = world.whmcs.services[whmcs_order.service_ids[0]]
    assert sim_service.custom_fields["SIM Number"] == card["Phone_Number__c"]
    assert sim_service.custom_fields["Serial Number"] == card["Serial_Number__c"]
    assert sim_service.custom_fields["EID"] == ""
    assert world.sf_updates(order_id)[-1]["Activation_Status__c"] == "Activated"
    assert await world.state(order_id) == OrderState.FULFILLED


async def test_a_sim_order_approved_is_billed_and_waits_quietly_for_processed(world: World) -> None:
    """Activating with Status = Approved bills the order and parks it at sim_processed without an
    error on the Order; the agent's Processed (SimActivationRequested) takes a card and registers."""
    order_id = world.place_order("suzuki", "SIM", ["SIM-DV-5GB"], SIM_Type__c="Physical SIM", Status="Approved")
    await world.deliver(OrderActivationRequested(sf_order_id=order_id, status="Approved"))

    assert await world.state(order_id) == OrderState.PARKED
    assert (await world.step(order_id, Step.SIM_PROCESSED)).status == StepStatus.PARKED
    assert [o.status for o in world.whmcs_orders(order_id)] == ["Active"]
    assert world.freebit.calls == [] and world.sf_updates("a0S5g0P000000001AA") == []
    assert world.sf_updates(order_id) == []  # a wait, not an error: nothing written to the Order
    [parked] = world.outcomes(order_id)
    assert isinstance(parked, OrderParked) and parked.error_code == "AWAITING_PROCESSED"

    await world.deliver(OrderActivationRequested(sf_order_id=order_id, status="Approved"))  # a duplicate trigger
    assert await world.state(order_id) == OrderState.PARKED and world.freebit.calls == []
    assert len(world.outcomes(order_id)) == 1  # parked again for the same reason: said once

    world.salesforce.records["Order"][order_id]["Status"] = "Processed"
    await world.deliver(SimActivationRequested(sf_order_id=order_id, sim_type="Physical SIM", status="Processed"))
    await world.settle()
    assert await world.state(order_id) == OrderState.FULFILLED
    assert len(world.calls(world.freebit, "register_physical_sim")) == 1
    assert len(world.whmcs_orders(order_id)) == 1 and len(world.calls(world.whmcs, "add_order")) == 1


async def test_a_resume_that_carries_no_status_reads_it(world: World) -> None:
    """A request without a Status (a v1 request, ``fleet orders retry``) reads the Order's: Processed
    already, so the SIM steps run at once."""
    order_id = world.place_order("suzuki", "SIM", ["SIM-DV-5GB"], SIM_Type__c="Physical SIM")  # Status Processed
    await world.request(order_id)
    await world.settle()
    assert await world.state(order_id) == OrderState.FULFILLED


async def test_two_orders_never_share_a_card_and_a_retried_order_keeps_its_own(world: World) -> None:
    first = world.place_order("suzuki", "SIM", ["SIM-DV-5GB"], SIM_Type__c="Physical SIM")
    second = world.place_order("tanaka", "SIM", ["SIM-DV-5GB"], SIM_Type__c="Physical SIM")
    world.crash_at = (Step.SIM_ASSIGN, "called")  # the card is reserved; the step's result not committed
    with pytest.raises(Crash):
        await world.request(first, event_id="evt-first")
    # the Salesforce write-back of the first card never happened: it still reads Available there
    assert world.salesforce.records["SIM_Inventory__c"]["a0S5g0P000000001AA"]["Status__c"] == "Available"
    await world.request(second)
    await world.request(first, event_id="evt-first")
    await world.settle()
    numbers = {order: (await world.step(order, Step.SIM_ASSIGN)).external_ids["account"] for order in (first, second)}
    assert numbers == {first: "08000000001", second: "08000000002"}
    assert sorted(a.account for a in world.freebit.accounts.values()) == ["08000000001", "08000000002"]
    assert world.store.sim_cards[first].card_id == "a0S5g0P000000001AA"


def _writebacks(world: World) -> list[tuple[str, str]]:
    """The sf-writer's commands in the order they were published: (sObject, record id)."""
    return [
        (u.sobject, u.record_id) for u in world.published(Topic.SF_WRITEBACK) if isinstance(u, UpdateSalesforceRecord)
    ]


async def test_a_sim_orders_card_is_published_with_its_activation_so_the_writer_makes_one_call() -> None:
    """No wait for Freebit: the card's assignment goes out with the write-back (the Order's Activated
    and its line), one produce the sf-writer gathers into one Salesforce call, not ahead of them
    when the card is taken (a second call ~150 ms earlier). Published once."""
    world = World(freebit_delay_s=0)
    order_id = world.place_order("suzuki", "SIM", ["SIM-DV-5GB"], SIM_Type__c="Physical SIM")
    await world.request(order_id)
    assert await world.state(order_id) == OrderState.FULFILLED
    card_id = (await world.step(order_id, Step.SIM_ASSIGN)).external_ids["card_id"]
    [item] = _order_items(world, order_id)
    assert _writebacks(world) == [("Order", order_id), ("OrderItem", item), ("SIM_Inventory__c", card_id)]
    assert world.sf_updates(card_id)[0]["Assigned_Order__c"] == order_id
    assert (await world.step(order_id, Step.SIM_ASSIGN)).external_ids["card_sent"] is True


async def test_a_card_owed_when_the_delivery_crashes_before_its_last_save_is_published_again() -> None:
    """The write-back's produces were acknowledged, the delivery died before its save (card_sent not
    recorded): the redelivery sends the card with the write-back again (at least once, absolute values)."""
    world = World(freebit_delay_s=0)
    order_id = world.place_order("suzuki", "SIM", ["SIM-DV-5GB"], SIM_Type__c="Physical SIM")
    world.crash_at = (Step.SF_WRITEBACK, "called")
    with pytest.raises(Crash):
        await world.request(order_id, event_id="evt-card")
    card_id = (await world.step(order_id, Step.SIM_ASSIGN)).external_ids["card_id"]
    assert len(world.sf_updates(card_id)) == 1
    await world.request(order_id, event_id="evt-card")
    assert await world.state(order_id) == OrderState.FULFILLED
    assert len(world.sf_updates(card_id)) == 2 and world.sf_updates(card_id)[0] == world.sf_updates(card_id)[1]
    assert [sobject for sobject, _ in _writebacks(world)][-3:] == ["Order", "OrderItem", "SIM_Inventory__c"]


def refuse_sim_registration(world: World) -> Any:
    """Freebit answers every physical SIM registration with 400-210; returns the real method."""
    original = world.freebit.register_physical_sim

    async def refuse(*args: Any, **kwargs: Any) -> None:
        raise RejectedByUpstream("Freebit: bad request (400-210)", upstream="freebit", code="400-210")

    world.freebit.register_physical_sim = refuse  # type: ignore[method-assign]
    return original


async def test_a_card_taken_by_an_order_that_then_fails_is_published_with_the_error(world: World) -> None:
    """Freebit refuses the registration after the card was taken: the card's assignment goes out with
    the order's error fields (the card stays with the order for the re-trigger), and the re-triggered
    order's write-back does not send it again."""
    order_id = world.place_order("suzuki", "SIM", ["SIM-DV-5GB"], SIM_Type__c="Physical SIM")
    original = refuse_sim_registration(world)
    await world.request(order_id)
    assert await world.state(order_id) == OrderState.FAILED
    card_id = (await world.step(order_id, Step.SIM_ASSIGN)).external_ids["card_id"]
    assert _writebacks(world) == [("Order", order_id), ("SIM_Inventory__c", card_id)]
    world.freebit.register_physical_sim = original  # type: ignore[method-assign]
    await world.request(order_id)
    await world.settle()
    assert await world.state(order_id) == OrderState.FULFILLED
    assert len(world.sf_updates(card_id)) == 1


async def test_an_empty_inventory_fails_the_order_and_registers_nothing(world: World) -> None:
    world.salesforce.records["SIM_Inventory__c"].clear()
    world.salesforce.add_sim_cards(3, "eSIM")  # cards of the other type do not count
    order_id = world.place_order("suzuki", "SIM", ["SIM-DV-5GB"], SIM_Type__c="Physical SIM")
    await world.request(order_id)
    assert await world.state(order_id) == OrderState.FAILED
    update = world.sf_updates(order_id)[-1]
    assert update["Activation_Error_Code__c"] == "SIM_INVENTORY_EMPTY" and update["Status"] == "Approved"
    assert world.freebit.calls == []
    world.salesforce.add_sim_cards(1, "Physical", start=500)  # stocked: the agent re-triggers
    await world.deliver(SimActivationRequested(sf_order_id=order_id, sim_type="Physical SIM", status="Processed"))
    await world.settle()
    assert await world.state(order_id) == OrderState.FULFILLED
    assert [a.account for a in world.freebit.accounts.values()] == ["08000000500"]


async def test_an_esim_is_registered_with_its_eid_and_skips_voice_options(world: World) -> None:
    order_id = world.place_order("tanaka", "SIM", ["SIM-D-20GB", "SIM-ACTIVATION"], SIM_Type__c="eSIM", EID__c=EID)
    await world.request(order_id)
    await world.settle()

    [register] = world.calls(world.freebit, "register_esim")
    assert register["eid"] == EID and register["kind"] == "new"
    assert world.calls(world.freebit, "add_voice_options") == []
    assert (await world.step(order_id, Step.SIM_VOICE)).status == StepStatus.SKIPPED
    [whmcs_order] = world.whmcs_orders(order_id)
    fields = world.whmcs.services[whmcs_order.service_ids[0]].custom_fields
    assert fields["EID"] == EID and fields["SIM Number"] == register["account"] and fields["Serial Number"] == ""
    assert await world.state(order_id) == OrderState.FULFILLED


# --- parking and resuming ----------------------------------------------------------------------------


async def test_a_client_without_payment_method_parks_then_resumes_when_one_is_added(world: World) -> None:
    order_id = world.place_order("sato", "Internet", ["INT-1G-SILVER", "INT-INSTALL-SINGLE"])
    await world.request(order_id)

    assert await world.state(order_id) == OrderState.PARKED
    assert world.whmcs_orders(order_id) == []
    [update] = world.sf_updates(order_id)
    assert update["Activation_Error_Code__c"] == "PAYMENT_METHOD_MISSING" and "Status" not in update
    [parked] = world.outcomes(order_id)
    assert isinstance(parked, OrderParked) and parked.step == Step.PAYMENT_GATE and parked.whmcs_client_id == 1003

    await world.deliver(PaymentMethodChanged(whmcs_client_id=1003, paymethod_id=31))  # still none: stays parked
    assert await world.state(order_id) == OrderState.PARKED
    assert len(world.sf_updates(order_id)) == 1, "parked again for the same reason: said once"

    world.whmcs.pay_methods[1003].append(PayMethod(31, "CreditCard", "Visa ending 1111"))
    await world.deliver(PaymentMethodChanged(whmcs_client_id=1003, paymethod_id=31))

    assert await world.state(order_id) == OrderState.FULFILLED
    assert len(world.whmcs_orders(order_id)) == 1
    assert world.sf_updates(order_id)[-1]["Activation_Error_Code__c"] is None
    # parked twice (the second resume announced Activating, so the portal hears the park again), then done
    assert [type(e) for e in world.outcomes(order_id)] == [OrderParked, OrderParked, OrderFulfilled]
    await world.deliver(PaymentMethodChanged(whmcs_client_id=1003, paymethod_id=31))  # nothing parked any more
    assert len(world.calls(world.whmcs, "add_order")) == 1


async def test_a_payment_method_change_of_another_client_leaves_parked_orders_alone(world: World) -> None:
    order_id = world.place_order("sato", "VPN", ["VPN-TOKYO"])
    await world.request(order_id)
    await world.deliver(PaymentMethodChanged(whmcs_client_id=1001))
    assert await world.state(order_id) == OrderState.PARKED


async def test_a_new_activation_request_resumes_a_parked_order(world: World) -> None:
    order_id = world.place_order("sato", "VPN", ["VPN-TOKYO"])
    await world.request(order_id)
    world.whmcs.pay_methods[1003].append(PayMethod(32, "BankAccount", "MUFG"))
    await world.request(order_id)
    assert await world.state(order_id) == OrderState.FULFILLED
    record = await world.store.get(order_id)
    assert record is not None and record.order.requests == 2
    assert record.steps[Step.VALIDATE].attempts == 1, "resumed from the first unfinished step"
    assert record.steps[Step.PAYMENT_GATE].attempts == 2


# --- Freebit asynchrony ---------------------------------------------------------------------------------


async def test_freebit_completion_is_polled_through_wakeups_without_sleeping(world: World) -> None:
    order_id = world.place_order("suzuki", "SIM", ["SIM-DV-5GB"], SIM_Type__c="Physical SIM")
    await world.request(order_id)
    assert (await world.step(order_id, Step.SIM_CONFIRM)).status == StepStatus.WAITING

    polls = 0
    while await world.deliver_wakeups():
        polls += 1
    assert polls >= 2, "pending at least once before active (activation takes 30 s)"
    assert len(world.calls(world.freebit, "register_physical_sim")) == 1
    assert await world.state(order_id) == OrderState.FULFILLED


async def test_freebit_never_completing_fails_with_freebit_timeout_and_status_back_to_approved() -> None:
    world = World(freebit_delay_s=10_000, max_wait_s=120)
    order_id = world.place_order("suzuki", "SIM", ["SIM-DV-5GB"], SIM_Type__c="Physical SIM")
    await world.request(order_id)
    await world.settle()

    assert await world.state(order_id) == OrderState.FAILED
    update = world.sf_updates(order_id)[-1]
    assert update["Activation_Error_Code__c"] == "FREEBIT_TIMEOUT" and update["Status"] == "Approved"
    [failed] = world.outcomes(order_id)
    assert isinstance(failed, OrderFulfillmentFailed) and failed.step == Step.SIM_CONFIRM
    assert [o.status for o in world.whmcs_orders(order_id)] == ["Active"]  # billed on approval; staff decide

    # staff re-trigger once Freebit has caught up: resumes at sim_confirm, never registers again
    world.clock.advance(10_000)
    await world.request(order_id)
    await world.settle()
    assert await world.state(order_id) == OrderState.FULFILLED
    assert len(world.calls(world.freebit, "register_physical_sim")) == 1
    assert len(world.whmcs_orders(order_id)) == 1


async def test_a_failing_poll_keeps_the_order_waiting_instead_of_failing_the_wakeup(world: World) -> None:
    """PA03-02 unavailable while waiting: no exception reaches the runtime, the next wake-up looks again."""
    order_id = world.place_order("suzuki", "SIM", ["SIM-DV-5GB"], SIM_Type__c="Physical SIM")
    await world.request(order_id)
    world.freebit.fail_next_with = UpstreamUnavailable("Freebit 503", upstream="freebit")
    assert await world.deliver_wakeups() == 1
    assert await world.state(order_id) == OrderState.WAITING
    assert ("poll_failed", Step.SIM_CONFIRM) in [(h.kind, h.step) for h in await world.store.history(order_id)]
    await world.settle()
    assert await world.state(order_id) == OrderState.FULFILLED


async def test_a_stale_wakeup_is_ignored(world: World) -> None:
    """A second request while waiting schedules a newer wake-up; the older one does nothing."""
    order_id = world.place_order("suzuki", "SIM", ["SIM-DV-5GB"], SIM_Type__c="Physical SIM")
    await world.request(order_id)
    await world.request(order_id)
    first, second = world.pending_wakeups()
    polls = len(world.calls(world.freebit, "account_detail"))
    await world._deliver(from_record(*first[1:]), first[0], tier=1)
    assert len(world.calls(world.freebit, "account_detail")) == polls
    await world.settle()
    assert await world.state(order_id) == OrderState.FULFILLED


async def test_a_freebit_rejection_fails_the_sim_order_and_reverts_its_status(world: World) -> None:
    order_id = world.place_order("suzuki", "SIM", ["SIM-DV-5GB"], SIM_Type__c="Physical SIM")
    original = refuse_sim_registration(world)
    await world.request(order_id)
    assert await world.state(order_id) == OrderState.FAILED
    update = world.sf_updates(order_id)[-1]
    assert update["Activation_Error_Code__c"] == "FREEBIT_REGISTRATION_FAILED" and update["Status"] == "Approved"
    world.freebit.register_physical_sim = original  # type: ignore[method-assign]
    await world.request(order_id)
    await world.settle()
    assert await world.state(order_id) == OrderState.FULFILLED


# --- permanent failures ---------------------------------------------------------------------------------


async def test_an_account_without_whmcs_client_fails_with_whmcs_client_not_mapped(world: World) -> None:
    order_id = world.place_order("yamada", "Internet", ["INT-1G-SILVER"])
    await world.request(order_id)
    assert await world.state(order_id) == OrderState.FAILED
    update = world.sf_updates(order_id)[-1]
    assert update["Activation_Error_Code__c"] == "WHMCS_CLIENT_NOT_MAPPED" and "Status" not in update
    [failed] = world.outcomes(order_id)
    assert isinstance(failed, OrderFulfillmentFailed) and failed.step == Step.RESOLVE_CLIENT
    assert world.whmcs.calls == []


async def test_an_unmapped_product_fails_then_resumes_after_the_catalog_is_fixed(world: World) -> None:
    order_id = world.place_order("tanaka", "Internet", ["INT-LEGACY", "INT-INSTALL-SINGLE"])
    await world.request(order_id)
    assert await world.state(order_id) == OrderState.FAILED
    update = world.sf_updates(order_id)[-1]
    assert update["Activation_Error_Code__c"] == "PRODUCT_MAPPING_MISSING"
    assert "WH_Product_ID__c is missing" in update["Activation_Error_Message__c"]

    legacy = demo_data.product_by_sku("INT-LEGACY")["Id"]
    world.salesforce.records["Product2"][legacy].update(WH_Product_ID__c="181", Billing_Cycle__c="Monthly")
    await world.request(order_id)
    assert await world.state(order_id) == OrderState.FULFILLED


async def test_an_unknown_order_type_is_invalid(world: World) -> None:
    order_id = world.place_order("tanaka", "Mobile", ["INT-1G-SILVER"])
    await world.request(order_id)
    assert world.sf_updates(order_id)[-1]["Activation_Error_Code__c"] == "ORDER_INVALID"


async def test_a_whmcs_rejection_fails_with_whmcs_order_rejected(world: World) -> None:
    world.whmcs.clients[1001] = replace(world.whmcs.clients[1001], status="Closed")
    order_id = world.place_order("tanaka", "VPN", ["VPN-TOKYO"])
    await world.request(order_id)
    assert await world.state(order_id) == OrderState.FAILED
    assert world.sf_updates(order_id)[-1]["Activation_Error_Code__c"] == "WHMCS_ORDER_REJECTED"
    assert world.whmcs_orders(order_id) == []


async def test_a_refused_accept_cancels_the_order_and_the_next_request_creates_a_clean_one(world: World) -> None:
    """Compensation: a pending order someone cancelled in WHMCS is written off, not adopted again."""
    order_id = world.place_order("tanaka", "VPN", ["VPN-TOKYO"])
    original = world.whmcs.accept_order

    async def cancelled_meanwhile(order: int) -> None:
        await world.whmcs.cancel_order(order)
        await original(order)

    world.whmcs.accept_order = cancelled_meanwhile  # type: ignore[method-assign,assignment]
    await world.request(order_id)
    assert await world.state(order_id) == OrderState.FAILED
    assert (await world.step(order_id, Step.WHMCS_CREATE)).status == StepStatus.COMPENSATED
    assert [o.status for o in world.whmcs_orders(order_id)] == ["Cancelled"]

    world.whmcs.accept_order = original  # type: ignore[method-assign]
    await world.request(order_id)
    assert await world.state(order_id) == OrderState.FULFILLED
    assert sorted(o.status for o in world.whmcs_orders(order_id)) == ["Active", "Cancelled"]


async def test_a_transient_upstream_error_is_raised_for_the_runtime_and_recorded_on_the_step(world: World) -> None:
    order_id = world.place_order("tanaka", "VPN", ["VPN-TOKYO"])
    world.whmcs.fail_next_with = UpstreamUnavailable("WHMCS 503", upstream="whmcs")
    msg_id = "evt-transient-1"
    with pytest.raises(UpstreamUnavailable):
        await world.request(order_id, event_id=msg_id)
    gate = await world.step(order_id, Step.PAYMENT_GATE)
    assert gate.status == StepStatus.RUNNING and gate.last_error_code == "UPSTREAM_UNAVAILABLE"
    assert (GROUP, msg_id) not in world.store.inbox, "a failed attempt claims nothing: the retry runs"

    await world.request(order_id, event_id=msg_id)  # the runtime's retry of the same record
    assert await world.state(order_id) == OrderState.FULFILLED
    assert (GROUP, msg_id) in world.store.inbox


# --- no side effect twice ---------------------------------------------------------------------------


async def test_a_redelivered_request_is_a_duplicate_and_a_new_one_for_a_fulfilled_order_does_nothing(
    world: World,
) -> None:
    order_id = world.place_order("tanaka", "Internet", ["INT-1G-GOLD"])
    await world.request(order_id, event_id="evt-dup-1")
    before = len(world.producer.records)
    await world.request(order_id, event_id="evt-dup-1")  # redelivery (offset not committed)
    await world.request(order_id, event_id="evt-dup-2")  # replay / second CDC event
    assert len(world.calls(world.whmcs, "add_order")) == 1
    assert len(world.producer.records) == before, "nothing re-published for a fulfilled order"


async def test_concurrent_deliveries_of_one_order_are_serialised_by_its_lock(world: World) -> None:
    order_id = world.place_order("tanaka", "Internet", ["INT-1G-GOLD"])
    await asyncio.gather(*(world.request(order_id) for _ in range(5)))
    assert len(world.calls(world.whmcs, "add_order")) == 1
    assert len(world.outcomes(order_id)) == 1


async def test_a_crash_after_add_order_finds_the_order_by_its_note_instead_of_creating_another(world: World) -> None:
    order_id = world.place_order("tanaka", "Internet", ["INT-1G-GOLD", "INT-INSTALL-SINGLE"])
    world.whmcs.crash_after_add_order = True
    with pytest.raises(Crash):
        await world.request(order_id, event_id="evt-crash-1")
    assert (await world.step(order_id, Step.WHMCS_CREATE)).status == StepStatus.RUNNING

    await world.request(order_id, event_id="evt-crash-1")  # redelivered after the restart
    [whmcs_order] = world.whmcs_orders(order_id)
    assert whmcs_order.status == "Active"
    assert (await world.step(order_id, Step.WHMCS_CREATE)).external_ids["adopted"] is True
    assert len(world.calls(world.whmcs, "add_order")) == 1
    assert len(world.calls(world.whmcs, "find_order_by_note")) == 1, "only the second attempt looks"


async def test_a_crash_after_freebit_accepted_finds_the_account_instead_of_registering_again(world: World) -> None:
    order_id = world.place_order("suzuki", "SIM", ["SIM-DV-5GB"], SIM_Type__c="Physical SIM")
    world.freebit.crash_after_register = True
    with pytest.raises(Crash):
        await world.request(order_id, event_id="evt-crash-2")
    await world.request(order_id, event_id="evt-crash-2")
    await world.settle()
    assert len(world.calls(world.freebit, "register_physical_sim")) == 1
    assert len(world.freebit.accounts) == 1
    assert await world.state(order_id) == OrderState.FULFILLED


SIM_STEPS = [s for s in Step]


@pytest.mark.parametrize("phase", ["called", "committed"])
@pytest.mark.parametrize("step", SIM_STEPS, ids=[s.value for s in SIM_STEPS])
async def test_a_crash_after_any_step_never_creates_anything_twice(step: Step, phase: str) -> None:
    """Killed right after ``step`` returned (``called``: its result not yet committed) or after its
    commit, then restarted: exactly one Freebit account and one WHMCS order, and fulfilled."""
    world = World()
    order_id = world.place_order(
        "suzuki", "SIM", ["SIM-DV-5GB", "SIM-ACTIVATION"], SIM_Type__c="Physical SIM", SIM_Voice_Mail__c=True
    )
    world.crash_at = (step, phase)
    for _ in range(50):  # the restarted worker gets the uncommitted record (and any wake-up) again
        try:
            await world.request(order_id, event_id="evt-kill")
            await world.settle()
        except Crash:
            continue
        break
    assert world.crash_at is None, "the crash point was reached"
    assert await world.state(order_id) == OrderState.FULFILLED
    assert len(world.freebit.accounts) == 1
    assert len(world.calls(world.freebit, "register_physical_sim")) == 1
    assert len(world.whmcs_orders(order_id)) == 1
    assert len(world.calls(world.whmcs, "add_order")) == 1


async def test_the_timeline_records_attempts_errors_ids_and_durations(world: World) -> None:
    order_id = world.place_order("tanaka", "VPN", ["VPN-TOKYO"])
    world.whmcs.fail_next_with = UpstreamUnavailable("WHMCS 503", upstream="whmcs")
    with pytest.raises(UpstreamUnavailable):
        await world.request(order_id)
    await world.request(order_id)
    kinds = [(h.kind, h.step) for h in await world.store.history(order_id)]
    assert kinds[0] == ("requested", None)
    assert ("step_error", Step.PAYMENT_GATE) in kinds and ("step_done", Step.WHMCS_CREATE) in kinds
    assert kinds[-1] == ("fulfilled", None)
    created = await world.step(order_id, Step.WHMCS_CREATE)
    assert created.external_ids["whmcs_order_id"] and created.finished_at is not None


def test_the_route_binder_takes_the_composition_roots_deps() -> None:
    """The fulfillment ``RouteSpec`` binds ``workers.fulfillment.route.bind``: its one dispatch table takes
    activation requests (v2 and v1) to the saga and pay-method changes to the parked orders."""
    from types import SimpleNamespace

    from adapters.leader_lease import FakeLease
    from workers.fulfillment.route import bind, fulfill_order, reschedule, resume_parked_orders
    from workers.routes import ROUTES

    assert ROUTES["fulfillment"].bind is bind
    deps = SimpleNamespace(settings=Settings(), producer=FakeProducer(), pool=object(), salesforce=FakeSalesforce(),
                           whmcs=FakeWhmcs(), freebit=FakeFreebit(), lease=FakeLease)  # fmt: skip
    table = bind(deps)  # type: ignore[arg-type]
    requests: set[type[DomainEvent]] = {
        OrderActivationRequested, SimActivationRequested, OrderActivationRequestedV1, SimActivationRequestedV1
    }  # fmt: skip
    assert set(table) == {*requests, PaymentMethodChanged, OrderChanged}
    assert {table[r].func for r in requests} == {fulfill_order}  # type: ignore[attr-defined]
    assert len({id(table[r]) for r in requests}) == 1, "one bound handler (and its collector) for every request"
    assert table[PaymentMethodChanged].func is resume_parked_orders  # type: ignore[attr-defined]
    assert table[OrderChanged].func is reschedule  # type: ignore[attr-defined]


# --- number portability (MNP) and the Opportunity link ----------------------------------------------

MNP = {"MNP_Reservation_Number__c": "1234567890", "MNP_Phone_Number__c": "09011112222"}


async def test_a_ported_number_is_registered_with_its_mnp_reservation_and_keeps_the_cards_serial(
    world: World,
) -> None:
    expiry = (world.clock.now + timedelta(days=10)).date()
    order_id = world.place_order("suzuki", "SIM", ["SIM-DV-5GB"], SIM_Type__c="Physical SIM",
                                 MNP_Expiry_Date__c=expiry.isoformat(), **MNP)  # fmt: skip
    await world.request(order_id)
    await world.settle()
    assert await world.state(order_id) == OrderState.FULFILLED
    [register] = world.calls(world.freebit, "register_physical_sim")
    assert register["account"] == "09011112222" and register["mnp"] == MnpReservation("1234567890", expiry)
    card = world.salesforce.records["SIM_Inventory__c"]["a0S5g0P000000001AA"]
    assert register["serial_number"] == card["Serial_Number__c"]  # the card's serial, the customer's number
    assert world.sf_updates(card["Id"])[0]["Assigned_Order__c"] == order_id


async def test_a_ported_esim_takes_no_inventory_number(world: World) -> None:
    expiry = (world.clock.now + timedelta(days=3)).date()
    order_id = world.place_order("tanaka", "SIM", ["SIM-D-20GB"], SIM_Type__c="eSIM", EID__c=EID,
                                 MNP_Expiry_Date__c=expiry.isoformat(), **MNP)  # fmt: skip
    await world.request(order_id)
    await world.settle()
    assert await world.state(order_id) == OrderState.FULFILLED
    [register] = world.calls(world.freebit, "register_esim")
    assert (register["account"], register["kind"], register["aladin_operated"]) == ("09011112222", "mnp", False)
    assert register["mnp"] == MnpReservation("1234567890", expiry)
    assert [u for u in world.published(Topic.SF_WRITEBACK) if getattr(u, "sobject", "") == "SIM_Inventory__c"] == []


async def test_an_expired_mnp_reservation_fails_with_its_code_before_freebit_hears_of_it(world: World) -> None:
    expired = (world.clock.now - timedelta(days=1)).date()
    order_id = world.place_order("suzuki", "SIM", ["SIM-DV-5GB"], SIM_Type__c="Physical SIM",
                                 MNP_Expiry_Date__c=expired.isoformat(), **MNP)  # fmt: skip
    await world.request(order_id)
    assert await world.state(order_id) == OrderState.FAILED
    update = world.sf_updates(order_id)[-1]
    assert update["Activation_Error_Code__c"] == "MNP_RESERVATION_EXPIRED" and update["Status"] == "Approved"
    assert world.calls(world.freebit, "register_physical_sim") == []


async def test_incomplete_mnp_fields_fail_validation_with_their_code(world: World) -> None:
    order_id = world.place_order("suzuki", "SIM", ["SIM-DV-5GB"], SIM_Type__c="Physical SIM",
                                 MNP_Reservation_Number__c="12345")  # fmt: skip
    await world.request(order_id)
    assert await world.state(order_id) == OrderState.FAILED
    update = world.sf_updates(order_id)[-1]
    assert update["Activation_Error_Code__c"] == "MNP_RESERVATION_INVALID"
    assert (
        "10 digits" in update["Activation_Error_Message__c"]
        and "MNP_Expiry_Date__c" in update["Activation_Error_Message__c"]
    )
    assert world.whmcs_orders(order_id) == []


async def test_an_order_from_an_opportunity_links_it_both_ways(world: World) -> None:
    order_id = world.place_order("tanaka", "Internet", ["INT-1G-GOLD", "INT-INSTALL-SINGLE"],
                                 OpportunityId="0065g00000000001AA")  # fmt: skip
    await world.request(order_id)
    assert await world.state(order_id) == OrderState.FULFILLED
    [whmcs_order] = world.whmcs_orders(order_id)
    main_service = world.whmcs.services[whmcs_order.service_ids[0]]
    assert main_service.custom_fields["OpportunityId"] == "0065g00000000001AA"
    assert world.sf_updates("0065g00000000001AA") == [{"WHMCS_Service_ID__c": str(whmcs_order.service_ids[0])}]
    [link] = [u for u in world.published(Topic.SF_WRITEBACK) if getattr(u, "record_id", "") == "0065g00000000001AA"]
    assert isinstance(link, UpdateSalesforceRecord) and (link.sobject, link.priority) == ("Opportunity", "low")


async def test_an_order_without_an_opportunity_skips_the_link(world: World) -> None:
    order_id = world.place_order("tanaka", "VPN", ["VPN-TOKYO"])
    await world.request(order_id)
    assert (await world.step(order_id, Step.WHMCS_LINKS)).status == StepStatus.SKIPPED
    assert [u for u in world.published(Topic.SF_WRITEBACK) if getattr(u, "sobject", "") == "Opportunity"] == []


# --- durable timers: scheduled activations and pay-method re-checks -------------------------------------


def timer_loop(world: World) -> TimerLoop:
    companion = world.handlers[OrderActivationRequested].companion  # type: ignore[attr-defined]
    loop = companion.__self__
    assert isinstance(loop, TimerLoop)
    return loop


async def fire_timers(world: World, at: datetime) -> int:
    """The timer loop's turn at ``at``, then the resume requests it sent, delivered."""
    world.clock.now = at
    fired = await timer_loop(world).fire_due()
    await world.deliver_wakeups()
    return len(fired)


async def test_a_scheduled_activation_waits_on_a_durable_timer_and_runs_at_its_time(world: World) -> None:
    at = world.clock.now + timedelta(days=2)
    order_id = world.place_order("tanaka", "VPN", ["VPN-TOKYO"], Activation_Type__c="Scheduled",
                                 Activation_Scheduled_At__c=at.isoformat())  # fmt: skip
    await world.request(order_id)

    assert await world.state(order_id) == OrderState.SCHEDULED
    assert world.whmcs_orders(order_id) == [] and world.pending_wakeups() == []  # no chain of retry hops
    timer = world.store.timers[order_id]
    assert (timer.reason, timer.due_at) == ("scheduled", at)
    assert world.sf_updates(order_id) == []  # a wait, not an error

    assert await fire_timers(world, at - timedelta(seconds=1)) == 0  # not yet due
    assert await fire_timers(world, at + timedelta(seconds=1)) == 1
    assert await world.state(order_id) == OrderState.FULFILLED
    assert len(world.whmcs_orders(order_id)) == 1 and order_id not in world.store.timers


async def test_a_moved_date_moves_the_timer_and_an_immediate_order_goes_on_at_once(world: World) -> None:
    at = world.clock.now + timedelta(days=2)
    order_id = world.place_order("tanaka", "VPN", ["VPN-TOKYO"], Activation_Type__c="Scheduled",
                                 Activation_Scheduled_At__c=at.isoformat())  # fmt: skip
    await world.request(order_id)
    later = at + timedelta(days=3)
    world.salesforce.records["Order"][order_id]["Activation_Scheduled_At__c"] = later.isoformat()
    await world.deliver(OrderChanged(sf_order_id=order_id, changed_fields=["Activation_Scheduled_At__c"]))
    assert world.store.timers[order_id].due_at == later and await world.state(order_id) == OrderState.SCHEDULED
    assert await fire_timers(world, at + timedelta(seconds=1)) == 0  # the old time passes: nothing happens

    world.salesforce.records["Order"][order_id]["Activation_Type__c"] = "Immediate"
    await world.deliver(OrderChanged(sf_order_id=order_id, changed_fields=["Activation_Type__c"]))
    assert await world.state(order_id) == OrderState.FULFILLED and order_id not in world.store.timers


async def test_other_order_changes_leave_a_scheduled_order_alone(world: World) -> None:
    at = world.clock.now + timedelta(days=2)
    order_id = world.place_order("tanaka", "VPN", ["VPN-TOKYO"], Activation_Type__c="Scheduled",
                                 Activation_Scheduled_At__c=at.isoformat())  # fmt: skip
    await world.request(order_id)
    reads = len(world.salesforce.queries)
    await world.deliver(OrderChanged(sf_order_id=order_id, changed_fields=["BillingCity"]))
    assert await world.state(order_id) == OrderState.SCHEDULED and len(world.salesforce.queries) == reads


async def test_a_parked_order_is_rechecked_on_a_back_off_until_a_pay_method_appears(world: World) -> None:
    """No hook comes for a bank account or a remote token: the timer re-checks GetPayMethods after
    10 min, 30 min, ...; a re-check that still finds none re-parks quietly (Salesforce told once)."""
    order_id = world.place_order("sato", "Internet", ["INT-1G-SILVER", "INT-INSTALL-SINGLE"])
    await world.request(order_id)
    parked_at = world.clock.now
    assert world.store.timers[order_id].due_at == parked_at + timedelta(seconds=600)

    assert await fire_timers(world, parked_at + timedelta(seconds=601)) == 1
    assert await world.state(order_id) == OrderState.PARKED
    assert world.store.timers[order_id].due_at == world.clock.now + timedelta(seconds=1800)  # backed off
    assert len(world.sf_updates(order_id)) == 1
    started = [e for e in world.published(Topic.FULFILLMENT_OUTCOME) if isinstance(e, OrderActivationStarted)]
    assert len(started) == 1, "a re-check is no new start for the portal"

    world.whmcs.pay_methods[1003].append(PayMethod(77, "BankAccount", "Japan Post Bank"))  # no webhook for this
    assert await fire_timers(world, world.clock.now + timedelta(seconds=1801)) == 1
    assert await world.state(order_id) == OrderState.FULFILLED and order_id not in world.store.timers


async def test_a_timer_of_an_order_that_moved_on_stops_firing(world: World) -> None:
    order_id = world.place_order("tanaka", "VPN", ["VPN-TOKYO"])
    await world.request(order_id)
    await world.store.set_timer(order_id, "payment_recheck", world.clock.now)  # left behind somehow
    assert await fire_timers(world, world.clock.now + timedelta(seconds=1)) == 1
    assert await world.state(order_id) == OrderState.FULFILLED and order_id not in world.store.timers
    assert len(world.whmcs_orders(order_id)) == 1
