"""Serve every sandbox (Salesforce, WHMCS, Freebit) from one process until told to stop.

Owns building the sandboxes with their webhook settings, binding each to its port, writing an
optional ready file (``{"whmcs": 18082, ...}``: what is actually served, so ``fleet sandbox up``
knows what to wait for) and cleaning up. The Salesforce sandbox's Pub/Sub API (gRPC) has a port of
its own (``salesforce_pubsub`` in ``ports`` and the ready file) and lives and dies with that sandbox.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from sandbox.common import SandboxBase, serve
from sandbox.freebit import FreebitSandbox
from sandbox.salesforce import SalesforceSandbox
from sandbox.whmcs import DEFAULT_WEBHOOK_SECRET, WhmcsSandbox

log = logging.getLogger("sandbox")
SYSTEMS = ("salesforce", "whmcs", "freebit")
#: the Salesforce sandbox's gRPC port (not an HTTP app of its own)
PUBSUB = "salesforce_pubsub"


def command_line(
    host: str,
    ports: dict[str, int],
    *,
    webhook_url: str | None = None,
    ready_file: Path | None = None,
) -> list[str]:
    """``python -m sandbox ...`` for a child process (``fleet sandbox up`` and ``fleet demo up``)."""
    argv = [sys.executable, "-m", "sandbox", "--host", host]
    for name in SYSTEMS:
        argv += [f"--{name}-port", str(ports[name])]
    if PUBSUB in ports:
        argv += ["--salesforce-pubsub-port", str(ports[PUBSUB])]
    if ready_file is not None:
        argv += ["--ready-file", str(ready_file)]
    if webhook_url:
        argv += ["--webhook-url", webhook_url]
    return argv


def build_sandboxes(
    *,
    webhook_url: str | None = None,
    webhook_secret: str = DEFAULT_WEBHOOK_SECRET,
    pubsub: tuple[str, int] | None = None,
    **freebit: Any,
) -> dict[str, SandboxBase]:
    """One instance per available system; ``pubsub`` = (host, port) serves the Salesforce sandbox's
    Pub/Sub API when its app starts; ``freebit`` passes e.g. ``activation_delay_s`` through."""
    salesforce = (
        SalesforceSandbox() if pubsub is None else SalesforceSandbox(pubsub_host=pubsub[0], pubsub_port=pubsub[1])
    )
    return {
        "salesforce": salesforce,
        "whmcs": WhmcsSandbox(webhook_url=webhook_url, webhook_secret=webhook_secret),
        "freebit": FreebitSandbox(**freebit),
    }


async def run_sandboxes(
    host: str,
    ports: dict[str, int],
    *,
    webhook_url: str | None = None,
    webhook_secret: str = DEFAULT_WEBHOOK_SECRET,
    stop: asyncio.Event,
    ready_file: Path | None = None,
    **freebit: Any,
) -> dict[str, int]:
    """Serve the sandboxes named in ``ports`` (port 0 = any free port) until ``stop`` is set;
    ``ports["salesforce_pubsub"]`` also serves the Salesforce sandbox's Pub/Sub API (gRPC).

    Returns the ports actually bound (a Pub/Sub port that could not be bound is left out).
    """
    pubsub = (host, ports[PUBSUB]) if PUBSUB in ports and "salesforce" in ports else None
    boxes = build_sandboxes(webhook_url=webhook_url, webhook_secret=webhook_secret, pubsub=pubsub, **freebit)
    runners: list[web.AppRunner] = []
    bound: dict[str, int] = {}
    try:
        for name, port in ports.items():
            if name == PUBSUB:
                continue
            runner = await serve(boxes[name].app(), host, port)
            runners.append(runner)
            bound[name] = _bound_port(runner)
            log.info("sandbox %s listening on http://%s:%d", name, host, bound[name])
        salesforce = boxes["salesforce"]
        if pubsub is not None and isinstance(salesforce, SalesforceSandbox) and salesforce.pubsub.port:
            bound[PUBSUB] = salesforce.pubsub.port
        if ready_file is not None:
            await asyncio.to_thread(ready_file.write_text, json.dumps(bound))
        await stop.wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
    return bound


def _bound_port(runner: web.AppRunner) -> int:
    address = runner.addresses[0]
    return int(address[1])
