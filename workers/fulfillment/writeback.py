"""The Salesforce field writes the saga asks the sf-writer for, as ``UpdateSalesforceRecord`` commands.

Owns which fields change on success, park and failure (domain-facts §2.7). Pure: the saga publishes
the commands to ``Topic.SF_WRITEBACK``; it never calls Salesforce to write a status itself. Every
command sets absolute values, so sending one twice (after a crash) writes the same record twice.
"""

from __future__ import annotations

from collections.abc import Sequence

from events.fulfillment import UpdateSalesforceRecord
from workers.fulfillment.model import ErrorCode
from workers.fulfillment.plan import PlanLine

ACTIVATED = "Activated"
APPROVED = "Approved"  # a failed SIM order goes back here so staff can re-trigger it
ERROR_MESSAGE_MAX = 255  # Activation_Error_Message__c is a text field; keep within a Text(255)


def _order(sf_order_id: str, fields: dict[str, object]) -> UpdateSalesforceRecord:
    return UpdateSalesforceRecord(sobject="Order", record_id=sf_order_id, fields=fields, priority="high")


def fulfilled(
    sf_order_id: str, lines: Sequence[PlanLine], whmcs_order_id: int, service_ids: Sequence[int]
) -> list[UpdateSalesforceRecord]:
    """Order: Activated + WHMCS order id, errors cleared; each OrderItem: its WHMCS service id.

    AddOrder returns one service per line, in line order, which is how lines and services pair up."""
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
        UpdateSalesforceRecord(
            sobject="OrderItem", record_id=line.order_item_id, fields={"WHMCS_Service_ID__c": str(service_id)}
        )
        for line, service_id in zip(lines, service_ids, strict=False)
    ]
    return [order, *items]


def errored(sf_order_id: str, code: ErrorCode, message: str, *, revert_status: bool) -> UpdateSalesforceRecord:
    """The error code and message for staff; ``Status = Approved`` when the order can be re-triggered."""
    fields: dict[str, object] = {
        "Activation_Error_Code__c": code.value,
        "Activation_Error_Message__c": message[:ERROR_MESSAGE_MAX],
    }
    if revert_status:
        fields["Status"] = APPROVED
    return _order(sf_order_id, fields)
