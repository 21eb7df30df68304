"""Health and metrics over HTTP for one worker process: ``/livez``, ``/readyz``, ``/metrics``.

Owns the small aiohttp server. Must not decide health itself: it asks the worker
(``Worker.liveness``/``readiness``) and renders the worker's own ``CollectorRegistry``.
Port 0 binds an ephemeral port; ``HealthServer.port`` tells which.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Probe = Callable[[], tuple[bool, str]]


class Observable(Protocol):
    def liveness(self) -> tuple[bool, str]: ...

    def readiness(self) -> tuple[bool, str]: ...

    @property
    def registry(self) -> CollectorRegistry: ...


def build_app(target: Observable) -> web.Application:
    async def livez(_: web.Request) -> web.Response:
        return _probe_response(target.liveness)

    async def readyz(_: web.Request) -> web.Response:
        return _probe_response(target.readiness)

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(target.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


def _probe_response(probe: Probe) -> web.Response:
    ok, reason = probe()
    return web.json_response({"status": "ok" if ok else "fail", "reason": reason}, status=200 if ok else 503)


class HealthServer:
    """``async with HealthServer(worker, host, port) as server: server.port``."""

    def __init__(self, target: Observable, host: str = "127.0.0.1", port: int = 0) -> None:
        self._runner = web.AppRunner(build_app(target), access_log=None)
        self._host = host
        self._requested_port = port
        self.port: int | None = None

    async def start(self) -> int:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._requested_port)
        await site.start()
        address = self._runner.addresses[0]
        self.port = int(address[1])
        return self.port

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()
