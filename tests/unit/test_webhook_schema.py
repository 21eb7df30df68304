"""The WHMCS webhook schema: every hook we accept parses, vendor extras are kept, the unknown is refused.

Also a contract test against the WHMCS sandbox: every webhook its emitter produces (driven through
its own API and control routes, in process, nothing delivered) must parse.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import ValidationError

from schemas.whmcs_webhook import (
    KNOWN_EVENTS,
    ClientWebhook,
    InvoiceWebhook,
    OrderWebhook,
    PayMethodWebhook,
    ServiceWebhook,
    parse_webhook,
)

#: the record id key each family carries in ``data``
ID_KEY = {
    InvoiceWebhook: "invoice_id",
    OrderWebhook: "order_id",
    ServiceWebhook: "service_id",
    PayMethodWebhook: "paymethod_id",
    ClientWebhook: None,
}
FAMILY = {name: model for model in ID_KEY for name in model.model_fields["event"].annotation.__args__}  # type: ignore[union-attr]


def body(event: str, **data: Any) -> bytes:
    return json.dumps({"event": event, "occurred_at": "2027-01-15T08:00:00+09:00", "data": data}).encode()


def sample(event: str) -> bytes:
    id_key = ID_KEY[FAMILY[event]]
    return body(event, client_id=42, status="Active", **({id_key: 7} if id_key else {}))


def test_every_known_event_belongs_to_exactly_one_family() -> None:
    assert set(FAMILY) == KNOWN_EVENTS


@pytest.mark.parametrize("event", sorted(KNOWN_EVENTS))
def test_every_known_event_parses_into_its_family(event: str) -> None:
    parsed = parse_webhook(sample(event))
    assert isinstance(parsed, FAMILY[event])
    assert (parsed.event, parsed.data.client_id) == (event, 42)
    assert parsed.occurred_at.utcoffset() is not None


def test_vendor_extras_are_tolerated_and_kept() -> None:
    raw = json.loads(body("InvoicePaid", client_id=1, invoice_id=2, total="15.95", currency={"code": "JPY"}))
    raw["whmcs_version"] = "8.13"
    parsed = parse_webhook(json.dumps(raw))
    assert parsed.data.model_extra == {"total": "15.95", "currency": {"code": "JPY"}}
    assert parsed.model_extra == {"whmcs_version": "8.13"}


def test_ids_sent_as_strings_by_php_are_accepted() -> None:
    parsed = parse_webhook(body("AcceptOrder", client_id="12", order_id="5001"))
    assert isinstance(parsed, OrderWebhook)
    assert (parsed.data.client_id, parsed.data.order_id) == (12, 5001)


def errors(raw: bytes | str) -> list[tuple[str, tuple[int | str, ...]]]:
    with pytest.raises(ValidationError) as caught:
        parse_webhook(raw)
    return [(e["type"], tuple(e["loc"])) for e in caught.value.errors()]


def test_an_unknown_event_is_refused_by_name() -> None:
    assert errors(body("InvoiceTeleported", client_id=1, invoice_id=2))[0][0] == "union_tag_invalid"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"{", "json_invalid"),
        (b"\xff\xfe", "json_invalid"),
        (b"[]", "dict_type"),
        (b'{"occurred_at": "2027-01-15T08:00:00Z", "data": {}}', "union_tag_not_found"),
        (body("InvoicePaid", client_id=1), "missing"),  # no invoice_id
        (body("InvoicePaid", client_id=0, invoice_id=2), "greater_than"),  # a failed lookup, not a client
        (body("ClientEdit", client_id="abc"), "int_parsing"),
    ],
)
def test_malformed_bodies_are_refused(raw: bytes, expected: str) -> None:
    assert errors(raw)[0][0] == expected


def test_occurred_at_is_required() -> None:
    raw = json.dumps({"event": "ClientEdit", "data": {"client_id": 1}})
    assert ("missing", ("ClientEdit", "occurred_at")) in errors(raw)


async def test_every_webhook_the_whmcs_sandbox_emits_parses() -> None:
    """Contract with ``sandbox/whmcs``: drive each state change and parse what its emitter recorded."""
    from sandbox.whmcs import WhmcsSandbox

    sandbox = WhmcsSandbox(webhook_url=None)
    async with TestClient(TestServer(sandbox.app())) as client:
        await _drive_sandbox(client, sandbox)
    emitted = sandbox.emitter.events
    assert {e["event"] for e in emitted} >= SANDBOX_EVENTS
    for event in emitted:
        message = {k: v for k, v in event.items() if k != "webhook_id"}
        parsed = parse_webhook(json.dumps(message))
        assert parsed.event == event["event"]


SANDBOX_EVENTS = {
    "AfterShoppingCartCheckout",
    "InvoiceCreated",
    "InvoicePaid",
    "OrderPaid",
    "AcceptOrder",
    "ServiceEdit",
    "ClientEdit",
    "ClientClose",
    "CCUpdate",  # a card stored or removed; a bank account fires nothing, as in production
    "ClientAdd",
}


async def _drive_sandbox(client: TestClient[web.Request, web.Application], sandbox: Any) -> None:
    client_id = next(iter(sandbox.world.clients))
    pid = next(iter(sandbox.world.products))
    auth = {"identifier": sandbox.identifier, "secret": sandbox.secret, "responsetype": "json"}
    add_order = {**auth, "action": "AddOrder", "clientid": client_id, "paymentmethod": "stripe", "pid[0]": pid}
    order = await (await client.post("/includes/api.php", data=add_order)).json()
    service_id = int(str(order["serviceids"]).split(",")[0])
    await client.post("/_sandbox/invoices", json={"action": "pay", "invoiceid": order["invoiceid"]})
    await client.post("/includes/api.php", data={**auth, "action": "AcceptOrder", "orderid": order["orderid"]})
    await client.post(
        "/includes/api.php", data={**auth, "action": "UpdateClientProduct", "serviceid": service_id, "status": "Active"}
    )
    await client.post("/_sandbox/clients", json={"clientid": client_id, "status": "Closed"})
    method = await (
        await client.post("/_sandbox/paymethods", json={"clientid": client_id, "type": "CreditCard"})
    ).json()
    await client.delete(f"/_sandbox/paymethods/{method['id']}")
    await client.post("/_sandbox/seed", json={"clients": [{"id": 990_001, "firstname": "Test", "lastname": "Seed"}]})
