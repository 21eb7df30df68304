"""The chaos run's load: orders through the Salesforce sandbox, signed webhooks to the receivers.

Orders are seeded as a portal would create them and approved as an agent would (SIM orders with
``Status = Processed``), open loop over the run. The mix is ``orders_per_type`` Internet, VPN and
SIM orders (SIM half physical, half eSIM) for customers with a payment method, plus a few for a
customer without one (they must end parked, with the reason in Salesforce) and for one whose
account has no WHMCS client (they must end failed, with an error code).

Webhooks are ``InvoicePaid`` for synthetic portal users, each naming an invoice whose portal cache
key is seeded just before it is sent (without a TTL: the key must be busted, not expire). A sender
behaves like WHMCS's spool: it retries anything but a 2xx (409, 503, a dropped connection) with
back-off until it is accepted, signing each attempt anew. ``duplicate_webhooks`` of them are
delivered twice: to both receivers at the same moment, or once more after they were accepted.

``History`` is what the checker compares the end state with: what was offered and what the
senders were answered. Nothing here reads the fleet's own state.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import redis.asyncio as aioredis
from standardwebhooks.webhooks import Webhook

from bench.chaos.config import ChaosConfig

SEED_BATCH = 100
WEBHOOK_CONCURRENCY = 24
CLIENT_BASE = 870_000  # synthetic WHMCS client ids of the webhook users (id_mappings rows)
USERS = 200
SEND_DEADLINE_S = 240.0  # a webhook not accepted this long after its first attempt counts as refused

KINDS: dict[str, dict[str, Any]] = {
    "internet": {"customer": "tanaka", "Type": "Internet", "lines": ["INT-1G-GOLD", "INT-INSTALL-SINGLE"]},
    "vpn": {"customer": "suzuki", "Type": "VPN", "VPN_Region__c": "Tokyo", "lines": ["VPN-TOKYO", "VPN-ACTIVATION"]},
    "sim": {
        "customer": "suzuki",
        "Type": "SIM",
        "SIM_Type__c": "Physical SIM",
        "lines": ["SIM-D-20GB", "SIM-ACTIVATION"],
    },
    "esim": {"customer": "tanaka", "Type": "SIM", "SIM_Type__c": "eSIM", "lines": ["SIM-DV-5GB", "SIM-ACTIVATION"]},
    # ends parked: the WHMCS client has no payment method (PAYMENT_METHOD_MISSING)
    "parked": {"customer": "sato", "Type": "Internet", "lines": ["INT-1G-SILVER", "INT-INSTALL-SINGLE"]},
    # ends failed with an error code: the account has no WHMCS client (WHMCS_CLIENT_NOT_MAPPED)
    "unmapped": {"customer": "yamada", "Type": "Internet", "lines": ["INT-1G-GOLD", "INT-INSTALL-SINGLE"]},
}


@dataclass
class History:
    """What the load offered, and what the senders were answered (the checker's input)."""

    orders: dict[str, dict[str, Any]] = field(default_factory=dict)  # sf order id -> kind, approved_at
    webhooks: dict[str, dict[str, Any]] = field(default_factory=dict)  # webhook id -> key, status, attempts
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"orders": self.orders, "webhooks": self.webhooks, "notes": self.notes}


def order_plan(config: ChaosConfig, rng: random.Random) -> list[str]:
    """Kinds in approval order: ``orders_per_type`` of Internet, VPN and SIM, and about 2 % parked and
    1 % unmapped ones mixed in; shuffled by the seed."""
    n = config.orders_per_type
    kinds = ["internet"] * n + ["vpn"] * n + ["sim"] * (n - n // 2) + ["esim"] * (n // 2)
    kinds += ["parked"] * max(2, n * 3 // 50) + ["unmapped"] * max(1, n * 3 // 100)
    rng.shuffle(kinds)
    return kinds


def order_spec(kind: str, eid: int) -> dict[str, Any]:
    spec = dict(KINDS[kind])
    if kind == "esim":
        spec["EID__c"] = f"8904903200000{eid:019d}"
    return spec


class Orders:
    def __init__(self, config: ChaosConfig, http: httpx.AsyncClient, history: History) -> None:
        self.config, self.http, self.history = config, http, history
        self.base = config.sandbox_url("salesforce")
        self._eids = itertools.count(config.seed * 1_000_000)

    async def seed(self, kinds: list[str]) -> list[tuple[str, str]]:
        """Create the orders (Status Pending Review, as the portal does); returns (id, kind) in order."""
        created: list[tuple[str, str]] = []
        for start in range(0, len(kinds), SEED_BATCH):
            chunk = kinds[start : start + SEED_BATCH]
            specs = [order_spec(k, next(self._eids)) for k in chunk]
            answer = await _retrying(
                lambda specs=specs: self.http.post(f"{self.base}/_sandbox/seed", json={"orders": specs}, timeout=60)
            )
            created += [(o["id"], k) for o, k in zip(answer.json()["orders"], chunk, strict=True)]
        for order_id, kind in created:
            self.history.orders[order_id] = {"kind": kind, "type": KINDS[kind]["Type"], "approved_at": None}
        return created

    async def approve(self, orders: list[tuple[str, str]], span_s: float, stop: asyncio.Event) -> None:
        """Open loop: order i is approved at t0 + i * span / n (an agent's click each)."""
        t0, gap = time.monotonic(), span_s / max(1, len(orders))
        for i, (order_id, kind) in enumerate(orders):
            if stop.is_set():
                self.history.notes.append(f"approvals stopped early after {i} of {len(orders)}")
                return
            await asyncio.sleep(max(0.0, t0 + i * gap - time.monotonic()))
            body = {"status": "Processed", "activation_status": None} if KINDS[kind]["Type"] == "SIM" else {}
            url = f"{self.base}/_sandbox/orders/{order_id}/approve"
            await _retrying(lambda url=url, body=body: self.http.post(url, json=body, timeout=30))
            self.history.orders[order_id]["approved_at"] = time.time()


@dataclass(frozen=True)
class User:
    user_id: str
    client_id: int


def users(count: int = USERS) -> list[User]:
    ns = uuid.UUID("6f1c2d7e-0000-4000-8000-00000000c4a5")
    return [User(str(uuid.uuid5(ns, f"chaos-user-{i}")), CLIENT_BASE + i) for i in range(count)]


class Webhooks:
    """Signed ``InvoicePaid`` webhooks to the receivers, retried until accepted, as WHMCS's spool does."""

    def __init__(
        self,
        config: ChaosConfig,
        redis: aioredis.Redis,
        history: History,
        secret: str,
        key_of: Any,
        rng: random.Random,
    ) -> None:
        self.config, self.redis, self.history, self.rng = config, redis, history, rng
        self.signer, self.key_of = Webhook(secret), key_of
        self.receivers = config.receivers
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(10.0), limits=httpx.Limits(max_connections=64))
        self.gate = asyncio.Semaphore(WEBHOOK_CONCURRENCY)
        self.later: list[asyncio.Task[None]] = []

    async def run(self, span_s: float, stop: asyncio.Event) -> None:
        people = users()
        t0, gap = time.monotonic(), span_s / max(1, self.config.webhooks)
        invoice_base = self.config.seed * 10_000_000
        tasks: list[asyncio.Task[None]] = []
        for n in range(self.config.webhooks):
            if stop.is_set():
                self.history.notes.append(f"webhooks stopped early after {n} of {self.config.webhooks}")
                break
            await asyncio.sleep(max(0.0, t0 + n * gap - time.monotonic()))
            user = people[n % len(people)]
            webhook_id = f"msg_chaos_{self.config.seed}_{n}"
            key = self.key_of(user.user_id, invoice_base + n)
            body = _invoice_paid(user.client_id, invoice_base + n)
            await self._cache(key)  # the portal's cached invoice, which the webhook makes stale
            self.history.webhooks[webhook_id] = {"key": key, "client_id": user.client_id, "accepted": False}
            duplicate = self.rng.random() < self.config.duplicate_webhooks
            both = duplicate and len(self.receivers) > 1 and self.rng.random() < 0.5
            first = n % len(self.receivers)
            targets = list(range(len(self.receivers))) if both else [first]
            tasks.append(asyncio.create_task(self._deliver(webhook_id, body, targets, again=duplicate and not both)))
        await asyncio.gather(*tasks)
        await asyncio.gather(*self.later)
        await self.http.aclose()

    async def _cache(self, key: str) -> None:
        """Seed the key as the portal would cache it; while Redis restarts (a scheduled fault) there is no
        cache to make stale, so after a few tries the key is left out (the checker then finds it absent)."""
        for attempt in range(20):
            try:
                await self.redis.set(key, "{}")
                return
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError):
                await asyncio.sleep(0.1 * (attempt + 1))
        self.history.notes.append(f"{key}: not cached, Redis was down")

    async def _deliver(self, webhook_id: str, body: str, targets: list[int], *, again: bool) -> None:
        results = await asyncio.gather(*(self._until_accepted(webhook_id, body, t) for t in targets))
        record = self.history.webhooks[webhook_id]
        record["accepted"] = any(status // 100 == 2 for status, _ in results)
        record["status"] = [status for status, _ in results]
        record["attempts"] = sum(attempts for _, attempts in results)
        record["delivered_to"] = targets
        if again and record["accepted"]:  # redelivered later, as a sender that never saw the answer would
            record["redelivered"] = True
            self.later.append(asyncio.create_task(self._redeliver(webhook_id, body)))

    async def _redeliver(self, webhook_id: str, body: str) -> None:
        await asyncio.sleep(self.rng.uniform(1.0, 20.0))
        target = self.rng.randrange(len(self.receivers))
        status, attempts = await self._until_accepted(webhook_id, body, target)
        self.history.webhooks[webhook_id]["redelivery_status"] = status

    async def _until_accepted(self, webhook_id: str, body: str, target: int) -> tuple[int, int]:
        deadline, delay, attempts, status = time.monotonic() + SEND_DEADLINE_S, 0.2, 0, 0
        while time.monotonic() < deadline:
            attempts += 1
            async with self.gate:
                status = await self._post(webhook_id, body, target)
            if status // 100 == 2 or status in (400, 401, 413):  # accepted, or refused for good
                return status, attempts
            await asyncio.sleep(delay * self.rng.uniform(0.5, 1.5))
            delay = min(delay * 2, 5.0)
            target = (target + 1) % len(self.receivers)  # a spool would retry the same URL; a load balancer moves on
        return status, attempts

    async def _post(self, webhook_id: str, body: str, target: int) -> int:
        now = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self.signer.sign(webhook_id, now, body),
        }
        try:
            answer = await self.http.post(self.receivers[target], content=body, headers=headers)
        except httpx.HTTPError:
            return 0  # refused connection (a restarting receiver), reset, timeout: retried
        return answer.status_code


def _invoice_paid(client_id: int, invoice_id: int) -> str:
    data = {"client_id": client_id, "invoice_id": invoice_id, "status": "Paid", "total": 4800}
    return json.dumps({"event": "InvoicePaid", "occurred_at": datetime.now(UTC).isoformat(), "data": data})


async def _retrying(call: Any, attempts: int = 10) -> httpx.Response:
    """The sandboxes' control API, retried a little (it shares two cores with everything else)."""
    for attempt in range(attempts):
        try:
            answer: httpx.Response = await call()
            answer.raise_for_status()
            return answer
        except httpx.HTTPError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")
