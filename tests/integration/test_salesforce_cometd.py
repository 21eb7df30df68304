"""The real aiosfstream-ng client (through ``FleetStreamingClient``) against the sandbox's CometD endpoint.

Covers what the CDC ingress will rely on: new-events and replay-all subscriptions, resuming after
a stored replay id, the documented error when that id left the retention window, re-handshake
after the server forgets the client, surviving a dropped connection (the aiocometd-ng fix), token
expiry handled through the fleet's shared token source, and auth failures surfacing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from aiosfstream_ng.client import Client
from aiosfstream_ng.exceptions import AuthenticationError, ServerError, TransportTimeoutError
from aiosfstream_ng.replay import ReplayMarker, ReplayOption
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from adapters.salesforce import AccessToken, HttpSalesforce, JwtBearerAuth
from adapters.salesforce_stream import FleetAuthenticator, FleetStreamingClient
from sandbox.salesforce import SalesforceSandbox
from schemas.salesforce_cdc import CHANGE_EVENT_MESSAGE, ORDER_CHANNEL, AccountEligibilityMessage

pytestmark = pytest.mark.integration

CLIENT = "fleet-cometd-test"
Message = dict[str, Any]


@pytest.fixture(scope="module")
def private_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.fixture(scope="module")
async def sandbox() -> AsyncIterator[SalesforceSandbox]:
    world = SalesforceSandbox(cometd_timeout_ms=1000)
    runner = await world.start()
    yield world
    await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


@pytest.fixture
def auth(http: httpx.AsyncClient, sandbox: SalesforceSandbox, private_key_pem: str) -> JwtBearerAuth:
    return JwtBearerAuth(http, sandbox.url, "fleet-connected-app", "integration@fleet.example", private_key_pem)


@pytest.fixture
def salesforce(http: httpx.AsyncClient, auth: JwtBearerAuth) -> HttpSalesforce:
    return HttpSalesforce(http, auth, "60.0", CLIENT)


async def control(http: httpx.AsyncClient, sandbox: SalesforceSandbox, method: str, path: str, **kw: Any) -> Any:
    response = await http.request(method, sandbox.url + path, **kw)
    assert response.status_code < 300, response.text
    return response.json()


async def seed_order(http: httpx.AsyncClient, sandbox: SalesforceSandbox) -> str:
    created = await control(http, sandbox, "POST", "/_sandbox/seed",
                            json={"orders": [{"customer": "suzuki", "lines": ["VPN-TOKYO"]}]})  # fmt: skip
    return str(created["orders"][0]["id"])


async def next_for(stream: Client, wanted: Callable[[Message], bool], timeout: float = 10) -> Message:
    """The next delivered message ``wanted`` accepts (other tests' events may be in the stream)."""

    async def scan() -> Message:
        while True:
            message: Message = await stream.receive()
            if wanted(message):
                return message

    return await asyncio.wait_for(scan(), timeout)


def about(record_id: str) -> Callable[[Message], bool]:
    return lambda m: record_id in m["data"]["payload"].get("ChangeEventHeader", {}).get("recordIds", [])


def stream_for(auth: Any, **kwargs: Any) -> FleetStreamingClient:
    return FleetStreamingClient(FleetAuthenticator(auth), connection_timeout=5, **kwargs)


async def test_a_rest_write_reaches_a_new_events_subscriber_with_a_complete_header(
    http: httpx.AsyncClient, sandbox: SalesforceSandbox, auth: JwtBearerAuth, salesforce: HttpSalesforce
) -> None:
    order_id = await seed_order(http, sandbox)
    async with stream_for(auth, replay=ReplayOption.NEW_EVENTS) as stream:
        await stream.subscribe(ORDER_CHANNEL)
        await salesforce.update_record("Order", order_id, {"Activation_Status__c": "Activating"})

        raw = await next_for(stream, about(order_id))

    message = CHANGE_EVENT_MESSAGE.validate_python(raw)
    header = message.header
    assert message.channel == ORDER_CHANNEL and header.change_type == "UPDATE"
    assert header.origin_client == CLIENT
    assert header.changed_fields == ["Activation_Status__c", "LastModifiedDate"]
    assert message.data.payload.changed_values().keys() == {"Activation_Status__c", "LastModifiedDate"}
    assert header.transaction_key and header.sequence_number == 1 and header.commit_number
    assert header.commit_user and header.commit_timestamp > 0
    assert raw["data"]["event"]["createdDate"] and raw["data"]["event"]["EventUuid"]


async def test_replay_all_delivers_the_retained_events(
    http: httpx.AsyncClient, sandbox: SalesforceSandbox, auth: JwtBearerAuth
) -> None:
    order_id = await seed_order(http, sandbox)

    async with stream_for(auth, replay=ReplayOption.ALL_EVENTS) as stream:
        await stream.subscribe(ORDER_CHANNEL)
        raw = await next_for(stream, about(order_id))

    assert raw["data"]["payload"]["ChangeEventHeader"]["changeType"] == "CREATE"


async def test_a_stored_replay_id_resumes_with_the_events_after_it(
    http: httpx.AsyncClient, sandbox: SalesforceSandbox, auth: JwtBearerAuth, salesforce: HttpSalesforce
) -> None:
    order_id = await seed_order(http, sandbox)
    await salesforce.update_record("Order", order_id, {"WHMCS_Order_ID__c": "1"})
    await salesforce.update_record("Order", order_id, {"WHMCS_Order_ID__c": "2"})
    mine = [m for m in await control(http, sandbox, "GET", "/_sandbox/events") if about(order_id)(m)]
    created, first, second = (m["data"]["event"] for m in mine)
    storage = {ORDER_CHANNEL: ReplayMarker(date=first["createdDate"], replay_id=first["replayId"])}

    async with stream_for(auth, replay=storage) as stream:
        await stream.subscribe(ORDER_CHANNEL)
        raw = await next_for(stream, lambda m: True)

    assert raw["data"]["event"]["replayId"] == second["replayId"]
    assert raw["data"]["payload"]["WHMCS_Order_ID__c"] == "2"
    assert storage[ORDER_CHANNEL].replay_id == second["replayId"]


async def test_a_replay_id_outside_retention_surfaces_the_salesforce_error(
    http: httpx.AsyncClient, private_key_pem: str
) -> None:
    small = SalesforceSandbox(cometd_timeout_ms=1000, retention=2)
    runner = await small.start()
    try:
        auth = JwtBearerAuth(http, small.url, "fleet-connected-app", "integration@fleet.example",
                             private_key_pem)  # fmt: skip
        for _ in range(4):
            await seed_order(http, small)
        storage = {ORDER_CHANNEL: ReplayMarker(date="2026-01-01T00:00:00.000Z", replay_id=1)}

        async with stream_for(auth, replay=storage) as stream:
            with pytest.raises(ServerError) as caught:
                await stream.subscribe(ORDER_CHANNEL)
        async with stream_for(auth, replay=dict(storage), replay_fallback=ReplayOption.NEW_EVENTS) as fallback:
            await fallback.subscribe(ORDER_CHANNEL)  # aiosfstream retries with -1 on the 400
            subscribed = fallback.subscriptions
    finally:
        await runner.cleanup()

    assert caught.value.error_code == 400
    assert caught.value.error == (
        "400::The replayId {1} you provided was invalid.  Please provide a valid ID, "
        "-2 to replay all events, or -1 to replay only new events."
    )
    assert subscribed == {ORDER_CHANNEL}


@pytest.mark.parametrize("mode", ["unknown-client", "abort"])
async def test_after_the_server_drops_its_clients_the_stream_handshakes_again_and_misses_nothing(
    http: httpx.AsyncClient, sandbox: SalesforceSandbox, auth: JwtBearerAuth, salesforce: HttpSalesforce, mode: str
) -> None:
    """``unknown-client``: the pending poll answers 403::Unknown client; ``abort``: the TCP connection
    dies (the path where aiocometd-ng's ``_wait_connection_timeout`` breaks on Python 3.11)."""
    order_id = await seed_order(http, sandbox)
    handshakes = len(await control(http, sandbox, "GET", "/_sandbox/requests", params={"endpoint": "cometd.handshake"}))
    async with stream_for(auth, replay={}) as stream:
        await stream.subscribe(ORDER_CHANNEL)
        await salesforce.update_record("Order", order_id, {"WHMCS_Order_ID__c": "before"})
        await next_for(stream, about(order_id))

        await control(http, sandbox, "POST", "/_sandbox/drop-connections", json={"mode": mode})
        await salesforce.update_record("Order", order_id, {"WHMCS_Order_ID__c": "after"})
        raw = await next_for(stream, about(order_id))

    assert raw["data"]["payload"]["WHMCS_Order_ID__c"] == "after"
    requests = await control(http, sandbox, "GET", "/_sandbox/requests", params={"endpoint": "cometd.handshake"})
    assert len(requests) >= handshakes + 2


async def test_the_unpatched_client_loses_the_stream_on_a_dropped_connection(
    http: httpx.AsyncClient, sandbox: SalesforceSandbox, auth: JwtBearerAuth
) -> None:
    """Proof the override in ``FleetStreamingClient`` is still needed; delete both when this fails."""
    stream = Client(FleetAuthenticator(auth), connection_timeout=5)
    stream.get_cometd_url = lambda instance_url: f"{instance_url}/cometd/60.0"  # type: ignore[method-assign]
    async with stream:
        await stream.subscribe(ORDER_CHANNEL)
        waiting = asyncio.ensure_future(stream.receive())
        await asyncio.sleep(0.2)
        await control(http, sandbox, "POST", "/_sandbox/drop-connections", json={"mode": "abort"})

        with pytest.raises(TransportTimeoutError):
            await asyncio.wait_for(waiting, 5)


async def test_expired_tokens_are_replaced_once_for_the_stream_and_rest_together(
    http: httpx.AsyncClient, sandbox: SalesforceSandbox, auth: JwtBearerAuth, salesforce: HttpSalesforce
) -> None:
    order_id = await seed_order(http, sandbox)
    async with stream_for(auth, replay={}) as stream:
        await stream.subscribe(ORDER_CHANNEL)
        grants = auth.grants

        await control(http, sandbox, "POST", "/_sandbox/expire-tokens")
        await asyncio.sleep(0.3)  # the pending long poll answers 401 and the stream logs in again
        await salesforce.update_record("Order", order_id, {"WHMCS_Order_ID__c": "renewed"})
        raw = await next_for(stream, about(order_id))

    assert raw["data"]["payload"]["WHMCS_Order_ID__c"] == "renewed"
    assert auth.grants == grants + 1
    connects = await control(http, sandbox, "GET", "/_sandbox/requests", params={"endpoint": "cometd.connect"})
    assert 401 in [r["status"] for r in connects]


class DeadToken:
    """A token source stuck on a token the org no longer accepts."""

    def __init__(self, instance_url: str) -> None:
        self.instance_url = instance_url

    async def token(self) -> AccessToken:
        return AccessToken("00D!revoked", self.instance_url)

    async def refresh(self, stale: str | None = None) -> AccessToken:
        return await self.token()


async def test_a_token_the_org_refuses_surfaces_as_the_documented_401(sandbox: SalesforceSandbox) -> None:
    stream = stream_for(DeadToken(sandbox.url))

    with pytest.raises(ServerError) as caught:
        await stream.open()

    assert caught.value.error == "403::Handshake denied" and caught.value.response is not None
    assert caught.value.response["ext"]["sfdc"]["failureReason"] == "401::Authentication invalid"


async def test_a_refused_login_surfaces_as_an_authentication_error(
    http: httpx.AsyncClient, sandbox: SalesforceSandbox, private_key_pem: str
) -> None:
    refused = JwtBearerAuth(http, sandbox.url, "unknown-app", "integration@fleet.example", private_key_pem)

    with pytest.raises(AuthenticationError):
        await stream_for(refused).open()


async def test_platform_events_arrive_on_their_channel(
    http: httpx.AsyncClient, sandbox: SalesforceSandbox, auth: JwtBearerAuth
) -> None:
    channel = "/event/Account_Eligibility_Update__e"
    async with stream_for(auth) as stream:
        await stream.subscribe(channel)
        await control(
            http,
            sandbox,
            "POST",
            "/_sandbox/events/platform",
            json={"fields": {"Account_Id__c": "0015g00000000004AA", "Verification_Status__c": "Verified"}},
        )

        raw = await next_for(stream, lambda m: m["channel"] == channel)

    event = AccountEligibilityMessage.model_validate(raw).data.payload
    assert (event.account_id, event.verification_status) == ("0015g00000000004AA", "Verified")


async def test_duplicates_and_reordering_reach_the_subscriber_as_injected(
    http: httpx.AsyncClient, sandbox: SalesforceSandbox, auth: JwtBearerAuth, salesforce: HttpSalesforce
) -> None:
    """At-least-once and out-of-order delivery, for the CDC consumer's idempotency tests."""
    order_id = await seed_order(http, sandbox)
    async with stream_for(auth, replay=ReplayOption.NEW_EVENTS) as stream:
        await stream.subscribe(ORDER_CHANNEL)
        await control(
            http, sandbox, "POST", "/_sandbox/events/out-of-order", json={"channel": ORDER_CHANNEL, "count": 2}
        )
        await salesforce.update_record("Order", order_id, {"WHMCS_Order_ID__c": "one"})
        await salesforce.update_record("Order", order_id, {"WHMCS_Order_ID__c": "two"})
        reordered = [await next_for(stream, about(order_id)) for _ in range(2)]
        await control(http, sandbox, "POST", "/_sandbox/events/duplicate", json={"channel": ORDER_CHANNEL})
        duplicate = await next_for(stream, about(order_id))

    assert [m["data"]["payload"]["WHMCS_Order_ID__c"] for m in reordered] == ["two", "one"]
    assert duplicate["data"]["event"]["replayId"] == reordered[0]["data"]["event"]["replayId"]
