"""A new activation request for an order the saga's ledger already calls fulfilled.

Contract: nothing runs again and nothing is created twice. The request's snapshot decides: read
after the order was fulfilled and showing the same order without its write-back (``Activating``, no
``WHMCS_Order_ID__c``: lost, dead-lettered, or an agent's ``Reactivate``), the write-back is sent
again from the ledger's ids and noted as ``writeback_repaired``; showing another order (another
WHMCS order, account or lines: e.g. a sandbox that handed out the id again), the order gets
``LEDGER_MISMATCH`` naming both sides, an error log line and a count. No snapshot, an older one, or
one already in sync: nothing but a timeline note. A redelivery of any of them is a duplicate.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from events.fulfillment import OrderFulfilled, OrderFulfillmentFailed
from events.salesforce import OrderActivationRequested, SimActivationRequested
from sandbox import demo_data
from tests.unit.test_fulfillment_saga import World, snapshot_of
from workers.fulfillment.model import OrderState, Step


@pytest.fixture
def world() -> World:
    return World()


async def fulfilled_order(world: World, customer: str = "tanaka", skus: tuple[str, ...] = ("INT-1G-GOLD",)) -> str:
    order_id = world.place_order(customer, "Internet", list(skus))
    await world.request(order_id)
    assert await world.state(order_id) == OrderState.FULFILLED
    world.clock.advance(60)  # later requests read Salesforce after the order was fulfilled
    return order_id


def checks(world: World, verdict: str) -> float:
    """The route's counter, as the worker running it serves it on /metrics."""
    registry = CollectorRegistry()
    registry.register(world.handlers[OrderActivationRequested].collector)  # type: ignore[attr-defined]
    return registry.get_sample_value("fleet_fulfillment_ledger_checks_total", {"verdict": verdict}) or 0.0


async def kinds(world: World, order_id: str) -> list[str]:
    return [h.kind for h in await world.store.history(order_id)]


@pytest.mark.parametrize("status", ["Processed", "Reactivate"])
async def test_a_lost_write_back_is_sent_again_from_the_ledgers_ids(world: World, status: str) -> None:
    """The fake Salesforce never receives the write-back: it still shows Activating and no WHMCS order."""
    order_id = await fulfilled_order(world, skus=("INT-1G-GOLD", "INT-INSTALL-SINGLE"))
    [whmcs_order] = world.whmcs_orders(order_id)
    world.salesforce.records["Order"][order_id]["Status"] = status
    repairs = checks(world, "repair")

    with capture_logs() as logs:
        await world.deliver(OrderActivationRequested(sf_order_id=order_id, snapshot=await snapshot_of(
            world, order_id, world.clock.now)), event_id="evt-again")  # fmt: skip

    order_updates = world.sf_updates(order_id)
    assert len(order_updates) == 2 and order_updates[0] == order_updates[1]
    assert order_updates[1]["WHMCS_Order_ID__c"] == str(whmcs_order.order_id)
    assert order_updates[1]["Activation_Status__c"] == "Activated"
    items = sorted(r["Id"] for r in world.salesforce.records["OrderItem"].values() if r["OrderId"] == order_id)
    assert [world.sf_updates(i)[-1] for i in items] == [
        {"WHMCS_Service_ID__c": str(s)} for s in whmcs_order.service_ids
    ]
    outcomes = world.outcomes(order_id)
    assert [type(o) for o in outcomes] == [OrderFulfilled, OrderFulfilled] and outcomes[0] == outcomes[1]
    assert len(world.calls(world.whmcs, "add_order")) == 1 and len(world.whmcs_orders(order_id)) == 1
    assert (await kinds(world, order_id))[-2:] == ["requested", "writeback_repaired"]
    assert checks(world, "repair") == repairs + 1
    [logged] = [e for e in logs if e["event"] == "fulfillment_writeback_repaired"]
    assert logged["whmcs_order_id"] == whmcs_order.order_id and logged["sf_order_id"] == order_id

    before = len(world.producer.records)
    await world.deliver(OrderActivationRequested(sf_order_id=order_id, snapshot=await snapshot_of(
        world, order_id, world.clock.now)), event_id="evt-again")  # fmt: skip
    assert len(world.producer.records) == before, "a redelivery of the repairing request is a duplicate"


async def test_a_sim_order_is_repaired_without_touching_freebit_again(world: World) -> None:
    order_id = world.place_order("suzuki", "SIM", ["SIM-DV-5GB", "SIM-ACTIVATION"], SIM_Type__c="Physical SIM")
    await world.request(order_id)
    await world.settle()
    assert await world.state(order_id) == OrderState.FULFILLED
    world.clock.advance(60)
    freebit_calls = len(world.freebit.calls)

    snapshot = await snapshot_of(world, order_id, world.clock.now)
    await world.deliver(SimActivationRequested(sf_order_id=order_id, snapshot=snapshot))

    assert len(world.freebit.calls) == freebit_calls and len(world.freebit.accounts) == 1
    assert len(world.whmcs_orders(order_id)) == 1
    assert world.sf_updates(order_id)[-1]["Activation_Status__c"] == "Activated"
    assert (await kinds(world, order_id))[-1] == "writeback_repaired"


async def test_salesforce_naming_another_whmcs_order_gets_ledger_mismatch(world: World) -> None:
    order_id = await fulfilled_order(world)
    [whmcs_order] = world.whmcs_orders(order_id)
    world.salesforce.records["Order"][order_id]["WHMCS_Order_ID__c"] = "424242"
    mismatches = checks(world, "mismatch")

    with capture_logs() as logs:
        snapshot = await snapshot_of(world, order_id, world.clock.now)
        await world.deliver(OrderActivationRequested(sf_order_id=order_id, snapshot=snapshot))

    update = world.sf_updates(order_id)[-1]
    assert update["Activation_Error_Code__c"] == "LEDGER_MISMATCH"
    message = update["Activation_Error_Message__c"]
    assert str(whmcs_order.order_id) in message and "424242" in message and len(message) <= 255
    assert "Status" not in update and "Activation_Status__c" not in update
    failed = world.outcomes(order_id)[-1]
    assert isinstance(failed, OrderFulfillmentFailed) and failed.error_code == "LEDGER_MISMATCH"
    record = await world.store.get(order_id)
    assert record is not None and record.order.state == OrderState.FULFILLED
    assert record.order.whmcs_order_id == whmcs_order.order_id, "the ledger keeps what it fulfilled"
    assert len(world.calls(world.whmcs, "add_order")) == 1
    assert checks(world, "mismatch") == mismatches + 1
    [logged] = [e for e in logs if e["event"] == "fulfillment_ledger_mismatch"]
    assert logged["log_level"] == "error"
    assert (logged["whmcs_order_id"], logged["sf_whmcs_order_id"]) == (whmcs_order.order_id, "424242")
    history = await world.store.history(order_id)
    assert history[-1].kind == "ledger_mismatch" and history[-1].detail["sf_whmcs_order_id"] == "424242"


async def test_an_order_id_handed_out_again_for_another_order_gets_ledger_mismatch(world: World) -> None:
    """As after a Salesforce sandbox restart that numbered records from the start again: same Order
    id, another customer and other lines, no WHMCS order yet. Billing it as the old one would be wrong."""
    order_id = await fulfilled_order(world, customer="tanaka")
    records = world.salesforce.records
    for item in [i for i, r in records["OrderItem"].items() if r["OrderId"] == order_id]:
        del records["OrderItem"][item]
    records["Order"][order_id]["AccountId"] = demo_data.CUSTOMERS[1]["sf_account_id"]
    vpn = demo_data.product_by_sku("VPN-TOKYO")
    world.salesforce.add_record("OrderItem", {"Id": demo_data.sf_id("802", 990_001), "OrderId": order_id,
                                              "Product2Id": vpn["Id"], "Quantity": 1})  # fmt: skip

    snapshot = await snapshot_of(world, order_id, world.clock.now)
    await world.deliver(OrderActivationRequested(sf_order_id=order_id, snapshot=snapshot))

    update = world.sf_updates(order_id)[-1]
    assert update["Activation_Error_Code__c"] == "LEDGER_MISMATCH"
    assert demo_data.CUSTOMERS[1]["sf_account_id"] in update["Activation_Error_Message__c"]
    assert len(world.calls(world.whmcs, "add_order")) == 1


@pytest.mark.parametrize("case", ["no snapshot", "snapshot read before fulfilment", "already in sync"])
async def test_without_evidence_of_a_lost_write_back_nothing_is_sent(world: World, case: str) -> None:
    order_id = world.place_order("tanaka", "Internet", ["INT-1G-GOLD"])
    early = await snapshot_of(world, order_id, world.clock.now - timedelta(seconds=1))
    await world.request(order_id)
    world.clock.advance(60)
    snapshot = None if case == "no snapshot" else early
    if case == "already in sync":
        [whmcs_order] = world.whmcs_orders(order_id)
        world.salesforce.records["Order"][order_id].update(
            Activation_Status__c="Activated", WHMCS_Order_ID__c=str(whmcs_order.order_id)
        )
        snapshot = await snapshot_of(world, order_id, world.clock.now)
    before = len(world.producer.records)

    await world.deliver(OrderActivationRequested(sf_order_id=order_id, snapshot=snapshot))

    assert len(world.producer.records) == before
    history = await world.store.history(order_id)
    assert history[-1].kind == "already_fulfilled"
    assert history[-1].detail["verdict"] == ("in_sync" if case == "already in sync" else "no_evidence")
    assert (await world.step(order_id, Step.SF_WRITEBACK)).attempts == 1
