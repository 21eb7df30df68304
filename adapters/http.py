"""Shared httpx plumbing for every HTTP adapter (WHMCS, Freebit, Salesforce).

Owns three things: building an ``httpx.AsyncClient`` from plain numbers (the composition root
calls it), turning httpx transport failures into our retryable errors, and turning 429/5xx
answers into ``RateLimited``/``UpstreamUnavailable`` (with ``Retry-After`` parsed). It must not
read configuration, log, or know any vendor's body format: vendor result codes are mapped by
each adapter's own private function.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

import httpx

from events.errors import RateLimited, RetryableError, UpstreamTimeout, UpstreamUnavailable

#: a Retry-After longer than this is clamped: a vendor asking for an hour should not park a
#: partition for an hour; the runtime's retry tiers take over instead
MAX_RETRY_AFTER_S = 300.0


def build_client(
    timeout_connect: float,
    timeout_read: float,
    max_connections: int,
    *,
    headers: dict[str, str] | None = None,
) -> httpx.AsyncClient:
    """An AsyncClient with explicit connect/read/write/pool timeouts and a bounded pool.

    Write and pool timeouts follow the read timeout: a stuck upload or an exhausted pool is as
    bad as a slow answer. Redirects are not followed, because every vendor endpoint we call is
    a fixed POST and a redirect means misconfiguration.
    """
    timeout = httpx.Timeout(connect=timeout_connect, read=timeout_read, write=timeout_read, pool=timeout_read)
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return httpx.AsyncClient(timeout=timeout, limits=limits, headers=headers, follow_redirects=False)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), clamped.

    Returns None when the header is absent or unparsable, so callers fall back to their own
    back-off instead of trusting garbage.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def map_transport_error(exc: httpx.TransportError, *, upstream: str, operation: str) -> RetryableError:
    """Timeouts become ``UpstreamTimeout``; refused, reset or dropped connections ``UpstreamUnavailable``.

    Both are retryable: nothing the vendor said tells us the request was wrong. Callers whose
    request is not idempotent (WHMCS AddOrder) must search before re-creating.
    """
    detail = f"{type(exc).__name__}: {exc}".rstrip(": ")
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"{operation} timed out ({detail})", upstream=upstream)
    return UpstreamUnavailable(f"{operation} failed in transport ({detail})", upstream=upstream)


def raise_for_transient_status(response: httpx.Response, *, upstream: str, operation: str) -> None:
    """Raise ``RateLimited`` for 429 and ``UpstreamUnavailable`` for 5xx; return for anything else.

    4xx other than 429 is left to the adapter, because vendors put business errors (and WHMCS
    its authentication failure) in 4xx bodies that only the adapter can read.
    """
    status = response.status_code
    if status != 429 and status < 500:
        return
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if status == 429:
        raise RateLimited(f"{operation} rate limited", upstream=upstream, status=status, retry_after=retry_after)
    raise UpstreamUnavailable(
        f"{operation} answered HTTP {status}", upstream=upstream, status=status, retry_after=retry_after
    )


async def send(
    client: httpx.AsyncClient, method: str, url: str, *, upstream: str, operation: str, **kwargs: Any
) -> httpx.Response:
    """One request with the shared transport and status mapping applied; the body is read."""
    try:
        response = await client.request(method, url, **kwargs)
    except httpx.TransportError as exc:
        raise map_transport_error(exc, upstream=upstream, operation=operation) from exc
    raise_for_transient_status(response, upstream=upstream, operation=operation)
    return response
