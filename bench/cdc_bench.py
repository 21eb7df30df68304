"""CDC ingress benchmark: Salesforce change events from the sandbox to Kafka per second, per transport.

    python -m bench.cdc_bench [--transport cometd|pubsub|both] [--rounds 3] [--events 5000] [--live 1000]
                              [--rate 200] [--out bench/results/cdc.json]

The subscriber runs exactly as ``fleet run sf-cdc`` builds it (``serve``: CometD over aiosfstream-ng,
or the Pub/Sub API over gRPC with ``cdc_transport="pubsub"``; bulk Order re-reads (SOQL with the
lines as a sub-query) through ``HttpSalesforce``, the idempotent ``acks=all`` producer, Postgres
checkpoints) against the Salesforce sandbox in a process of its own (``RemoteSandbox``: CometD,
REST and, for the gRPC runs, the Pub/Sub API on free ports; Salesforce is another machine in
production, so the subscriber's process holds the subscriber alone and its CPU is the subscriber's)
and the local stack's Kafka and Postgres, on fresh topics and a fresh checkpoint key. Two
measurements per run:

* backlog: ``n_events`` changes are committed in the sandbox while the subscriber is down, with
  a checkpoint in front of them (``replay_id`` for CometD, ``pubsub_replay_id``: the sandbox's
  8-byte encoding, for the Pub/Sub API); from "subscribed" until every channel's checkpoint *row in
  Postgres* (written only after Kafka acknowledged) reaches its last event (the OrderItem channel's
  too, though its changes' last message is their Order's). Durable changes per second. The rows
  are polled every 20 ms for both transports, the same observable for both: the gauge
  ``sf_cdc_checkpoint_replay_id`` is CometD's only, and Pub/Sub ids are opaque to the subscriber;
  the bench alone reads them as the sandbox's big-endian integers.
* live: with the subscriber caught up, changes are committed at a fixed rate (open loop); latency
  is the Kafka record timestamp (set when the producer takes the event) minus the change's
  ``commitTimestamp``, per change (its first domain event, matched by the event's ``replay_id``:
  the integer for CometD, the hex of the bytes for the Pub/Sub API).

With ``--transport both`` the transports run in ``--rounds`` interleaved rounds (who goes first
alternates; an unrecorded 1,000-change run per transport first, for a broker fresh from
``stack up``), each with its own sandbox, topics and checkpoint key; the report gives per transport
the median and range of each figure, and the ratio pubsub/cometd of backlog throughput (medians,
and per round), whose target (issue 17) is at least 1.

The mix: 70% customer-facing Order updates, 10% activations (a bulk SOQL re-read with the lines;
concurrent activations share one query), 10% OrderItem quantity changes (a SOQL parent lookup the
first time per line), 10% Product2 updates.
Until 2026-12-07 the sandbox shared the subscriber's process (and GIL): its serving costs (CometD's
JSON, the Pub/Sub API's gRPC and Avro) were counted as the subscriber's and the two competed for one
event loop; the figures below are from the sandbox in its own process.

Where the time goes, sandbox in process (2026-12-07, 2 cores): both transports were bound by the
one process's CPU (75-88% of a core), CometD 510-660 us per change, the Pub/Sub API 610-750 us, so
pubsub/cometd was 0.75-0.92 over five invocations; py-spy put the transport's own share at ~19% of
the samples for Pub/Sub (decode + CometD shape 11%, the sandbox's Avro encoding 7%, gRPC 1%)
against ~10% for CometD (aiocometd, aiohttp). Timed apart, per change: ``fastavro`` decode +
``to_cometd`` 36 us, a CometD message's JSON round trip 12 us.

Sandbox in its own process (2026-12-08, 2 cores, a machine ~2x slower than the day before: raw
aiokafka in ``bench_runtime`` 80k/s against 173k/s): the subscriber's CPU per change is the same for
both (CometD 838-991 us, Pub/Sub 820-1,144), but CometD's subscriber is 99% busy and the Pub/Sub one
83-97%: it waits on the flow-control round trip through a sandbox that spends twice CometD's CPU per
change (69-92 us against 32-39: gRPC's C-core threads, on the core Kafka and Postgres share), and
takes ~13% more SOQL re-reads (events arrive in 25-event responses, not whole long-poll batches, so
fewer activations share one re-read). pubsub/cometd 0.94 (rounds 0.72-1.02). Tried: the top-up
written from its own task instead of inside ``receive()`` (kept: a write no longer holds the next
event); top-ups of one event (the sandbox's CPU per change x5, throughput -30%) and of half a window
(no difference beyond the spread). ``pubsub_num_requested`` 50 or 100 made no difference.
The rounds spread widely: compare medians.

What it was (2026-12-08, a quiet machine): not the round trip. Sampled every 5 ms, the Pub/Sub
source's queue held 80-100 events nearly all the time while the subscriber was 86-96% busy: the
pump had work, the 8 lanes did not keep up, because a lane waits for Kafka's acknowledgement
(acks=all) before its next change. CometD never showed it: its pump (one aiocometd ``receive``
per message) kept fewer than 30 changes in flight, so it was bound by CPU instead. Two changes:
(1) the pump takes what the source already holds in one event-loop turn (``ChangeSource.ready``,
Pub/Sub only: aiosfstream hands out one message per call), which saved the task and the wait per
event (on/off A/B: 1,142-1,204 against 1,189-1,308 us per change) and lets the activations of one
response share a re-read; alone it left the subscriber 74-85% busy, pubsub/cometd 0.82; (2) 64
lanes instead of 8 (``CdcOptions.lanes``): with 32, Pub/Sub 1,142-1,196/s at 93% busy; with 64,
1,237-1,277/s at 94%, 736-760 us per change, ~100 re-reads instead of ~180; CometD unchanged
(862-1,117/s, 99% busy, pump-bound). Recorded run (``bench/results/cdc.json``, 5 rounds):
pubsub/cometd 1.13 (medians 1,215 against 1,073 changes/s; every round 1.13-1.24).

Kafka is reached through the fleet's ``KafkaConnection`` from the settings (the stack's address,
TLS and SASL from ``FLEET_KAFKA__*``: ``bench.kafka_connection``), by the subscriber and the bench.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]

from adapters.db import migrate
from adapters.kafka import KafkaConnection, delete_topics, ensure_topics, start_client
from bench.kafka_connection import bench_connection, connection_settings
from events.topics import DOMAIN_TOPICS, Topic, TopicSpec
from sandbox.salesforce import SalesforceSandbox
from sandbox.salesforce.org import AGENT
from sandbox.salesforce.pubsub import decode_replay_id, encode_replay_id
from workers.config import PostgresSettings, RuntimeSettings, SalesforceSettings, Settings, load_settings
from workers.ingress.sf_cdc import CdcMetrics, CdcOptions, CdcTopics, serve

Transport = Literal["cometd", "pubsub"]
TRANSPORTS: tuple[Transport, ...] = ("cometd", "pubsub")

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
MIX = "70% Order status, 10% activation (bulk SOQL re-read), 10% OrderItem (SOQL parent), 10% Product2"
#: how often the checkpoint rows are read while waiting for "durable" (both transports alike)
POLL_S = 0.02
DURABLE_WHEN = (
    "every channel's sf_cdc_checkpoints row (replay_id, or pubsub_replay_id read as the sandbox's "
    f"8-byte big-endian integer) at or past its last change; rows polled every {POLL_S * 1000:g} ms"
)
#: changes of the unrecorded run per transport before the rounds
WARM_UP = 1000
#: issue 17: the Pub/Sub API's backlog throughput at least CometD's in the same run
PUBSUB_TARGET = 1.0


class Org:
    """Commits changes straight into the sandbox org (no HTTP), returning each one's last CometD
    message; ``published`` keeps every message (an OrderItem change also publishes its Order's)."""

    def __init__(self, sandbox: SalesforceSandbox) -> None:
        self.sandbox = sandbox
        spec = {"customer": "tanaka", "Type": "Internet", "lines": ["INT-1G-GOLD"]}
        seeded = sandbox.control.seed({"orders": [spec] * ORDERS})["orders"]
        self.orders = [o["id"] for o in seeded]
        self.items = [o["items"][0]["id"] for o in seeded]
        self.products = [p["Id"] for p in sandbox.store.rows("Product2")]
        self.i = 0
        self.published: list[dict[str, Any]] = []

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
        self.published += published
        return published[-1]


# --- the sandbox, in a process of its own -----------------------------------------------------------
def _sandbox_main(pipe: Connection, retention: int, pubsub: bool) -> None:
    """The child process: the Salesforce sandbox (CometD, REST and, when asked, the Pub/Sub API on
    free ports) and the ``Org`` that commits changes into it, driven over ``pipe``. Salesforce is
    another machine in production: here it gets its own process (and GIL), so the bench process
    holds only the subscriber, as ``fleet run sf-cdc`` does."""
    asyncio.run(_serve_sandbox(pipe, retention, pubsub))


async def _serve_sandbox(pipe: Connection, retention: int, pubsub: bool) -> None:
    sandbox = SalesforceSandbox(cometd_timeout_ms=5_000, retention=retention, pubsub_port=0 if pubsub else None)
    runner = await sandbox.start(port=0)
    loop = asyncio.get_running_loop()
    try:
        org = Org(sandbox)
        pipe.send({"url": sandbox.url, "pubsub_url": sandbox.pubsub_url, "last": sandbox.bus.last_replay_id})
        while True:
            command, *args = await loop.run_in_executor(None, pipe.recv)
            mark = len(org.published)
            if command == "changes":
                for _ in range(args[0]):
                    org.change()
            elif command == "live":
                await _live(org, *args)
            elif command != "cpu":
                return
            published = org.published[mark:]
            commits = {m["data"]["event"]["replayId"]: _commit_ms(m) for m in published}
            pipe.send({"last": _last_per_channel(published), "commits": commits, "cpu_s": time.process_time()})
    finally:
        await runner.cleanup()


def _commit_ms(message: dict[str, Any]) -> int | None:
    header = message["data"]["payload"].get("ChangeEventHeader")
    return header["commitTimestamp"] if header else None


class RemoteSandbox:
    """The bench's side of the sandbox process: its addresses, and changes committed on request."""

    def __init__(self, retention: int, *, pubsub: bool) -> None:
        context = multiprocessing.get_context("spawn")  # a fresh interpreter, no inherited event loop
        self._pipe, child = context.Pipe()
        self._process = context.Process(target=_sandbox_main, args=(child, retention, pubsub), daemon=True)

    async def start(self) -> None:
        self._process.start()
        started = await self._ask(None)
        self.url, self.pubsub_url, self.last_replay_id = started["url"], started["pubsub_url"], started["last"]

    async def changes(self, count: int) -> dict[str, Any]:
        """``count`` changes of the mix, committed as fast as the org takes them."""
        return await self._ask(("changes", count))

    async def live(self, count: int, rate: float) -> dict[str, Any]:
        """``count`` changes at ``rate`` per second (open loop, timed in the sandbox's process)."""
        return await self._ask(("live", count, rate))

    async def cpu_s(self) -> float:
        """The sandbox process's CPU time so far (seconds)."""
        return float((await self._ask(("cpu",)))["cpu_s"])

    async def stop(self) -> None:
        if self._process.is_alive():
            with contextlib.suppress(OSError):
                self._pipe.send(("stop",))
            await asyncio.get_running_loop().run_in_executor(None, self._process.join, 10)
        if self._process.is_alive():
            self._process.kill()

    async def _ask(self, command: tuple[Any, ...] | None) -> dict[str, Any]:
        if command is not None:
            self._pipe.send(command)
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, self._pipe.poll, 600):
            raise TimeoutError(f"the sandbox process did not answer {command}")
        answer: dict[str, Any] = self._pipe.recv()
        return answer


def _settings(sandbox: RemoteSandbox, stack: Settings, transport: Transport) -> Settings:
    url = sandbox.url
    # the Pub/Sub endpoint only where the sandbox serves it (loopback: no TLS)
    endpoint = {"pubsub_endpoint": sandbox.pubsub_url} if transport == "pubsub" and sandbox.pubsub_url else {}
    salesforce = SalesforceSettings(
        instance_url=url,
        login_url=url,
        auth="refresh_token",
        refresh_token="sandbox-refresh-token",
        channels=CHANNELS,
        cdc_transport=transport,
        **endpoint,
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


#: a checkpoint in the column of the transport's kind (the other stays NULL, as the store writes it)
_CHECKPOINT_AT = {
    "cometd": "INSERT INTO sf_cdc_checkpoints (subscriber, channel, replay_id, position_time) "
    "VALUES ($1, $2, $3, now())",
    "pubsub": "INSERT INTO sf_cdc_checkpoints (subscriber, channel, pubsub_replay_id, position_time) "
    "VALUES ($1, $2, $3, now())",
}
_POSITIONS = "SELECT channel, replay_id, pubsub_replay_id FROM sf_cdc_checkpoints WHERE subscriber = $1"


async def _checkpoint_at(conn: asyncpg.Connection, subscriber: str, replay_id: int, transport: Transport) -> None:
    position: int | bytes = encode_replay_id(replay_id) if transport == "pubsub" else replay_id
    await conn.executemany(_CHECKPOINT_AT[transport], [(subscriber, channel, position) for channel in CHANNELS])


async def _durable_positions(conn: asyncpg.Connection, subscriber: str) -> dict[str, int]:
    """Each channel's checkpoint as the sandbox's integer replay id, whichever column holds it (the
    bench knows the sandbox's encoding; the subscriber never computes with Pub/Sub ids)."""
    positions = {}
    for row in await conn.fetch(_POSITIONS, subscriber):
        raw = row["pubsub_replay_id"]
        positions[row["channel"]] = (decode_replay_id(bytes(raw)) if raw is not None else row["replay_id"]) or 0
    return positions


async def _until_durable(conn: asyncpg.Connection, subscriber: str, last: dict[str, int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        positions = await _durable_positions(conn, subscriber)
        if all(positions.get(channel, 0) >= replay for channel, replay in last.items()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for checkpoints {last}; at {positions}")
        await asyncio.sleep(POLL_S)


async def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


def _last_per_channel(messages: list[dict[str, Any]]) -> dict[str, int]:
    last: dict[str, int] = {}
    for m in messages:
        last[m["channel"]] = max(last.get(m["channel"], 0), m["data"]["event"]["replayId"])
    return last


def _event_replay_id(replay_id: int, transport: Transport) -> int | str:
    """A change's replay id as its domain events carry it: the integer (CometD), or the hex of
    the Pub/Sub API's bytes (the sandbox's 8-byte encoding)."""
    return encode_replay_id(replay_id).hex() if transport == "pubsub" else replay_id


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
    connection: KafkaConnection, topics: list[tuple[str, int]], wanted: set[int | str]
) -> dict[int | str, int]:
    """Kafka timestamp of the first domain event derived from each wanted replay id."""
    consumer = AIOKafkaConsumer(**connection.options(), enable_auto_commit=False)
    await start_client(consumer, connection)
    first: dict[int | str, int] = {}
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


def _counted(metrics: CdcMetrics, name: str) -> int:
    """The sum of a counter over its labels (``name`` without ``_total``)."""
    total = 0.0
    for family in metrics.registry.collect():
        if family.name == name:
            total += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return int(total)


async def measure_cdc(
    n_events: int, *, live_events: int = 1000, live_rate: float = 200.0, transport: Transport = "cometd"
) -> dict[str, Any]:
    """Durable change events per second (backlog) and commit-to-produce latency (live), one transport."""
    stack = load_settings()
    connection = bench_connection(stack)
    dsn = stack.postgres.dsn.get_secret_value()
    await migrate(dsn)
    sandbox = RemoteSandbox(n_events + live_events + 10 * ORDERS, pubsub=transport == "pubsub")
    await sandbox.start()
    conn = await asyncpg.connect(dsn)
    stop = asyncio.Event()
    task: asyncio.Task[None] | None = None
    topics: CdcTopics | None = None
    try:
        topics = await _fresh_topics(connection)
        subscriber = f"bench-{uuid.uuid4().hex[:8]}"
        await _checkpoint_at(conn, subscriber, sandbox.last_replay_id, transport)
        # every channel written to, the OrderItem one too (its changes' last message is the Order's)
        backlog = await sandbox.changes(n_events)
        metrics = CdcMetrics()
        options = CdcOptions(subscriber=subscriber, checkpoint_interval_s=0.01, watchdog_s=60)
        settings = _settings(sandbox, stack, transport)
        task = asyncio.create_task(serve(settings, stop, topics=topics, options=options, metrics=metrics))
        await _until(lambda: metrics.registry.get_sample_value("sf_cdc_ready") == 1, 60, "subscribed")
        t0, cpu0, sandbox_cpu0 = time.perf_counter(), time.process_time(), await sandbox.cpu_s()
        await _until_durable(conn, subscriber, backlog["last"], 600)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        sandbox_cpu = await sandbox.cpu_s() - sandbox_cpu0
        emitted_backlog = _counted(metrics, "sf_cdc_events_emitted")
        live = await sandbox.live(live_events, live_rate)
        await _until_durable(conn, subscriber, live["last"], 120)
        latencies = await _live_latencies(connection, topics, live["commits"], transport)
        return {
            "transport": transport,
            "backlog": {
                "changes": n_events,
                "domain_events": emitted_backlog,
                "seconds": round(elapsed, 3),
                "durable_changes_per_s": round(n_events / elapsed, 1),
                "domain_events_per_s": round(emitted_backlog / elapsed, 1),
                # this process: the subscriber alone (gRPC's threads included); not the sandbox's
                # process, Kafka or Postgres
                "process_cpu_pct_of_core": round(100 * cpu / elapsed),
                "process_cpu_us_per_change": round(1e6 * cpu / n_events),
                # the sandbox's process: serving the stream and the SOQL re-reads (Salesforce's side)
                "sandbox_cpu_us_per_change": round(1e6 * sandbox_cpu / n_events),
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
            "salesforce_rereads": int(metrics.registry.get_sample_value("sf_cdc_salesforce_rereads_total") or 0),
            # both 0 in a clean run: a fallback would resync instead of replaying, a reconnect re-replays
            "replay_fallbacks": _counted(metrics, "sf_cdc_replay_fallbacks"),
            "reconnects": _counted(metrics, "sf_cdc_reconnects"),
            "options": {"lanes": options.lanes, "max_in_flight": options.max_in_flight},
        }
    finally:
        stop.set()
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 30)
        await conn.close()
        await sandbox.stop()
        if topics is not None:  # the shared stack keeps no bench topics (a broker full of them slows down)
            await delete_topics(connection, list(topics.all()))


async def _live_latencies(
    connection: KafkaConnection, topics: CdcTopics, commits: dict[int, int | None], transport: Transport
) -> list[float]:
    """Per live change: its first domain event's Kafka timestamp minus its ``commitTimestamp`` (ms)."""
    commit_ms = {_event_replay_id(r, transport): ms for r, ms in commits.items() if ms is not None}
    read = [
        (topics.order, DOMAIN_TOPICS[Topic.SF_ORDER].partitions),
        (topics.catalog, DOMAIN_TOPICS[Topic.SF_CATALOG].partitions),
    ]
    produced = await _first_produced_ms(connection, read, set(commit_ms))
    return [float(produced[r] - commit_ms[r]) for r in commit_ms if r in produced]


# --- several rounds, both transports --------------------------------------------------------------
async def measure_transports(
    n_events: int,
    *,
    live_events: int = 1000,
    live_rate: float = 200.0,
    transports: Sequence[Transport] = TRANSPORTS,
    rounds: int = 3,
    warm_up: bool = True,
) -> dict[str, Any]:
    """Each transport ``rounds`` times, interleaved (who goes first alternates), each run on its own
    sandbox, topics and checkpoint key; medians and ranges per transport, and pubsub/cometd."""
    runs: dict[Transport, list[dict[str, Any]]] = {t: [] for t in transports}
    for transport in transports if warm_up else ():  # right after `stack up` the broker's JVM is cold
        await measure_cdc(WARM_UP, live_events=WARM_UP // 5, live_rate=live_rate, transport=transport)
    for n in range(1, rounds + 1):
        for transport in transports if n % 2 else transports[::-1]:
            run = await measure_cdc(n_events, live_events=live_events, live_rate=live_rate, transport=transport)
            runs[transport].append({"round": n, **run})
            print(json.dumps(_headline(runs[transport][-1])), flush=True)
    report: dict[str, Any] = {
        "settings": {
            "changes": n_events,
            "live_changes": live_events,
            "live_rate_per_s": live_rate,
            "rounds": rounds,
            "order": "interleaved; who goes first alternates per round",
            "warm_up": f"one unrecorded run of {WARM_UP} changes per transport first" if warm_up else None,
        },
        "mix": MIX,
        "durable_when": DURABLE_WHEN,
        "transports": {t: summarize(rs) for t, rs in runs.items()},
    }
    if set(TRANSPORTS) <= set(runs):
        report["pubsub_over_cometd"] = compare(runs["cometd"], runs["pubsub"])
    return report


def _headline(run: dict[str, Any]) -> dict[str, Any]:
    latency = run["live"]["commit_to_produce_ms"]
    return {
        "round": run["round"],
        "transport": run["transport"],
        "durable_changes_per_s": run["backlog"]["durable_changes_per_s"],
        "p50_ms": latency["p50"],
        "p99_ms": latency["p99"],
    }


def spread(values: list[float]) -> dict[str, float]:
    """Median and range of one figure over rounds."""
    return {"median": round(statistics.median(values), 2), "min": min(values), "max": max(values)}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One transport over its rounds: the medians and ranges the README quotes, then every run."""
    latency = [r["live"]["commit_to_produce_ms"] for r in runs]
    return {
        "rounds": len(runs),
        "backlog_durable_changes_per_s": spread([r["backlog"]["durable_changes_per_s"] for r in runs]),
        "backlog_domain_events_per_s": spread([r["backlog"]["domain_events_per_s"] for r in runs]),
        "backlog_process_cpu_us_per_change": spread([r["backlog"]["process_cpu_us_per_change"] for r in runs]),
        "backlog_sandbox_cpu_us_per_change": spread([r["backlog"]["sandbox_cpu_us_per_change"] for r in runs]),
        "live_commit_to_produce_ms": {q: spread([lat[q] for lat in latency]) for q in ("p50", "p99", "max")},
        "salesforce_rereads": spread([r["salesforce_rereads"] for r in runs]),
        "runs": runs,
    }


def compare(cometd: list[dict[str, Any]], pubsub: list[dict[str, Any]]) -> dict[str, Any]:
    """Backlog throughput pubsub/cometd: of the medians (the headline), and round by round."""

    def rate(run: dict[str, Any]) -> float:
        return float(run["backlog"]["durable_changes_per_s"])

    ratio = statistics.median(map(rate, pubsub)) / statistics.median(map(rate, cometd))
    per_round = [round(rate(p) / rate(c), 3) for c, p in zip(cometd, pubsub, strict=True)]
    return {
        "backlog_throughput": round(ratio, 3),
        "per_round": per_round,
        "median_of_round_ratios": round(statistics.median(per_round), 3),
        "target": f">= {PUBSUB_TARGET:g} (issue 17: Pub/Sub backlog throughput at least CometD's)",
        "met": ratio >= PUBSUB_TARGET,
    }


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
    names = ("aiokafka", "aiosfstream-ng", "aiocometd-ng", "grpcio", "protobuf", "fastavro", "asyncpg", "httpx")
    versions = {n: metadata.version(n) for n in names}
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "packages": versions,
        "note": "Kafka (JVM), Postgres, the sandbox (its own process) and the subscriber share these cores",
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--transport", choices=(*TRANSPORTS, "both"), default="both")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each transport once per round)")
    parser.add_argument("--events", type=int, default=5000, help="changes in the backlog run")
    parser.add_argument("--live", type=int, default=1000, help="changes in the live (latency) run")
    parser.add_argument("--rate", type=float, default=200.0, help="live commit rate per second")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    info = machine_info()
    transports = TRANSPORTS if args.transport == "both" else (args.transport,)
    result = await measure_transports(
        args.events, live_events=args.live, live_rate=args.rate, transports=transports, rounds=args.rounds
    )
    return {
        "benchmark": "salesforce cdc ingress",
        "command": f"python -m bench.cdc_bench --transport {args.transport} --rounds {args.rounds}",
        "at": datetime.now(UTC).isoformat(),
        "machine": info,
        **result,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }


if __name__ == "__main__":
    arguments = parse_args()
    report = asyncio.run(main(arguments))
    medians = {t: {k: v for k, v in summary.items() if k != "runs"} for t, summary in report["transports"].items()}
    print(json.dumps({"transports": medians, "pubsub_over_cometd": report.get("pubsub_over_cometd")}, indent=2))
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(report, indent=2) + "\n")
