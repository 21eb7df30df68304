"""Domain events the WHMCS webhook receiver emits, keyed by WHMCS client id.

Keying by client keeps every billing change of one customer in order, which is what the
portal's per-user caches and the payment-method gate care about.
"""

from __future__ import annotations

from typing import Any

from events.base import DomainEvent


class _ClientEvent(DomainEvent):
    whmcs_client_id: int
    webhook_id: str | None = None
    hook: str | None = None
    raw: dict[str, Any] | None = None

    def key(self) -> str:
        return str(self.whmcs_client_id)


class InvoiceChanged(_ClientEvent):
    TYPE = "fleet.billing.invoice-changed.v1"
    invoice_id: int
    status: str | None = None


class ServiceChanged(_ClientEvent):
    TYPE = "fleet.billing.service-changed.v1"
    service_id: int
    status: str | None = None


class ClientChanged(_ClientEvent):
    TYPE = "fleet.billing.client-changed.v1"


class PaymentMethodChanged(_ClientEvent):
    """A pay method was added, updated or removed: parked orders of this client may resume."""

    TYPE = "fleet.billing.payment-method-changed.v1"
    paymethod_id: int | None = None


class WhmcsOrderChanged(_ClientEvent):
    TYPE = "fleet.billing.order-changed.v1"
    whmcs_order_id: int
    status: str | None = None
