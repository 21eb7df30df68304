"""``HttpFreebit`` against the Freebit sandbox over real HTTP: the shared contract, the wire format,
and the authKey life cycle.

Contract: the same behaviour as ``FakeFreebit`` (tests/contracts/freebit.py); every call is a POST
to ``/emptool/api/<path>/`` with one form field ``json`` carrying the authKey; an expired authKey
is renewed transparently (one more authOem, the call succeeds); concurrent callers that all hit
the expiry share one authOem; refused OEM credentials are ``AuthenticationFailed``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from urllib.parse import parse_qs

import httpx
import pytest
import pytest_asyncio

from adapters.freebit import HttpFreebit
from adapters.http import build_client
from events.errors import AuthenticationFailed
from sandbox.freebit import FreebitSandbox
from tests.contracts.freebit import DELAY, FreebitContract, account
from tests.contracts.support import ManualClock, Served, serving

pytestmark = pytest.mark.integration
TTL = 600.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest_asyncio.fixture
async def served(clock: ManualClock) -> AsyncIterator[Served]:
    async with serving(FreebitSandbox(activation_delay_s=DELAY, auth_ttl_s=TTL, clock=clock)) as served:
        yield served


@pytest_asyncio.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with build_client(2.0, 5.0, 20) as client:
        yield client


def http_freebit(served: Served, http: httpx.AsyncClient, oem_key: str = "sandbox-oem-key") -> HttpFreebit:
    return HttpFreebit(http, f"{served.base_url}/emptool/api", "PASI", oem_key)


def endpoints(served: Served) -> list[str]:
    return [r.endpoint for r in served.sandbox.requests]


class TestHttpFreebit(FreebitContract):
    @pytest.fixture
    def freebit(self, served: Served, http: httpx.AsyncClient) -> HttpFreebit:
        return http_freebit(served, http)


async def test_calls_post_one_json_form_field_with_the_auth_key(served: Served, http: httpx.AsyncClient) -> None:
    number = account()
    await http_freebit(served, http).register_physical_sim(number, serial_number="AX1234567890123", plan_code="P5")
    auth, register = served.sandbox.requests
    assert (auth.path, register.path) == ("/emptool/api/authOem/", "/emptool/api/master/addAcnt/")
    sent = json.loads(parse_qs(register.body)["json"][0])
    assert sent["authKey"] in served.sandbox.auth_keys  # type: ignore[attr-defined]
    assert (sent["account"], sent["productNumber"], sent["createType"]) == (number, "AX1234567890123", "new")


async def test_an_expired_auth_key_is_renewed_transparently(
    served: Served, http: httpx.AsyncClient, clock: ManualClock
) -> None:
    freebit = http_freebit(served, http)
    assert await freebit.account_detail(account()) is None
    await clock.advance(TTL)  # the sandbox now refuses the cached key with resultCode 202
    assert await freebit.account_detail(account()) is None
    assert endpoints(served) == ["authOem", "mvno/getDetail", "mvno/getDetail", "authOem", "mvno/getDetail"]
    refused = served.sandbox.requests[2]
    assert refused.status == 200 and len(served.sandbox.auth_keys) == 1  # type: ignore[attr-defined]


async def test_concurrent_callers_hitting_the_expiry_share_one_login(
    served: Served, http: httpx.AsyncClient, clock: ManualClock
) -> None:
    freebit = http_freebit(served, http)
    await freebit.account_detail(account())
    await clock.advance(TTL)
    results = await asyncio.gather(*(freebit.account_detail(account()) for _ in range(10)))
    assert results == [None] * 10
    assert endpoints(served).count("authOem") == 2  # the first login, then exactly one renewal
    # each caller is refused at most once (with the stale key) and then served with the fresh one
    assert 1 + 10 < endpoints(served).count("mvno/getDetail") <= 1 + 10 + 10


async def test_refused_oem_credentials_are_authentication_failed(served: Served, http: httpx.AsyncClient) -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        await http_freebit(served, http, oem_key="wrong").account_detail(account())
    assert caught.value.code == "401-201"
    assert endpoints(served) == ["authOem"]


async def test_control_route_expires_every_key(served: Served, http: httpx.AsyncClient) -> None:
    freebit = http_freebit(served, http)
    await freebit.account_detail(account())
    response = await http.post(f"{served.base_url}/_sandbox/expire-auth")
    assert response.json() == {"expired": 1}
    await freebit.account_detail(account())
    assert endpoints(served).count("authOem") == 2
