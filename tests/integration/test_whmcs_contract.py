"""``HttpWhmcs`` against the WHMCS sandbox over real HTTP: the shared contract, the wire format as
the sandbox records it, authentication, and the signed webhook emitter.

Contract: the same behaviour as ``FakeWhmcs`` (tests/contracts/whmcs.py); AddOrder goes out
form-encoded with ``pid[]``/``billingcycle[]``/``qty[]``, ``noinvoice`` and the notes marker;
custom fields travel as base64 PHP-serialized arrays keyed by field id; a refused secret is
``AuthenticationFailed``; every webhook carries a valid Standard Webhooks signature and a
receiver answering 500 is retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import pytest_asyncio
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from adapters.http import build_client
from adapters.whmcs import HttpWhmcs, OrderLine
from events.errors import AuthenticationFailed
from sandbox.common import serve
from sandbox.whmcs import DEFAULT_WEBHOOK_SECRET, WhmcsSandbox
from tests.contracts.support import Served, serving
from tests.contracts.whmcs import INTERNET, SATO, SIM_5GB, SUZUKI, TANAKA, WhmcsContract, marker

pytestmark = pytest.mark.integration


class SandboxWorld:
    def __init__(self, served: Served, http: httpx.AsyncClient) -> None:
        self.served, self.http = served, http

    async def add_client(self, client_id: int, *, status: str = "Active") -> None:
        body = {"clients": [{"id": client_id, "firstname": "Test", "lastname": "Client", "status": status}]}
        response = await self.http.post(f"{self.served.base_url}/_sandbox/seed", json=body)
        assert response.status_code == 201


@pytest_asyncio.fixture
async def served() -> AsyncIterator[Served]:
    async with serving(WhmcsSandbox()) as served:
        yield served


@pytest_asyncio.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with build_client(2.0, 5.0, 10) as client:
        yield client


def http_whmcs(served: Served, http: httpx.AsyncClient, secret: str = "sandbox-whmcs-secret") -> HttpWhmcs:
    return HttpWhmcs(http, f"{served.base_url}/includes/api.php", "fleet-api", secret)


class TestHttpWhmcs(WhmcsContract):
    @pytest.fixture
    def whmcs(self, served: Served, http: httpx.AsyncClient) -> HttpWhmcs:
        return http_whmcs(served, http)

    @pytest.fixture
    def whmcs_world(self, served: Served, http: httpx.AsyncClient) -> SandboxWorld:
        return SandboxWorld(served, http)


def sandbox_of(served: Served) -> WhmcsSandbox:
    assert isinstance(served.sandbox, WhmcsSandbox)
    return served.sandbox


# --- wire format, as the sandbox saw it -------------------------------------------------------
async def test_add_order_sends_the_documented_form_fields(served: Served, http: httpx.AsyncClient) -> None:
    note = marker()
    added = await http_whmcs(served, http).add_order(TANAKA, INTERNET, notes=note)
    (logged,) = [r for r in sandbox_of(served).requests if r.endpoint == "AddOrder"]
    form = parse_qs(logged.body)
    assert logged.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert form["pid[]"] == ["182", "242"] and form["billingcycle[]"] == ["monthly", "onetime"]
    assert (form["noinvoice"], form["noemail"], form["paymentmethod"]) == (["true"], ["true"], ["mailin"])
    order = sandbox_of(served).world.orders[added.order_id]
    assert (order.notes, order.invoiceid, order.status) == (note, 0, "Pending")


async def test_custom_fields_arrive_keyed_by_field_id(served: Served, http: httpx.AsyncClient) -> None:
    whmcs = http_whmcs(served, http)
    (service_id,) = (await whmcs.add_order(SUZUKI, [OrderLine(SIM_5GB, "monthly")], notes=marker())).service_ids
    await whmcs.update_service_custom_fields(service_id, {"SIM Number": "08012345678", "EID": "エイド"})
    stored = sandbox_of(served).world.services[service_id].customfields
    fields = sandbox_of(served).world.products[SIM_5GB].custom_fields
    assert {fields[fid]: value for fid, value in stored.items() if value} == {
        "SIM Number": "08012345678",
        "EID": "エイド",  # multi-byte: PHP string lengths count bytes
    }


async def test_legacy_username_password_fields_authenticate(served: Served, http: httpx.AsyncClient) -> None:
    data = {"action": "GetPayMethods", "username": "fleet-api", "password": "sandbox-whmcs-secret", "clientid": SATO}
    response = await http.post(f"{served.base_url}/includes/api.php", data=data)
    assert response.json() == {"result": "success", "clientid": SATO, "paymethods": []}


async def test_a_refused_secret_is_authentication_failed(served: Served, http: httpx.AsyncClient) -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        await http_whmcs(served, http, secret="wrong").get_client(TANAKA)
    assert caught.value.status == 403
    assert [r.status for r in sandbox_of(served).requests] == [403]


# --- webhooks --------------------------------------------------------------------------------
class Receiver:
    """A tiny aiohttp receiver that can be told to fail its first N requests with HTTP 500."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        if len(self.received) <= self.fail_first:
            return web.Response(status=500)
        self.arrived.set()
        return web.Response(status=204)


@pytest_asyncio.fixture
async def receiver_url() -> AsyncIterator[tuple[Receiver, str]]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/whmcs", receiver.handle)
    runner = await serve(app, "127.0.0.1", 0)
    try:
        yield receiver, f"http://127.0.0.1:{runner.addresses[0][1]}/hooks/whmcs"
    finally:
        await runner.cleanup()


async def pay_an_invoice(served: Served, http: httpx.AsyncClient) -> int:
    created = await http.post(f"{served.base_url}/_sandbox/invoices", json={"clientid": TANAKA, "total": 4800})
    invoice_id = int(created.json()["invoiceid"])
    paid = await http.post(f"{served.base_url}/_sandbox/invoices", json={"action": "pay", "invoiceid": invoice_id})
    assert paid.json()["status"] == "Paid"
    return invoice_id


async def test_invoice_payment_is_delivered_with_a_valid_signature(
    http: httpx.AsyncClient, receiver_url: tuple[Receiver, str]
) -> None:
    receiver, url = receiver_url
    async with serving(WhmcsSandbox(webhook_url=url, webhook_backoff_s=0.05)) as served:
        invoice_id = await pay_an_invoice(served, http)
        await asyncio.wait_for(sandbox_of(served).emitter.drain(), 5)
    bodies = [Webhook(DEFAULT_WEBHOOK_SECRET).verify(body, headers) for headers, body in receiver.received]
    # deliveries run concurrently, so they may arrive in either order
    assert sorted((b["event"], b["data"]["invoice_id"], b["data"]["status"]) for b in bodies) == [
        ("InvoiceCreated", invoice_id, "Unpaid"),
        ("InvoicePaid", invoice_id, "Paid"),
    ]
    assert all(b["data"]["client_id"] == TANAKA and b["occurred_at"] for b in bodies)


async def test_a_signature_with_another_secret_does_not_verify(
    http: httpx.AsyncClient, receiver_url: tuple[Receiver, str]
) -> None:
    receiver, url = receiver_url
    async with serving(WhmcsSandbox(webhook_url=url)) as served:
        await pay_an_invoice(served, http)
        await asyncio.wait_for(sandbox_of(served).emitter.drain(), 5)
    headers, body = receiver.received[0]
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + "b3RoZXItc2VjcmV0").verify(body, headers)


async def test_a_receiver_answering_500_is_retried_with_the_same_id(
    http: httpx.AsyncClient, receiver_url: tuple[Receiver, str]
) -> None:
    receiver, url = receiver_url
    receiver.fail_first = 2
    async with serving(WhmcsSandbox(webhook_url=url, webhook_backoff_s=0.05)) as served:
        await http.post(f"{served.base_url}/_sandbox/paymethods", json={"clientid": SATO, "type": "CreditCard"})
        await asyncio.wait_for(receiver.arrived.wait(), 5)
        state: dict[str, Any] = (await http.get(f"{served.base_url}/_sandbox/state")).json()
    attempts = [(d["event"], d["attempt"], d["status"], d["delivered"]) for d in state["webhook_deliveries"]]
    assert attempts == [
        ("CCUpdate", 1, 500, False),
        ("CCUpdate", 2, 500, False),
        ("CCUpdate", 3, 204, True),
    ]
    assert len({headers["webhook-id"] for headers, _ in receiver.received}) == 1


async def test_an_unreachable_receiver_gives_up_after_bounded_attempts(http: httpx.AsyncClient) -> None:
    sandbox = WhmcsSandbox(webhook_url="http://127.0.0.1:9/nowhere", webhook_max_attempts=3, webhook_backoff_s=0.01)
    async with serving(sandbox) as served:
        response = await http.post(f"{served.base_url}/_sandbox/clients", json={"clientid": TANAKA, "email": "t@x.jp"})
        assert response.status_code == 200  # the API answer never waits for delivery
        await asyncio.wait_for(sandbox.emitter.drain(), 5)
    deliveries = sandbox.emitter.deliveries
    assert [(d.event, d.attempt, d.delivered) for d in deliveries] == [("ClientEdit", n, False) for n in (1, 2, 3)]
    assert all(d.error for d in deliveries)
