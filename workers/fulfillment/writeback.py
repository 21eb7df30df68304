"""The Salesforce field writes the saga asks the sf-writer for, as ``UpdateSalesforceRecord`` commands.

Owns which fields change on success, park and failure (domain-facts §2.7), and each command's
priority for the sf-writer's API budget governor. Pure: the saga publishes the commands to
``Topic.SF_WRITEBACK``; it never calls Salesforce to write a status itself. Every command sets
absolute values, so sending one twice (after a crash) writes the same record twice.

The priority rule (docs/sf-writer.md, "Priorities"), set here and nowhere else:

* **high**: what a person or the fleet acts on. The Order's ``Activation_Status__c = Activated``
  with its ``WHMCS_Order_ID__c`` (the "already fulfilled" guard) and cleared errors; the error code
  and message staff act on (failed or parked); ``Status = Approved``, the revert that lets staff
  re-trigger a SIM order; the SIM inventory card an order took. Never deferred by the governor.
* **low**: information recorded for reference that nobody waits on: the WHMCS service id on each
  OrderItem (CDC ignores the field, the fleet never reads it back), and any progress note. Deferred
  while the daily API budget is above ``SalesforceSettings.api_budget_share_for_low_priority``.
  A low command whose record also gets a high command in the same writer run rides along.
"""

from __future__ import annotations

from collections.abc import Sequence

from adapters.salesforce.port import SIM_ASSIGNED, SIM_INVENTORY
from events.fulfillment import UpdateSalesforceRecord
from workers.fulfillment.model import ErrorCode
from workers.fulfillment.plan import PlanLine

ACTIVATED = "Activated"
APPROVED = "Approved"  # a failed SIM order goes back here so staff can re-trigger it
ERROR_MESSAGE_MAX = 255  # Activation_Error_Message__c is a text field; keep within a Text(255)


def _order(sf_order_id: str, fields: dict[str, object]) -> UpdateSalesforceRecord:
    """High priority: the Order's status, error and revert fields are what staff and the fleet act on."""
    return UpdateSalesforceRecord(sobject="Order", record_id=sf_order_id, fields=fields, priority="high")


def _reference(sobject: str, record_id: str, fields: dict[str, object]) -> UpdateSalesforceRecord:
    """Low priority: recorded for reference only, so it may wait for the API budget."""
    return UpdateSalesforceRecord(sobject=sobject, record_id=record_id, fields=fields, priority="low")


def fulfilled(
    sf_order_id: str,
    lines: Sequence[PlanLine],
    whmcs_order_id: int,
    service_ids: Sequence[int],
    *,
    opportunity_id: str | None = None,
    service_line: int = 0,
) -> list[UpdateSalesforceRecord]:
    """Order: Activated + WHMCS order id, errors cleared (high); each OrderItem: its WHMCS service id
    (low); the Opportunity the order came from: the main line's WHMCS service id (low: a link for
    reference, domain-facts §2.7 "the Opportunity is linked both ways").

    AddOrder returns one service per line, in line order, which is how lines and services pair up.
    ``WH_Registeration__c`` is not written: it appears once, in a commit message ([S15]), with no
    value or meaning we could pin down (docs/fulfillment.md)."""
    order = _order(
        sf_order_id,
        {
            "Activation_Status__c": ACTIVATED,
            "WHMCS_Order_ID__c": str(whmcs_order_id),
            "Activation_Error_Code__c": None,
            "Activation_Error_Message__c": None,
        },
    )
    items = [
        _reference("OrderItem", line.order_item_id, {"WHMCS_Service_ID__c": str(service_id)})
        for line, service_id in zip(lines, service_ids, strict=False)
    ]
    links = []
    if opportunity_id and service_line < len(service_ids):
        links.append(_reference("Opportunity", opportunity_id, {"WHMCS_Service_ID__c": str(service_ids[service_line])}))
    return [order, *items, *links]


def sim_card_assigned(
    card_id: str, sf_order_id: str, sf_account_id: str | None, sim_type: str
) -> UpdateSalesforceRecord:
    """The inventory card taken by an order (high: the inventory is what staff hand out cards from,
    and what the next order's free-card query reads). The assignment fields of domain-facts §2.4."""
    fields: dict[str, object] = {
        "Status__c": SIM_ASSIGNED,
        "Assigned_Order__c": sf_order_id,
        "Assigned_Account__c": sf_account_id,
        "SIM_Type__c": sim_type,
    }
    return UpdateSalesforceRecord(sobject=SIM_INVENTORY, record_id=card_id, fields=fields, priority="high")


def errored(sf_order_id: str, code: ErrorCode, message: str, *, revert_status: bool) -> UpdateSalesforceRecord:
    """The error code and message for staff; ``Status = Approved`` when the order can be re-triggered."""
    fields: dict[str, object] = {
        "Activation_Error_Code__c": code.value,
        "Activation_Error_Message__c": message[:ERROR_MESSAGE_MAX],
    }
    if revert_status:
        fields["Status"] = APPROVED
    return _order(sf_order_id, fields)
