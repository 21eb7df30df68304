"""Scenario: the console outside FLEET_ENV=local, in a real browser (Debian's chromium).

Contract: started with ``FLEET_ENV=staging`` and a token, the console answers a browser without
credentials with 401 and a page saying authentication is required; with basic auth (any user name,
the token as password) the pages open and name that user as the operator. A page on another site
that makes the operator's browser POST a purge to the console (a forged cross-site request) is
answered 403 with the reason, and nothing is purged or audited. The console refuses to start in
staging without a token.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web

from events.errors import InvalidPayload
from events.topics import ConsumerGroup
from tests.console_browser import FLEET, chromium, console_env, free_port, running_console
from workers.dlq.testing import Letter, produce

pytestmark = pytest.mark.e2e

TOKEN = "e2e-console-token-0123456789abcdef"
GROUP = ConsumerGroup.CACHE_INVALIDATOR.value


async def jobs_of(dsn: str, operator: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM dlq_audit WHERE operator = $1", operator))
    finally:
        await conn.close()


async def purged(dsn: str, event_id: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM dlq_purged WHERE event_id = $1", event_id))
    finally:
        await conn.close()


async def attacker_site(console_url: str) -> AsyncIterator[str]:
    """A page on another site (``localhost``, not ``127.0.0.1``) whose form posts a purge to the console."""
    form = f"""<!doctype html><html><body>
<form id="f" method="post" action="{console_url}/dlq/{GROUP}/purge">
<input name="confirm" value="{GROUP}"><input name="_csrf" value="guessed"></form>
<script>document.getElementById("f").submit()</script></body></html>"""

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=form, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "localhost", port).start()
    try:
        yield f"http://localhost:{port}/"
    finally:
        await runner.cleanup()


async def test_unauthenticated_is_refused_and_a_forged_cross_site_post_is_refused(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    (letter,) = await produce(stack_env["KAFKA_BOOTSTRAP"], GROUP, [Letter(error=InvalidPayload("bad"))])
    dsn = stack_env["DATABASE_URL"]
    extra = {"FLEET_ENV": "staging", "FLEET_CONSOLE__TOKEN": TOKEN}
    async with running_console(stack_env, tmp_path / "console.log", **extra) as console, chromium() as browser:
        # A browser context without credentials. Its own HTTP client asks: a headless page would abort
        # the navigation on the basic-auth challenge (ERR_INVALID_AUTH_CREDENTIALS) and show nothing.
        anonymous = await browser.new_context()
        answer = await anonymous.request.get(f"{console.url}/dlq/{GROUP}")
        text = await answer.text()
        assert answer.status == 401 and "authentication required" in text
        assert letter.letter.key not in text
        await anonymous.close()

        operator = f"oncall-{free_port()}"
        context = await browser.new_context(http_credentials={"username": operator, "password": TOKEN})
        page = await context.new_page()
        response = await page.goto(f"{console.url}/dlq/{GROUP}")
        assert response is not None and response.status == 200
        assert await page.locator("#operator").inner_text() == operator
        assert letter.letter.key in await page.locator("#records").inner_text()

        sites = attacker_site(console.url)
        evil = await anext(sites)
        try:
            purge_url = f"{console.url}/dlq/{GROUP}/purge"
            # the first answer may be the basic-auth challenge the browser then answers with credentials
            async with page.expect_response(lambda r: r.url == purge_url and r.status != 401) as posted:
                await page.goto(evil)
            refused = await posted.value
            assert refused.status == 403
            await page.wait_for_url(purge_url)
            reason = await page.locator("#reason").inner_text()
            assert "cross-site request refused: Origin http://localhost:" in reason
        finally:
            await sites.aclose()

    assert await jobs_of(dsn, operator) == 0, "the forged request reached no purge"
    assert await purged(dsn, letter.letter.event_id) == 0


def test_the_console_refuses_to_start_in_staging_without_a_token(stack_env: dict[str, str]) -> None:
    env = console_env(stack_env, free_port(), FLEET_ENV="staging")
    done = subprocess.run([FLEET, "console"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "FLEET_CONSOLE__TOKEN: missing" in done.stderr
