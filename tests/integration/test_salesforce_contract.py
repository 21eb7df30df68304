"""``HttpSalesforce`` against the Salesforce sandbox over real HTTP: the shared port contract, then
what only the real adapter does (tokens, change origin, limits header, transport failures).

The sandbox runs in-process on an ephemeral port (``SalesforceSandbox.start``); every test seeds
its own records, and faults / API usage are reset after each test so tests share one sandbox.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from adapters.salesforce import HttpSalesforce, JwtBearerAuth, RecordUpdate, SalesforcePort
from events.errors import (
    AuthenticationFailed,
    InvalidPayload,
    RateLimited,
    RejectedByUpstream,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from sandbox.salesforce import SalesforceSandbox
from tests.unit.test_salesforce_port import SalesforcePortContract

pytestmark = pytest.mark.integration

CLIENT_ID = "fleet-connected-app"
USERNAME = "integration@fleet.example"
CALL_OPTIONS_CLIENT = "fleet-contract-test"


@pytest.fixture(scope="module")
async def sandbox() -> AsyncIterator[SalesforceSandbox]:
    world = SalesforceSandbox(cometd_timeout_ms=1000)
    runner = await world.start()
    yield world
    await runner.cleanup()


@pytest.fixture(scope="module")
def private_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.fixture
async def client(sandbox: SalesforceSandbox) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=2.0)) as http:
        yield http
    async with httpx.AsyncClient(base_url=sandbox.url) as control:
        await control.delete("/_sandbox/faults")
        await control.post("/_sandbox/api-usage", json={"used": 0, "limit": sandbox.api_daily_limit})


@pytest.fixture
def auth(client: httpx.AsyncClient, sandbox: SalesforceSandbox, private_key_pem: str) -> JwtBearerAuth:
    return JwtBearerAuth(client, sandbox.url, CLIENT_ID, USERNAME, private_key_pem)


@pytest.fixture
def salesforce(client: httpx.AsyncClient, auth: JwtBearerAuth) -> HttpSalesforce:
    return HttpSalesforce(client, auth, "60.0", CALL_OPTIONS_CLIENT)


class SandboxUpstream:
    def __init__(self, port: SalesforcePort, client: httpx.AsyncClient, base_url: str) -> None:
        self.port = port
        self._client = client
        self._base = base_url

    async def control(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._client.request(method, self._base + path, **kwargs)
        assert response.status_code < 300, response.text
        return response.json()

    async def seed_order(self, customer: str, skus: list[str], **fields: Any) -> tuple[str, list[str]]:
        created = await self.control("POST", "/_sandbox/seed", json={"orders": [{"customer": customer, "lines": skus,
                                                                               **fields}]})  # fmt: skip
        order = created["orders"][0]
        return order["id"], [item["id"] for item in order["items"]]

    async def read(self, sobject: str, record_id: str) -> dict[str, Any]:
        return dict(await self.control("GET", f"/_sandbox/records/{sobject}/{record_id}"))

    async def fail_record(self, record_id: str, code: str) -> None:
        await self.control("POST", "/_sandbox/record-faults", json={"record_id": record_id, "statusCode": code})

    async def spend_api_budget(self) -> None:
        await self.control("POST", "/_sandbox/api-usage", json={"used": 15_000, "limit": 15_000})

    async def collection_requests(self) -> int:
        return len(await self.control("GET", "/_sandbox/requests", params={"endpoint": "composite.update"}))

    async def requests(self, endpoint: str) -> list[dict[str, Any]]:
        return list(await self.control("GET", "/_sandbox/requests", params={"endpoint": endpoint}))

    async def add_fault(self, **spec: Any) -> None:
        await self.control("POST", "/_sandbox/faults", json=spec)

    async def events(self, channel: str = "/data/OrderChangeEvent", after: int = 0) -> list[dict[str, Any]]:
        return list(await self.control("GET", "/_sandbox/events", params={"channel": channel, "after": after}))


@pytest.fixture
def world(salesforce: HttpSalesforce, client: httpx.AsyncClient, sandbox: SalesforceSandbox) -> SandboxUpstream:
    return SandboxUpstream(salesforce, client, sandbox.url)


class TestHttpSalesforceContract(SalesforcePortContract):
    """The shared contract, with the sandbox as the world behind the port."""

    @pytest.fixture
    def upstream(self, world: SandboxUpstream) -> SandboxUpstream:
        return world


# --- what only the HTTP adapter does ----------------------------------------------------------
async def test_a_write_emits_a_change_event_naming_our_client_with_only_the_changed_fields(
    world: SandboxUpstream, salesforce: HttpSalesforce
) -> None:
    order_id, _ = await world.seed_order("tanaka", ["INT-1G-GOLD"])
    last = (await world.events())[-1]["data"]["event"]["replayId"]

    await salesforce.update_record("Order", order_id, {"WHMCS_Order_ID__c": "8101", "Status": "Pending Review"})

    (event,) = await world.events(after=last)
    payload = event["data"]["payload"]
    header = payload.pop("ChangeEventHeader")
    assert header["changeOrigin"] == f"com/salesforce/api/rest/60.0;client={CALL_OPTIONS_CLIENT}"
    assert (header["changeType"], header["recordIds"]) == ("UPDATE", [order_id])
    # Status was written with its current value: not a change, so not in the event
    assert header["changedFields"] == ["WHMCS_Order_ID__c", "LastModifiedDate"]
    assert set(payload) == {"WHMCS_Order_ID__c", "LastModifiedDate"}
    (write,) = [r for r in await world.requests("sobjects.update") if order_id in r["path"]]
    assert write["headers"]["Sforce-Call-Options"] == f"client={CALL_OPTIONS_CLIENT}"


async def test_expired_tokens_are_replaced_transparently(
    world: SandboxUpstream, salesforce: HttpSalesforce, auth: JwtBearerAuth
) -> None:
    order_id, _ = await world.seed_order("tanaka", ["VPN-TOKYO"])
    await salesforce.get_order(order_id)
    tokens_before = len(await world.requests("oauth.token"))

    await world.control("POST", "/_sandbox/expire-tokens")
    order = await salesforce.get_order(order_id)

    assert order.id == order_id
    assert len(await world.requests("oauth.token")) == tokens_before + 1
    statuses = [r["status"] for r in await world.requests("sobjects.get") if order_id in r["path"]]
    assert statuses[-2:] == [401, 200]


async def test_concurrent_callers_share_one_token_refresh(
    world: SandboxUpstream, salesforce: HttpSalesforce, auth: JwtBearerAuth
) -> None:
    order_id, _ = await world.seed_order("suzuki", ["VPN-TOKYO"])
    await salesforce.get_order(order_id)
    grants_before = auth.grants

    await world.control("POST", "/_sandbox/expire-tokens")
    orders = await asyncio.gather(*(salesforce.get_order(order_id) for _ in range(8)))

    assert {o.id for o in orders} == {order_id}
    assert auth.grants == grants_before + 1


async def test_a_refused_login_is_an_authentication_failure(
    client: httpx.AsyncClient, sandbox: SalesforceSandbox, private_key_pem: str
) -> None:
    auth = JwtBearerAuth(client, sandbox.url, "not-our-app", USERNAME, private_key_pem)

    with pytest.raises(AuthenticationFailed) as caught:
        await HttpSalesforce(client, auth).get_order("8015g00000001001AA")

    assert caught.value.code == "invalid_client_id" and not caught.value.retriable


async def test_429_with_retry_after_is_rate_limited_for_that_long(
    world: SandboxUpstream, salesforce: HttpSalesforce
) -> None:
    order_id, _ = await world.seed_order("tanaka", ["VPN-TOKYO"])
    await world.add_fault(endpoint="sobjects.get", kind="error", status=429, retry_after=7, times=1)

    with pytest.raises(RateLimited) as caught:
        await salesforce.get_order(order_id)

    assert caught.value.retry_after == 7 and caught.value.status == 429


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ({"kind": "error", "status": 503}, UpstreamUnavailable),
        ({"kind": "error", "status": 500}, UpstreamUnavailable),
        ({"kind": "drop"}, UpstreamUnavailable),
        ({"kind": "timeout", "hold_s": 5}, UpstreamTimeout),
    ],
    ids=["503", "500", "dropped-connection", "read-timeout"],
)
async def test_server_trouble_is_retryable(
    world: SandboxUpstream, salesforce: HttpSalesforce, fault: dict[str, Any], error: type[Exception]
) -> None:
    order_id, _ = await world.seed_order("tanaka", ["VPN-TOKYO"])
    await world.add_fault(endpoint="sobjects.update", times=1, **fault)

    with pytest.raises(error) as caught:
        await salesforce.update_record("Order", order_id, {"WHMCS_Order_ID__c": "1"})

    assert caught.value.retriable  # type: ignore[attr-defined]


async def test_a_malformed_answer_is_permanent_and_names_the_call(
    world: SandboxUpstream, salesforce: HttpSalesforce
) -> None:
    order_id, _ = await world.seed_order("tanaka", ["VPN-TOKYO"])
    await world.add_fault(endpoint="sobjects.get", kind="malformed", times=1)

    with pytest.raises(InvalidPayload) as caught:
        await salesforce.get_order(order_id)

    assert caught.value.code == "MALFORMED_RESPONSE" and not caught.value.retriable
    assert "GET /sobjects/Order/{id}" in str(caught.value)


@pytest.mark.parametrize(
    ("fields", "fault", "error", "code"),
    [
        ({"No_Such_Field__c": 1}, None, RejectedByUpstream, "INVALID_FIELD"),
        ({"OrderNumber": "1"}, None, RejectedByUpstream, "INVALID_FIELD_FOR_INSERT_UPDATE"),
        ({"Status": "Approved"}, "FIELD_CUSTOM_VALIDATION_EXCEPTION", RejectedByUpstream,
         "FIELD_CUSTOM_VALIDATION_EXCEPTION"),
        ({"Status": "Approved"}, "UNABLE_TO_LOCK_ROW", UpstreamUnavailable, "UNABLE_TO_LOCK_ROW"),
    ],
    ids=["unknown-field", "read-only-field", "validation-rule", "row-lock"],
)  # fmt: skip
async def test_single_record_write_errors_map_by_error_code(
    world: SandboxUpstream,
    salesforce: HttpSalesforce,
    fields: dict[str, Any],
    fault: str | None,
    error: type[Exception],
    code: str,
) -> None:
    order_id, _ = await world.seed_order("tanaka", ["VPN-TOKYO"])
    if fault:
        await world.fail_record(order_id, fault)

    with pytest.raises(error) as caught:
        await salesforce.update_record("Order", order_id, fields)

    assert caught.value.code == code  # type: ignore[attr-defined]


async def test_a_malformed_query_is_rejected(salesforce: HttpSalesforce) -> None:
    with pytest.raises(RejectedByUpstream) as caught:
        await salesforce.query("SELEKT Id FROM Order")

    assert caught.value.code == "MALFORMED_QUERY"


async def test_every_answer_updates_the_api_usage_and_calls_the_gauge(
    world: SandboxUpstream, client: httpx.AsyncClient, auth: JwtBearerAuth
) -> None:
    seen: list[tuple[int, int]] = []
    salesforce = HttpSalesforce(client, auth, on_api_usage=lambda used, limit: seen.append((used, limit)))
    order_id, _ = await world.seed_order("tanaka", ["VPN-TOKYO"])
    await world.control("POST", "/_sandbox/api-usage", json={"used": 41})

    await salesforce.get_order(order_id)
    with pytest.raises(RejectedByUpstream):
        await salesforce.get_order("8015g00000999999AA")

    assert seen == [(42, 15_000), (43, 15_000)]
    assert salesforce.api_usage() == (43, 15_000)


async def test_query_follows_next_records_url_across_pages(
    world: SandboxUpstream, salesforce: HttpSalesforce, sandbox: SalesforceSandbox
) -> None:
    order_id, line_ids = await world.seed_order("tanaka", ["INT-HIKARI-DENWA"] * 7)
    sandbox.rest.query_batch_size = 3
    try:
        rows = await salesforce.query(f"SELECT Id FROM OrderItem WHERE OrderId = '{order_id}' ORDER BY Id")
    finally:
        sandbox.rest.query_batch_size = 2000

    assert [r["Id"] for r in rows] == sorted(line_ids)
    assert len([r for r in await world.requests("query") if r["path"].count("/query/")]) >= 2


async def test_collection_updates_send_call_options_and_one_transaction(
    world: SandboxUpstream, salesforce: HttpSalesforce
) -> None:
    """All records of one collection request commit in one transaction (same transactionKey)."""
    _, line_ids = await world.seed_order("tanaka", ["INT-1G-GOLD", "INT-INSTALL-SINGLE"])
    last = (await world.events("/data/OrderItemChangeEvent"))[-1]["data"]["event"]["replayId"]

    await salesforce.update_records([RecordUpdate("OrderItem", i, {"WHMCS_Service_ID__c": "77"}) for i in line_ids])

    events = await world.events("/data/OrderItemChangeEvent", after=last)
    headers = [e["data"]["payload"]["ChangeEventHeader"] for e in events]
    assert [h["recordIds"] for h in headers] == [[i] for i in line_ids]
    assert len({h["transactionKey"] for h in headers}) == 1
    assert [h["sequenceNumber"] for h in headers] == [1, 2]
    assert all(h["changeOrigin"].endswith(f";client={CALL_OPTIONS_CLIENT}") for h in headers)


async def test_a_bulk_read_of_many_orders_is_one_query_with_the_lines_as_a_subquery(
    world: SandboxUpstream, salesforce: HttpSalesforce
) -> None:
    orders = [await world.seed_order("tanaka", ["INT-1G-GOLD", "INT-INSTALL-SINGLE"]) for _ in range(3)]
    queries_before = len(await world.requests("query"))

    found = await salesforce.get_orders_with_items([order_id for order_id, _ in orders])

    assert {r.order.id: sorted(i.id for i in r.items) for r in found} == {o: sorted(lines) for o, lines in orders}
    queries = await world.requests("query")
    assert len(queries) == queries_before + 1
    assert "FROM OrderItems" in queries[-1]["query"]["q"]
