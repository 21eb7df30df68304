"""What every sandbox shares: the request log, per-endpoint fault injection and the control API.

A sandbox is an aiohttp application. ``SandboxBase`` installs a middleware that records every
request (for tests to assert on) and applies the faults configured for the request's endpoint
key, and mounts the control API under ``/_sandbox/``:

    GET    /_sandbox/requests[?endpoint=&since=N]   the request log (JSON list)
    DELETE /_sandbox/requests                         clear it
    GET    /_sandbox/faults | POST /_sandbox/faults   list / add a fault (JSON FaultSpec)
    DELETE /_sandbox/faults                           clear all faults
    GET    /_sandbox/state                            the sandbox's in-memory state
    POST   /_sandbox/seed                             add records (sandbox-specific body)
    POST   /_sandbox/reset                            back to the demo seed

Control routes are never subject to faults and never logged.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CONTROL_PREFIX = "/_sandbox/"


@dataclass
class FaultSpec:
    """One fault rule. ``endpoint`` matches the sandbox's endpoint key ("*" = any).

    kind:
      latency   add ``latency_ms`` (or uniform in [latency_ms, latency_max_ms]) then answer normally
      error     answer ``status`` (500/503/429...) with the vendor's error body; ``retry_after`` sets the header
      timeout   hold the request for ``hold_s`` seconds before answering normally (client times out first)
      malformed answer 200 with a body that is not what the vendor sends (truncated JSON)
      drop      close the connection without an answer
    ``rate`` is the probability per request (1.0 = always); ``times`` limits how often it fires (None = forever).
    """

    endpoint: str = "*"
    kind: str = "error"
    status: int = 503
    retry_after: float | None = None
    latency_ms: float = 0.0
    latency_max_ms: float | None = None
    hold_s: float = 30.0
    rate: float = 1.0
    times: int | None = None
    id: int = 0

    def matches(self, endpoint: str) -> bool:
        return self.endpoint in ("*", endpoint)


@dataclass
class LoggedRequest:
    seq: int
    at: float
    method: str
    path: str
    endpoint: str
    query: dict[str, str]
    headers: dict[str, str]
    body: str
    status: int | None = None
    fault: str | None = None


@dataclass
class SandboxBase:
    """Subclasses build routes in ``routes()`` and may override ``endpoint_of``, ``error_response``,
    ``state``, ``seed`` and ``reset``."""

    name: str = "sandbox"
    requests: list[LoggedRequest] = field(default_factory=list)
    faults: list[FaultSpec] = field(default_factory=list)
    rng: random.Random = field(default_factory=random.Random)
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _fault_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    max_log: int = 50_000

    # --- to override -------------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def endpoint_of(self, request: web.Request) -> str:
        return request.path

    def error_response(self, status: int, endpoint: str) -> web.Response:
        return web.json_response({"error": f"injected {status}", "endpoint": endpoint}, status=status)

    def malformed_response(self, endpoint: str) -> web.Response:
        return web.Response(status=200, body=b'{"result": "succ', content_type="application/json")

    def state(self) -> dict[str, Any]:
        return {}

    async def seed(self, body: dict[str, Any]) -> dict[str, Any]:
        raise web.HTTPBadRequest(text=json.dumps({"error": "seeding not supported"}), content_type="application/json")

    def reset(self) -> None:
        self.requests.clear()
        self.faults.clear()

    # --- machinery ---------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=8 * 1024 * 1024)
        app.router.add_get("/_sandbox/requests", self._get_requests)
        app.router.add_delete("/_sandbox/requests", self._clear_requests)
        app.router.add_get("/_sandbox/faults", self._get_faults)
        app.router.add_post("/_sandbox/faults", self._add_fault)
        app.router.add_delete("/_sandbox/faults", self._clear_faults)
        app.router.add_get("/_sandbox/state", self._get_state)
        app.router.add_post("/_sandbox/seed", self._seed)
        app.router.add_post("/_sandbox/reset", self._reset)
        self.routes(app)
        return app

    def add_fault(self, spec: FaultSpec) -> FaultSpec:
        spec.id = next(self._fault_ids)
        self.faults.append(spec)
        return spec

    def _pick_fault(self, endpoint: str) -> FaultSpec | None:
        for spec in self.faults:
            if not spec.matches(endpoint) or spec.times == 0:
                continue
            if spec.rate < 1.0 and self.rng.random() >= spec.rate:
                continue
            if spec.times is not None:
                spec.times -= 1
            return spec
        return None

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(CONTROL_PREFIX):
            return await handler(request)
        body = (await request.read()).decode("utf-8", errors="replace") if request.can_read_body else ""
        endpoint = await self.endpoint_of(request)
        entry = LoggedRequest(
            seq=next(self._seq),
            at=time.time(),
            method=request.method,
            path=request.path,
            endpoint=endpoint,
            query=dict(request.query),
            headers=dict(request.headers),
            body=body,
        )
        self.requests.append(entry)
        if len(self.requests) > self.max_log:
            del self.requests[: len(self.requests) - self.max_log]
        fault = self._pick_fault(endpoint)
        if fault is not None:
            entry.fault = fault.kind
            response = await self._apply(fault, endpoint, request)
            if response is not None:
                entry.status = response.status
                return response
        response = await handler(request)
        entry.status = response.status
        return response

    async def _apply(self, fault: FaultSpec, endpoint: str, request: web.Request) -> web.StreamResponse | None:
        if fault.kind == "latency":
            high = fault.latency_max_ms if fault.latency_max_ms is not None else fault.latency_ms
            await asyncio.sleep(self.rng.uniform(fault.latency_ms, max(high, fault.latency_ms)) / 1000)
            return None
        if fault.kind == "timeout":
            await asyncio.sleep(fault.hold_s)
            return None
        if fault.kind == "malformed":
            return self.malformed_response(endpoint)
        if fault.kind == "drop":
            transport = request.transport
            if transport is not None:
                transport.abort()
            raise asyncio.CancelledError  # aiohttp treats this as a lost connection; nothing is sent
        response = self.error_response(fault.status, endpoint)
        if fault.retry_after is not None:
            response.headers["Retry-After"] = str(
                int(fault.retry_after) if fault.retry_after >= 1 else fault.retry_after
            )
        return response

    # --- control API -------------------------------------------------------------------------
    async def _get_requests(self, request: web.Request) -> web.Response:
        since = int(request.query.get("since", "0"))
        endpoint = request.query.get("endpoint")
        rows = [asdict(r) for r in self.requests if r.seq > since and (endpoint is None or r.endpoint == endpoint)]
        return web.json_response(rows)

    async def _clear_requests(self, _request: web.Request) -> web.Response:
        self.requests.clear()
        return web.json_response({"cleared": True})

    async def _get_faults(self, _request: web.Request) -> web.Response:
        return web.json_response([asdict(f) for f in self.faults])

    async def _add_fault(self, request: web.Request) -> web.Response:
        try:
            spec = FaultSpec(**(await request.json()))
        except (TypeError, ValueError) as exc:
            return web.json_response({"error": f"bad fault spec: {exc}"}, status=400)
        return web.json_response(asdict(self.add_fault(spec)), status=201)

    async def _clear_faults(self, _request: web.Request) -> web.Response:
        self.faults.clear()
        return web.json_response({"cleared": True})

    async def _get_state(self, _request: web.Request) -> web.Response:
        return web.json_response(self.state(), dumps=lambda o: json.dumps(o, default=str))

    async def _seed(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "body must be JSON"}, status=400)
        return web.json_response(await self.seed(body), status=201, dumps=lambda o: json.dumps(o, default=str))

    async def _reset(self, _request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"reset": True})


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start ``app`` on host:port and return its runner (``await runner.cleanup()`` to stop).

    ``handler_cancellation`` makes a client that gives up (a "timeout" fault outlasting the
    client's read timeout) cancel the held handler, so stopping the runner does not wait out
    ``hold_s``; ``shutdown_timeout`` bounds the wait for anything else still in flight.
    """
    runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner
