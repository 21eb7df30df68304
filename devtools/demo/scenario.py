"""The built-in scenario: the demo orders from approval to ``Activated``, one parked and resumed, and
invoice webhooks busting portal cache keys, driven over the sandboxes' control APIs.

    state = await Scenario(settings).run(on_tick=render, stop=stop)     # state.ok: every order fulfilled

What it does, as people would: the portal places the five ``DEMO_ORDERS`` (one Salesforce
transaction), an agent approves each (the eSIM order goes straight to ``Processed``; the physical
SIM order is approved, billed, waits at ``sim_processed`` until the agent sets ``Processed`` a few
seconds later, then takes a card from the SIM inventory and is registered: the 2026 SIM flow; the
VPN order is a scheduled activation, 8 s after seeding, on the saga's durable timer),
the customer without a pay method adds one in WHMCS once Salesforce shows ``PAYMENT_METHOD_MISSING``,
and billing creates and pays two invoices. Portal cache keys are seeded in Redis first so their
disappearance can be watched. Progress is polled every ``poll_interval_s`` from the Salesforce
sandbox (record reads that spend no API budget), the saga's tables (``fleet orders``) and Redis.

Owns the scenario's actions and filling in the progress model (``model.py``). Must not render
(``render.py``) or start processes (``fleet.py``). Every wait is bounded (``order_timeout_s``), so
the demo never hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import redis.asyncio as aioredis
import structlog

from adapters.db import create_pool
from adapters.saga_store import PgSagaStore
from devtools.demo.fleet import Endpoints
from devtools.demo.model import KeyProgress, OrderProgress, ScenarioState, demo_progress
from devtools.demo.probes import dead_letter_offsets, delta, forget_stale_sagas
from devtools.supervisor import ChildStatus
from workers import cache_keys as ck
from workers.config import Settings

log = structlog.get_logger(__name__)

PARKED_CODE = "PAYMENT_METHOD_MISSING"
NEW_PAYMETHOD = {"type": "CreditCard", "description": "Visa ending 1881", "card_last_four": "1881"}
KEY_TTL_S = 900  # seeded portal keys expire by themselves if nothing busts them
#: how long the agent takes to process a billed physical SIM order (in life: hours; scaled down)
PROCESS_AFTER_S = 2.0


class ScenarioError(Exception):
    """The scenario cannot start (a sandbox does not answer, the seed was refused)."""


# --- the scenario ------------------------------------------------------------------------------
Tick = Callable[[ScenarioState], None]


class Scenario:
    def __init__(
        self,
        settings: Settings,
        *,
        order_timeout_s: float = 60.0,
        poll_interval_s: float = 0.3,
        workers: Callable[[], list[ChildStatus]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.endpoints = Endpoints.of(settings)
        self.order_timeout_s = order_timeout_s
        self.poll_interval_s = poll_interval_s
        self._workers = workers
        self._clock = clock
        self.state = ScenarioState(demo_progress(), clock())
        self._background: list[asyncio.Task[None]] = []

    async def run(self, on_tick: Tick, stop: asyncio.Event | None = None) -> ScenarioState:
        stop = stop or asyncio.Event()
        async with contextlib.AsyncExitStack() as resources:
            self.http = await resources.enter_async_context(httpx.AsyncClient(timeout=5.0))
            self.redis = aioredis.from_url(self.settings.redis.url.get_secret_value(), decode_responses=True)
            resources.push_async_callback(self.redis.aclose)
            self.pool = await _pool(self.settings)
            resources.push_async_callback(self.pool.close)
            await self._prepare()
            dlq_before = await self._dead_letters()
            usage_before = await self._api_usage()
            await self._launch()
            invoices = asyncio.create_task(self._invoices())
            await self._watch(on_tick, stop)
            await _finish(invoices, timeout_s=10.0)
            for task in self._background:
                await _finish(task, timeout_s=10.0)
            await self._poll_keys()
            self.state.api_calls = await self._api_usage() - usage_before
            dlq_after = await self._dead_letters()
            self.state.dead_letters = (
                delta(dlq_before, dlq_after) if dlq_before is not None and dlq_after is not None else None
            )
        self.state.finished = True
        self._refresh_workers()
        on_tick(self.state)
        return self.state

    # --- set-up and actions --------------------------------------------------------------------
    async def _prepare(self) -> None:
        for name, base in self.endpoints.sandboxes.items():
            try:
                (await self.http.get(f"{base}/_sandbox/state")).raise_for_status()
            except httpx.HTTPError as exc:
                raise ScenarioError(f"the {name} sandbox does not answer at {base} ({exc}); is the fleet up?") from None
        await self._remove_paymethods_of_parking_customer()

    async def _remove_paymethods_of_parking_customer(self) -> None:
        """Make the parking precondition true even on sandboxes a previous demo run left behind."""
        client_id = _client_id(self._parking_order().customer)
        whmcs = (await self.http.get(f"{self.endpoints.whmcs}/_sandbox/state")).json()
        client: dict[str, Any] = next((c for c in whmcs.get("clients", []) if c.get("id") == client_id), {})
        for method in client.get("paymethods", []):
            await self.http.delete(f"{self.endpoints.whmcs}/_sandbox/paymethods/{method['id']}")

    async def _launch(self) -> None:
        """Seed every order in one portal transaction, seed the portal's keys, then approve."""
        orders = self.state.orders
        answer = await self.http.post(
            f"{self.endpoints.salesforce}/_sandbox/seed", json={"orders": [self._seed_spec(o) for o in orders]}
        )
        if answer.status_code != 201:
            raise ScenarioError(f"the Salesforce sandbox refused the demo orders: {answer.text}")
        for progress, created in zip(orders, answer.json()["orders"], strict=True):
            progress.sf_id, progress.number = created["id"], created["OrderNumber"]
        self.state.note(self._clock(), f"portal placed {len(orders)} orders ({', '.join(o.number for o in orders)})")
        await self._forget_stale_sagas([o.sf_id for o in orders])
        await self._seed_keys()
        for progress in orders:
            await self._approve(progress)

    def _seed_spec(self, progress: OrderProgress) -> dict[str, Any]:
        """The order as the portal places it: a scheduled one gets its time now (``scheduled_in_s``)."""
        spec = dict(progress.spec)
        delay = spec.pop("scheduled_in_s", None)
        if delay is not None:
            at = datetime.now(UTC) + timedelta(seconds=float(delay))
            spec.update(Activation_Type__c="Scheduled", Activation_Scheduled_At__c=at.isoformat(timespec="seconds"))
            progress.scheduled_for = at
        return spec

    async def _forget_stale_sagas(self, order_ids: list[str]) -> None:
        removed = await forget_stale_sagas(self.pool, order_ids)
        if removed:
            self.state.note(self._clock(), f"removed {removed} stale saga rows of ids the fresh sandbox reused")

    async def _approve(self, progress: OrderProgress) -> None:
        # eSIM: staff set Status = Processed at once (the SIM trigger); the Flow leaves the activation
        # status alone. Others, the physical SIM included: Approved, and the Flow sets
        # Activation_Status__c = Activating; the physical SIM gets Processed later (_process).
        sim = progress.spec.get("Type") == "SIM" and not _physical_sim(progress)
        body: dict[str, Any] = {"status": "Processed", "activation_status": None} if sim else {}
        answer = await self.http.post(
            f"{self.endpoints.salesforce}/_sandbox/orders/{progress.sf_id}/approve", json=body
        )
        answer.raise_for_status()
        progress.approved_at = self._clock()
        self.state.note(progress.approved_at, f"agent set {progress.number} to {'Processed' if sim else 'Approved'}")

    async def _seed_keys(self) -> None:
        """What the portal would have cached for these customers, via the contract's key builders."""
        from sandbox.demo_data import CUSTOMERS

        by_key = {c["key"]: c for c in CUSTOMERS}
        wanted: list[tuple[str, str]] = []
        for progress in self.state.orders:
            account = by_key[progress.customer]["sf_account_id"]
            wanted.append((ck.account_order(account, progress.sf_id), f"order {progress.number} changes"))
        for customer in {o.customer for o in self.state.orders}:
            user, account = by_key[customer]["user_id"], by_key[customer]["sf_account_id"]
            if user is None:
                continue
            wanted += [
                (ck.account_orders(account), f"{customer}'s orders change"),
                (ck.user_subscriptions(user), f"{customer}'s WHMCS services change"),
            ]
        wanted.append((ck.user_paymethods(by_key[self._parking_order().customer]["user_id"]), "pay method added"))
        await self._set_keys(wanted)

    async def _set_keys(self, wanted: list[tuple[str, str]]) -> None:
        now = self._clock()
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, _ in wanted:
                pipe.set(key, '{"demo": true}', ex=KEY_TTL_S)
            await pipe.execute()
        self.state.keys += [KeyProgress(key, why, now) for key, why in wanted]

    async def _invoices(self) -> None:
        """Billing creates an invoice for two customers and pays it: InvoiceCreated drops the invoice
        list; once it is gone the portal caches list and invoice again, and InvoicePaid drops both."""
        from sandbox.demo_data import CUSTOMERS

        for customer in CUSTOMERS[:2]:
            user, client_id = customer["user_id"], customer["whmcs_client_id"]
            await self._set_keys([(ck.user_invoices(user), f"{customer['key']}: invoice created")])
            created = await self.http.post(
                f"{self.endpoints.whmcs}/_sandbox/invoices", json={"clientid": client_id, "total": 4800}
            )
            invoice_id = created.json()["invoiceid"]
            self.state.note(self._clock(), f"WHMCS created invoice {invoice_id} for {customer['key']}")
            await self._until_gone(ck.user_invoices(user), timeout_s=10.0)
            why = f"{customer['key']}: invoice {invoice_id} paid"
            await self._set_keys([(ck.user_invoices(user), why), (ck.user_invoice(user, invoice_id), why)])
            await self.http.post(
                f"{self.endpoints.whmcs}/_sandbox/invoices", json={"action": "pay", "invoiceid": invoice_id}
            )
            self.state.note(self._clock(), f"WHMCS marked invoice {invoice_id} paid")

    async def _until_gone(self, key: str, timeout_s: float) -> None:
        deadline = self._clock() + timeout_s
        while await self.redis.exists(key) and self._clock() < deadline:
            await asyncio.sleep(0.05)

    async def _process(self, progress: OrderProgress) -> None:
        """The agent sets Processed on the billed physical SIM order: the card and Freebit follow."""
        await asyncio.sleep(PROCESS_AFTER_S)
        body = {"status": "Processed", "activation_status": None}
        url = f"{self.endpoints.salesforce}/_sandbox/orders/{progress.sf_id}/approve"
        answer = await self.http.post(url, json=body)
        answer.raise_for_status()
        self.state.note(self._clock(), f"agent set {progress.number} to Processed")

    async def _add_paymethod(self, progress: OrderProgress) -> None:
        client_id = _client_id(progress.customer)
        body = {"clientid": client_id, **NEW_PAYMETHOD}
        (await self.http.post(f"{self.endpoints.whmcs}/_sandbox/paymethods", json=body)).raise_for_status()
        progress.resumed_at = self._clock()
        self.state.note(progress.resumed_at, f"{progress.customer} added a pay method in WHMCS (client {client_id})")

    # --- watching ------------------------------------------------------------------------------
    async def _watch(self, on_tick: Tick, stop: asyncio.Event) -> None:
        while not all(o.done for o in self.state.orders):
            await self._poll()
            self._refresh_workers()
            on_tick(self.state)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_interval_s)
            if stop.is_set():
                self.state.interrupted = True
                self.state.note(self._clock(), "interrupted")
                return

    async def _poll(self) -> None:
        pending = [o for o in self.state.orders if not o.done]
        await asyncio.gather(*(self._poll_order(o) for o in pending), self._poll_keys())

    async def _poll_order(self, progress: OrderProgress) -> None:
        answer = await self.http.get(f"{self.endpoints.salesforce}/_sandbox/records/Order/{progress.sf_id}")
        if answer.status_code == 200:
            record = answer.json()
            progress.status, progress.activation = record.get("Status"), record.get("Activation_Status__c")
            progress.error_code, progress.whmcs_order_id = (
                record.get("Activation_Error_Code__c"),
                record.get("WHMCS_Order_ID__c"),
            )
        await self._read_saga(progress)
        await self._judge(progress)

    async def _read_saga(self, progress: OrderProgress) -> None:
        try:
            record = await PgSagaStore(self.pool).get(progress.sf_id)
        except (asyncpg.PostgresError, OSError):
            return  # no saga tables (the fulfillment worker's migration) or Postgres away: show "—"
        if record is not None:
            progress.saga_state, progress.saga_step = record.order.state, record.order.current_step

    async def _judge(self, progress: OrderProgress) -> None:
        now = self._clock()
        if progress.activation == "Activated" and progress.whmcs_order_id:
            self._finish(progress, "fulfilled", "", f"Activated, WHMCS order {progress.whmcs_order_id}")
        elif progress.error_code == PARKED_CODE:
            if progress.parked_at is None:  # once: adding the pay method is what resumes it
                progress.parked_at = now
                self.state.note(now, f"{progress.number} parked: {PARKED_CODE}")
                await self._add_paymethod(progress)
        elif progress.saga_state == "scheduled" and not progress.scheduled_seen:
            progress.scheduled_seen = True
            when = progress.scheduled_for.strftime("%H:%M:%S") if progress.scheduled_for else "its time"
            self.state.note(now, f"{progress.number} scheduled: waits on a durable timer until {when} UTC")
        elif _physical_sim(progress) and progress.saga_step == "sim_processed" and progress.saga_state == "parked":
            if progress.processed_at is None:  # once: the agent's Processed is what resumes it
                progress.processed_at = now
                self.state.note(now, f"{progress.number} billed in WHMCS; waiting for the agent's Processed")
                self._background.append(asyncio.create_task(self._process(progress)))
        elif progress.error_code or progress.saga_state == "failed":
            detail = progress.error_code or f"saga failed at {progress.saga_step}"
            self._finish(progress, "failed", detail, f"failed: {detail}")
        if not progress.done and progress.approved_at is not None and now - progress.approved_at > self.order_timeout_s:
            detail = f"after {self.order_timeout_s:.0f} s (saga: {_saga_text(progress)})"
            self._finish(progress, "timed out", detail, f"timed out {detail}")

    def _finish(self, progress: OrderProgress, outcome: str, detail: str, note: str) -> None:
        progress.outcome, progress.detail, progress.finished_at = outcome, detail, self._clock()
        self.state.note(progress.finished_at, f"{progress.number} ({progress.label}) {note}")

    async def _poll_keys(self) -> None:
        pending = [k for k in self.state.keys if k.dropped_at is None]
        if not pending:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in pending:
                pipe.exists(key.key)
            present = await pipe.execute()
        now = self._clock()
        for key, exists in zip(pending, present, strict=True):
            if not exists:
                key.dropped_at = now

    async def _dead_letters(self) -> dict[str, int] | None:
        """None when Kafka cannot be asked: the summary then shows "—" instead of failing the demo."""
        try:
            return await dead_letter_offsets(self.settings.kafka.connection())
        except Exception as exc:  # aiokafka raises KafkaError or OSError subclasses; either way: unknown
            log.warning("demo_dead_letters_unknown", error=repr(exc))
            return None

    async def _api_usage(self) -> int:
        state = (await self.http.get(f"{self.endpoints.salesforce}/_sandbox/state")).json()
        return int(state["api_usage"]["used"])

    def _refresh_workers(self) -> None:
        if self._workers is not None:
            self.state.workers = self._workers()

    def _parking_order(self) -> OrderProgress:
        from sandbox.demo_data import CUSTOMERS

        without = {c["key"] for c in CUSTOMERS if c["whmcs_client_id"] and not c["paymethods"]}
        return next(o for o in self.state.orders if o.customer in without)


# --- helpers -----------------------------------------------------------------------------------
def _saga_text(progress: OrderProgress) -> str:
    if progress.saga_state is None:
        return "no saga row yet"
    return f"{progress.saga_state} at {progress.saga_step}" if progress.saga_step else progress.saga_state


def _physical_sim(progress: OrderProgress) -> bool:
    return progress.spec.get("Type") == "SIM" and progress.spec.get("SIM_Type__c") != "eSIM"


def _client_id(customer: str) -> int:
    from sandbox.demo_data import CUSTOMERS

    return int(next(c["whmcs_client_id"] for c in CUSTOMERS if c["key"] == customer))


async def _pool(settings: Settings) -> asyncpg.Pool:
    try:
        return await create_pool(settings.postgres.dsn.get_secret_value(), 1, 2)
    except (OSError, asyncpg.PostgresError) as exc:
        raise ScenarioError(f"PostgreSQL does not answer ({exc}); run `fleet stack up`") from None


async def _finish(task: asyncio.Task[None], timeout_s: float) -> None:
    """Let the invoice side-show finish, bounded; its failure must not hide the orders' outcome."""
    try:
        await asyncio.wait_for(task, timeout_s)
    except (TimeoutError, httpx.HTTPError, KeyError, ValueError):
        task.cancel()
