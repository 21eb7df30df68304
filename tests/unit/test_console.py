"""`fleet console` without a stack: rendering, outage banners, authentication and CSRF.

Contract: with ``FLEET_ENV=local`` every page opens without credentials and names the operator
"local"; elsewhere a request without the token (bearer or basic), and without a user header from a
trusted proxy, is answered 401 (a page, or JSON when asked), and the operator is the basic-auth
user or the proxy's user. Every POST needs the session's CSRF token and this console's Origin (or
Referer), else 403 with the reason. Kafka and PostgreSQL being unreachable is a banner that says
what is down and what still works, never a stack trace. The profile refuses a missing or weak token.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from workers.config import ConsoleSettings, KafkaSettings, PostgresSettings, Settings
from workers.console.app import build_app
from workers.console.fleet import breaker_state, health_targets
from workers.console.security import SESSION_COOKIE
from workers.profile import console_problems

TOKEN = "a-long-random-console-token-0123456789"
#: nothing listens on port 1: both dependencies are down
DOWN = {
    "kafka": KafkaSettings(bootstrap="127.0.0.1:1", request_timeout_ms=1_000),
    "postgres": PostgresSettings(dsn=SecretStr("postgresql://postgres@127.0.0.1:1/fleet")),
}

ClientFactory = Callable[..., Any]


@pytest.fixture
async def console() -> AsyncIterator[ClientFactory]:
    clients: list[TestClient[Any, Any]] = []

    async def make(env: str = "local", **console_options: Any) -> TestClient[Any, Any]:
        settings = Settings(env=env, console=ConsoleSettings(**console_options), **DOWN)  # type: ignore[arg-type]
        client = TestClient(TestServer(build_app(settings)))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def csrf_of(page: str) -> str:
    match = re.search(r'name="_csrf" value="([0-9a-f]+)"', page)
    assert match, "the page embeds the CSRF token in its forms"
    return match.group(1)


async def test_local_mode_needs_no_login_and_shows_an_outage_banner_instead_of_a_trace(
    console: ClientFactory,
) -> None:
    client = await console()
    for path in ("/orders", "/audit", "/fleet", "/dlq"):
        response = await client.get(path)
        page = await response.text()
        assert response.status == 200, (path, page)
        assert '<b id="operator">local</b>' in page
        assert "is down or unreachable" in page, path
        assert "Traceback" not in page
    orders = await (await client.get("/orders")).text()
    assert "PostgreSQL is down or unreachable" in orders
    assert "consumer groups and lag still work" in orders


async def test_an_unknown_page_and_a_bad_filter_are_pages_with_a_reason(console: ClientFactory) -> None:
    client = await console()
    missing = await client.get("/nowhere")
    assert missing.status == 404 and "Not Found" in await missing.text()
    group = await client.get("/dlq/no-such-group")
    assert group.status == 404 and "no such consumer group: no-such-group" in await group.text()
    as_json = await client.get("/dlq/no-such-group", headers={"Accept": "application/json"})
    assert as_json.status == 404
    assert (await as_json.json())["reason"].startswith("no such consumer group")
    bad = await client.get("/dlq/fleet.fulfillment?since=yesterday-ish")
    assert "is neither a relative time" in await bad.text()


async def test_outside_local_a_request_without_credentials_is_refused(console: ClientFactory) -> None:
    client = await console("staging", token=SecretStr(TOKEN))
    refused = await client.get("/fleet")
    assert refused.status == 401
    assert refused.headers["WWW-Authenticate"].startswith("Basic")
    assert "authentication required" in await refused.text()
    as_json = await client.get("/audit", headers={"Accept": "application/json"})
    assert as_json.status == 401 and "authentication required" in (await as_json.json())["reason"]
    wrong = await client.get("/audit", headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status == 401
    assert (await client.get("/livez")).status == 200, "the liveness probe needs no login"


async def test_a_bearer_token_or_basic_auth_names_the_operator(console: ClientFactory) -> None:
    client = await console("production", token=SecretStr(TOKEN))
    bearer = await client.get("/audit", headers={"Authorization": f"Bearer {TOKEN}"})
    assert bearer.status == 200 and '<b id="operator">token</b>' in await bearer.text()
    basic = base64.b64encode(f"alice:{TOKEN}".encode()).decode()
    page = await client.get("/audit", headers={"Authorization": f"Basic {basic}"})
    assert page.status == 200 and '<b id="operator">alice</b>' in await page.text()


async def test_a_proxy_user_header_counts_only_from_a_trusted_proxy(console: ClientFactory) -> None:
    trusted = await console("staging", proxy_user_header="X-Auth-Request-User", trusted_proxies=["127.0.0.1"])
    page = await trusted.get("/audit", headers={"X-Auth-Request-User": "bob@example.com"})
    assert page.status == 200 and '<b id="operator">bob@example.com</b>' in await page.text()
    elsewhere = await console("staging", proxy_user_header="X-Auth-Request-User", trusted_proxies=["10.9.8.7"])
    refused = await elsewhere.get("/audit", headers={"X-Auth-Request-User": "mallory"})
    assert refused.status == 401


async def test_a_post_needs_the_session_token_and_this_consoles_origin(console: ClientFactory) -> None:
    client = await console()
    page = await client.get("/dlq/fleet.fulfillment")
    token = csrf_of(await page.text())
    assert client.session.cookie_jar.filter_cookies(client.make_url("/"))[SESSION_COOKIE].value
    origin = str(client.make_url("")).rstrip("/")
    target = "/orders/801X0000000000001/retry"

    forged = await client.post(target, data={"_csrf": token}, headers={"Origin": "http://evil.example"})
    assert forged.status == 403
    assert "cross-site request refused: Origin http://evil.example is not this console" in await forged.text()

    no_token = await client.post(target, data={"reason": "x"}, headers={"Origin": origin})
    assert no_token.status == 403 and "CSRF token missing or wrong" in await no_token.text()

    no_origin = await client.post(target, data={"_csrf": token})
    assert no_origin.status == 403 and "no Origin, and Referer (none)" in await no_origin.text()

    # the genuine write passes both checks and reaches the retry, which meets the outage
    genuine = await client.post(target, data={"_csrf": token}, headers={"Origin": origin})
    text = await genuine.text()
    assert genuine.status == 503, text
    assert "a dependency is down" in text and "is down or unreachable" in text
    by_referer = await client.post(target, data={"_csrf": token}, headers={"Referer": f"{origin}/orders/x"})
    assert by_referer.status == 503


async def test_the_token_of_another_session_is_refused(console: ClientFactory) -> None:
    first = await console()
    token = csrf_of(await (await first.get("/dlq/fleet.fulfillment")).text())
    second = first.session.cookie_jar
    second.clear()
    origin = str(first.make_url("")).rstrip("/")
    refused = await first.post("/dlq/fleet.fulfillment/purge", data={"_csrf": token}, headers={"Origin": origin})
    assert refused.status == 403 and "CSRF token" in await refused.text()


def test_the_profile_refuses_a_console_without_a_real_secret_outside_local() -> None:
    assert console_problems(Settings(env="local")) == []
    missing = console_problems(Settings(env="production"))
    assert [p.variable for p in missing] == ["FLEET_CONSOLE__TOKEN"]
    weak = console_problems(Settings(env="staging", console=ConsoleSettings(token=SecretStr("changeme"))))
    assert [p.variable for p in weak] == ["FLEET_CONSOLE__TOKEN"] and "default or short" in weak[0].reason
    assert console_problems(Settings(env="production", console=ConsoleSettings(token=SecretStr(TOKEN)))) == []
    untrusted = console_problems(Settings(env="production", console=ConsoleSettings(proxy_user_header="X-User")))
    assert [p.variable for p in untrusted] == ["FLEET_CONSOLE__TRUSTED_PROXIES"]


def test_console_lists_read_commas_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_CONSOLE__HEALTH_URLS", "fulfillment=http://127.0.0.1:19101, sf-writer=http://h:2")
    monkeypatch.setenv("FLEET_CONSOLE__TRUSTED_PROXIES", '["10.0.0.1"]')
    settings = Settings()
    assert health_targets(settings.console.health_urls) == {
        "fulfillment": ["http://127.0.0.1:19101"],
        "sf-writer": ["http://h:2"],
    }
    assert settings.console.trusted_proxies == ["10.0.0.1"]


def test_the_breaker_state_is_read_from_a_metrics_page() -> None:
    page = (
        "# HELP fleet_circuit_breaker_state 0 closed, 1 open (alarm), 2 half-open\n"
        "# TYPE fleet_circuit_breaker_state gauge\n"
        'fleet_circuit_breaker_state{group="fleet.fulfillment"} 1.0\n'
    )
    assert breaker_state(page) == "open"
    assert breaker_state("") == "?"
