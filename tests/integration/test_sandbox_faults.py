"""Injected sandbox faults, seen through the real adapters: each must land in the right error class.

Contract (for WHMCS and Freebit alike): 429 with Retry-After → ``RateLimited`` carrying the
delay; 500/503 → ``UpstreamUnavailable``; a held request with a short client read timeout →
``UpstreamTimeout``; a dropped connection → retryable; a malformed body → ``InvalidPayload``
(permanent) naming the operation; injected latency is at least what was asked for. Faults are
set through the control API over HTTP, as an operator would.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio

from adapters.freebit import HttpFreebit
from adapters.http import build_client
from adapters.whmcs import HttpWhmcs
from events.errors import (
    FleetError,
    InvalidPayload,
    RateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
    is_retriable,
)
from sandbox.freebit import FreebitSandbox
from sandbox.whmcs import WhmcsSandbox
from tests.contracts.support import Served, serving

pytestmark = pytest.mark.integration


@dataclass
class Target:
    """One adapter call and the fault endpoint key that call hits."""

    name: str
    served: Served
    endpoint: str
    call: Callable[[], Awaitable[Any]]

    async def fault(self, http: httpx.AsyncClient, **spec: Any) -> None:
        response = await http.post(f"{self.served.base_url}/_sandbox/faults", json={"endpoint": self.endpoint, **spec})
        assert response.status_code == 201, response.text


@pytest_asyncio.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with build_client(1.0, 0.5, 10) as client:  # a short read timeout, for the "timeout" fault
        yield client


@pytest_asyncio.fixture(params=["whmcs", "freebit"])
async def target(request: pytest.FixtureRequest, http: httpx.AsyncClient) -> AsyncIterator[Target]:
    if request.param == "whmcs":
        async with serving(WhmcsSandbox()) as served:
            whmcs = HttpWhmcs(http, f"{served.base_url}/includes/api.php", "fleet-api", "sandbox-whmcs-secret")
            yield Target("whmcs", served, "GetClientsDetails", lambda: whmcs.get_client(1001))
    else:
        async with serving(FreebitSandbox()) as served:
            freebit = HttpFreebit(http, f"{served.base_url}/emptool/api", "PASI", "sandbox-oem-key")
            yield Target("freebit", served, "mvno/getDetail", lambda: freebit.account_detail("08011112222"))


async def failure_of(target: Target) -> FleetError:
    with pytest.raises(FleetError) as caught:
        await target.call()
    return caught.value


async def test_429_with_retry_after_is_rate_limited(target: Target, http: httpx.AsyncClient) -> None:
    await target.fault(http, kind="error", status=429, retry_after=7, times=1)
    error = await failure_of(target)
    assert isinstance(error, RateLimited)
    assert (error.retry_after, error.status, error.upstream) == (7.0, 429, target.name)
    await target.call()  # the fault fired once; the next call is served


@pytest.mark.parametrize("status", [500, 503])
async def test_5xx_is_upstream_unavailable(target: Target, http: httpx.AsyncClient, status: int) -> None:
    await target.fault(http, kind="error", status=status, times=1)
    error = await failure_of(target)
    assert isinstance(error, UpstreamUnavailable) and error.status == status and error.retriable


async def test_a_held_request_is_upstream_timeout(target: Target, http: httpx.AsyncClient) -> None:
    await target.fault(http, kind="timeout", hold_s=5, times=1)
    started = time.monotonic()
    error = await failure_of(target)
    assert isinstance(error, UpstreamTimeout) and error.retriable
    assert time.monotonic() - started < 4, "the client's read timeout, not the hold, must end the call"


async def test_a_dropped_connection_is_retryable(target: Target, http: httpx.AsyncClient) -> None:
    await target.fault(http, kind="drop", times=1)
    error = await failure_of(target)
    assert isinstance(error, UpstreamUnavailable) and is_retriable(error)
    faulted = [r for r in target.served.sandbox.requests if r.fault == "drop"]
    assert len(faulted) == 1 and faulted[0].status is None  # nothing was answered


async def test_a_malformed_body_is_a_clear_permanent_error(target: Target, http: httpx.AsyncClient) -> None:
    await target.fault(http, kind="malformed", times=1)
    error = await failure_of(target)
    assert isinstance(error, InvalidPayload) and not is_retriable(error)
    assert error.code == "MALFORMED_RESPONSE"
    assert (
        target.endpoint in error.message
    )  # names the operation, e.g. "WHMCS GetClientsDetails returned a malformed body"


async def test_injected_latency_is_measurable(target: Target, http: httpx.AsyncClient) -> None:
    await target.call()  # warm up (connection, Freebit's authKey) so only the fault is timed
    await target.fault(http, kind="latency", latency_ms=300, times=1)
    started = time.monotonic()
    await target.call()
    assert time.monotonic() - started >= 0.3
    assert [r.fault for r in target.served.sandbox.requests if r.endpoint == target.endpoint][-1] == "latency"


async def test_faults_hit_only_their_endpoint(http: httpx.AsyncClient) -> None:
    """A fault on Freebit's authOem fails the login; one on another path leaves the call alone."""
    async with serving(FreebitSandbox()) as served:
        freebit = HttpFreebit(http, f"{served.base_url}/emptool/api", "PASI", "sandbox-oem-key")
        await http.post(f"{served.base_url}/_sandbox/faults", json={"endpoint": "master/cnclAcnt", "status": 503})
        assert await freebit.account_detail("08011112222") is None
        await http.post(f"{served.base_url}/_sandbox/faults", json={"endpoint": "authOem", "status": 503})
        await http.post(f"{served.base_url}/_sandbox/expire-auth")
        with pytest.raises(UpstreamUnavailable):
            await freebit.account_detail("08011112222")
