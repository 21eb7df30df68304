"""The saga's pure rules: order validation, error classification, polling, write-back fields, wake-up tiers.

Contract: an order is valid only with a known type, items, and every item mapped to a WHMCS pid with a
billing cycle (all problems reported at once); an upstream rejection maps to one documented code per
step, anything else goes to the runtime; waits land on the retry tier whose delay fits; the fake store
keeps SIM numbers unique and claims the inbox with the final write.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from adapters.kafka import FakeProducer
from adapters.saga_store import InboxClaim, MemorySagaStore, SagaOrder, SimCard, StepRecord
from events import failure as fh
from events.errors import AuthenticationFailed, MappingMissing, RejectedByUpstream, UpstreamUnavailable
from events.topics import retry_topic
from schemas.salesforce_api import OrderItemRecord, OrderRecord
from workers.fulfillment.model import PLANS, ErrorCode, Fail, OrderType, Step, steps_for
from workers.fulfillment.plan import OrderPlan, SimSpec, build_plan, inventory_sim_type
from workers.fulfillment.policy import poll_delay, rejection_code, reverts_status
from workers.fulfillment.wakeup import WAKEUP_SOURCE, RetryTopicScheduler
from workers.fulfillment.writeback import errored, fulfilled


def _order(**fields: Any) -> OrderRecord:
    return OrderRecord.model_validate({"Id": "801000000000001AAA", "AccountId": "001000000000001AAA", **fields})


def _item(n: int, pid: str | None = "181", cycle: str | None = "Monthly", **product: Any) -> OrderItemRecord:
    return OrderItemRecord.model_validate(
        {
            "Id": f"80200000000000{n}AAA",
            "OrderId": "801000000000001AAA",
            "Quantity": Decimal(2),
            "Product2": {"Name": f"P{n}", "WH_Product_ID__c": pid, "Billing_Cycle__c": cycle, **product},
        }
    )


# --- validation -----------------------------------------------------------------------------------


def test_a_valid_internet_order_becomes_lines_with_lower_case_cycles() -> None:
    plan = build_plan(_order(Type="Internet"), [_item(1), _item(2, "242", "Onetime")])
    assert isinstance(plan, OrderPlan) and plan.order_type == OrderType.INTERNET
    lines = [(line.pid, line.billing_cycle, line.qty) for line in plan.lines]
    assert lines == [(181, "monthly", 2), (242, "onetime", 2)]
    assert plan.sim is None


@pytest.mark.parametrize("order_type", [None, "Mobile", "internet"])
def test_an_unknown_order_type_is_invalid(order_type: str | None) -> None:
    result = build_plan(_order(Type=order_type), [_item(1)])
    assert isinstance(result, Fail) and result.code == ErrorCode.ORDER_INVALID


def test_an_order_without_items_is_invalid() -> None:
    result = build_plan(_order(Type="VPN"), [])
    assert isinstance(result, Fail) and result.code == ErrorCode.ORDER_INVALID


def test_every_unmapped_item_is_reported_at_once() -> None:
    result = build_plan(_order(Type="Internet"), [_item(1, pid=None), _item(2), _item(3, cycle=None)])
    assert isinstance(result, Fail) and result.code == ErrorCode.PRODUCT_MAPPING_MISSING
    assert "802000000000001AAA" in result.message and "WH_Product_ID__c" in result.message
    assert "802000000000003AAA" in result.message and "Billing_Cycle__c" in result.message
    assert "802000000000002AAA" not in result.message


def test_the_line_billing_cycle_wins_over_the_products() -> None:
    item = OrderItemRecord.model_validate(
        {"Id": "802000000000009AAA", "OrderId": "x", "Billing_Cycle__c": "Annually",
         "Product2": {"WH_Product_ID__c": "181", "Billing_Cycle__c": "Monthly"}}
    )  # fmt: skip
    plan = build_plan(_order(Type="VPN"), [item])
    assert isinstance(plan, OrderPlan) and plan.lines[0].billing_cycle == "annually"


def test_a_sim_order_takes_its_plan_code_from_the_service_line_and_its_options_from_the_order() -> None:
    items = [
        _item(1, "310", "Onetime", StockKeepingUnit="SIM-ACTIVATION", Item_Class__c="Activation"),
        _item(2, "301", StockKeepingUnit="SIM-DV-5GB", Item_Class__c="Service"),
    ]
    plan = build_plan(_order(Type="SIM", SIM_Type__c="Physical SIM", SIM_Voice_Mail__c=True), items)
    assert isinstance(plan, OrderPlan) and plan.sim is not None
    assert (plan.sim.kind, plan.sim.plan_code, plan.sim.service_line) == ("physical", "SIM-DV-5GB", 1)
    assert plan.sim.voice_mail and not plan.sim.call_waiting and plan.sim.wants_voice


def test_an_esim_order_needs_an_eid() -> None:
    result = build_plan(_order(Type="SIM", SIM_Type__c="eSIM"), [_item(1)])
    assert isinstance(result, Fail) and result.code == ErrorCode.ORDER_INVALID
    plan = build_plan(_order(Type="SIM", SIM_Type__c="eSIM", EID__c="8904" + "0" * 28), [_item(1)])
    assert isinstance(plan, OrderPlan) and plan.sim is not None and plan.sim.kind == "esim"


def test_a_whmcs_order_id_already_on_the_order_is_kept_for_adoption() -> None:
    plan = build_plan(_order(Type="VPN", WHMCS_Order_ID__c="5007"), [_item(1)])
    assert isinstance(plan, OrderPlan) and plan.sf_whmcs_order_id == 5007


def test_a_sim_order_takes_a_card_of_its_own_kind_from_the_inventory() -> None:
    physical = SimSpec(kind="physical", plan_code="SIM-DV-5GB")
    assert inventory_sim_type(physical) == "Physical"
    assert inventory_sim_type(physical.model_copy(update={"kind": "esim"})) == "eSIM"


def test_plans_bill_sim_orders_first_then_wait_for_processed_and_write_back_last() -> None:
    sim = PLANS[OrderType.SIM]
    assert sim.index(Step.WHMCS_ACCEPT) < sim.index(Step.SIM_PROCESSED) < sim.index(Step.SIM_ASSIGN)
    assert sim.index(Step.SIM_ASSIGN) < sim.index(Step.SIM_REGISTER) < sim.index(Step.WHMCS_SIM_FIELDS)
    assert all(plan[-1] == Step.SF_WRITEBACK for plan in PLANS.values())
    assert Step.SIM_REGISTER not in PLANS[OrderType.INTERNET] and steps_for(None) == (Step.VALIDATE,)


# --- policy ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "error", "code"),
    [
        (Step.WHMCS_CREATE, RejectedByUpstream("closed", code="CLIENT_CLOSED"), ErrorCode.WHMCS_ORDER_REJECTED),
        (Step.WHMCS_CREATE, MappingMissing("pid", code="WHMCS_PRODUCT_NOT_FOUND"), ErrorCode.PRODUCT_MAPPING_MISSING),
        (Step.PAYMENT_GATE, MappingMissing("client", code="WHMCS_CLIENT_NOT_FOUND"), ErrorCode.WHMCS_CLIENT_NOT_MAPPED),
        (Step.SIM_REGISTER, RejectedByUpstream("400-210"), ErrorCode.FREEBIT_REGISTRATION_FAILED),
        (Step.VALIDATE, RejectedByUpstream("gone", code="NOT_FOUND"), ErrorCode.ORDER_INVALID),
        (Step.WHMCS_SIM_FIELDS, MappingMissing("field"), ErrorCode.WHMCS_SERVICE_UPDATE_FAILED),
    ],
)
def test_rejections_map_to_the_documented_codes(step: Step, error: Exception, code: ErrorCode) -> None:
    assert rejection_code(step, error) == code


@pytest.mark.parametrize(
    "error",
    [UpstreamUnavailable("503"), AuthenticationFailed("bad key"), RuntimeError("bug")],
)
def test_everything_but_a_rejection_goes_to_the_runtime(error: Exception) -> None:
    assert rejection_code(Step.WHMCS_CREATE, error) is None


def test_a_rejection_in_the_write_back_step_is_not_a_business_failure() -> None:
    assert rejection_code(Step.SF_WRITEBACK, RejectedByUpstream("x")) is None


def test_polls_back_off_and_never_pass_the_deadline() -> None:
    assert [poll_delay(n, 10_000) for n in (1, 2, 3, 4, 5, 9)] == [5, 10, 20, 40, 60, 60]
    assert poll_delay(5, 12.5) == 12.5 and poll_delay(1, 0.2) == 1.0


def test_only_sim_orders_go_back_to_approved() -> None:
    assert reverts_status("SIM") and not reverts_status("Internet") and not reverts_status(None)


# --- write-back ---------------------------------------------------------------------------------------


def test_the_success_write_back_pairs_lines_with_services_in_order() -> None:
    plan = build_plan(_order(Type="Internet"), [_item(1), _item(2)])
    assert isinstance(plan, OrderPlan)
    order, *items = fulfilled(plan.sf_order_id, plan.lines, 5001, [7001, 7002])
    assert order.sobject == "Order" and order.fields["WHMCS_Order_ID__c"] == "5001" and order.priority == "high"
    assert [(i.sobject, i.record_id, i.fields) for i in items] == [
        ("OrderItem", "802000000000001AAA", {"WHMCS_Service_ID__c": "7001"}),
        ("OrderItem", "802000000000002AAA", {"WHMCS_Service_ID__c": "7002"}),
    ]


def test_error_write_backs_are_truncated_and_revert_status_only_when_asked() -> None:
    update = errored("801x", ErrorCode.FREEBIT_TIMEOUT, "m" * 400, revert_status=True)
    assert update.fields["Activation_Error_Code__c"] == "FREEBIT_TIMEOUT" and update.fields["Status"] == "Approved"
    assert len(update.fields["Activation_Error_Message__c"]) == 255
    assert "Status" not in errored("801x", ErrorCode.PAYMENT_METHOD_MISSING, "m", revert_status=False).fields


# --- wake-ups -------------------------------------------------------------------------------------------


async def test_wakeups_land_on_the_tier_that_fits_with_that_tiers_not_before() -> None:
    producer = FakeProducer()
    scheduler = RetryTopicScheduler(producer, "fleet.fulfillment", [5_000, 30_000], clock_ms=lambda: 1_000_000)
    assert [scheduler.tier_for(s) for s in (1, 5, 6, 30, 600)] == [1, 1, 2, 2, 2]

    event_id = await scheduler.schedule(SagaOrder("801x", sf_account_id="001y"), 40, None)
    [(topic, key, _value, headers)] = producer.records
    h = dict(headers)
    assert topic == retry_topic("fleet.fulfillment", 2) and key == b"801x"
    assert h[fh.NOT_BEFORE] == b"1030000" and h[fh.RETRY_TIER] == b"2"
    assert h["ce_source"] == WAKEUP_SOURCE.encode() and h["ce_id"] == event_id.encode()


def test_a_scheduler_needs_a_retry_tier() -> None:
    with pytest.raises(ValueError, match="retry tier"):
        RetryTopicScheduler(FakeProducer(), "g", [], clock_ms=lambda: 0)


# --- the fake store -------------------------------------------------------------------------------------


async def test_the_fake_store_keeps_sim_numbers_unique_and_claims_with_the_final_write() -> None:
    store = MemorySagaStore()
    await store.save(SagaOrder("801a"))
    await store.save(SagaOrder("801b"))
    assert await store.reserve_sim_account("801a", "07011112222")
    assert await store.reserve_sim_account("801a", "07011112222"), "idempotent for the holder"
    assert not await store.reserve_sim_account("801b", "07011112222")
    one, two = SimCard("a0S1", "SIM-000001", "08000000001", "AX1"), SimCard("a0S2", "SIM-000002", "08000000002", "AX2")
    assert await store.reserve_sim_card("801a", [one, two]) == one
    assert await store.reserve_sim_card("801b", [one, two]) == two, "a card another order holds is passed over"
    assert await store.reserve_sim_card("801a", [two]) == one, "an order keeps the card it took"
    assert await store.reserve_sim_card("801c", [one, two]) is None

    claim = InboxClaim("g", "evt-1", "t", "sf.order.v1", 0, 7)
    assert await store.save(SagaOrder("801a", state="fulfilled"), [StepRecord("validate", 1)], claim=claim)
    assert await store.processed(claim)
    assert not await store.save(SagaOrder("801a", state="fulfilled"), claim=claim), "second claim is a duplicate"
    assert [o.sf_order_id for o in await store.list_orders("fulfilled")] == ["801a"]


def test_a_sim_order_with_two_sims_is_refused_before_anything_is_billed() -> None:
    order = _order(Type="SIM", SIM_Type__c="Physical SIM")
    plan = build_plan(order, [_item(1, Item_Class__c="Service"), _item(2, Item_Class__c="Service")])
    assert isinstance(plan, Fail) and plan.code == ErrorCode.ORDER_INVALID and "one SIM line" in plan.message
