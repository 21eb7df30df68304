"""``SalesforceSandbox``: the Salesforce stand-in, composed from its parts and mounted on ``SandboxBase``.

Speaks OAuth (``/services/oauth2/token``), REST (``/services/data/vXX.X/``) and the Streaming API
(``/cometd/XX.X``) over one org (``store.py`` + ``org.py`` + ``events.py``), plus the control API
(``control.py``); with ``pubsub_port`` set, also the Pub/Sub API over gRPC (``pubsub.py``) on its
own port, started and stopped with the app. This module only wires the parts, names endpoints for
fault injection and shapes injected errors the way Salesforce would; behaviour lives in the parts.

The demo org holds a SIM inventory (``SIM_Inventory__c``: 3,000 physical cards and 3,000 eSIM
profiles): that object, its ``Status__c`` picklist and its phone/serial field names are our
inference of the portal's schema, not confirmed.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from sandbox.common import SandboxBase, serve
from sandbox.salesforce.cometd import BayeuxServer
from sandbox.salesforce.control import ControlApi
from sandbox.salesforce.events import EventBus
from sandbox.salesforce.oauth import TokenIssuer
from sandbox.salesforce.org import Org
from sandbox.salesforce.pubsub import PubSubServer
from sandbox.salesforce.rest import ApiLimits, RecordFaults, RestApi
from sandbox.salesforce.store import FieldProblem, Store

_REST = re.compile(r"^/services/data/v[\d.]+/(?P<rest>.*)$")
_SERVER_ERRORS = {500: "UNKNOWN_EXCEPTION", 502: "SERVER_UNAVAILABLE", 503: "SERVER_UNAVAILABLE"}
log = logging.getLogger("sandbox.salesforce")


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class SalesforceSandbox(SandboxBase):
    name: str = "salesforce"
    api_version: str = "60.0"
    token_ttl_s: float = 3600.0
    api_daily_limit: int = 15_000
    #: change events kept per channel for replay (Salesforce keeps 72 hours)
    retention: int = 1000
    #: the ``instance_url`` tokens point at; None = where the token request came to (127.0.0.1 →
    #: localhost), which is ``http://localhost:18081`` on the standard port and follows any other
    public_url: str | None = None
    #: how long ``/meta/connect`` is held (Salesforce: 110 s); keep it short in tests
    cometd_timeout_ms: int = 110_000
    require_cookie: bool = True
    query_batch_size: int = 2000
    #: verify JWT assertions against this key; None accepts any RS256 signature
    jwt_public_key_pem: str | None = None
    #: serve the Pub/Sub API (gRPC) on this port when the app starts (0 = any free port); None = only
    #: when ``start_pubsub()`` is called. ``pubsub.port`` / ``pubsub_url`` say where it is served
    pubsub_port: int | None = None
    pubsub_host: str = "127.0.0.1"
    #: empty FetchResponse after this long without a send (Salesforce: within 270 s)
    pubsub_keepalive_s: float = 270.0
    #: a stream with nothing requested closes after this long (Salesforce: about 60-70 s)
    pubsub_idle_close_s: float = 70.0

    def __post_init__(self) -> None:
        #: the base URL once served by ``start()``
        self.url = self.public_url or "http://localhost:18081"
        store = Store()
        store.seed_demo(_now())
        self.bus = EventBus(retention=self.retention, clock=_now)
        self.org = Org(store, self.bus, _now)
        self.tokens = TokenIssuer(
            public_url=lambda: self.public_url, ttl_s=self.token_ttl_s, jwt_public_key_pem=self.jwt_public_key_pem
        )
        self.limits = ApiLimits(limit=self.api_daily_limit)
        self.record_faults = RecordFaults()
        self.cometd = BayeuxServer(self.bus, self.tokens, timeout_ms=self.cometd_timeout_ms,
                                   require_cookie=self.require_cookie)  # fmt: skip
        self.rest = RestApi(self.org, self.tokens, self.limits, self.record_faults,
                            query_batch_size=self.query_batch_size)  # fmt: skip
        self.pubsub = PubSubServer(self.bus, self.tokens, keepalive_s=self.pubsub_keepalive_s,
                                   idle_close_s=self.pubsub_idle_close_s)  # fmt: skip
        self.control = ControlApi(self.org, self.tokens, self.limits, self.record_faults, self.cometd, self.api_version,
                                  pubsub=self.pubsub)  # fmt: skip

    @property
    def store(self) -> Store:
        return self.org.store

    @property
    def pubsub_url(self) -> str | None:
        """The Pub/Sub API's gRPC target (``host:port``) while it is served."""
        return self.pubsub.url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> web.AppRunner:
        """Serve on host:port (0 = any free port); ``url`` is then the base URL to use, spelled
        with ``localhost`` because aiohttp's cookie jar ignores cookies from IP hosts. With
        ``pubsub_port`` set the Pub/Sub API starts too; ``runner.cleanup()`` stops both."""
        runner = await serve(self.app(), host, port)
        self.url = self.public_url or f"http://localhost:{runner.addresses[0][1]}"
        return runner

    async def start_pubsub(self, host: str | None = None, port: int | None = None) -> int:
        """Serve the Pub/Sub API now (default: ``pubsub_host``/``pubsub_port``, else a free port);
        returns the bound port. The app's shutdown stops it; so does ``pubsub.stop()``."""
        return await self.pubsub.start(host or self.pubsub_host, port if port is not None else self.pubsub_port or 0)

    async def _serve_pubsub(self, _app: web.Application) -> None:
        # a taken Pub/Sub port must not take the HTTP sandbox down with it (e.g. a second sandbox set
        # next to `fleet sandbox up`): say so loudly and serve without it
        try:
            port = await self.start_pubsub()
        except RuntimeError as exc:
            log.error("salesforce pubsub: not served on %s:%s: %s", self.pubsub_host, self.pubsub_port, exc)
            return
        log.info("sandbox salesforce_pubsub listening on %s:%d (gRPC)", self.pubsub_host, port)

    async def _stop_pubsub(self, _app: web.Application) -> None:
        await self.pubsub.stop()

    # --- SandboxBase hooks --------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:
        app.router.add_post("/services/oauth2/token", self.tokens.handle)
        self.rest.add_routes(app)
        app.router.add_post(r"/cometd/{version:\d+\.\d}", self.cometd.handle)
        self.control.add_routes(app)
        app.on_shutdown.append(self.cometd.shutdown)
        if self.pubsub_port is not None:
            app.on_startup.append(self._serve_pubsub)
        app.on_shutdown.append(self._stop_pubsub)

    async def endpoint_of(self, request: web.Request) -> str:
        path = request.path
        if path == "/services/oauth2/token":
            return "oauth.token"
        if path.startswith("/cometd/"):
            return "cometd." + await _bayeux_channel(request)
        match = _REST.match(path)
        if match is None:
            return path
        rest = match["rest"]
        if rest.startswith("sobjects/"):
            return "sobjects.get" if request.method == "GET" else "sobjects.update"
        if rest.startswith("query"):
            return "query"
        if rest.startswith("composite/sobjects"):
            return "composite.update"
        return rest

    def error_response(self, status: int, endpoint: str) -> web.Response:
        if endpoint.startswith("cometd."):
            return web.Response(status=status, text=f"{status} injected")
        if endpoint == "oauth.token":
            body = {"error": "unknown_error", "error_description": f"injected {status}"}
            return web.json_response(body, status=status)
        code = _SERVER_ERRORS.get(status, "REQUEST_LIMIT_EXCEEDED" if status == 429 else f"HTTP_{status}")
        response = web.json_response([{"message": f"injected {status}", "errorCode": code}], status=status)
        response.headers["Sforce-Limit-Info"] = self.limits.header()
        return response

    def malformed_response(self, endpoint: str) -> web.Response:
        response = web.Response(status=200, body=b'[{"attributes": {"type": "Ord', content_type="application/json")
        response.headers["Sforce-Limit-Info"] = self.limits.header()
        return response

    def state(self) -> dict[str, Any]:
        return {
            "records": {sobject: len(rows) for sobject, rows in self.store.records.items()},
            "orders": [
                {
                    k: o.get(k)
                    for k in (
                        "Id",
                        "Status",
                        "Activation_Status__c",
                        "Activation_Error_Code__c",
                        "WHMCS_Order_ID__c",
                        "Type",
                    )
                }
                for o in self.store.rows("Order")
            ],
            "sim_inventory": self._sim_inventory_counts(),
            "api_usage": {"used": self.limits.used, "limit": self.limits.limit},
            "last_replay_id": self.bus.last_replay_id,
            "cometd_clients": len(self.cometd.sessions),
            "live_tokens": len(self.tokens.tokens),
            "pubsub": self.pubsub.state(),
        }

    def _sim_inventory_counts(self) -> dict[str, dict[str, int]]:
        """Cards by ``SIM_Type__c`` then ``Status__c`` (the full list: ``GET /_sandbox/sim-inventory``)."""
        counts: dict[str, dict[str, int]] = {}
        for card in self.store.rows("SIM_Inventory__c"):
            by_status = counts.setdefault(str(card["SIM_Type__c"]), {})
            by_status[str(card["Status__c"])] = by_status.get(str(card["Status__c"]), 0) + 1
        return counts

    async def seed(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.control.seed(body)
        except FieldProblem as problem:
            raise web.HTTPBadRequest(text=json.dumps(problem.entry), content_type="application/json") from problem

    def reset(self) -> None:
        """Back to the demo seed: records, API usage, record faults and Pub/Sub faults reset; retained
        events are dropped but replay ids keep increasing; tokens, CometD clients, gRPC streams and
        schema versions stay."""
        super().reset()
        store = Store()
        store.seed_demo(_now())
        self.org.store = store
        self.bus.forget()
        self.limits.used = 0
        self.record_faults.pending.clear()
        self.pubsub.clear_faults()


async def _bayeux_channel(request: web.Request) -> str:
    try:
        messages = json.loads(await request.text())
    except ValueError:
        return "invalid"
    first = messages[0] if isinstance(messages, list) and messages else messages
    channel = first.get("channel", "") if isinstance(first, dict) else ""
    return str(channel).removeprefix("/meta/") or "invalid"
