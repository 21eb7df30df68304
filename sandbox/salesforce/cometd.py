"""The sandbox's Streaming API endpoint ``/cometd/<version>``: Bayeux 1.0 long polling, Salesforce style.

A POST carries a JSON array of messages (``/meta/handshake``, ``/meta/connect``, ``/meta/subscribe``,
``/meta/unsubscribe``, ``/meta/disconnect``); the answer is a JSON array with one reply per message
plus any queued event deliveries. What it imitates (Streaming API Developer Guide, "Streaming API
Error Codes", "Handling Streaming API Errors", "Message Durability"):

* the handshake sets the ``BAYEUX_BROWSER`` cookie; later messages without it fail with
  ``400::Client <id> has established a session, but no BAYEUX_BROWSER cookie present``;
* ``/meta/connect`` is held up to the advised ``timeout`` (ms) and answered early when events arrive;
  the first connect of a session is answered at once, as CometD servers do;
* subscriptions take the replay extension ``ext.replay = {channel: -1 | -2 | replayId}``; a replay
  id outside the retention window fails with ``400::The replayId {N} you provided was invalid...``;
* an unknown (forgotten) client gets ``403::Unknown client`` with ``advice.reconnect = handshake``;
* a missing or dead token answers HTTP 401 with ``403::Handshake denied`` (reason under
  ``ext.sfdc.failureReason``) on handshake and ``401::Authentication invalid`` elsewhere.

Knows nothing about records: events come from the bus.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from sandbox.salesforce.events import EventBus, InvalidReplayId
from sandbox.salesforce.oauth import TokenIssuer

COOKIE = "BAYEUX_BROWSER"
_UNKNOWN_CLIENT = "403::Unknown client"


@dataclass
class Session:
    client_id: str
    cookie: str
    subscriptions: set[str] = field(default_factory=set)
    queue: list[dict[str, Any]] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    connected_once: bool = False
    dropped: str | None = None  # why the server forgot it: "unknown-client" | "abort" | "shutdown"
    last_seen: float = field(default_factory=time.monotonic)


class BayeuxServer:
    def __init__(self, bus: EventBus, tokens: TokenIssuer, *, timeout_ms: int = 110_000,
                 require_cookie: bool = True, session_idle_s: float = 300.0) -> None:  # fmt: skip
        self.bus = bus
        self.tokens = tokens
        self.timeout_ms = timeout_ms
        self.require_cookie = require_cookie
        self.session_idle_s = session_idle_s
        self.sessions: dict[str, Session] = {}
        bus.listen(self._deliver)

    # --- control ------------------------------------------------------------------------------
    def drop(self, mode: str = "unknown-client") -> int:
        """Forget every client; pending long polls answer ``403::Unknown client`` (or, with
        ``mode="abort"``, lose their TCP connection) and clients must handshake again."""
        dropped = list(self.sessions.values())
        self.sessions.clear()
        for session in dropped:
            session.dropped = mode
            session.wake.set()
        return len(dropped)

    def wake_all(self) -> None:
        """Make pending long polls re-check their token now (after tokens were expired)."""
        for session in self.sessions.values():
            session.wake.set()

    async def shutdown(self, _app: web.Application | None = None) -> None:
        self.drop("shutdown")

    # --- the endpoint -------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            parsed = json.loads(await request.text())
        except ValueError:
            return web.Response(status=400, text="400::Invalid JSON")
        messages = [m for m in (parsed if isinstance(parsed, list) else [parsed]) if isinstance(m, dict)]
        issued, reason = self.tokens.check(request.headers.get("Authorization"))
        if issued is None:
            return web.json_response([_auth_failure(m, reason) for m in messages], status=401)
        cookie = request.cookies.get(COOKIE)
        replies, new_cookie, status = [], None, 200
        connect = next((m for m in messages if m.get("channel") == "/meta/connect"), None)
        for message in messages:
            if message is connect:
                continue
            if message.get("channel") == "/meta/handshake":
                reply, new_cookie = self._handshake(message)
            else:
                reply = self._dispatch(message, cookie)
            replies.append(reply)
        if connect is not None:
            # the long poll goes last so the subscriptions sent with it take effect first
            connect_replies, status = await self._connect(connect, new_cookie or cookie, request)
            replies.extend(connect_replies)
        response = web.json_response(replies, status=status)
        if new_cookie is not None:
            response.set_cookie(COOKIE, new_cookie, path="/", httponly=True)
        return response

    def _handshake(self, message: dict[str, Any]) -> tuple[dict[str, Any], str]:
        self._forget_idle()
        session = Session(client_id=secrets.token_hex(12), cookie=secrets.token_urlsafe(16))
        self.sessions[session.client_id] = session
        reply = _reply(message, session.client_id, successful=True)
        reply.update(version="1.0", minimumVersion="1.0", supportedConnectionTypes=["long-polling"],
                     ext={"replay": True, "payload.format": True}, advice=self._advice())  # fmt: skip
        return reply, session.cookie

    def _dispatch(self, message: dict[str, Any], cookie: str | None) -> dict[str, Any]:
        session, refusal = self._session(message, cookie)
        if session is None:
            return refusal
        channel = message.get("channel")
        if channel == "/meta/subscribe":
            return self._subscribe(message, session)
        if channel == "/meta/unsubscribe":
            session.subscriptions.discard(str(message.get("subscription")))
            return {**_reply(message, session.client_id, successful=True), "subscription": message.get("subscription")}
        if channel == "/meta/disconnect":
            self.sessions.pop(session.client_id, None)
            session.dropped = "disconnected"
            session.wake.set()
            return _reply(message, session.client_id, successful=True)
        return _reply(message, session.client_id, successful=False, error="403::Publish denied")

    def _subscribe(self, message: dict[str, Any], session: Session) -> dict[str, Any]:
        channel = str(message.get("subscription"))
        base = {**_reply(message, session.client_id, successful=False), "subscription": channel}
        if channel not in self.bus.channels:
            return {**base, "error": f"400::The channel you requested to subscribe to doesn't exist {channel}"}
        replay = ((message.get("ext") or {}).get("replay") or {}).get(channel, -1)
        try:
            cursor = self.bus.cursor(channel, int(replay))
        except InvalidReplayId as exc:
            return {**base, "error": str(exc)}
        except (ValueError, TypeError):
            return {**base, "error": f"400::Invalid replay {replay!r}"}
        session.subscriptions.add(channel)
        backlog = self.bus.retained(channel, after=cursor)
        if backlog:
            session.queue.extend(backlog)
            session.wake.set()
        return {**base, "successful": True}

    async def _connect(
        self, message: dict[str, Any], cookie: str | None, request: web.Request
    ) -> tuple[list[dict[str, Any]], int]:
        session, refusal = self._session(message, cookie)
        if session is None:
            return [refusal], 200
        if message.get("connectionType", "long-polling") != "long-polling":
            return [_reply(message, session.client_id, successful=False,
                           error=f"400::Invalid connection type {message.get('connectionType')}")], 200  # fmt: skip
        if session.connected_once and not session.queue:
            await self._hold(session)
        session.connected_once = True
        session.last_seen = time.monotonic()
        if session.dropped == "abort":
            _abort(request)
        if session.dropped is not None:
            return [_unknown_client(message)], 200
        issued, reason = self.tokens.check(request.headers.get("Authorization"))
        if issued is None:
            return [_auth_failure(message, reason)], 401
        events, session.queue = session.queue, []
        return [*events, {**_reply(message, session.client_id, successful=True), "advice": self._advice()}], 200

    async def _hold(self, session: Session) -> None:
        session.wake.clear()
        try:
            await asyncio.wait_for(session.wake.wait(), self.timeout_ms / 1000)
        except TimeoutError:
            pass

    def _session(self, message: dict[str, Any], cookie: str | None) -> tuple[Session | None, dict[str, Any]]:
        session = self.sessions.get(str(message.get("clientId")))
        if session is None:
            return None, _unknown_client(message)
        session.last_seen = time.monotonic()
        if self.require_cookie and cookie != session.cookie:
            error = f"400::Client {session.client_id} has established a session, but no {COOKIE} cookie present"
            return None, {**_reply(message, session.client_id, successful=False, error=error),
                          "advice": {"reconnect": "none"}}  # fmt: skip
        return session, {}

    def _deliver(self, channel: str, message: dict[str, Any]) -> None:
        for session in self.sessions.values():
            if channel in session.subscriptions:
                session.queue.append(message)
                session.wake.set()

    def _forget_idle(self) -> None:
        # Salesforce expires a client that does not reconnect in time; keep memory bounded likewise
        horizon = time.monotonic() - self.session_idle_s
        for client_id in [c for c, s in self.sessions.items() if s.last_seen < horizon]:
            self.sessions.pop(client_id).dropped = "unknown-client"

    def _advice(self) -> dict[str, Any]:
        return {"interval": 0, "timeout": self.timeout_ms, "reconnect": "retry"}


def _reply(
    message: dict[str, Any], client_id: str | None, *, successful: bool, error: str | None = None
) -> dict[str, Any]:
    reply: dict[str, Any] = {"channel": message.get("channel"), "successful": successful}
    if "id" in message:
        reply["id"] = message["id"]
    if client_id is not None:
        reply["clientId"] = client_id
    if error is not None:
        reply["error"] = error
    return reply


def _unknown_client(message: dict[str, Any]) -> dict[str, Any]:
    reply = _reply(message, message.get("clientId"), successful=False, error=_UNKNOWN_CLIENT)
    if message.get("channel") == "/meta/subscribe":
        reply["subscription"] = message.get("subscription")
    return {**reply, "advice": {"reconnect": "handshake", "interval": 0}}


def _auth_failure(message: dict[str, Any], reason: str) -> dict[str, Any]:
    text = "401::Request requires authentication" if reason == "missing" else "401::Authentication invalid"
    if message.get("channel") == "/meta/handshake":
        reply = _reply(message, None, successful=False, error="403::Handshake denied")
        return {**reply, "ext": {"sfdc": {"failureReason": text}}, "advice": {"reconnect": "none"}}
    reply = _reply(message, message.get("clientId"), successful=False, error=text)
    if message.get("channel") in ("/meta/subscribe", "/meta/unsubscribe"):
        reply["subscription"] = message.get("subscription")
    return {**reply, "advice": {"reconnect": "none", "interval": 0}}


def _abort(request: web.Request) -> None:
    """Lose the connection without an answer, as a load balancer or a network blip would."""
    if request.transport is not None:
        request.transport.abort()
    raise asyncio.CancelledError
