"""Thin consumer: a parsed WHMCS webhook (``schemas.whmcs_webhook``) → billing domain events.

Every event is keyed by the WHMCS client id. Owns: what each hook means to us. Must not: do I/O,
verify signatures, or know about HTTP (``webhook_server`` does).
"""

from __future__ import annotations

from typing import Any

from events.base import DomainEvent
from events.billing import ClientChanged, InvoiceChanged, PaymentMethodChanged, ServiceChanged, WhmcsOrderChanged
from schemas.whmcs_webhook import (
    ClientWebhook,
    InvoiceWebhook,
    OrderWebhook,
    PayMethodWebhook,
    ServiceWebhook,
    WhmcsWebhook,
)

#: hooks whose name says the new status; the hook file may omit ``status`` for them
IMPLIED_STATUS = {
    "InvoicePaid": "Paid",
    "InvoiceUnpaid": "Unpaid",
    "InvoiceCancelled": "Cancelled",
    "InvoiceRefunded": "Refunded",
    "AcceptOrder": "Active",
    "PendingOrder": "Pending",
    "CancelOrder": "Cancelled",
    "FraudOrder": "Fraud",
    "AfterModuleCreate": "Active",
    "AfterModuleSuspend": "Suspended",
    "AfterModuleUnsuspend": "Active",
    "AfterModuleTerminate": "Terminated",
}


def translate(payload: WhmcsWebhook, *, webhook_id: str | None = None) -> list[DomainEvent]:
    """One domain event per webhook (a list so a hook may one day mean several)."""
    data = payload.data
    common: dict[str, Any] = {"whmcs_client_id": data.client_id, "webhook_id": webhook_id, "hook": payload.event}
    status = data.status or IMPLIED_STATUS.get(payload.event)
    match payload:
        case InvoiceWebhook(data=invoice):
            return [InvoiceChanged(**common, invoice_id=invoice.invoice_id, status=status)]
        case OrderWebhook(data=order):
            return [WhmcsOrderChanged(**common, whmcs_order_id=order.order_id, status=status)]
        case ServiceWebhook(data=service):
            return [ServiceChanged(**common, service_id=service.service_id, status=status)]
        case PayMethodWebhook(data=method):
            return [PaymentMethodChanged(**common, paymethod_id=method.paymethod_id)]
        case ClientWebhook():
            return [ClientChanged(**common)]
    raise AssertionError(f"unhandled webhook model {type(payload).__name__}")  # pragma: no cover
