"""Serve every sandbox (Salesforce, WHMCS, Freebit) from one process until told to stop.

Owns building the sandboxes with their webhook settings, binding each to its port, writing an
optional ready file (``{"whmcs": 18082, ...}``: what is actually served, so ``fleet sandbox up``
knows what to wait for) and cleaning up.
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
    if ready_file is not None:
        argv += ["--ready-file", str(ready_file)]
    if webhook_url:
        argv += ["--webhook-url", webhook_url]
    return argv


def build_sandboxes(
    *, webhook_url: str | None = None, webhook_secret: str = DEFAULT_WEBHOOK_SECRET, **freebit: Any
) -> dict[str, SandboxBase]:
    """One instance per available system; ``freebit`` passes e.g. ``activation_delay_s`` through."""
    return {
        "salesforce": SalesforceSandbox(),
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
    """Serve the sandboxes named in ``ports`` (port 0 = any free port) until ``stop`` is set.

    Returns the ports actually bound.
    """
    boxes = build_sandboxes(webhook_url=webhook_url, webhook_secret=webhook_secret, **freebit)
    runners: list[web.AppRunner] = []
    bound: dict[str, int] = {}
    try:
        for name, port in ports.items():
            runner = await serve(boxes[name].app(), host, port)
            runners.append(runner)
            bound[name] = _bound_port(runner)
            log.info("sandbox %s listening on http://%s:%d", name, host, bound[name])
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
