"""The CometD pieces offline: the authenticator spends a token grant only on a real 401, and the
reconnection wait works on Python 3.11 (the aiocometd-ng bug the client subclass fixes)."""

from __future__ import annotations

import asyncio

import pytest
from aiocometd_ng.constants import TransportState
from aiosfstream_ng.exceptions import AuthenticationError

from adapters.salesforce import AccessToken
from adapters.salesforce_stream import FleetAuthenticator, FleetStreamingClient
from events.errors import AuthenticationFailed


class CountingTokens:
    def __init__(self, refused: bool = False) -> None:
        self.token_calls = 0
        self.refreshed: list[str | None] = []
        self.refused = refused

    async def token(self) -> AccessToken:
        if self.refused:
            raise AuthenticationFailed("no", code="invalid_grant")
        self.token_calls += 1
        return AccessToken(f"tok-{len(self.refreshed)}", "http://localhost:1")

    async def refresh(self, stale: str | None = None) -> AccessToken:
        self.refreshed.append(stale)
        return AccessToken(f"tok-{len(self.refreshed)}", "http://localhost:1")


async def test_a_403_unknown_client_reuses_the_token_and_a_401_refreshes_it() -> None:
    tokens = CountingTokens()
    authenticator = FleetAuthenticator(tokens)
    await authenticator.authenticate()

    await authenticator.incoming([{"channel": "/meta/connect", "successful": False, "error": "403::Unknown client"}])
    await authenticator.authenticate()
    assert tokens.refreshed == [] and authenticator.access_token == "tok-0"

    await authenticator.incoming(
        [{"channel": "/meta/connect", "successful": False, "error": "401::Authentication invalid"}]
    )
    await authenticator.authenticate()
    assert tokens.refreshed == ["tok-0"] and authenticator.access_token == "tok-1"
    assert authenticator.instance_url == "http://localhost:1"


async def test_a_denied_handshake_with_a_401_reason_counts_as_stale() -> None:
    tokens = CountingTokens()
    authenticator = FleetAuthenticator(tokens)
    await authenticator.authenticate()

    await authenticator.incoming([{"channel": "/meta/handshake", "successful": False, "error": "403::Handshake denied",
                                   "ext": {"sfdc": {"failureReason": "401::Authentication invalid"}}}])  # fmt: skip
    await authenticator.authenticate()

    assert tokens.refreshed == ["tok-0"]


async def test_a_refused_login_surfaces_as_the_libraries_authentication_error() -> None:
    with pytest.raises(AuthenticationError):
        await FleetAuthenticator(CountingTokens(refused=True)).authenticate()


class FakeTransport:
    def __init__(self) -> None:
        self.events = {state: asyncio.Event() for state in TransportState}

    def set(self, state: TransportState) -> None:
        for event in self.events.values():
            event.clear()
        self.events[state].set()

    async def wait_for_state(self, state: TransportState) -> None:
        await self.events[state].wait()


async def test_the_connection_wait_survives_a_reconnect_and_ends_when_reconnecting_takes_too_long() -> None:
    """aiocometd-ng passes ``loop=`` to ``asyncio.wait_for`` here, which Python 3.10+ rejects."""
    client = FleetStreamingClient(FleetAuthenticator(CountingTokens()))
    transport = FakeTransport()
    client._transport = transport  # type: ignore[assignment]
    waiting = asyncio.ensure_future(client._wait_connection_timeout(0.2))

    transport.set(TransportState.CONNECTING)
    await asyncio.sleep(0.05)
    transport.set(TransportState.CONNECTED)  # reconnected in time: keep waiting
    await asyncio.sleep(0.3)
    assert not waiting.done()

    transport.set(TransportState.CONNECTING)  # and now stuck
    await asyncio.wait_for(waiting, 1.0)


async def test_the_cometd_url_uses_the_configured_api_version() -> None:
    """Async on purpose: aiocometd-ng grabs the running loop when the client is built."""
    client = FleetStreamingClient(FleetAuthenticator(CountingTokens()), api_version="60.0")

    assert client.get_cometd_url("http://localhost:18081/") == "http://localhost:18081/cometd/60.0"
