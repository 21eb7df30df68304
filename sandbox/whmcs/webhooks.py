"""Outbound webhooks of the WHMCS sandbox: what a custom WHMCS hook file POSTing to the portal would do.

Classic WHMCS has no native webhooks; deployments add ``add_hook('InvoicePaid', ...)`` files that
POST somewhere. This emitter plays that file: JSON ``{"event", "occurred_at", "data"}`` signed
with Standard Webhooks headers, delivered in the background (never blocking the API answer),
retried with exponential back-off on non-2xx or connection errors up to ``max_attempts``, every
attempt recorded in ``deliveries``. Deliveries are concurrent: receivers get no ordering guarantee.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from standardwebhooks.webhooks import Webhook


@dataclass
class Delivery:
    """One attempt. ``status`` is the receiver's HTTP status, None when the connection failed."""

    webhook_id: str
    event: str
    attempt: int
    url: str
    at: float
    status: int | None = None
    error: str | None = None
    delivered: bool = False


@dataclass
class WebhookEmitter:
    url: str | None
    secret: str
    max_attempts: int = 5
    backoff_s: float = 0.2
    timeout_s: float = 5.0
    events: list[dict[str, Any]] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _session: aiohttp.ClientSession | None = None

    def emit(self, event: str, data: dict[str, Any]) -> None:
        """Queue one event; returns at once. Without a URL the event is only recorded."""
        message = {"event": event, "occurred_at": datetime.now(UTC).isoformat(), "data": data}
        webhook_id = f"msg_{uuid.uuid4().hex}"
        self.events.append({"webhook_id": webhook_id, **message})
        if self.url:
            task = asyncio.get_running_loop().create_task(self._deliver(self.url, webhook_id, message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait for in-flight deliveries (tests, shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def state(self) -> dict[str, Any]:
        return {
            "webhook_url": self.url,
            "webhook_events": self.events,
            "webhook_deliveries": [asdict(d) for d in self.deliveries],
        }

    # --- delivery --------------------------------------------------------------------------
    async def _deliver(self, url: str, webhook_id: str, message: dict[str, Any]) -> None:
        body = json.dumps(message, separators=(",", ":"))
        for attempt in range(1, self.max_attempts + 1):
            delivery = Delivery(webhook_id, message["event"], attempt, url, time.time())
            self.deliveries.append(delivery)
            await self._attempt(url, webhook_id, body, delivery)
            if delivery.delivered:
                return
            if attempt < self.max_attempts:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))

    async def _attempt(self, url: str, webhook_id: str, body: str, delivery: Delivery) -> None:
        # the same webhook-id on every retry lets receivers de-duplicate; the timestamp is re-signed
        now = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(self.secret).sign(webhook_id, now, body),
        }
        try:
            async with self._client().post(url, data=body.encode(), headers=headers) as response:
                delivery.status = response.status
                delivery.delivered = 200 <= response.status < 300
        except (aiohttp.ClientError, TimeoutError) as exc:
            delivery.error = f"{type(exc).__name__}: {exc}"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self._session
