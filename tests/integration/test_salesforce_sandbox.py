"""The Salesforce sandbox over real HTTP, without our adapter: its wire formats and its control API.

Pins what the sandbox promises to imitate (token endpoint, REST errors and headers, SOQL subset,
sObject Collections limits, the Bayeux endpoint's errors) and the change events each control
operation emits. Raw httpx on purpose, so an adapter bug cannot hide a sandbox bug.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sandbox.salesforce import SalesforceSandbox

pytestmark = pytest.mark.integration

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
V = "/services/data/v60.0"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
async def sandbox(key: rsa.RSAPrivateKey) -> AsyncIterator[SalesforceSandbox]:
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    world = SalesforceSandbox(cometd_timeout_ms=500, jwt_public_key_pem=public.decode())
    runner = await world.start()
    yield world
    await runner.cleanup()


@pytest.fixture
async def http(sandbox: SalesforceSandbox) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sandbox.url, timeout=5) as client:
        yield client


def assertion(key: rsa.RSAPrivateKey, **claims: Any) -> str:
    body = {"iss": "fleet-connected-app", "sub": "integration@fleet.example", "aud": "https://login.salesforce.com",
            "exp": int(time.time()) + 120, **claims}  # fmt: skip
    return jwt.encode(body, key, algorithm="RS256")


@pytest.fixture
async def token(http: httpx.AsyncClient, key: rsa.RSAPrivateKey) -> str:
    response = await http.post("/services/oauth2/token", data={"grant_type": JWT_GRANT, "assertion": assertion(key)})
    return str(response.json()["access_token"])


@pytest.fixture
def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Sforce-Call-Options": "client=raw-test"}


async def seed(http: httpx.AsyncClient, **order: Any) -> dict[str, Any]:
    response = await http.post("/_sandbox/seed", json={"orders": [{"customer": "tanaka", "lines": ["INT-1G-GOLD"],
                                                                   **order}]})  # fmt: skip
    assert response.status_code == 201, response.text
    return dict(response.json()["orders"][0])


async def events_after(
    http: httpx.AsyncClient, after: int, channel: str = "/data/OrderChangeEvent"
) -> list[dict[str, Any]]:
    response = await http.get("/_sandbox/events", params={"channel": channel, "after": after})
    return [m["data"]["payload"] for m in response.json()]


async def last_replay_id(http: httpx.AsyncClient) -> int:
    return int((await http.get("/_sandbox/state")).json()["last_replay_id"])


# --- OAuth ------------------------------------------------------------------------------------
async def test_the_jwt_bearer_grant_answers_like_salesforce(http: httpx.AsyncClient, key: rsa.RSAPrivateKey,
                                                            sandbox: SalesforceSandbox) -> None:  # fmt: skip
    response = await http.post("/services/oauth2/token", data={"grant_type": JWT_GRANT, "assertion": assertion(key)})

    body = response.json()
    assert response.status_code == 200
    assert set(body) >= {"access_token", "instance_url", "id", "token_type", "issued_at", "signature"}
    assert body["instance_url"] == sandbox.url and body["token_type"] == "Bearer"


@pytest.mark.parametrize(
    ("claims", "signer", "error", "description"),
    [
        ({"aud": "https://evil.example"}, None, "invalid_grant", "audience is invalid"),
        ({"iss": "someone-else"}, None, "invalid_client_id", "client identifier invalid"),
        ({"exp": 1}, None, "invalid_grant", "expired authorization code"),
        ({"sub": "nobody@example.com"}, None, "invalid_grant", "user hasn't approved this consumer"),
        ({}, "other-key", "invalid_grant", "invalid assertion"),
    ],
    ids=["audience", "issuer", "expired", "subject", "signature"],
)
async def test_bad_assertions_are_refused(http: httpx.AsyncClient, key: rsa.RSAPrivateKey, claims: dict[str, Any],
                                          signer: str | None, error: str, description: str) -> None:  # fmt: skip
    signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if signer else key

    form = {"grant_type": JWT_GRANT, "assertion": assertion(signing_key, **claims)}
    response = await http.post("/services/oauth2/token", data=form)

    assert response.status_code == 400
    assert response.json() == {"error": error, "error_description": description}


async def test_refresh_and_password_grants(http: httpx.AsyncClient) -> None:
    app = {"client_id": "fleet-connected-app", "client_secret": "sandbox-client-secret"}
    refreshed = await http.post(
        "/services/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": "sandbox-refresh-token", **app}
    )
    logged_in = await http.post(
        "/services/oauth2/token",
        data={"grant_type": "password", **app, "username": "integration@fleet.example", "password": "sandbox-password"},
    )
    wrong = await http.post("/services/oauth2/token", data={"grant_type": "password", **app,
                            "username": "integration@fleet.example", "password": "nope"})  # fmt: skip

    assert refreshed.status_code == logged_in.status_code == 200
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"


# --- REST -------------------------------------------------------------------------------------
async def test_rest_needs_a_live_token_and_reports_usage_on_every_answer(
    http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    order = await seed(http)
    good = await http.get(f"{V}/sobjects/Order/{order['id']}", headers=headers)
    await http.post("/_sandbox/expire-tokens")
    dead = await http.get(f"{V}/sobjects/Order/{order['id']}", headers=headers)

    assert good.status_code == 200 and good.json()["attributes"]["type"] == "Order"
    assert dead.status_code == 401
    assert dead.json() == [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
    assert good.headers["Sforce-Limit-Info"].startswith("api-usage=")
    assert "Sforce-Limit-Info" in dead.headers


async def test_the_daily_budget_ends_in_request_limit_exceeded(
    http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    order = await seed(http)
    await http.post("/_sandbox/api-usage", json={"used": 15_000})
    try:
        response = await http.get(f"{V}/sobjects/Order/{order['id']}", headers=headers)
    finally:
        await http.post("/_sandbox/api-usage", json={"used": 0})

    assert response.status_code == 403
    assert response.json() == [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
    assert response.headers["Sforce-Limit-Info"] == "api-usage=15001/15000"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("GET", "/sobjects/Order/8015g00000999999AA", None, 404, "NOT_FOUND"),
        ("PATCH", "/sobjects/Order/{id}", {"Bogus__c": 1}, 400, "INVALID_FIELD"),
        ("PATCH", "/sobjects/Order/{id}", {"TotalAmount": 1}, 400, "INVALID_FIELD_FOR_INSERT_UPDATE"),
        ("GET", "/query?q=SELECT+Id+FROM+Order+WHERE", None, 400, "MALFORMED_QUERY"),
        ("GET", "/query?q=SELECT+Id+FROM+Nope__c", None, 400, "INVALID_TYPE"),
    ],
    ids=["unknown-id", "unknown-field", "read-only", "malformed-soql", "unknown-object"],
)
async def test_rest_errors_use_salesforce_codes(http: httpx.AsyncClient, headers: dict[str, str], method: str,
                                                path: str, body: Any, status: int, code: str) -> None:  # fmt: skip
    order = await seed(http)

    response = await http.request(method, V + path.format(id=order["id"]), json=body, headers=headers)

    assert response.status_code == status
    assert response.json()[0]["errorCode"] == code


async def test_a_collection_of_more_than_200_records_is_refused(
    http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    order = await seed(http)
    records = [{"attributes": {"type": "Order"}, "id": order["id"], "Status": "Draft"}] * 201

    response = await http.patch(
        f"{V}/composite/sobjects", json={"allOrNone": False, "records": records}, headers=headers
    )

    assert response.status_code == 400 and response.json()[0]["errorCode"] == "EXCEEDED_ID_LIMIT"


async def test_a_collection_reports_a_read_only_field_per_record(
    http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    order = await seed(http)
    records = [{"attributes": {"type": "Order"}, "id": order["id"], "OrderNumber": "x"}]

    response = await http.patch(f"{V}/composite/sobjects", json={"records": records}, headers=headers)

    (result,) = response.json()
    assert response.status_code == 200 and result["success"] is False
    assert result["errors"][0]["statusCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"


# --- control API → change events --------------------------------------------------------------
async def test_seeding_an_order_emits_create_events_from_the_portal(http: httpx.AsyncClient) -> None:
    before = await last_replay_id(http)

    order = await seed(http, Type="SIM", SIM_Type__c="eSIM", lines=["SIM-D-20GB", "SIM-ACTIVATION"])

    (created,) = await events_after(http, before)
    items = await events_after(http, before, "/data/OrderItemChangeEvent")
    header = created["ChangeEventHeader"]
    assert (header["changeType"], header["recordIds"]) == ("CREATE", [order["id"]])
    assert header["changeOrigin"].endswith(";client=customer-portal")
    assert created["Status"] == "Pending Review" and created["SIM_Type__c"] == "eSIM"
    assert [i["ChangeEventHeader"]["recordIds"][0] for i in items] == [i["id"] for i in order["items"]]
    assert {i["ChangeEventHeader"]["transactionKey"] for i in items} == {header["transactionKey"]}


async def test_approval_is_one_agent_change_the_flow_completes_in_the_same_transaction(http: httpx.AsyncClient) -> None:
    order = await seed(http)
    before = await last_replay_id(http)

    await http.post(f"/_sandbox/orders/{order['id']}/approve", json={})
    await http.post(f"/_sandbox/orders/{order['id']}/approve", json={"status": "Processed", "activation_status": None})

    approved, processed = await events_after(http, before)
    assert approved["ChangeEventHeader"]["changeOrigin"] == ""
    assert approved["ChangeEventHeader"]["changedFields"] == ["Status", "Activation_Status__c", "LastModifiedDate"]
    assert (approved["Status"], approved["Activation_Status__c"]) == ("Approved", "Activating")
    assert processed["ChangeEventHeader"]["changedFields"] == ["Status", "LastModifiedDate"]


async def test_an_agent_edit_has_an_empty_change_origin(http: httpx.AsyncClient) -> None:
    order = await seed(http)
    before = await last_replay_id(http)

    response = await http.patch(f"/_sandbox/records/Order/{order['id']}", json={"BillingCity": "Minato-ku"})

    (edit,) = await events_after(http, before)
    assert response.json()["BillingCity"] == "Minato-ku"
    assert edit["ChangeEventHeader"]["changeOrigin"] == ""
    assert edit["ChangeEventHeader"]["changedFields"] == ["BillingAddress.City", "LastModifiedDate"]
    assert edit["BillingAddress"] == {"City": "Minato-ku"}


async def test_gap_overflow_and_merged_events(http: httpx.AsyncClient) -> None:
    first, second = await seed(http), await seed(http)
    before = await last_replay_id(http)

    await http.post("/_sandbox/events/gap", json={"entity": "Order", "record_ids": [first["id"]],
                                                  "fields": {"Status": "Approved"}})  # fmt: skip
    await http.post("/_sandbox/events/overflow", json={"entity": "Order"})
    await http.post("/_sandbox/events/merged", json={"entity": "Order", "record_ids": [first["id"], second["id"]],
                                                     "fields": {"Activation_Status__c": "Activated"}})  # fmt: skip

    gap, overflow, merged = await events_after(http, before)
    assert gap == {"ChangeEventHeader": {**gap["ChangeEventHeader"], "changeType": "GAP_UPDATE"}}
    assert gap["ChangeEventHeader"]["recordIds"] == [first["id"]]
    assert overflow["ChangeEventHeader"]["changeType"] == "GAP_OVERFLOW"
    assert overflow["ChangeEventHeader"]["recordIds"] == []
    assert merged["ChangeEventHeader"]["recordIds"] == [first["id"], second["id"]]
    assert merged["Activation_Status__c"] == "Activated"
    status = (await http.get(f"/_sandbox/records/Order/{first['id']}")).json()["Status"]
    assert status == "Approved"  # the gap's change happened, silently


async def test_a_platform_event_is_published_on_its_channel(http: httpx.AsyncClient) -> None:
    before = await last_replay_id(http)

    await http.post("/_sandbox/events/platform", json={"fields": {"Account_Id__c": "0015g00000000001AA",
                                                                  "Eligibility_Status__c": "Eligible"}})  # fmt: skip

    (event,) = await events_after(http, before, "/event/Account_Eligibility_Update__e")
    assert event["Account_Id__c"] == "0015g00000000001AA" and "CreatedDate" in event


# --- the Bayeux endpoint without a client library ---------------------------------------------
class Bayeux:
    """Just enough Bayeux to check the endpoint's replies (ids, cookies, errors)."""

    def __init__(self, client: httpx.AsyncClient, token: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}
        self.client_id: str | None = None

    async def send(self, *messages: dict[str, Any]) -> httpx.Response:
        body = [{"clientId": self.client_id, **m} if self.client_id else m for m in messages]
        return await self.client.post("/cometd/60.0", json=body, headers=self.headers)

    async def handshake(self) -> dict[str, Any]:
        response = await self.send({"channel": "/meta/handshake", "version": "1.0", "id": "1",
                                    "supportedConnectionTypes": ["long-polling"]})  # fmt: skip
        reply = response.json()[0]
        self.client_id = reply["clientId"]
        return dict(reply)

    async def subscribe(self, channel: str, replay: int) -> dict[str, Any]:
        response = await self.send({"channel": "/meta/subscribe", "subscription": channel, "id": "2",
                                    "ext": {"replay": {channel: replay}}})  # fmt: skip
        return dict(response.json()[0])


async def test_the_handshake_sets_the_session_cookie_and_advises_long_polling(
    http: httpx.AsyncClient, token: str
) -> None:
    bayeux = Bayeux(http, token)

    reply = await bayeux.handshake()

    assert reply["successful"] and reply["supportedConnectionTypes"] == ["long-polling"]
    assert reply["ext"]["replay"] is True and reply["advice"]["reconnect"] == "retry"
    assert "BAYEUX_BROWSER" in http.cookies


async def test_a_subscription_from_a_replay_id_older_than_retention_fails_with_salesforce_text(
    http: httpx.AsyncClient, token: str, sandbox: SalesforceSandbox
) -> None:
    bayeux = Bayeux(http, token)
    await bayeux.handshake()
    stored = await last_replay_id(http)  # a subscriber saw everything up to here, then went away
    sandbox.bus.retention, retention = 2, sandbox.bus.retention
    try:
        for _ in range(3):  # three more orders: the first of them leaves the two-event window
            await seed(http)
        reply = await bayeux.subscribe("/data/OrderChangeEvent", stored)
    finally:
        sandbox.bus.retention = retention

    assert reply["successful"] is False and reply["subscription"] == "/data/OrderChangeEvent"
    assert reply["error"] == (
        f"400::The replayId {{{stored}}} you provided was invalid.  Please provide a valid ID, "
        "-2 to replay all events, or -1 to replay only new events."
    )


async def test_a_forgotten_client_is_told_to_handshake_again(http: httpx.AsyncClient, token: str) -> None:
    bayeux = Bayeux(http, token)
    await bayeux.handshake()
    await http.post("/_sandbox/drop-connections")

    reply = (await bayeux.send({"channel": "/meta/connect", "connectionType": "long-polling", "id": "3"})).json()[0]

    assert reply["error"] == "403::Unknown client" and reply["advice"]["reconnect"] == "handshake"


async def test_bad_tokens_get_http_401_with_the_documented_bayeux_errors(http: httpx.AsyncClient) -> None:
    denied = await Bayeux(http, "not-a-token").send({"channel": "/meta/handshake", "version": "1.0", "id": "1"})
    anonymous = await http.post("/cometd/60.0", json=[{"channel": "/meta/connect", "clientId": "x", "id": "2"}])

    assert denied.status_code == 401
    assert denied.json()[0]["error"] == "403::Handshake denied"
    assert denied.json()[0]["ext"]["sfdc"]["failureReason"] == "401::Authentication invalid"
    assert anonymous.status_code == 401 and anonymous.json()[0]["error"] == "401::Request requires authentication"


async def test_without_the_session_cookie_the_connect_is_refused(sandbox: SalesforceSandbox, token: str) -> None:
    """What a client on 127.0.0.1 sees: aiohttp keeps no cookies for IP hosts (infra notes)."""
    async with httpx.AsyncClient(base_url=sandbox.url, timeout=5) as cookieless:
        bayeux = Bayeux(cookieless, token)
        await bayeux.handshake()
        cookieless.cookies.clear()

        reply = (await bayeux.send({"channel": "/meta/connect", "connectionType": "long-polling", "id": "3"})).json()[0]

    assert reply["successful"] is False
    assert reply["error"].startswith(f"400::Client {bayeux.client_id} has established a session, but no BAYEUX_BROWSER")
