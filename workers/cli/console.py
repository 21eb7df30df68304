"""`fleet console`: start the ops web app (docs/console.md).

Owns the option parsing, the start-up refusal outside ``FLEET_ENV=local`` when the console's
authentication is not configured (``workers.profile.console_problems``), and serving the app until
SIGINT/SIGTERM. Must not hold the pages or their logic (``workers.console``).
Exit codes: 0 stopped, 2 refused to start (configuration).
"""

from __future__ import annotations

import asyncio
import signal

import click
import structlog
from aiohttp import web

from workers.cli._context import Context, pass_ctx, run_async
from workers.config import Settings
from workers.console.app import build_app
from workers.profile import console_problems

log = structlog.get_logger(__name__)


@click.command(name="console")
@click.option("--host", help="listen address (default FLEET_CONSOLE__HOST)")
@click.option("--port", type=click.IntRange(0, 65535), help="listen port (default FLEET_CONSOLE__PORT; 0 = any free)")
@pass_ctx
def group(ctx: Context, host: str | None, port: int | None) -> None:
    """The ops console in a browser: fleet, dead letters (replay, purge), orders (retry), audit log.

    Outside FLEET_ENV=local it requires FLEET_CONSOLE__TOKEN (bearer or basic auth) or an SSO proxy's
    user header (FLEET_CONSOLE__PROXY_USER_HEADER from FLEET_CONSOLE__TRUSTED_PROXIES).
    """
    settings = ctx.settings
    found = console_problems(settings)
    if found:
        for problem in found:
            click.echo(f"fleet console: {problem.line()}", err=True)
        raise SystemExit(2)
    run_async(serve(settings, host or settings.console.host, settings.console.port if port is None else port))


async def serve(settings: Settings, host: str, port: int) -> None:
    runner = web.AppRunner(build_app(settings), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    url = f"http://{host}:{bound}/"
    click.echo(f"fleet console: {url} (env {settings.env})", err=True)
    log.info("console_started", url=url, env=settings.env)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
