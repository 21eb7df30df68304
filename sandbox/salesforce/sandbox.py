"""``SalesforceSandbox``: the Salesforce stand-in, composed from its parts and mounted on ``SandboxBase``.

Speaks OAuth (``/services/oauth2/token``), REST (``/services/data/vXX.X/``) and the Streaming API
(``/cometd/XX.X``) over one org (``store.py`` + ``org.py`` + ``events.py``), plus the control API
(``control.py``). This module only wires the parts, names endpoints for fault injection and shapes
injected errors the way Salesforce would; behaviour lives in the parts.

The demo org holds a SIM inventory (``SIM_Inventory__c``: 3,000 physical cards and 3,000 eSIM
profiles): that object, its ``Status__c`` picklist and its phone/serial field names are our
inference of the portal's schema, not confirmed.
"""

from __future__ import annotations

import json
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
from sandbox.salesforce.rest import ApiLimits, RecordFaults, RestApi
from sandbox.salesforce.store import FieldProblem, Store

_REST = re.compile(r"^/services/data/v[\d.]+/(?P<rest>.*)$")
_SERVER_ERRORS = {500: "UNKNOWN_EXCEPTION", 502: "SERVER_UNAVAILABLE", 503: "SERVER_UNAVAILABLE"}


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
        self.control = ControlApi(self.org, self.tokens, self.limits, self.record_faults, self.cometd, self.api_version)

    @property
    def store(self) -> Store:
        return self.org.store

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> web.AppRunner:
        """Serve on host:port (0 = any free port); ``url`` is then the base URL to use, spelled
        with ``localhost`` because aiohttp's cookie jar ignores cookies from IP hosts."""
        runner = await serve(self.app(), host, port)
        self.url = self.public_url or f"http://localhost:{runner.addresses[0][1]}"
        return runner

    # --- SandboxBase hooks --------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:
        app.router.add_post("/services/oauth2/token", self.tokens.handle)
        self.rest.add_routes(app)
        app.router.add_post(r"/cometd/{version:\d+\.\d}", self.cometd.handle)
        self.control.add_routes(app)
        app.on_shutdown.append(self.cometd.shutdown)

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
        """Back to the demo seed: records, API usage and record faults reset; retained events are
        dropped but replay ids keep increasing; tokens and CometD clients stay valid."""
        super().reset()
        store = Store()
        store.seed_demo(_now())
        self.org.store = store
        self.bus.forget()
        self.limits.used = 0
        self.record_faults.pending.clear()


async def _bayeux_channel(request: web.Request) -> str:
    try:
        messages = json.loads(await request.text())
    except ValueError:
        return "invalid"
    first = messages[0] if isinstance(messages, list) and messages else messages
    channel = first.get("channel", "") if isinstance(first, dict) else ""
    return str(channel).removeprefix("/meta/") or "invalid"
