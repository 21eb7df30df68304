"""End-to-end benchmark: the whole fleet under the demo supervisor, orders and webhooks through the sandboxes.

    python -m bench.e2e_bench [--orders 1000] [--paced-orders 200 --paced-rate 4] [--out bench/results/e2e.json]
    python -m bench.e2e_bench --baseline-orders 300   # a shorter burst at 1 record in flight per partition
    python -m bench.e2e_bench --no-baseline-burst     # without that burst (and the restart it takes)
    python -m bench.e2e_bench --skip-orders           # the webhook phase alone

What runs: the local stack, the sandboxes and the five workers exactly as ``fleet demo up`` starts
them (``devtools.demo.fleet``), with fixed latencies injected through the sandboxes' fault API
(default: 20 ms per Salesforce REST call, 30 ms per WHMCS call, 20 ms per Freebit call, SIM
registrations active at once). Every figure is read from what the sandboxes record; nothing is
added to them:

* latency of an order = ``commitTimestamp`` of the change event that approved it (an agent's
  ``Status`` change) → ``commitTimestamp`` of the change event carrying ``Activation_Status__c =
  Activated`` (the sf-writer's write), both from the Salesforce sandbox's event log (polled), with
  the records' ``LastModifiedDate`` as fallback when the log has already dropped an event;
* the latency floor = injected latency × the calls on an order's critical path, per order type,
  counted from the sandboxes' request logs for one order of that type running alone (calibrated
  before and after the paced phase, because WHMCS look-before-create pages through the client's
  orders, so later orders make more calls);
* Salesforce API calls per order = the sandbox's API-usage counter (what ``Sforce-Limit-Info``
  reports) from the first approval to the last activation, divided by the orders;
* webhook → cache key gone: signed webhooks (Standard Webhooks, as the WHMCS sandbox signs them)
  fired at the receiver at a fixed rate, each naming an invoice whose portal key was seeded; the
  key counts as gone when the cache-invalidator's notice naming it arrives on the invalidation
  channel (it publishes after ``UNLINK``); the keys are checked with ``EXISTS`` afterwards. Per
  stage (``stages``): scheduled send → the record's CreateTime (the receiver's producer stamps it)
  → key gone, and CreateTime → first read by the bench's own group-less consumer of the billing
  topic (Kafka's delivery floor under the same load; that consumer is one more reader the broker
  serves, a few % of a core at 1,000/s). The notice listener and that consumer run in an observer
  process of their own: read on the load generator's loop, a notice would wait for the loop's turn
  and the figure would include the bench's own lag. ``workers``: CPU ms per webhook of the receiver and the
  invalidator (/proc, the whole run) and the invalidator's handler time per record (its /metrics);
* the invalidator's drain rate: ``--webhook-drain`` InvoiceChanged events produced straight onto
  the billing topic by one producer (the receiver is not on this path), first produce → last notice.

Phases, in order:

1. burst at key concurrency 1 (``orders.burst_key_concurrency_1``): ``--baseline-orders`` (1,000)
   approved as fast as the control API takes them, on workers started with
   ``FLEET_RUNTIME__MAX_IN_FLIGHT_PER_PARTITION=1`` (one record at a time per partition, the
   runtime before key concurrency); those workers are then stopped and the five started again
   with each route's own value (fulfillment: 16; ``--keys-in-flight N`` sets N for every worker;
   a worker with a pool holds at most ``max_pool - 1`` = 31 keys at once);
2. calibrate → paced (``--paced-orders``, 200, open loop at ``--paced-rate``, 4/s: the latency
   distribution against the floor) → calibrate → burst (``--orders``, 1,000, as fast as the control
   API takes them: orders/s);
3. webhooks (each rate, then the drain), on the same workers as 2.

``orders.key_concurrency_speedup`` = orders/s of burst 2 ÷ orders/s of burst 1 (target ≥ 5); each
burst report carries the ``max_in_flight_per_partition`` it ran with. Rates are compared, not spans
(300 vs 1,000 orders). Burst 1 runs first, so one restart suffices and everything after it measures
the default workers; it runs while each demo client has fewer WHMCS orders (look-before-create
pages through them, 100 a page), so its orders make fewer WHMCS calls (``whmcs_calls_per_order``
in each report) and the ratio errs low, not high. The sandboxes run under a supervisor of their
own and stay up across the restart (same faults, request logs, change-event log, API-usage
counter). ``--no-baseline-burst`` skips phase 1 and the restart; ``--skip-orders`` skips 1 and 2.
A part whose workers are missing, or that was skipped, is reported as "not measured: <reason>".

The bench's own Kafka clients (the drain's producer, the tap, the lag check) connect through the
fleet's ``KafkaConnection`` from the settings (the stack's address, TLS and SASL from
``FLEET_KAFKA__*``: ``bench.kafka_connection``); the workers build theirs from the same settings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]
from standardwebhooks.webhooks import Webhook

from adapters.db import create_pool, seed_id_mappings
from adapters.kafka import KafkaConnection, durable_producer, start_client
from bench.chaos.checker import REGISTRATION_ENDPOINTS, registered_account
from bench.ingress_bench import machine_info, signed_request
from bench.kafka_connection import bench_connection
from devtools.demo.fleet import Endpoints, Fleet, FleetOptions, health_ports
from devtools.demo.probes import forget_stale_sagas
from devtools.supervisor import ChildStatus, StopReport
from events.base import to_envelope
from events.billing import InvoiceChanged
from events.envelope import to_record
from events.topics import ConsumerGroup, Topic
from sandbox.demo_data import sf_id
from workers import cache_keys as ck
from workers.config import STACK_ENV_FILE, Settings, load_settings
from workers.fulfillment.policy import POLL_FIRST_S
from workers.logs import configure_logging
from workers.routes import ROUTES

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "e2e.json"
ORDER_CHANNEL = "/data/OrderChangeEvent"
SF_REST_ENDPOINTS = ("sobjects.get", "sobjects.update", "query", "composite.update")
NOT_ON_PATH = ("oauth.token", "authOem")  # once per process, not per order
ORDER_WORKERS = ("sf-cdc", "fulfillment", "sf-writer")
SF_ORDER_MARKER = re.compile(r"sfOrderId=([A-Za-z0-9]+)")  # AddOrder's notes (workers/fulfillment/steps.py)
WEBHOOK_WORKERS = ("whmcs-webhooks", "cache-invalidator")
SEED_BATCH = 200
BENCH_CLIENT_BASE = 880_000  # synthetic WHMCS client ids for the webhook phase (id_mappings rows)
IN_FLIGHT_ENV = "FLEET_RUNTIME__MAX_IN_FLIGHT_PER_PARTITION"  # RuntimeSettings.max_in_flight_per_partition
BASELINE_IN_FLIGHT = 1  # one record at a time per partition: the runtime before key concurrency


# --- the order mix ---------------------------------------------------------------------------------
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
}
MIX = ("internet", "internet", "vpn", "sim", "esim")  # 40 % Internet, 20 % VPN, 40 % SIM (half eSIM)
_eids = itertools.count(int(time.time()) % 10**9)


def order_spec(kind: str) -> dict[str, Any]:
    spec = dict(KINDS[kind])
    if kind == "esim":
        spec["EID__c"] = f"8904903200000{next(_eids):019d}"
    return spec


@dataclass(frozen=True)
class Latencies:
    salesforce_ms: float
    whmcs_ms: float
    freebit_ms: float
    activation_delay_s: float

    def floor_ms(self, calls: dict[str, int]) -> float:
        cost = (
            calls.get("salesforce", 0) * self.salesforce_ms
            + calls.get("whmcs", 0) * self.whmcs_ms
            + calls.get("freebit", 0) * self.freebit_ms
        )
        # a pending registration is looked at again by a wake-up, never sooner than the first poll
        wait = max(self.activation_delay_s, POLL_FIRST_S) * 1000 if self.activation_delay_s > 0 else 0.0
        return cost + wait


# --- the sandboxes, through their control APIs -----------------------------------------------------
class Sandboxes:
    def __init__(self, endpoints: Endpoints, http: httpx.AsyncClient) -> None:
        self.urls = endpoints.sandboxes
        self.http = http
        self._seq = dict.fromkeys(self.urls, 0)

    async def inject(self, lat: Latencies) -> None:
        for name in self.urls:
            (await self.http.delete(f"{self.urls[name]}/_sandbox/faults")).raise_for_status()
        specs = [("salesforce", e, lat.salesforce_ms) for e in SF_REST_ENDPOINTS]
        specs += [("whmcs", "*", lat.whmcs_ms), ("freebit", "*", lat.freebit_ms)]
        for name, endpoint, ms in specs:
            if ms > 0:
                fault = {"endpoint": endpoint, "kind": "latency", "latency_ms": ms}
                (await self.http.post(f"{self.urls[name]}/_sandbox/faults", json=fault)).raise_for_status()
        # a daily budget the benchmark cannot exhaust; usage is read as a delta anyway
        await self.http.post(f"{self.urls['salesforce']}/_sandbox/api-usage", json={"used": 0, "limit": 10_000_000})

    async def clear_faults(self) -> None:
        for url in self.urls.values():
            with contextlib.suppress(httpx.HTTPError):
                await self.http.delete(f"{url}/_sandbox/faults")

    async def state(self, name: str) -> dict[str, Any]:
        answer = await self.http.get(f"{self.urls[name]}/_sandbox/state")
        answer.raise_for_status()
        return dict(answer.json())

    async def api_usage(self) -> int:
        return int((await self.state("salesforce"))["api_usage"]["used"])

    async def seed(self, specs: list[dict[str, Any]]) -> list[str]:
        ids: list[str] = []
        for start in range(0, len(specs), SEED_BATCH):
            answer = await self.http.post(
                f"{self.urls['salesforce']}/_sandbox/seed",
                json={"orders": specs[start : start + SEED_BATCH]},
                timeout=60,
            )
            answer.raise_for_status()
            ids += [o["id"] for o in answer.json()["orders"]]
        return ids

    async def approve(self, order_id: str, sim: bool) -> int:
        """An agent approves (SIM: Status = Processed); returns the commit's LastModifiedDate in ms."""
        body = {"status": "Processed", "activation_status": None} if sim else {}
        answer = await self.http.post(f"{self.urls['salesforce']}/_sandbox/orders/{order_id}/approve", json=body)
        answer.raise_for_status()
        return _sf_ms(answer.json()["LastModifiedDate"])

    async def record(self, order_id: str) -> dict[str, Any]:
        answer = await self.http.get(f"{self.urls['salesforce']}/_sandbox/records/Order/{order_id}")
        answer.raise_for_status()
        return dict(answer.json())

    async def requests_since_mark(self, name: str) -> list[dict[str, Any]]:
        """The request log entries since the last call (per sandbox)."""
        answer = await self.http.get(
            f"{self.urls[name]}/_sandbox/requests", params={"since": self._seq[name]}, timeout=60
        )
        rows = list(answer.json())
        if rows:
            self._seq[name] = max(r["seq"] for r in rows)
        return rows

    async def mark(self) -> None:
        for name in self.urls:
            await self.requests_since_mark(name)


def _sf_ms(stamp: str) -> int:
    return int(datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp() * 1000)


# --- the change-event log ----------------------------------------------------------------------------
@dataclass
class EventWatch:
    """Polls the Salesforce sandbox's retained Order change events; keeps approval and activation commits."""

    sandboxes: Sandboxes
    approved_ms: dict[str, int] = field(default_factory=dict)
    activated_ms: dict[str, int] = field(default_factory=dict)
    after: int = 0
    full_pages: int = 0  # a poll that returned the whole retention window may have missed events

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.poll()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
        await self.poll()

    async def poll(self) -> None:
        url = f"{self.sandboxes.urls['salesforce']}/_sandbox/events"
        answer = await self.sandboxes.http.get(url, params={"channel": ORDER_CHANNEL, "after": self.after}, timeout=30)
        deliveries = answer.json()
        self.full_pages += len(deliveries) >= 1000
        for delivery in deliveries:
            self.after = max(self.after, int(delivery["data"]["event"]["replayId"]))
            self._note(delivery["data"]["payload"])

    def _note(self, payload: dict[str, Any]) -> None:
        header = payload["ChangeEventHeader"]
        if header["changeType"] != "UPDATE":
            return
        at, changed = int(header["commitTimestamp"]), set(header["changedFields"])
        for record_id in header["recordIds"]:
            if "Status" in changed and payload.get("Status") in ("Approved", "Processed"):
                self.approved_ms.setdefault(record_id, at)
            if payload.get("Activation_Status__c") == "Activated":
                self.activated_ms.setdefault(record_id, at)


# --- orders ----------------------------------------------------------------------------------------
@dataclass
class Batch:
    kinds: list[str]
    ids: list[str] = field(default_factory=list)
    approve_fallback_ms: dict[str, int] = field(default_factory=dict)
    outcome: dict[str, str] = field(default_factory=dict)
    latencies_ms: dict[str, float] = field(default_factory=dict)


class OrderBench:
    def __init__(self, settings: Settings, sandboxes: Sandboxes, watch: EventWatch, lat: Latencies) -> None:
        self.settings, self.sandboxes, self.watch, self.lat = settings, sandboxes, watch, lat

    async def prepare(self, kinds: list[str], pool: Any) -> Batch:
        batch = Batch(kinds)
        batch.ids = await self.sandboxes.seed([order_spec(k) for k in kinds])
        await forget_stale_sagas(pool, batch.ids)  # ids the fresh sandbox reused from an earlier run
        await asyncio.sleep(2.0)  # let the CREATE events pass through sf-cdc before the clock starts
        return batch

    async def approve_all(self, batch: Batch, rate: float | None, concurrency: int = 16) -> None:
        """Open loop at ``rate`` per second, or as fast as ``concurrency`` requests go (None)."""
        queue = list(zip(batch.ids, batch.kinds, strict=True))
        began, gate = time.monotonic(), asyncio.Semaphore(concurrency)

        async def one(i: int, order_id: str, kind: str) -> None:
            if rate is not None:
                await asyncio.sleep(max(0.0, began + i / rate - time.monotonic()))
            async with gate:
                batch.approve_fallback_ms[order_id] = await self.sandboxes.approve(
                    order_id, KINDS[kind]["Type"] == "SIM"
                )

        await asyncio.gather(*(one(i, oid, kind) for i, (oid, kind) in enumerate(queue)))

    async def wait_done(self, batch: Batch, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not all(i in self.watch.activated_ms for i in batch.ids):
            await asyncio.sleep(0.25)
        await asyncio.sleep(0.5)
        await self.watch.poll()
        for order_id in batch.ids:
            await self._settle(batch, order_id)

    async def _settle(self, batch: Batch, order_id: str) -> None:
        start = self.watch.approved_ms.get(order_id, batch.approve_fallback_ms.get(order_id))
        end = self.watch.activated_ms.get(order_id)
        if end is None:
            record = await self.sandboxes.record(order_id)
            if record.get("Activation_Status__c") == "Activated":
                end = _sf_ms(record["LastModifiedDate"])
            else:
                batch.outcome[order_id] = record.get("Activation_Error_Code__c") or "not activated in time"
                return
        batch.outcome[order_id] = "activated"
        if start is not None:
            batch.latencies_ms[order_id] = float(end - start)

    async def calibrate(self, pool: Any) -> dict[str, Any]:
        """One order of each type alone: its latency, and the vendor calls on its critical path."""
        found: dict[str, Any] = {}
        for kind in KINDS:
            batch = await self.prepare([kind], pool)
            await self.sandboxes.mark()
            await self.approve_all(batch, rate=None)
            await self.wait_done(batch, timeout_s=60)
            order_id = batch.ids[0]
            if order_id not in batch.latencies_ms:
                found[kind] = {"not measured": f"the order did not activate ({batch.outcome.get(order_id)})"}
                continue
            start = self.watch.approved_ms.get(order_id, batch.approve_fallback_ms[order_id]) / 1000
            end = start + batch.latencies_ms[order_id] / 1000
            calls = {name: await self._calls_between(name, start, end) for name in self.sandboxes.urls}
            counts = {name: sum(c.values()) for name, c in calls.items()}
            found[kind] = {
                "latency_ms": batch.latencies_ms[order_id],
                "sequential_calls": counts,
                "calls_by_endpoint": calls,
                "floor_ms": self.lat.floor_ms(counts),
            }
        return found

    async def _calls_between(self, name: str, start: float, end: float) -> dict[str, int]:
        rows = await self.sandboxes.requests_since_mark(name)
        on_path = [r for r in rows if start <= r["at"] <= end + 0.05 and _on_path(r["endpoint"])]
        return dict(Counter(r["endpoint"] for r in on_path))


def _on_path(endpoint: str) -> bool:
    return not endpoint.startswith("cometd.") and endpoint not in NOT_ON_PATH


def percentiles(values: Iterable[float]) -> dict[str, float | None]:
    data = sorted(values)
    if not data:
        return {"p50": None, "p95": None, "p99": None, "max": None, "mean": None}

    def pct(q: float) -> float:
        return round(data[min(len(data) - 1, int(q * len(data)))], 1)

    return {
        "p50": pct(0.50),
        "p95": pct(0.95),
        "p99": pct(0.99),
        "max": round(data[-1], 1),
        "mean": round(statistics.fmean(data), 1),
    }


def batch_report(batch: Batch, span_s: float | None, api_calls: int) -> dict[str, Any]:
    activated = [i for i in batch.ids if batch.outcome.get(i) == "activated"]
    by_kind: dict[str, list[float]] = {}
    for order_id, kind in zip(batch.ids, batch.kinds, strict=True):
        if order_id in batch.latencies_ms:
            by_kind.setdefault(kind, []).append(batch.latencies_ms[order_id])
    problems = Counter(v for v in batch.outcome.values() if v != "activated")
    return {
        "orders": len(batch.ids),
        "activated": len(activated),
        "not_activated": dict(problems),
        "orders_per_s": round(len(activated) / span_s, 2) if span_s else None,
        "span_s": round(span_s, 2) if span_s else None,
        "latency_ms": percentiles(batch.latencies_ms.values()),
        "latency_ms_by_type": {kind: percentiles(values) for kind, values in sorted(by_kind.items())},
        "salesforce_api_calls": api_calls,
        "salesforce_api_calls_per_order": round(api_calls / len(batch.ids), 3) if batch.ids else None,
    }


@contextlib.asynccontextmanager
async def order_bench(
    settings: Settings, sandboxes: Sandboxes, lat: Latencies
) -> AsyncIterator[tuple[OrderBench, Any]]:
    """An ``OrderBench`` and a database pool, with the change-event log polled while it is open."""
    watch = EventWatch(sandboxes)
    await watch.poll()  # start after what is already retained
    pool = await create_pool(settings.postgres.dsn.get_secret_value(), 1, 2)
    stop = asyncio.Event()
    poller = asyncio.create_task(watch.run(stop))
    try:
        yield OrderBench(settings, sandboxes, watch, lat), pool
    finally:
        stop.set()
        await poller
        await pool.close()


async def run_orders(
    settings: Settings,
    sandboxes: Sandboxes,
    lat: Latencies,
    args: argparse.Namespace,
    in_flight: int | None,
    baseline: tuple[dict[str, Any], int],
) -> dict[str, Any]:
    """Calibrate → paced → calibrate → burst on workers running with ``in_flight`` records per
    partition; ``baseline`` is the burst measured before at key concurrency 1 (report, full pages)."""
    async with order_bench(settings, sandboxes, lat) as (bench, pool):
        before = await bench.calibrate(pool)
        paced = await _phase(bench, sandboxes, pool, args.paced_orders, args.paced_rate, label="paced")
        after = await bench.calibrate(pool)
        keys = in_flight if in_flight is not None else route_keys_in_flight()
        burst = await _phase(bench, sandboxes, pool, args.orders, None, label="burst", in_flight=keys)
    return _orders_report(before, after, paced, burst, bench.watch, baseline)


async def run_baseline_burst(
    settings: Settings, sandboxes: Sandboxes, lat: Latencies, args: argparse.Namespace
) -> tuple[dict[str, Any], int]:
    """The burst alone (``--baseline-orders``), on workers started with one record in flight per
    partition; then waits until the order groups have committed what it left, so the workers
    started after these ones begin idle. Returns the report and the event log's full pages."""
    async with order_bench(settings, sandboxes, lat) as (bench, pool):
        label = "burst_key_concurrency_1"
        report, _ = await _phase(
            bench, sandboxes, pool, args.baseline_orders, None, label=label, in_flight=BASELINE_IN_FLIGHT
        )
    connection = bench_connection(settings)
    for group in (ConsumerGroup.FULFILLMENT, ConsumerGroup.SF_WRITER):
        await wait_caught_up(connection, str(group), timeout_s=30)
    return report, bench.watch.full_pages


async def _phase(
    bench: OrderBench,
    sandboxes: Sandboxes,
    pool: Any,
    count: int,
    rate: float | None,
    *,
    label: str,
    in_flight: int | dict[str, int] | None = None,
) -> tuple[dict[str, Any], Batch]:
    """``in_flight``: the workers' ``max_in_flight_per_partition``, recorded in the report when given."""
    kinds = [MIX[i % len(MIX)] for i in range(count)]
    batch = await bench.prepare(kinds, pool)
    await sandboxes.requests_since_mark("salesforce")
    await sandboxes.requests_since_mark("whmcs")
    await sandboxes.requests_since_mark("freebit")
    usage = await sandboxes.api_usage()
    began, cpu_before = time.time(), cpu_by_process()
    await bench.approve_all(batch, rate)
    await bench.wait_done(batch, timeout_s=max(120.0, count / 2))
    cpu_after, elapsed = cpu_by_process(), time.time() - began
    calls = await sandboxes.api_usage() - usage
    rows = await sandboxes.requests_since_mark("salesforce")
    whmcs_calls = len(await sandboxes.requests_since_mark("whmcs"))
    first = min((bench.watch.approved_ms.get(i, batch.approve_fallback_ms.get(i, 0)) for i in batch.ids), default=0)
    last = max((bench.watch.activated_ms.get(i, 0) for i in batch.ids), default=0)
    span = (last - first) / 1000 if last > first else time.time() - began
    report = batch_report(batch, span, calls)
    report["salesforce_calls_by_endpoint"] = dict(Counter(r["endpoint"] for r in rows if _on_path(r["endpoint"])))
    # WHMCS look-before-create (only on an order's second attempt) pages through the client's orders
    report["whmcs_calls_per_order"] = round(whmcs_calls / len(batch.ids), 3) if batch.ids else None
    report["offered_rate_per_s"] = rate if rate is not None else "as fast as the control API approves"
    report["cpu_by_process"] = cpu_report(cpu_before, cpu_after, elapsed, len(batch.ids))
    freebit_rows = await sandboxes.requests_since_mark("freebit")
    report["duplicates"] = duplicates_in(batch.ids, await sandboxes.state("whmcs"), freebit_rows)
    shown = ["orders", "activated", "orders_per_s", "latency_ms", "salesforce_api_calls_per_order", "duplicates"]
    if in_flight is not None:
        report["max_in_flight_per_partition"] = in_flight
        shown.append("max_in_flight_per_partition")
    print(json.dumps({"phase": label, **{k: report[k] for k in shown}}), flush=True)
    return report, batch


def _orders_report(
    before: dict[str, Any],
    after: dict[str, Any],
    paced: tuple[dict[str, Any], Batch],
    burst: tuple[dict[str, Any], Batch],
    watch: EventWatch,
    baseline: tuple[dict[str, Any], int],
) -> dict[str, Any]:
    # The floor of a type is the mean of its two calibrations, which bracket the paced phase.
    floors = {k: [c["floor_ms"] for c in (before.get(k, {}), after.get(k, {})) if "floor_ms" in c] for k in KINDS}
    floor_by_kind = {k: round(statistics.fmean(v), 1) for k, v in floors.items() if v}
    paced_report, paced_batch = paced
    overhead = [
        latency - floor_by_kind[kind]
        for order_id, kind in zip(paced_batch.ids, paced_batch.kinds, strict=True)
        if (latency := paced_batch.latencies_ms.get(order_id)) is not None and kind in floor_by_kind
    ]
    paced_report["overhead_over_floor_ms"] = percentiles(overhead)
    calls = burst[0]["salesforce_api_calls_per_order"]
    baseline_report, baseline_full_pages = baseline
    ratio = speedup(burst[0], baseline_report)
    return {
        "calibration_before_paced": before,
        "calibration_after_paced": after,
        "floor_ms_by_type": floor_by_kind,
        "paced": paced_report,
        "burst": burst[0],
        "burst_key_concurrency_1": baseline_report,
        "key_concurrency_speedup": ratio,
        "event_log": {
            "full_pages_polled": watch.full_pages + baseline_full_pages,
            "note": "a full page may have dropped events; LastModifiedDate filled in for those",
        },
        "targets": {
            # each order against the floor of its own type: latency - floor(type), p50 over the mix
            "p50_within_floor_plus_100ms": _target(paced_report["overhead_over_floor_ms"]["p50"], 100, "<=")
            | {"measured_as": "p50 of (latency - floor of the order's type), paced phase"},
            "salesforce_calls_per_order_at_most_1_5": _target(calls, 1.5, "<=") | {"measured_in": "burst phase"},
            "key_concurrency_speedup_at_least_5": _target(ratio, 5, ">=")
            | {"measured_as": "orders/s of burst ÷ orders/s of burst_key_concurrency_1"},
        },
    }


def duplicates_in(
    order_ids: Iterable[str], whmcs_state: dict[str, Any], freebit_rows: list[dict[str, Any]]
) -> dict[str, int]:
    """What the phase did twice (``make chaos`` counts the same): WHMCS orders whose notes carry one of
    the phase's Salesforce order ids more than once, and Freebit accounts with more than one
    successful registration request in the phase's request log."""
    ids = set(order_ids)
    per_order: Counter[str] = Counter()
    for order in whmcs_state.get("orders", []):
        for found in SF_ORDER_MARKER.findall(order.get("notes") or ""):
            if found in ids:
                per_order[found] += 1
    registered: Counter[str] = Counter()
    for row in freebit_rows:
        if row.get("endpoint") in REGISTRATION_ENDPOINTS and row.get("status") == 200 and row.get("fault") is None:
            account = registered_account(row.get("body") or "")
            if account:
                registered[account] += 1
    return {
        "whmcs_orders_twice": sum(1 for n in per_order.values() if n > 1),
        "sim_registrations_twice": sum(1 for n in registered.values() if n > 1),
        "orders_without_whmcs_order": len(ids) - len(per_order),
    }


def route_keys_in_flight() -> dict[str, int]:
    """Each order route's own ``max_in_flight_per_partition`` (1 where it sets none): what the
    workers run with when neither the environment nor ``--keys-in-flight`` sets one."""
    return {name: ROUTES[name].max_in_flight_per_partition or 1 for name in ORDER_WORKERS if name in ROUTES}


def speedup(faster: dict[str, Any], slower: dict[str, Any]) -> float | None:
    """``faster``'s orders/s ÷ ``slower``'s, 2 places; None when either was not measured (or is 0)."""
    a, b = faster.get("orders_per_s"), slower.get("orders_per_s")
    return round(a / b, 2) if a and b else None


def _target(value: float | None, bound: float | None, op: str) -> dict[str, Any]:
    if op not in ("<=", ">="):
        raise ValueError(f"unknown comparison {op!r}")
    met = None if value is None or bound is None else (value <= bound if op == "<=" else value >= bound)
    return {"value": value, "target": f"{op} {bound}", "met": met}


# --- webhooks → cache keys ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchUser:
    user_id: str
    client_id: int


def bench_users(count: int) -> list[BenchUser]:
    ns = uuid.UUID("6f1c2d7e-0000-4000-8000-00000000b3c4")
    return [BenchUser(str(uuid.uuid5(ns, f"bench-user-{i}")), BENCH_CLIENT_BASE + i) for i in range(count)]


async def run_webhooks(settings: Settings, args: argparse.Namespace, fleet: Fleet | None = None) -> dict[str, Any]:
    """One run per rate (a low one shows the floor, the target is read at the highest), then the
    invalidator's drain rate (``--webhook-drain`` events straight onto the billing topic)."""
    users = bench_users(args.webhook_users)
    pool = await create_pool(settings.postgres.dsn.get_secret_value(), 1, 1)
    try:  # synthetic portal users, so the invalidator maps each webhook's client to one user
        rows = [
            {"user_id": u.user_id, "whmcs_client_id": u.client_id, "sf_account_id": sf_id("001", u.client_id)}
            for u in users
        ]
        await seed_id_mappings(pool, rows)
    finally:
        await pool.close()
    redis = aioredis.from_url(settings.redis.url.get_secret_value(), decode_responses=True)
    probes = WorkerProbes.of(fleet)
    runs = []
    try:
        for rate in args.webhook_rates:
            plan = _plan(users, int(rate * args.webhook_seconds))
            runs.append(await _webhooks(settings, redis, plan, rate, args.webhook_connections, probes))
            shown = {k: runs[-1][k] for k in ("receiver_answered_ms", "key_gone_ms")}
            print(json.dumps({"phase": f"webhooks@{rate:g}/s", **shown}), flush=True)
            await asyncio.sleep(2.0)
        drain = await _drain(settings, redis, users, args.webhook_drain, probes) if args.webhook_drain else None
    finally:
        await redis.aclose()
    top = max(runs, key=lambda r: r["offered_rate_per_s"])
    # A ratio that holds on any machine: what the invalidator adds after the record is written,
    # against Kafka's own delivery to an idle consumer of the same records in the same run.
    stages = top["stages"]
    gone, floor = stages["written_to_key_gone_ms"]["p99"], stages["written_to_idle_consumer_ms"]["p99"]
    ratio = round(gone / floor, 2) if gone is not None and floor else None
    target = _target(ratio, 3, "<=") | {
        "at_rate_per_s": top["offered_rate_per_s"],
        "measured_as": "p99 written → key gone ÷ p99 written → idle consumer",
        "written_to_key_gone_p99_ms": gone,
        "written_to_idle_consumer_p99_ms": floor,
        "sent_to_key_gone_p99_ms": top["key_gone_ms"]["p99"],
    }
    report: dict[str, Any] = {"runs": runs, "users": args.webhook_users}
    if drain is not None:
        print(json.dumps({"phase": "invalidator drain", **{k: drain[k] for k in ("events", "events_per_s")}}))
        report["invalidator_drain"] = drain
    return report | {"targets": {"key_gone_within_3x_kafka_delivery_p99": target}}


def _plan(users: list[BenchUser], count: int) -> list[tuple[BenchUser, int]]:
    base = int(time.time() * 1000) % 10**9 * 10  # invoice ids unique per run
    return [(users[i % len(users)], base + i) for i in range(count)]


async def _webhooks(
    settings: Settings,
    redis: aioredis.Redis,
    plan: list[tuple[BenchUser, int]],
    rate: float,
    connections: int,
    probes: WorkerProbes,
) -> dict[str, Any]:
    keys = [ck.user_invoice(u.user_id, inv) for u, inv in plan]
    await _seed_keys(redis, keys)
    # The notices and the tap are read by an observer process: on this process's loop, next to the
    # load generator, a notice waits for the loop's turn and the figure grows by the bench's own lag.
    observer = await Observer.start(settings, keys, [inv for _, inv in plan], timeout_s=len(plan) / rate + 30)
    secret = settings.whmcs.webhook_secrets[0].get_secret_value()
    host, port = settings.whmcs.webhook_listen_host, settings.whmcs.webhook_listen_port
    requests = presign(plan, host, port, secret)
    before = await probes.read()
    fired = await fire(requests, host, port, rate, connections)
    gone, tap = await observer.result()
    after = await probes.read()
    left = sum([await redis.exists(*keys[i : i + 500]) for i in range(0, len(keys), 500)])
    latencies = [(gone[k] - fired.due[i]) * 1000 for i, k in enumerate(keys) if k in gone and i in fired.due]
    return {
        "webhooks": len(plan),
        "offered_rate_per_s": rate,
        "http_statuses": {str(s): n for s, n in sorted(fired.statuses.items())},
        "receiver_answered_ms": percentiles(fired.answered_ms),
        "keys_seeded": len(keys),
        "notices_seen_for": len(gone),
        "keys_still_present": left,
        "key_gone_ms": percentiles(latencies),
        "measured": "scheduled send time → invalidation notice naming the key (published after UNLINK)",
        "stages": _stages(plan, keys, fired, tap, gone),
        "workers": probes.delta(before, after, len(plan)),
    }


def _stages(
    plan: list[tuple[BenchUser, int]], keys: list[str], fired: Fired, tap: Tapped, gone: dict[str, float]
) -> dict[str, Any]:
    """Where the time goes, per webhook, on one clock (monotonic; a record's CreateTime converted)."""
    to_kafka, fetched, kafka_to_gone = [], [], []
    for i, ((_, invoice), key) in enumerate(zip(plan, keys, strict=True)):
        written = tap.written.get(invoice)
        if written is None or i not in fired.due:
            continue
        to_kafka.append((written - fired.due[i]) * 1000)
        if invoice in tap.seen:
            fetched.append((tap.seen[invoice] - written) * 1000)
        if key in gone:
            kafka_to_gone.append((gone[key] - written) * 1000)
    return {
        "sent_to_written_ms": percentiles(to_kafka),
        "written_to_idle_consumer_ms": percentiles(fetched),
        "written_to_key_gone_ms": percentiles(kafka_to_gone),
        "records_tapped": len(tap.written),
        "measured": "sent = scheduled send time; written = the record's CreateTime (stamped by the receiver's "
        "producer, ms); idle consumer = the bench's own group-less consumer of the billing topic (Kafka's "
        "delivery floor); key gone = the invalidation notice naming the key",
    }


async def _drain(
    settings: Settings, redis: aioredis.Redis, users: list[BenchUser], count: int, probes: WorkerProbes
) -> dict[str, Any]:
    """The invalidator's own rate: ``count`` InvoiceChanged events produced straight onto the billing
    topic as fast as one producer goes (the receiver is not on this path), timed by the notices."""
    plan = _plan(users, count)
    keys = [ck.user_invoice(u.user_id, inv) for u, inv in plan]
    await _seed_keys(redis, keys)
    gone: dict[str, float] = {}
    listener = asyncio.create_task(_listen(redis, settings.redis.invalidation_channel, set(keys), gone))
    await asyncio.sleep(0.5)
    records = [
        to_record(to_envelope(InvoiceChanged(whmcs_client_id=u.client_id, invoice_id=inv, hook="InvoicePaid"),
                              source="/bench/e2e"))
        for u, inv in plan
    ]  # fmt: skip
    connection = bench_connection(settings)
    producer = durable_producer(connection, "e2e-bench-drain", linger_ms=5)
    await start_client(producer, connection)
    before = await probes.read()
    try:
        began = time.monotonic()
        sent = [await producer.send(str(Topic.WHMCS_BILLING), value=v, key=k, headers=h) for k, v, h in records]
        await asyncio.gather(*sent)
        produced = time.monotonic()
    finally:
        await producer.stop()
    deadline = time.monotonic() + 60
    while len(gone) < len(keys) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    after = await probes.read()
    listener.cancel()
    await asyncio.gather(listener, return_exceptions=True)
    left = sum([await redis.exists(*keys[i : i + 500]) for i in range(0, len(keys), 500)])
    span = (max(gone.values()) - began) if gone else None
    return {
        "events": count,
        "produced_in_s": round(produced - began, 2),
        "notices_seen_for": len(gone),
        "keys_still_present": left,
        "drained_in_s": round(span, 2) if span else None,
        "events_per_s": round(len(gone) / span) if span else None,
        "workers": probes.delta(before, after, count),
        "measured": "first produce → last notice; events/s is a lower bound when drained_in_s ≈ produced_in_s",
    }


async def _seed_keys(redis: aioredis.Redis, keys: list[str]) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.set(key, "{}", ex=900)
        await pipe.execute()


@dataclass
class Tapped:
    """What the tap saw, per invoice id: CreateTime and first read, on the monotonic clock."""

    written: dict[int, float]
    seen: dict[int, float]


class Observer:
    """The notice listener and the tap in a child process with its own event loop (spawned, so it
    shares no loop, client or GIL with the load generator). Times are ``time.monotonic()``:
    CLOCK_MONOTONIC, one system-wide clock on Linux, so the child's and the parent's compare."""

    def __init__(self, process: Any, conn: Any) -> None:
        self._process, self._conn = process, conn

    @classmethod
    async def start(cls, settings: Settings, keys: list[str], invoices: list[int], timeout_s: float) -> Observer:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        args = (child, settings.redis.url.get_secret_value(), settings.redis.invalidation_channel)
        connection = bench_connection(settings)  # a frozen dataclass: pickled to the spawned child as it is
        process = ctx.Process(target=_observer_main, args=(*args, connection, keys, invoices, timeout_s))
        process.start()
        observer = cls(process, parent)
        ready = await asyncio.get_running_loop().run_in_executor(None, parent.recv)
        if ready != "ready":
            raise RuntimeError(f"observer failed to start: {ready}")
        return observer

    async def result(self) -> tuple[dict[str, float], Tapped]:
        """Blocks (in a thread) until every key's notice arrived or the observer's deadline passed."""
        gone, written, seen = await asyncio.get_running_loop().run_in_executor(None, self._conn.recv)
        await asyncio.get_running_loop().run_in_executor(None, self._process.join, 10)
        return gone, Tapped(written, seen)


def _observer_main(
    conn: Any,
    redis_url: str,
    channel: str,
    connection: KafkaConnection,
    keys: list[str],
    invoices: list[int],
    timeout_s: float,
) -> None:
    try:
        asyncio.run(_observe(conn, redis_url, channel, connection, keys, invoices, timeout_s))
    except BaseException as exc:
        conn.send(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        conn.close()


async def _observe(
    conn: Any,
    redis_url: str,
    channel: str,
    connection: KafkaConnection,
    keys: list[str],
    invoices: list[int],
    timeout_s: float,
) -> None:
    redis = aioredis.from_url(redis_url, decode_responses=True)
    gone: dict[str, float] = {}
    listener = asyncio.create_task(_listen(redis, channel, set(keys), gone))
    tap = await Tap.start(connection)
    await asyncio.sleep(0.5)  # subscribed before the first webhook
    conn.send("ready")
    deadline = time.monotonic() + timeout_s
    while len(gone) < len(keys) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    tap_deadline = time.monotonic() + 2.0  # the tap is another reader: let it catch up with the notices
    while not set(invoices) <= tap.written.keys() and time.monotonic() < tap_deadline:
        await asyncio.sleep(0.05)
    await tap.stop()
    listener.cancel()
    await asyncio.gather(listener, return_exceptions=True)
    await redis.aclose()
    conn.send((gone, tap.written, tap.seen))


class Tap:
    """The billing topic read beside the fleet by a group-less consumer from its end: each bench
    record's CreateTime (when the receiver produced it) and when an idle consumer first had it."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self.consumer = consumer
        self.written: dict[int, float] = {}  # invoice id → CreateTime on the monotonic clock
        self.seen: dict[int, float] = {}
        self.task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, connection: KafkaConnection) -> Tap:
        consumer = AIOKafkaConsumer(
            str(Topic.WHMCS_BILLING), **connection.options(), enable_auto_commit=False,
            auto_offset_reset="latest", isolation_level="read_committed", fetch_max_wait_ms=100,
        )  # fmt: skip
        await start_client(consumer, connection)  # no group: every partition is assigned at once, read from its end
        for tp in consumer.assignment():
            await consumer.position(tp)  # resolve the end now, before the first webhook
        tap = cls(consumer)
        tap.task = asyncio.create_task(tap._run())
        return tap

    async def _run(self) -> None:
        offset = time.time() - time.monotonic()  # wall → monotonic
        while True:
            batch = await self.consumer.getmany(timeout_ms=100)
            now = time.monotonic()
            for records in batch.values():
                for rec in records:
                    invoice = json.loads(rec.value).get("invoice_id") if rec.value else None
                    if isinstance(invoice, int):
                        self.written.setdefault(invoice, rec.timestamp / 1000 - offset)
                        self.seen.setdefault(invoice, now)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.consumer.stop()


@dataclass
class WorkerProbes:
    """CPU seconds of the two webhook-path workers (/proc, the process and its children) and the
    invalidator's handler time on the billing topic (its /metrics), read around a run."""

    pids: dict[str, int]
    metrics_url: str | None
    http: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(timeout=5.0))

    @classmethod
    def of(cls, fleet: Fleet | None) -> WorkerProbes:
        if fleet is None:
            return cls({}, None)
        pids = {s.name: s.pid for s in fleet.status() if s.name in WEBHOOK_WORKERS and s.pid is not None}
        port = health_ports(fleet.options)["cache-invalidator"]
        return cls(pids, f"http://{fleet.settings.runtime.health_host}:{port}/metrics")

    async def read(self) -> dict[str, float]:
        found = {f"{name}_cpu_s": _cpu_s(pid) for name, pid in self.pids.items()}
        if self.metrics_url is not None:
            with contextlib.suppress(httpx.HTTPError):
                text = (await self.http.get(self.metrics_url)).text
                found |= _handler_totals(text, str(Topic.WHMCS_BILLING))
        return found

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float], events: int) -> dict[str, Any]:
        d = {k: after[k] - before[k] for k in after if k in before}
        out: dict[str, Any] = {
            f"{k[:-6]}_cpu_ms_per_event": round(v * 1000 / events, 3) for k, v in d.items() if k.endswith("_cpu_s")
        }
        if d.get("handler_count"):
            out["invalidator_handler_ms_mean"] = round(d["handler_sum_s"] * 1000 / d["handler_count"], 3)
        out["note"] = "CPU ms per event over the whole run (idle polling included); handler time per record"
        return out


#: what a process is, from its command line (the first match names it; others are not counted)
_PROCESS_KINDS = (
    ("fleet run ", None),  # a worker: named by its route (the word after "run")
    ("kafka.Kafka", "kafka"),
    ("postgres", "postgres"),
    ("redis-server", "redis"),
    ("sandbox", "sandboxes"),
    ("bench.e2e_bench", "bench (approvals, watch)"),
)


def cpu_by_process() -> dict[str, float]:
    """CPU seconds (utime + stime) so far of every process of the fleet and its stack, by kind:
    each worker by name, Kafka, every Postgres process together, Redis, the sandboxes, this bench."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[str, float] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            name = _process_kind(cmdline)
            if name is not None:
                fields = (proc / "stat").read_text().rpartition(")")[2].split()
                found[name] = found.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return found


def _process_kind(cmdline: str) -> str | None:
    for marker, kind in _PROCESS_KINDS:
        if marker in cmdline:
            return kind if kind is not None else cmdline.split(marker, 1)[1].split()[0]
    return None


def cpu_report(before: dict[str, float], after: dict[str, float], elapsed_s: float, orders: int) -> dict[str, Any]:
    """Cores each process kind used over a phase, and CPU ms per order (processes that ended during
    the phase are not counted; Postgres backends live as long as their pools)."""
    cores = {k: round((after[k] - before.get(k, 0.0)) / elapsed_s, 3) for k in sorted(after) if elapsed_s > 0}
    used = sum(cores.values())
    return {
        "cores": dict(sorted(cores.items(), key=lambda kv: -kv[1])),
        "cores_total": round(used, 2),
        "cpu_ms_per_order": round(used * elapsed_s * 1000 / orders, 1) if orders else None,
        "phase_s": round(elapsed_s, 1),
        "note": "utime+stime from /proc between the first approval and the last activation",
    }


def _cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` and its direct children, in seconds (0 when gone)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rpartition(")")[2].split()
            if int(stat.parent.name) == pid or int(fields[1]) == pid:  # fields[1] is the ppid
                total += int(fields[11]) + int(fields[12])
    return total / tick


def _handler_totals(text: str, topic: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in text.splitlines():
        if f'topic="{topic}"' not in line:
            continue
        if line.startswith("fleet_handler_duration_seconds_sum"):
            found["handler_sum_s"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("fleet_handler_duration_seconds_count"):
            found["handler_count"] = float(line.rsplit(" ", 1)[1])
    return found


async def _listen(redis: aioredis.Redis, channel: str, wanted: set[str], gone: dict[str, float]) -> None:
    pubsub = redis.pubsub()
    await pubsub.subscribe(channel)
    try:
        async for message in pubsub.listen():
            if message.get("type") != "message":
                continue
            now = time.monotonic()
            for key in json.loads(message["data"]).get("keys", []):
                if key in wanted:
                    gone.setdefault(key, now)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


def presign(plan: list[tuple[BenchUser, int]], host: str, port: int, secret: str) -> list[bytes]:
    """Raw HTTP/1.1 requests signed like the WHMCS sandbox signs (Standard Webhooks), before the clock starts."""
    signer, now = Webhook(secret), datetime.now(UTC)
    out = []
    for n, (user, invoice) in enumerate(plan):
        data = {"client_id": user.client_id, "invoice_id": invoice, "status": "Paid", "total": 4800}
        body = json.dumps({"event": "InvoicePaid", "occurred_at": now.isoformat(), "data": data}, separators=(",", ":"))
        webhook_id = f"msg_e2ebench_{uuid.uuid4().hex[:12]}_{n}"
        out.append(signed_request(signer, now, webhook_id, body, "/webhooks/whmcs", f"{host}:{port}"))
    return out


@dataclass
class Fired:
    due: dict[int, float] = field(default_factory=dict)  # scheduled send time (monotonic)
    answered_ms: list[float] = field(default_factory=list)  # due → the receiver's 200 (accepted on Kafka)
    statuses: Counter[int] = field(default_factory=Counter)


async def fire(requests: list[bytes], host: str, port: int, rate: float, connections: int) -> Fired:
    """Open loop: request i is due at t0 + i/rate, and its latencies count from then (no coordinated omission)."""
    counter, fired = itertools.count(), Fired()
    streams = [await asyncio.open_connection(host, port) for _ in range(connections)]
    t0 = time.monotonic() + 0.05

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (i := next(counter)) < len(requests):
            due = t0 + i / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            writer.write(requests[i])
            fired.due[i] = due
            status = await _status(reader)
            fired.statuses[status] += 1
            if status == 200:
                fired.answered_ms.append((time.monotonic() - due) * 1000)

    await asyncio.gather(*(connection(r, w) for r, w in streams))
    for _, writer in streams:
        writer.close()
    return fired


async def _status(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line[15:]) for line in head.split(b"\r\n") if line[:15].lower() == b"content-length:"), 0)
    if length:
        await reader.readexactly(length)
    return int(head[9:12])


async def wait_caught_up(connection: KafkaConnection, group: str, timeout_s: float) -> int:
    """Until ``group`` has committed up to the end of everything it reads (bounded); returns the lag left."""
    admin = AIOKafkaAdminClient(**connection.options())
    consumer = AIOKafkaConsumer(**connection.options())
    await start_client(admin, connection)
    await start_client(consumer, connection)
    try:
        deadline, lag = time.monotonic() + timeout_s, -1
        while lag != 0 and time.monotonic() < deadline:
            committed = await admin.list_consumer_group_offsets(group)
            ends = await consumer.end_offsets(list(committed)) if committed else {}
            lag = sum(max(0, ends[tp] - meta.offset) for tp, meta in committed.items())
            await asyncio.sleep(0.5)
        return lag
    finally:
        await consumer.stop()
        await admin.close()


# --- orchestration -----------------------------------------------------------------------------------
def missing(statuses: list[ChildStatus], needed: Iterable[str]) -> str | None:
    by_name = {s.name: s for s in statuses}
    down = [
        f"{n} is {by_name[n].label}" + (f" ({by_name[n].reason})" if by_name[n].reason else "")
        for n in needed
        if n in by_name and by_name[n].label not in ("healthy", "running")
    ]
    return "; ".join(down) or None


async def main(args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings()
    log_dir = ROOT / ".fleet" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    configure_logging("INFO", "json", settings.secrets(), stream=(log_dir / "e2e-bench.log").open("a"))
    info = machine_info()
    options = FleetOptions(
        freebit_activation_delay_s=args.freebit_activation_delay, log_dir=log_dir, env_file=args.env_file
    )
    # The stack and the sandboxes under a supervisor of their own (a fleet without workers), so the
    # workers can be stopped and started again with other settings while the sandboxes keep their state.
    base = Fleet(settings, replace(options, workers=()))
    try:
        await base.start(_echo)
        return await _measure(settings, base, options, args, info)
    finally:
        await base.stop()


def _echo(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def workers_running(
    settings: Settings, options: FleetOptions, in_flight: int | None
) -> AsyncIterator[tuple[Fleet, list[ChildStatus]]]:
    """The fleet's workers, each started with ``FLEET_RUNTIME__MAX_IN_FLIGHT_PER_PARTITION=in_flight``
    (None: not set, each route's own value) (their environment is the bench's plus
    ``FleetOptions.worker_env``); stopped on exit. The stack
    and the sandboxes are already up: this fleet uses them and leaves them running."""
    fleet = Fleet(settings, worker_options(options, in_flight))
    try:
        _echo(f"workers: {IN_FLIGHT_ENV}={in_flight}")
        yield fleet, await fleet.start(_echo)
    finally:
        stopped = await fleet.stop()
        _echo(f"workers ({IN_FLIGHT_ENV}={in_flight}) stopped: {_stopped(stopped)}")


def worker_options(options: FleetOptions, in_flight: int | None) -> FleetOptions:
    """``options`` whose workers run with ``max_in_flight_per_partition = in_flight`` (an env variable
    of every worker: it overrides the bench's own environment and the stack's env file); None: as is."""
    if in_flight is None:
        return options
    return replace(options, worker_env={**options.worker_env, IN_FLIGHT_ENV: str(in_flight)})


def _stopped(reports: list[StopReport]) -> str:
    return ", ".join(f"{r.name} {r.how} in {r.seconds:.1f} s" for r in reports) or "none"


async def _baseline(
    settings: Settings, options: FleetOptions, sandboxes: Sandboxes, lat: Latencies, args: argparse.Namespace
) -> tuple[dict[str, Any], int]:
    """Phase 1: the burst on workers at key concurrency 1, which are stopped after it."""
    if args.skip_orders or args.no_baseline_burst:
        return {"not measured": f"skipped (--{'skip-orders' if args.skip_orders else 'no-baseline-burst'})"}, 0
    async with workers_running(settings, options, BASELINE_IN_FLIGHT) as (_, statuses):
        why = missing(statuses, ORDER_WORKERS)
        return ({"not measured": why}, 0) if why else await run_baseline_burst(settings, sandboxes, lat, args)


async def _measure(
    settings: Settings, base: Fleet, options: FleetOptions, args: argparse.Namespace, info: dict[str, Any]
) -> dict[str, Any]:
    # the fleet's defaults (each route's own value: fulfillment 16), unless the environment or
    # --keys-in-flight sets one value for every worker
    in_flight = settings.runtime.max_in_flight_per_partition or args.keys_in_flight
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=10.0, limits=httpx.Limits(max_connections=32)))
        sandboxes = Sandboxes(base.endpoints, http)
        delay = float((await sandboxes.state("freebit"))["activation_delay_s"])
        lat = Latencies(args.sf_latency_ms, args.whmcs_latency_ms, args.freebit_latency_ms, delay)
        await sandboxes.inject(lat)
        stack.push_async_callback(sandboxes.clear_faults)  # runs after the workers below have stopped
        baseline = await _baseline(settings, options, sandboxes, lat, args)
        fleet, statuses = await stack.enter_async_context(workers_running(settings, options, in_flight))
        why = "skipped (--skip-orders)" if args.skip_orders else missing(statuses, ORDER_WORKERS)
        orders = {"not measured": why} if why else await run_orders(settings, sandboxes, lat, args, in_flight, baseline)
        await sandboxes.clear_faults()
        why = "skipped (--skip-webhooks)" if args.skip_webhooks else missing(fleet.status(), WEBHOOK_WORKERS)
        if why is None:  # start from an idle invalidator, not one still busy with the burst's events
            await wait_caught_up(bench_connection(settings), str(ConsumerGroup.CACHE_INVALIDATOR), timeout_s=120)
        webhooks = {"not measured": why} if why else await run_webhooks(settings, args, fleet)
        report = {
            "benchmark": "end-to-end fleet (orders through the sandboxes; webhooks to cache keys)",
            "command": "python -m bench.e2e_bench " + " ".join(sys.argv[1:]),
            "at": datetime.now(UTC).isoformat(),
            "machine": info,
            "settings": {
                "injected_latency_ms": {
                    "salesforce_rest": lat.salesforce_ms,
                    "whmcs": lat.whmcs_ms,
                    "freebit": lat.freebit_ms,
                },
                "freebit_activation_delay_s": delay,
                "kafka_bootstrap": settings.kafka.bootstrap,
                "sandboxes_started_by_bench": base.sandboxes_owned,
                "orders": args.orders,
                "paced_orders": args.paced_orders,
                "paced_rate_per_s": args.paced_rate,
                "baseline_orders": None if args.skip_orders or args.no_baseline_burst else args.baseline_orders,
                "mix": dict(Counter(MIX)),
                "runtime": settings.runtime.model_dump(),
            },
            "processes": [
                {"name": s.name, "state": s.label, "restarts": s.restarts, "reason": s.reason}
                for s in base.status() + fleet.status()
            ],
            "orders": orders,
            "webhooks": webhooks,
        }
    return report


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=1000, help="burst phase: orders approved at once")
    parser.add_argument(
        "--keys-in-flight",
        type=int,
        default=None,
        help="max_in_flight_per_partition of every measured worker (default: each route's own; fulfillment 16)",
    )
    parser.add_argument("--paced-orders", type=int, default=200, help="paced phase: orders for the latency figures")
    parser.add_argument("--paced-rate", type=float, default=4.0, help="paced phase: approvals per second")
    parser.add_argument(
        "--baseline-orders",
        type=int,
        default=1000,
        help="burst at 1 record in flight per partition (workers restarted after it): orders approved at once",
    )
    parser.add_argument(
        "--no-baseline-burst",
        action="store_true",
        help="skip the burst at 1 record in flight per partition (and the worker restart it takes)",
    )
    parser.add_argument("--sf-latency-ms", type=float, default=20.0)
    parser.add_argument("--whmcs-latency-ms", type=float, default=30.0)
    parser.add_argument("--freebit-latency-ms", type=float, default=20.0)
    parser.add_argument(
        "--freebit-activation-delay",
        type=float,
        default=0.0,
        help="seconds a SIM stays pending (only when the bench starts the sandboxes)",
    )
    parser.add_argument("--webhook-rates", type=lambda v: [float(x) for x in v.split(",")], default=[200.0, 1000.0])
    parser.add_argument("--webhook-seconds", type=float, default=5.0)
    parser.add_argument("--webhook-users", type=int, default=200)
    parser.add_argument("--webhook-connections", type=int, default=32)
    parser.add_argument("--webhook-drain", type=int, default=20_000, help="events for the invalidator's drain rate")
    parser.add_argument("--skip-orders", action="store_true", help="measure the webhook phase alone")
    parser.add_argument("--skip-webhooks", action="store_true", help="measure the order phases alone")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--env-file",
        type=Path,
        default=STACK_ENV_FILE,
        help="where `stack up` writes the endpoints (another file for a second stack)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    options = parse_args(sys.argv[1:])
    result = asyncio.run(main(options))
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    summary = {part: result[part].get("targets", result[part]) for part in ("orders", "webhooks")}
    print(json.dumps(summary, indent=2))
