"""The Salesforce Streaming API (CometD) client pieces the CDC ingress builds on (aiosfstream-ng 0.7.5).

``FleetAuthenticator`` feeds aiosfstream the token of the fleet's shared ``TokenSource``, so REST
calls and the stream log in once and refresh once. ``FleetStreamingClient`` points the client at
``{instance_url}/cometd/<api version>`` and carries two fixes to aiosfstream/aiocometd-ng on Python
3.11 (``_wait_connection_timeout``, which broke reconnection, and ``close``, which logged an error).
Subscribing, replay storage and translation to Kafka belong to the CDC worker, not here; this
module must not read configuration.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiocometd_ng.constants import TransportState
from aiosfstream_ng.auth import AuthenticatorBase
from aiosfstream_ng.client import Client

from adapters.salesforce.auth import TokenSource
from events.errors import AuthenticationFailed

#: Bayeux errors that mean "this token is no longer accepted": on /meta/connect (and others) the
#: error field, on /meta/handshake ``403::Handshake denied`` with the reason under ext.sfdc
_AUTH_FAILURE_PREFIX = "401::"


class FleetAuthenticator(AuthenticatorBase):
    """aiosfstream authenticator backed by a ``TokenSource``.

    aiocometd calls ``authenticate()`` when the client opens and again after any 401 *or 403*
    Bayeux error (it treats ``403::Unknown client`` as a possible auth failure too). Only a real
    401 should cost a token grant, so ``incoming`` marks the token stale when the server says
    ``401::...``; otherwise ``_authenticate`` hands back the cached token.
    """

    def __init__(self, tokens: TokenSource) -> None:
        super().__init__()
        self._tokens = tokens
        self._stale = False

    async def incoming(self, payload: Any, headers: Any = None) -> None:
        if any(_is_auth_failure(message) for message in payload):
            self._stale = True

    async def _authenticate(self) -> tuple[int, dict[str, Any]]:
        try:
            if self._stale and self.access_token is not None:
                token = await self._tokens.refresh(self.access_token)
            else:
                token = await self._tokens.token()
        except AuthenticationFailed as exc:
            # aiosfstream turns a non-200 into its AuthenticationError, which the caller sees
            return 401, {"error": exc.code, "error_description": exc.message}
        self._stale = False
        return 200, {"access_token": token.access_token, "token_type": "Bearer", "instance_url": token.instance_url}


def _is_auth_failure(message: Any) -> bool:
    if not isinstance(message, dict):
        return False
    reasons = [message.get("error"), ((message.get("ext") or {}).get("sfdc") or {}).get("failureReason")]
    return any(isinstance(r, str) and r.startswith(_AUTH_FAILURE_PREFIX) for r in reasons)


class FleetStreamingClient(Client):
    """``aiosfstream_ng.Client`` at a chosen API version, with the two library fixes below."""

    def __init__(self, authenticator: AuthenticatorBase, *, api_version: str = "60.0", **kwargs: Any) -> None:
        super().__init__(authenticator, **kwargs)
        self._api_version = api_version

    def get_cometd_url(self, instance_url: str) -> str:  # type: ignore[override]
        # the library hard-codes API 45.0; CDC on the fleet's objects wants the org's version
        return f"{instance_url.rstrip('/')}/cometd/{self._api_version}"

    async def close(self) -> None:
        """Close without the spurious "Exception in callback TransportBase._connect_done" error log.

        aiocometd-ng cancels the pending long poll on disconnect and its done-callback then calls
        ``result()`` on the cancelled task; ``CancelledError`` is no longer an ``Exception`` (3.8+),
        so the loop logs an error on every clean shutdown. The transport is disconnecting and the
        callback would do nothing else, so it is detached first.
        """
        transport: Any = self._transport
        task = getattr(transport, "_connect_task", None)
        if task is not None and not task.done():
            task.remove_done_callback(transport._connect_done)
        await super().close()

    async def _wait_connection_timeout(self, timeout: int | float) -> None:
        """Return once the transport has been reconnecting for longer than ``timeout`` seconds.

        Why this override exists: aiocometd-ng 0.5.6 still calls ``asyncio.wait_for(..., loop=...)``
        here, and Python 3.10 removed that argument. The TypeError fires the moment the transport
        enters CONNECTING after a dropped connection, and ``receive()`` then raises
        ``TransportTimeoutError`` although the transport reconnects on its own a second later, so
        the stream dies on every network blip. Same logic as the library, without ``loop=``.
        """
        transport = self._transport
        assert transport is not None
        while True:
            await transport.wait_for_state(TransportState.CONNECTING)
            try:
                await asyncio.wait_for(transport.wait_for_state(TransportState.CONNECTED), timeout)
            except TimeoutError:
                return
