"""The WHMCS port in our terms, and the small value types it speaks.

What the fleet needs from billing: look up a client and its pay methods, place and accept an
order (AddOrder then AcceptOrder, since AddOrder ignores product auto-setup), find an order by
the ``sfOrderId=`` marker in its notes, cancel it, list and annotate services. Must not know
HTTP, form encoding or WHMCS message strings; those belong to ``HttpWhmcs``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

UPSTREAM = "whmcs"


@dataclass(frozen=True)
class OrderLine:
    """One product line: WHMCS ``pid``, lower-case billing cycle ("monthly", "onetime"), quantity."""

    pid: int
    billing_cycle: str
    qty: int = 1


@dataclass(frozen=True)
class AddedOrder:
    order_id: int
    service_ids: tuple[int, ...]
    invoice_id: int | None


@dataclass(frozen=True)
class WhmcsOrder:
    order_id: int
    client_id: int
    status: str  # Pending | Active | Cancelled | Fraud
    notes: str
    invoice_id: int | None
    service_ids: tuple[int, ...]


@dataclass(frozen=True)
class WhmcsClient:
    client_id: int
    status: str  # Active | Inactive | Closed
    email: str
    name: str


@dataclass(frozen=True)
class PayMethod:
    paymethod_id: int
    type: str  # CreditCard | BankAccount | RemoteCreditCard | RemoteBankAccount
    description: str


@dataclass(frozen=True)
class WhmcsService:
    service_id: int
    client_id: int
    order_id: int
    pid: int
    status: str  # Pending | Active | Suspended | Terminated | Cancelled
    custom_fields: dict[str, str] = field(default_factory=dict, hash=False)


class WhmcsPort(Protocol):
    """Billing as the fulfillment saga sees it. Every method may raise ``UpstreamUnavailable``,
    ``UpstreamTimeout`` or ``RateLimited`` (retryable), ``AuthenticationFailed`` and
    ``InvalidPayload`` (a malformed WHMCS answer, code ``MALFORMED_RESPONSE``)."""

    async def get_client(self, client_id: int) -> WhmcsClient:
        """Read a client. Idempotent. Unknown id → ``MappingMissing`` (code WHMCS_CLIENT_NOT_FOUND)."""
        ...

    async def list_pay_methods(self, client_id: int) -> list[PayMethod]:
        """The client's pay methods; empty list when it has none (the PAYMENT_METHOD_MISSING gate).
        Idempotent. Unknown client → ``MappingMissing``."""
        ...

    async def add_order(
        self, client_id: int, lines: list[OrderLine], notes: str, payment_method: str = "mailin"
    ) -> AddedOrder:
        """Create a Pending order (no invoice, no email). **Not idempotent**: a retry after a
        timeout may create a second order, so callers search with ``find_order_by_note`` first.
        Unknown client or pid → ``MappingMissing``; closed client, bad payment method, empty cart
        → ``RejectedByUpstream``."""
        ...

    async def accept_order(self, order_id: int) -> None:
        """Accept a Pending order; it and its services become Active. Idempotent: accepting an
        already Active order succeeds. Unknown or Cancelled order → ``RejectedByUpstream``
        (code ORDER_NOT_PENDING)."""
        ...

    async def find_orders(self, client_id: int, status: str | None = None) -> list[WhmcsOrder]:
        """All orders of a client (optionally one status), oldest first, with notes. Idempotent."""
        ...

    async def find_order_by_note(self, client_id: int, marker: str) -> WhmcsOrder | None:
        """The newest order whose notes contain ``marker`` as a whole token (``sfOrderId=801…``
        does not match ``sfOrderId=801…X``), whatever its status; None if there is none."""
        ...

    async def cancel_order(self, order_id: int) -> None:
        """Cancel a Pending order. Idempotent: an already Cancelled order succeeds. An Active
        order → ``RejectedByUpstream`` (code ORDER_NOT_PENDING)."""
        ...

    async def list_services(self, client_id: int) -> list[WhmcsService]:
        """The client's services with custom fields by name. Idempotent."""
        ...

    async def update_service_custom_fields(self, service_id: int, fields: dict[str, str]) -> None:
        """Set service custom fields by name ("SIM Number", "Serial Number", "EID",
        "OpportunityId"). Idempotent (a set, not an append). Unknown service → ``MappingMissing``
        (WHMCS_SERVICE_NOT_FOUND); a name the product does not define → ``MappingMissing``
        (WHMCS_CUSTOM_FIELD_MISSING)."""
        ...
