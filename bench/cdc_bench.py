"""CDC ingress benchmark: Salesforce change events from the sandbox to Kafka per second.

    python -m bench.cdc_bench [--events 5000] [--live 1000] [--rate 200] [--out bench/results/cdc.json]

The subscriber runs exactly as ``fleet run sf-cdc`` builds it (``serve``: CometD over aiosfstream-ng,
bulk Order re-reads (SOQL with the lines as a sub-query) through ``HttpSalesforce``, the idempotent
``acks=all`` producer, Postgres checkpoints) against the Salesforce sandbox in this process and the
local stack's Kafka and Postgres, on fresh topics and a fresh checkpoint key. Two measurements:

* backlog: ``n_events`` changes are committed in the sandbox while the subscriber is down, with
  a checkpoint in front of them; from "subscribed" until every channel's *checkpoint* (written
  only after Kafka acknowledged) reaches the last change. Durable changes per second.
* live: with the subscriber caught up, changes are committed at a fixed rate (open loop); latency
  is the Kafka record timestamp (set when the producer takes the event) minus the change's
  ``commitTimestamp``, per change (its first domain event).

The mix: 70% customer-facing Order updates, 10% activations (a bulk SOQL re-read with the lines;
concurrent activations share one query), 10% OrderItem quantity changes (a SOQL parent lookup the
first time per line), 10% Product2 updates.
The sandbox shares the process (and the GIL) with the subscriber: a conservative setting.
Kafka is reached through the fleet's ``KafkaConnection`` from the settings (the stack's address,
TLS and SASL from ``FLEET_KAFKA__*``: ``bench.kafka_connection``), by the subscriber and the bench.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]

from adapters.db import migrate
from adapters.kafka import KafkaConnection, delete_topics, ensure_topics, start_client
from bench.kafka_connection import bench_connection, connection_settings
from events.topics import DOMAIN_TOPICS, Topic, TopicSpec
from sandbox.salesforce import SalesforceSandbox
from sandbox.salesforce.org import AGENT
from workers.config import PostgresSettings, RuntimeSettings, SalesforceSettings, Settings, load_settings
from workers.ingress.sf_cdc import CdcMetrics, CdcOptions, CdcTopics, serve

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "cdc.json"
CHANNELS = [
    "/data/OrderChangeEvent",
    "/data/OrderItemChangeEvent",
    "/data/Product2ChangeEvent",
    "/data/PricebookEntryChangeEvent",
    "/event/Account_Eligibility_Update__e",
]
ORDERS = 200


class Org:
    """Commits changes straight into the sandbox org (no HTTP), returning their CometD messages."""

    def __init__(self, sandbox: SalesforceSandbox) -> None:
        self.sandbox = sandbox
        spec = {"customer": "tanaka", "Type": "Internet", "lines": ["INT-1G-GOLD"]}
        seeded = sandbox.control.seed({"orders": [spec] * ORDERS})["orders"]
        self.orders = [o["id"] for o in seeded]
        self.items = [o["items"][0]["id"] for o in seeded]
        self.products = [p["Id"] for p in sandbox.store.rows("Product2")]
        self.i = 0

    def change(self) -> dict[str, Any]:
        """The next change of the mix; every visit of a record really changes it (odd/even visits)."""
        i, self.i = self.i, self.i + 1
        kind, record, visit = i % 10, i % ORDERS, i // ORDERS
        if kind == 0:
            activate = {"Activation_Status__c": "Activating", "Status": "Approved"}
            reset = {"Activation_Status__c": None, "Status": "Draft"}
            return self._write("Order", self.orders[record], activate if visit % 2 == 0 else reset)
        if kind == 1:
            return self._write("OrderItem", self.items[record], {"Quantity": 2 + visit % 5})
        if kind == 2:
            return self._write("Product2", self.products[i % len(self.products)], {"Description": f"rev {i}"})
        return self._write("Order", self.orders[record], {"Status": "Draft" if visit % 2 else "Pending Review"})

    def _write(self, sobject: str, record_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        with self.sandbox.org.transaction(AGENT) as tx:
            tx.update(sobject, record_id, fields)
            published = tx.commit()
        return published[-1]


def _settings(url: str, stack: Settings) -> Settings:
    salesforce = SalesforceSettings(
        instance_url=url, login_url=url, auth="refresh_token", refresh_token="sandbox-refresh-token", channels=CHANNELS
    )
    return Settings(
        kafka=connection_settings(stack.kafka),
        postgres=PostgresSettings(dsn=stack.postgres.dsn),
        salesforce=salesforce,
        runtime=RuntimeSettings(health_port=0),
    )


async def _fresh_topics(connection: KafkaConnection) -> CdcTopics:
    suffix = uuid.uuid4().hex[:8]
    topics = CdcTopics(*(f"bench.sfcdc.{suffix}.{n}" for n in ("order", "catalog", "account", "resync", "dlq")))
    production = [Topic.SF_ORDER, Topic.SF_CATALOG, Topic.SF_ACCOUNT, Topic.SF_RESYNC, Topic.INGRESS_DLQ]
    specs = [
        TopicSpec(name, DOMAIN_TOPICS[t].partitions, DOMAIN_TOPICS[t].retention_ms)
        for name, t in zip(topics.all(), production, strict=True)
    ]
    await ensure_topics(connection, specs)
    return topics


async def _checkpoint_at(dsn: str, subscriber: str, replay_id: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(
            "INSERT INTO sf_cdc_checkpoints (subscriber, channel, replay_id, position_time) VALUES ($1, $2, $3, now())",
            [(subscriber, channel, replay_id) for channel in CHANNELS],
        )
    finally:
        await conn.close()


async def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


def _caught_up(metrics: CdcMetrics, last: dict[str, int]) -> Callable[[], bool]:
    def check() -> bool:
        registry = metrics.registry
        return all(
            (registry.get_sample_value("sf_cdc_checkpoint_replay_id", {"channel": c}) or 0) >= replay
            for c, replay in last.items()
        )

    return check


def _last_per_channel(messages: list[dict[str, Any]]) -> dict[str, int]:
    last: dict[str, int] = {}
    for m in messages:
        last[m["channel"]] = max(last.get(m["channel"], 0), m["data"]["event"]["replayId"])
    return last


async def _live(org: Org, count: int, rate: float) -> list[dict[str, Any]]:
    """Open loop: change i is committed at t0 + i / rate (late ones immediately, never skipped)."""
    start, published = time.monotonic(), []
    for i in range(count):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        published.append(org.change())
    return published


async def _first_produced_ms(
    connection: KafkaConnection, topics: list[tuple[str, int]], wanted: set[int]
) -> dict[int, int]:
    """Kafka timestamp of the first domain event derived from each wanted replay id."""
    consumer = AIOKafkaConsumer(**connection.options(), enable_auto_commit=False)
    await start_client(consumer, connection)
    first: dict[int, int] = {}
    try:
        partitions = [TopicPartition(t, p) for t, count in topics for p in range(count)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning()
        ends = await consumer.end_offsets(partitions)
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    replay = json.loads(r.value).get("replay_id")
                    if replay in wanted:
                        first[replay] = min(first.get(replay, r.timestamp), r.timestamp)
    finally:
        await consumer.stop()
    return first


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2) if ordered else float("nan")


def _emitted(metrics: CdcMetrics) -> int:
    total = 0.0
    for family in metrics.registry.collect():
        if family.name == "sf_cdc_events_emitted":
            total += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return int(total)


async def measure_cdc(n_events: int, *, live_events: int = 1000, live_rate: float = 200.0) -> dict[str, Any]:
    """Durable change events per second (backlog) and commit-to-produce latency (live)."""
    stack = load_settings()
    connection = bench_connection(stack)
    dsn = stack.postgres.dsn.get_secret_value()
    await migrate(dsn)
    sandbox = SalesforceSandbox(cometd_timeout_ms=5_000, retention=n_events + live_events + 10 * ORDERS)
    runner = await sandbox.start(port=0)
    stop = asyncio.Event()
    task: asyncio.Task[None] | None = None
    topics: CdcTopics | None = None
    try:
        org = Org(sandbox)
        topics = await _fresh_topics(connection)
        subscriber = f"bench-{uuid.uuid4().hex[:8]}"
        await _checkpoint_at(dsn, subscriber, sandbox.bus.last_replay_id)
        backlog = [org.change() for _ in range(n_events)]
        metrics = CdcMetrics()
        options = CdcOptions(subscriber=subscriber, checkpoint_interval_s=0.01, watchdog_s=60)
        task = asyncio.create_task(
            serve(_settings(sandbox.url, stack), stop, topics=topics, options=options, metrics=metrics)
        )
        await _until(lambda: metrics.registry.get_sample_value("sf_cdc_ready") == 1, 60, "subscribed")
        t0 = time.perf_counter()
        await _until(_caught_up(metrics, _last_per_channel(backlog)), 600, "the backlog")
        elapsed = time.perf_counter() - t0
        emitted_backlog = _emitted(metrics)
        live = await _live(org, live_events, live_rate)
        await _until(_caught_up(metrics, _last_per_channel(live)), 120, "the live changes")
        commit_ms = {
            m["data"]["event"]["replayId"]: m["data"]["payload"]["ChangeEventHeader"]["commitTimestamp"] for m in live
        }
        read = [
            (topics.order, DOMAIN_TOPICS[Topic.SF_ORDER].partitions),
            (topics.catalog, DOMAIN_TOPICS[Topic.SF_CATALOG].partitions),
        ]
        produced = await _first_produced_ms(connection, read, set(commit_ms))
        latencies = [float(produced[r] - commit_ms[r]) for r in commit_ms if r in produced]
        rereads = metrics.registry.get_sample_value("sf_cdc_salesforce_rereads") or 0
        return {
            "backlog": {
                "changes": n_events,
                "domain_events": emitted_backlog,
                "seconds": round(elapsed, 3),
                "durable_changes_per_s": round(n_events / elapsed, 1),
                "domain_events_per_s": round(emitted_backlog / elapsed, 1),
            },
            "live": {
                "changes": live_events,
                "offered_rate_per_s": live_rate,
                "measured": len(latencies),
                "commit_to_produce_ms": {
                    "p50": _pct(latencies, 0.50),
                    "p99": _pct(latencies, 0.99),
                    "max": max(latencies, default=float("nan")),
                    "mean": round(statistics.fmean(latencies), 2) if latencies else float("nan"),
                },
            },
            "salesforce_rereads": int(rereads),
            "mix": "70% Order status, 10% activation (bulk SOQL re-read), 10% OrderItem (SOQL parent), 10% Product2",
            "options": {"lanes": options.lanes, "max_in_flight": options.max_in_flight},
        }
    finally:
        stop.set()
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 30)
        await runner.cleanup()
        if topics is not None:  # the shared stack keeps no bench topics (a broker full of them slows down)
            await delete_topics(connection, list(topics.all()))


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        model = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "",
        )
    versions = {n: metadata.version(n) for n in ("aiokafka", "aiosfstream-ng", "aiocometd-ng", "asyncpg", "httpx")}
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "packages": versions,
        "note": "Kafka (JVM), Postgres, the sandbox and the subscriber share these cores; sandbox in-process",
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=5000, help="changes in the backlog run")
    parser.add_argument("--live", type=int, default=1000, help="changes in the live (latency) run")
    parser.add_argument("--rate", type=float, default=200.0, help="live commit rate per second")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    info = machine_info()
    result = await measure_cdc(args.events, live_events=args.live, live_rate=args.rate)
    return {
        "benchmark": "salesforce cdc ingress",
        "command": "python -m bench.cdc_bench",
        "at": datetime.now(UTC).isoformat(),
        "machine": info,
        **result,
    }


if __name__ == "__main__":
    arguments = parse_args()
    report = asyncio.run(main(arguments))
    print(json.dumps(report, indent=2))
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(report, indent=2) + "\n")
