"""WHMCS webhook bodies as our hook file sends them: ``{"event", "occurred_at", "data"}``.

WHMCS has no outbound webhooks; ``deploy/whmcs/fleet_webhooks.php`` (and the WHMCS sandbox that
plays it) turns WHMCS hook points into these bodies. ``event`` is the WHMCS hook name and is the
discriminator; ``data`` always carries ``client_id`` plus the id of the record the hook is about.

Tolerant of vendor drift: unknown keys in the body and in ``data`` are accepted and kept
(``extra="allow"``), so a hook file that sends more than we read never breaks ingestion. An
unknown ``event`` is an error (``union_tag_invalid``): we cannot say what it means.
Owns: the shape of the payload. Must not: hold business rules, do I/O, import our other packages.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, TypeAdapter


class _Vendor(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")


class _Data(_Vendor):
    #: WHMCS ids start at 1; a 0 would mean the hook file's lookup failed, and must not become a key
    client_id: PositiveInt
    status: str | None = None


class InvoiceData(_Data):
    invoice_id: PositiveInt
    order_id: int | None = None


class OrderData(_Data):
    order_id: PositiveInt
    invoice_id: int | None = None
    service_ids: list[int] = []


class ServiceData(_Data):
    service_id: PositiveInt


class ClientData(_Data):
    pass


class PayMethodData(_Data):
    #: absent for ``CCUpdate``: WHMCS passes the card details, not the pay method's id
    paymethod_id: int | None = None


class _Webhook(_Vendor):
    occurred_at: datetime


#: hook names per family, as in the WHMCS hook index (developers.whmcs.com/hooks/hook-index/), except
#: ``PayMethodAdded``/``PayMethodRemoved``: only the sandbox sends them (WHMCS has no such hook points)
InvoiceHook = Literal[
    "InvoiceCreated", "InvoicePaid", "InvoiceUnpaid", "InvoiceCancelled", "InvoiceRefunded", "AddInvoicePayment"
]
OrderHook = Literal[
    "AfterShoppingCartCheckout", "OrderPaid", "AcceptOrder", "PendingOrder", "CancelOrder", "FraudOrder"
]
ServiceHook = Literal[
    "ServiceEdit", "AfterModuleCreate", "AfterModuleSuspend", "AfterModuleUnsuspend", "AfterModuleTerminate"
]
ClientHook = Literal["ClientAdd", "ClientEdit", "ClientClose"]
PayMethodHook = Literal["CCUpdate", "PayMethodAdded", "PayMethodRemoved"]


class InvoiceWebhook(_Webhook):
    event: InvoiceHook
    data: InvoiceData


class OrderWebhook(_Webhook):
    event: OrderHook
    data: OrderData


class ServiceWebhook(_Webhook):
    event: ServiceHook
    data: ServiceData


class ClientWebhook(_Webhook):
    event: ClientHook
    data: ClientData


class PayMethodWebhook(_Webhook):
    event: PayMethodHook
    data: PayMethodData


WhmcsWebhook = Annotated[
    InvoiceWebhook | OrderWebhook | ServiceWebhook | ClientWebhook | PayMethodWebhook,
    Field(discriminator="event"),
]

#: validates JSON bytes straight into a model (pydantic-core parses and validates in one pass)
WEBHOOK_ADAPTER: TypeAdapter[WhmcsWebhook] = TypeAdapter(WhmcsWebhook)

#: every event name the receiver accepts
KNOWN_EVENTS: frozenset[str] = frozenset(
    name for hooks in (InvoiceHook, OrderHook, ServiceHook, ClientHook, PayMethodHook) for name in get_args(hooks)
)


def parse_webhook(body: bytes | str) -> WhmcsWebhook:
    """The typed webhook; raises ``pydantic.ValidationError`` (``union_tag_invalid`` = unknown event)."""
    return WEBHOOK_ADAPTER.validate_json(body)
