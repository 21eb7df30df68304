"""translate(): one billing event per WHMCS hook, keyed by the WHMCS client id."""

from __future__ import annotations

import json
from typing import Any

import pytest

from events.billing import ClientChanged, InvoiceChanged, PaymentMethodChanged, ServiceChanged, WhmcsOrderChanged
from schemas.whmcs_webhook import parse_webhook
from workers.ingress.whmcs_webhooks import translate


def webhook(event: str, **data: Any) -> Any:
    return parse_webhook(json.dumps({"event": event, "occurred_at": "2027-01-15T08:00:00Z", "data": data}))


CASES: list[tuple[str, dict[str, Any], Any]] = [
    ("InvoicePaid", {"invoice_id": 9001}, InvoiceChanged(whmcs_client_id=12, invoice_id=9001, status="Paid")),
    (
        "InvoiceCreated",
        {"invoice_id": 9002, "status": "Unpaid"},
        InvoiceChanged(whmcs_client_id=12, invoice_id=9002, status="Unpaid"),
    ),
    ("AddInvoicePayment", {"invoice_id": 9003}, InvoiceChanged(whmcs_client_id=12, invoice_id=9003)),
    ("AcceptOrder", {"order_id": 5001}, WhmcsOrderChanged(whmcs_client_id=12, whmcs_order_id=5001, status="Active")),
    (
        "OrderPaid",
        {"order_id": 5002, "invoice_id": 9004, "status": "Paid"},
        WhmcsOrderChanged(whmcs_client_id=12, whmcs_order_id=5002, status="Paid"),
    ),
    (
        "AfterShoppingCartCheckout",
        {"order_id": 5003, "status": "Pending", "service_ids": [7001]},
        WhmcsOrderChanged(whmcs_client_id=12, whmcs_order_id=5003, status="Pending"),
    ),
    (
        "ServiceEdit",
        {"service_id": 7001, "status": "Active"},
        ServiceChanged(whmcs_client_id=12, service_id=7001, status="Active"),
    ),
    (
        "AfterModuleSuspend",
        {"service_id": 7002},
        ServiceChanged(whmcs_client_id=12, service_id=7002, status="Suspended"),
    ),
    ("ClientEdit", {"status": "Active"}, ClientChanged(whmcs_client_id=12)),
    ("ClientClose", {}, ClientChanged(whmcs_client_id=12)),
    ("CCUpdate", {"cardtype": "Visa"}, PaymentMethodChanged(whmcs_client_id=12)),
    (
        "PayMethodAdded",
        {"paymethod_id": 101, "type": "BankAccount"},
        PaymentMethodChanged(whmcs_client_id=12, paymethod_id=101),
    ),
    ("PayMethodRemoved", {"paymethod_id": 101}, PaymentMethodChanged(whmcs_client_id=12, paymethod_id=101)),
]


@pytest.mark.parametrize(("event", "data", "expected"), CASES, ids=[case[0] for case in CASES])
def test_each_hook_becomes_one_billing_event_keyed_by_client(event: str, data: dict[str, Any], expected: Any) -> None:
    [produced] = translate(webhook(event, client_id=12, **data), webhook_id="msg_1")
    assert produced == expected.model_copy(update={"webhook_id": "msg_1", "hook": event})
    assert produced.key() == "12"


def test_an_explicit_status_wins_over_the_one_the_hook_implies() -> None:
    [produced] = translate(webhook("InvoicePaid", client_id=3, invoice_id=4, status="Paid-ish"))
    assert isinstance(produced, InvoiceChanged)
    assert produced.status == "Paid-ish"


def test_vendor_extras_do_not_leak_into_the_event() -> None:
    [produced] = translate(webhook("InvoicePaid", client_id=3, invoice_id=4, total="15.95", email="a@example.com"))
    assert "15.95" not in produced.model_dump_json()
    assert produced.raw is None  # type: ignore[attr-defined]
