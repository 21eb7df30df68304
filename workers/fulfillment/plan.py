"""The validated order (``OrderPlan``): what the saga will bill and provision, built from Salesforce records.

Owns the validation rules (known order type, every line mapped to a WHMCS ``pid`` with a billing
cycle, SIM details) and which inventory cards a SIM order takes. Pure: no I/O, so the rules are unit
tested without fakes. Must not call any port.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict

from adapters.salesforce.port import SIM_TYPES
from adapters.whmcs.port import OrderLine
from events.salesforce import OrderLineSnapshot, OrderSnapshot
from schemas.salesforce_api import OrderItemRecord, OrderRecord
from workers.fulfillment.model import ErrorCode, Fail, OrderType

ESIM_TYPES = frozenset({"esim", "e-sim"})
#: an MNP reservation number (MNP予約番号): 10 digits, as Freebit's PA05-20 ``reserveNumber``
MNP_RESERVATION = re.compile(r"\d{10}")
#: a Japanese mobile number: 070 / 080 / 090 and 8 digits
MNP_PHONE = re.compile(r"0[789]0\d{8}")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PlanLine(_Frozen):
    order_item_id: str
    pid: int
    billing_cycle: str  # lower-case, as WHMCS wants it
    qty: int
    sku: str | None = None
    item_class: str | None = None

    def order_line(self) -> OrderLine:
        return OrderLine(self.pid, self.billing_cycle, self.qty)


class MnpSpec(_Frozen):
    """Number portability: the customer's number moves in from another carrier (domain-facts §2.4:
    "MNP reservation details are collected at checkout"; the Order's field names are our choice)."""

    reservation_number: str  # the MNP reservation number from the losing carrier, 10 digits
    expiry: date  # the reservation's last valid day (Japan time)
    phone_number: str  # the number being ported in: it becomes the Freebit account

    def expired(self, today: date) -> bool:
        return self.expiry < today


class SimSpec(_Frozen):
    kind: Literal["physical", "esim"]
    plan_code: str
    eid: str = ""
    voice_mail: bool = False
    call_waiting: bool = False
    service_line: int = 0  # index of the line whose WHMCS service carries SIM Number / Serial / EID
    mnp: MnpSpec | None = None

    @property
    def wants_voice(self) -> bool:
        return self.voice_mail or self.call_waiting


class OrderPlan(_Frozen):
    sf_order_id: str
    order_type: OrderType
    sf_account_id: str | None
    lines: tuple[PlanLine, ...]
    sim: SimSpec | None = None
    #: ``Order.WHMCS_Order_ID__c`` as read (set when someone fulfilled it before us)
    sf_whmcs_order_id: int | None = None
    #: ``Order.OpportunityId``: linked both ways on success (WHMCS custom field, Opportunity field)
    opportunity_id: str | None = None
    #: index of the order's main line (the first ``Service`` item): its WHMCS service is the one the
    #: Opportunity and the SIM fields point at
    service_line: int = 0
    #: ``Activation_Type__c = Scheduled``: the order waits for ``Activation_Scheduled_At__c`` (step ``schedule``)
    scheduled: bool = False


def build_plan(order: OrderRecord, items: list[OrderItemRecord]) -> OrderPlan | Fail:
    """The plan, or the ``Fail`` naming every problem (the operator's "item mapping report")."""
    if order.type not in {t.value for t in OrderType}:
        return Fail(ErrorCode.ORDER_INVALID, f"unknown order type {order.type!r} (expected Internet, SIM or VPN)")
    if not items:
        return Fail(ErrorCode.ORDER_INVALID, "the order has no items")
    unmapped = [problem for problem in map(_unmapped, items) if problem]
    if unmapped:
        return Fail(ErrorCode.PRODUCT_MAPPING_MISSING, "; ".join(unmapped))
    lines = tuple(_line(item) for item in items)
    sim = _sim_spec(order, lines) if order.type == OrderType.SIM else None
    if isinstance(sim, Fail):
        return sim
    return OrderPlan(
        sf_order_id=order.id,
        order_type=OrderType(order.type),
        sf_account_id=order.account_id,
        lines=lines,
        sim=sim,
        sf_whmcs_order_id=int(order.whmcs_order_id)
        if order.whmcs_order_id and order.whmcs_order_id.isdigit()
        else None,
        opportunity_id=(order.opportunity_id or "").strip() or None,
        scheduled=(order.activation_type or "").strip().lower() == "scheduled",
        service_line=_service_line(lines),
    )


def records_from_snapshot(sf_order_id: str, snapshot: OrderSnapshot) -> tuple[OrderRecord, list[OrderItemRecord]]:
    """The records ``build_plan`` takes, from an activation request's snapshot (so one set of rules
    plans from a snapshot and from a fresh read alike)."""
    order = OrderRecord.model_validate(
        {
            "Id": sf_order_id,
            "AccountId": snapshot.sf_account_id,
            "Type": snapshot.order_type,
            "Status": snapshot.status,
            "Activation_Status__c": snapshot.activation_status,
            "Activation_Type__c": snapshot.activation_type,
            "Activation_Scheduled_At__c": snapshot.activation_scheduled_at,
            "WHMCS_Order_ID__c": snapshot.whmcs_order_id,
            "SIM_Type__c": snapshot.sim_type,
            "EID__c": snapshot.eid,
            "SIM_Voice_Mail__c": snapshot.sim_voice_mail,
            "SIM_Call_Waiting__c": snapshot.sim_call_waiting,
            "OpportunityId": snapshot.opportunity_id,
            "MNP_Reservation_Number__c": snapshot.mnp_reservation_number,
            "MNP_Expiry_Date__c": snapshot.mnp_expiry_date,
            "MNP_Phone_Number__c": snapshot.mnp_phone_number,
        }
    )
    return order, [_item_record(sf_order_id, line) for line in snapshot.lines]


def _item_record(sf_order_id: str, line: OrderLineSnapshot) -> OrderItemRecord:
    product = {
        "Name": line.product_name,
        "StockKeepingUnit": line.sku,
        "WH_Product_ID__c": line.whmcs_product_id,
        "Billing_Cycle__c": line.product_billing_cycle,
        "Item_Class__c": line.item_class,
    }
    return OrderItemRecord.model_validate(
        {
            "Id": line.sf_order_item_id,
            "OrderId": sf_order_id,
            "Product2Id": line.sf_product2_id,
            "Quantity": line.quantity,
            "Billing_Cycle__c": line.billing_cycle,
            "Product2": product if any(v is not None for v in product.values()) else None,
        }
    )


def _unmapped(item: OrderItemRecord) -> str:
    name = (item.product.name if item.product else None) or item.product2_id or item.id
    pid = item.whmcs_product_id or ""
    if not pid.strip().isdigit():
        return f"OrderItem {item.id} ({name}): Product2.WH_Product_ID__c is missing"
    if not item.effective_billing_cycle:
        return f"OrderItem {item.id} ({name}): Billing_Cycle__c is missing"
    return ""


def _line(item: OrderItemRecord) -> PlanLine:
    return PlanLine(
        order_item_id=item.id,
        pid=int((item.whmcs_product_id or "").strip()),
        billing_cycle=(item.effective_billing_cycle or "").lower(),
        qty=max(int(item.quantity), 1),
        sku=item.product.sku if item.product else None,
        item_class=item.product.item_class if item.product else None,
    )


def _sim_spec(order: OrderRecord, lines: tuple[PlanLine, ...]) -> SimSpec | Fail:
    kind: Literal["physical", "esim"] = "esim" if (order.sim_type or "").lower() in ESIM_TYPES else "physical"
    if kind == "esim" and not (order.eid or "").strip():
        return Fail(ErrorCode.ORDER_INVALID, "eSIM order without EID__c")
    service = _service_line(lines)
    sims = [line for line in lines if line.item_class == "Service"]
    if len(sims) > 1:
        # one card, one number, one Freebit account per order, as the portal's checkout creates them:
        # a second SIM line would otherwise be billed and never registered
        return Fail(ErrorCode.ORDER_INVALID, f"a SIM order carries one SIM line, this one {len(sims)}: split it")
    mnp = _mnp_spec(order)
    if isinstance(mnp, Fail):
        return mnp
    return SimSpec(
        kind=kind,
        # the plan code Freebit registers: the SIM service's SKU (the portal's catalog key)
        plan_code=lines[service].sku or str(lines[service].pid),
        eid=(order.eid or "").strip(),
        voice_mail=bool(order.sim_voice_mail),
        call_waiting=bool(order.sim_call_waiting),
        service_line=service,
        mnp=mnp,
    )


def _service_line(lines: tuple[PlanLine, ...]) -> int:
    return next((n for n, line in enumerate(lines) if line.item_class == "Service"), 0)


def _mnp_spec(order: OrderRecord) -> MnpSpec | Fail | None:
    """None when the order ports no number; all three MNP fields when it does, well-formed."""
    number = (order.mnp_reservation_number or "").strip()
    phone = (order.mnp_phone_number or "").strip()
    if not (number or phone or order.mnp_expiry_date):
        return None
    problems = []
    if not MNP_RESERVATION.fullmatch(number):
        problems.append(f"MNP_Reservation_Number__c must be 10 digits, not {number!r}")
    if order.mnp_expiry_date is None:
        problems.append("MNP_Expiry_Date__c is missing")
    if not MNP_PHONE.fullmatch(phone):
        problems.append(f"MNP_Phone_Number__c must be a Japanese mobile number (11 digits), not {phone!r}")
    if problems or order.mnp_expiry_date is None:
        return Fail(ErrorCode.MNP_RESERVATION_INVALID, "; ".join(problems))
    return MnpSpec(reservation_number=number, expiry=order.mnp_expiry_date, phone_number=phone)


#: ``SIM_Inventory__c.SIM_Type__c`` values (our inference of the picklist: docs/fulfillment.md)
PHYSICAL, ESIM = SIM_TYPES


def inventory_sim_type(sim: SimSpec) -> str:
    """The ``SIM_Type__c`` of the inventory cards a SIM order takes: a physical card, or an eSIM profile's number."""
    return ESIM if sim.kind == "esim" else PHYSICAL
