"""Ingress benchmark: signed WHMCS webhooks accepted durably per second, against a bare endpoint.

    python -m bench.ingress_bench [--duration 10] [--rates 500,2000] [--rate-rounds 3] [--out FILE]

The receiver runs in a child process exactly as ``serve`` builds it (same aiohttp app and runner
settings, real Redis and Kafka of the local stack, a fresh topic), with one extra route,
``POST /bench/bare``, that reads the body and answers 200 without verifying or producing. The load
generator runs in this process: pre-signed requests (unique webhook ids, signed before the timed
window) on persistent HTTP/1.1 connections written as raw bytes, so the generator costs little CPU.

Open loop: request i is due at ``t0 + i / rate`` and its latency is measured from that scheduled
time, not from when a connection became free, so a stalled server shows up in the latency instead
of silently lowering the offered rate (no coordinated omission). Each offered rate runs in
``--rate-rounds`` interleaved rounds of one bare and one verified run, reported as medians with
their range (CPU per webhook at 500/s moved by a factor of two between single runs). The
max-throughput runs are closed loop (each connection sends as soon as its previous answer
arrived), in ``--max-rounds`` interleaved rounds of one bare and one verified run each (which goes
first alternates), because one ~3 s run per endpoint on this shared 2-core machine moved by ±5%
(bare) to ±8% (verified) between invocations. The headline maximum of each endpoint is the median
of its rounds, and the ratio is theirs; the per-round ratios and their median are reported beside
it. Afterwards the topic's end offsets are summed and must equal the number of 200 answers:
"accepted" means "on Kafka".

Each run also records the CPU time the receiver process (``/proc/<pid>/stat``) and the load
generator (``os.times``) spent during it, as a share of one core and per 200 answer. It says what
bounds a run: the receiver is one event loop, so a receiver near 100% of a core is the limit, and
a generator near 100% would mean the bare rate is the generator's, not the server's (it is not: at
bare@max the receiver sits at ~100%, the generator at ~45%). ``cpu_per_webhook`` gathers the
receiver's CPU per webhook at every rate (the max: the median of its rounds) and the target of
issue 15: at 500/s and 2,000/s at most twice the figure at max, i.e. the receiver's CPU follows the
requests, not the clock (timers, lingers and lone round trips are what made low rates cost more).

Then, unless ``--no-cdc``, the Salesforce CDC part (``bench.cdc_bench``): the same backlog and live
rate over CometD and over the Pub/Sub API in ``--cdc-rounds`` interleaved rounds, under
``salesforce_cdc`` with its own machine info, per-transport medians and the ratio pubsub/cometd.

Kafka is reached through the fleet's ``KafkaConnection`` from the settings (the stack's address,
TLS and SASL from ``FLEET_KAFKA__*``: ``bench.kafka_connection``), by the bench's own clients and by
the receiver, which inherits the environment and builds it as ``serve`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import random
import signal
import socket
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from redis.asyncio import Redis
from standardwebhooks.webhooks import Webhook

from adapters.kafka import KafkaConnection, delete_topics, ensure_topics, start_client
from bench.kafka_connection import bench_connection
from events.topics import DAY_MS, TopicSpec
from workers.config import load_settings
from workers.ingress.webhook_server import DEDUPE_PREFIX

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "ingress.json"
VERIFIED_PATH, BARE_PATH = "/webhooks/whmcs", "/bench/bare"
#: in every webhook id of this run, so its dedupe marks can be removed from the shared Redis afterwards
BENCH_ID = f"{os.getpid()}{uuid.uuid4().hex[:6]}"
WARM_UP = 20_000  # verified requests before the timed runs: connections open, metadata fetched, JVM warm
EVENTS = (
    ("InvoicePaid", "invoice_id", "Paid"),
    ("InvoiceCreated", "invoice_id", "Unpaid"),
    ("AcceptOrder", "order_id", "Active"),
    ("ServiceEdit", "service_id", "Active"),
    ("ClientEdit", None, "Active"),
)


# --- the server (child process) ---------------------------------------------------------------------
def run_server(port: int, topic: str, dlq_topic: str) -> None:
    from aiohttp import web

    from workers.ingress.webhook_server import serve
    from workers.logs import configure_logging

    async def bare(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"status": "accepted"})

    def add_bare(app: web.Application) -> None:
        app.router.add_post(BARE_PATH, bare)

    async def main() -> None:
        configure_logging("WARNING", "json")
        base = load_settings()
        settings = base.model_copy(update={"whmcs": base.whmcs.model_copy(update={"webhook_listen_port": port})})
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await serve(settings, stop, configure=add_bare, topic=topic, dlq_topic=dlq_topic)

    asyncio.run(main())


# --- requests ---------------------------------------------------------------------------------------
def presign(count: int, path: str, port: int, secret: str) -> list[bytes]:
    """Raw HTTP/1.1 requests with unique webhook ids, signed now (well inside the 5 min tolerance)."""
    signer, now, rng = Webhook(secret), datetime.now(UTC), random.Random(7)
    prefix = f"{BENCH_ID}_{uuid.uuid4().hex[:6]}"
    out = []
    for n in range(count):
        event, id_key, status = EVENTS[n % len(EVENTS)]
        data: dict[str, Any] = {"client_id": rng.randint(1, 50_000), "status": status}
        if id_key:
            data[id_key] = rng.randint(1, 10_000_000)
        body = json.dumps({"event": event, "occurred_at": now.isoformat(), "data": data}, separators=(",", ":"))
        out.append(signed_request(signer, now, f"msg_bench_{prefix}_{n}", body, path, f"127.0.0.1:{port}"))
    return out


def signed_request(signer: Webhook, now: datetime, webhook_id: str, body: str, path: str, host: str) -> bytes:
    """One raw HTTP/1.1 POST of ``body``, signed as the WHMCS sandbox signs (Standard Webhooks)."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nwebhook-id: {webhook_id}\r\n"
        f"webhook-timestamp: {int(now.timestamp())}\r\nwebhook-signature: {signer.sign(webhook_id, now, body)}\r\n\r\n"
    )
    return head.encode() + body.encode()


# --- the load generator -----------------------------------------------------------------------------
@dataclass
class Run:
    label: str
    rate: float | None  # None = closed loop, as fast as the server answers
    requests: list[bytes]
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    receiver_cpu_s: float = 0.0
    receiver_sys_s: float = 0.0  # the kernel's part of it (system calls, wake-ups)
    generator_cpu_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        ok = self.statuses.get(200, 0)
        lat = sorted(self.latencies)
        return {
            "label": self.label,
            "offered_rate_per_s": self.rate,
            "requests": len(self.requests),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "accepted_per_s": round(ok / self.elapsed_s, 1) if self.elapsed_s else 0.0,
            "p50_ms": round(_pct(lat, 0.50) * 1000, 2),
            "p99_ms": round(_pct(lat, 0.99) * 1000, 2),
            "max_ms": round(lat[-1] * 1000, 2) if lat else None,
            "mean_ms": round(statistics.fmean(lat) * 1000, 2) if lat else None,
            "elapsed_s": round(self.elapsed_s, 3),
            "receiver_cpu_pct_of_core": round(100 * self.receiver_cpu_s / self.elapsed_s) if self.elapsed_s else None,
            "receiver_cpu_us_per_200": round(1e6 * self.receiver_cpu_s / ok, 1) if ok else None,
            "receiver_sys_share": round(self.receiver_sys_s / self.receiver_cpu_s, 2) if self.receiver_cpu_s else None,
            "generator_cpu_pct_of_core": round(100 * self.generator_cpu_s / self.elapsed_s) if self.elapsed_s else None,
        }


def process_cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far (Linux ``/proc``; zeros where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def drive(run: Run, port: int, connections: int, receiver_pid: int | None = None) -> None:
    """Send ``run.requests`` over ``connections`` keep-alive connections (open loop when rated)."""
    counter = itertools.count()
    total = len(run.requests)
    loop = asyncio.get_running_loop()
    streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(connections)]
    t0 = loop.time() + 0.05

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (i := next(counter)) < total:
            due = t0 + i / run.rate if run.rate else loop.time()
            if (delay := due - loop.time()) > 0:
                await asyncio.sleep(delay)
            writer.write(run.requests[i])
            status = await _read_response(reader)
            run.statuses[status] = run.statuses.get(status, 0) + 1
            if status == 200:
                run.latencies.append(loop.time() - due)

    started = loop.time()
    cpu_before = (process_cpu_split(receiver_pid) if receiver_pid else (0.0, 0.0)), _own_cpu_s()
    await asyncio.gather(*(connection(r, w) for r, w in streams))
    run.elapsed_s = loop.time() - max(started, t0) if run.rate else loop.time() - started
    user, system = process_cpu_split(receiver_pid) if receiver_pid else (0.0, 0.0)
    run.receiver_cpu_s = user + system - sum(cpu_before[0])
    run.receiver_sys_s = system - cpu_before[0][1]
    run.generator_cpu_s = _own_cpu_s() - cpu_before[1]
    for _, writer in streams:
        writer.close()


# --- orchestration ----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait_ready(port: int, proc: asyncio.subprocess.Process, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"receiver exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            status = await _read_response(reader)
            writer.close()
            if status == 200:
                return
        await asyncio.sleep(0.2)
    raise TimeoutError("receiver not ready")


async def _receiver_metrics(port: int) -> dict[str, float]:
    """The receiver's own counters after the runs (dedupe errors, produce latency sum/count)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    text = (await reader.read()).decode()
    writer.close()
    wanted = ("fleet_whmcs_webhooks_", "process_cpu_seconds_total")
    found = {}
    for line in text.split("\r\n\r\n", 1)[-1].splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith(wanted) and "_bucket" not in name and "_created" not in name:
            found[name] = float(value)
    return found


async def topic_records(connection: KafkaConnection, topic: str) -> int:
    """Records on ``topic`` (sum of end offsets). Subscribed at construction: aiokafka 0.14 raises
    CancelledError from ``stop()`` of a consumer that never subscribed."""
    consumer = AIOKafkaConsumer(topic, **connection.options(), enable_auto_commit=False)
    await start_client(consumer, connection)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = await consumer.end_offsets(partitions)
        return int(sum(ends.values()))
    finally:
        await consumer.stop()


async def bench_salesforce_cdc(rounds: int) -> dict[str, Any]:
    """Change events from the Salesforce sandbox to Kafka per second (``bench.cdc_bench``), per transport.

    A 5,000-change backlog through the real subscriber (checkpointed after the Kafka acks) and a
    live stream at 200/s for commit-to-produce latency, over CometD and over the Pub/Sub API in
    ``rounds`` interleaved rounds; the same stack as the webhook runs (the stack settings are
    loaded by ``bench.cdc_bench`` itself). The ratio pubsub/cometd is in ``pubsub_over_cometd``.
    """
    from bench import cdc_bench

    info = cdc_bench.machine_info()
    result = await cdc_bench.measure_transports(5_000, rounds=rounds)
    return {"command": f"python -m bench.cdc_bench --transport both --rounds {rounds}", "machine": info, **result}


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for name in ("aiohttp", "aiokafka", "redis", "hiredis", "pydantic"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "packages": versions,
        "note": "Kafka (JVM), Redis, the receiver and the load generator share these cores",
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings()
    connection = bench_connection(settings)
    secret = settings.whmcs.webhook_secrets[0].get_secret_value()
    suffix = uuid.uuid4().hex[:8]
    topic, dlq = f"bench.whmcs.billing.{suffix}", f"bench.ingress.dlq.{suffix}"
    await ensure_topics(connection, [TopicSpec(topic, 4, DAY_MS), TopicSpec(dlq, 1, DAY_MS)])
    info = machine_info()
    port = _free_port()
    argv = ["-m", "bench.ingress_bench", "--serve", str(port), topic, dlq]
    proc = await asyncio.create_subprocess_exec(sys.executable, *argv, cwd=ROOT)
    try:
        await _wait_ready(port, proc)
        runs = await _all_runs(args, port, secret, proc.pid)
        info["receiver_metrics"] = await _receiver_metrics(port)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 60)
    try:
        on_topic = await topic_records(connection, topic)
    finally:  # the shared stack keeps no bench data
        await delete_topics(connection, [topic, dlq])
        await _forget_marks(settings.redis.url.get_secret_value())
    cdc = None if args.no_cdc else await bench_salesforce_cdc(args.cdc_rounds)
    return _report(args, info, runs, on_topic, cdc)


async def _forget_marks(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        keys = [key async for key in redis.scan_iter(match=f"{DEDUPE_PREFIX}msg_bench_{BENCH_ID}_*", count=10_000)]
        for start in range(0, len(keys), 10_000):
            await redis.unlink(*keys[start : start + 10_000])
    finally:
        await redis.aclose()


async def _all_runs(args: argparse.Namespace, port: int, secret: str, receiver_pid: int) -> list[Run]:
    await drive(Run("warm-up", None, presign(WARM_UP, VERIFIED_PATH, port, secret)), port, args.connections)
    await asyncio.sleep(1.0)  # as between the runs: the first timed run starts from a quiet receiver
    plan: list[tuple[str, str, float | None]] = []
    for n in range(1, args.rate_rounds + 1):  # interleaved like the max rounds: one pair per rate per round
        for rate in args.rates:
            pair = [(f"bare@{rate:g}/s#{n}", BARE_PATH, rate), (f"verified@{rate:g}/s#{n}", VERIFIED_PATH, rate)]
            plan += pair if n % 2 else pair[::-1]
    for n in range(1, args.max_rounds + 1):
        pair = [(f"bare@max#{n}", BARE_PATH, None), (f"verified@max#{n}", VERIFIED_PATH, None)]
        plan += pair if n % 2 else pair[::-1]
    runs = []
    for label, path, rate in plan:
        count = int((rate or args.max_rate_guess) * args.duration)
        run = Run(label, rate, presign(count, path, port, secret))
        await drive(run, port, args.connections, receiver_pid)
        print(json.dumps(run.summary()), flush=True)
        runs.append(run)
        await asyncio.sleep(1.0)
    return runs


def _report(
    args: argparse.Namespace, info: dict[str, Any], runs: list[Run], on_topic: int, cdc: dict[str, Any] | None
) -> dict[str, Any]:
    by_label = {run.label: run.summary() for run in runs}
    rounds = range(1, args.max_rounds + 1)
    bares = [by_label[f"bare@max#{n}"] for n in rounds]
    verifieds = [by_label[f"verified@max#{n}"] for n in rounds]

    def median(runs: list[dict[str, Any]], field: str) -> float:
        values: list[float] = [run[field] for run in runs]
        return round(statistics.median(values), 1)

    bare_rate, verified_rate = median(bares, "accepted_per_s"), median(verifieds, "accepted_per_s")
    per_round = [round(v["accepted_per_s"] / b["accepted_per_s"], 3) for b, v in zip(bares, verifieds, strict=True)]
    accepted = sum(run.statuses.get(200, 0) for run in runs if run.label.startswith("verified")) + WARM_UP
    return {
        "benchmark": "whmcs webhook ingress",
        "command": "python -m bench.ingress_bench",
        "at": datetime.now(UTC).isoformat(),
        "machine": info,
        "settings": {
            "duration_s": args.duration,
            "connections": args.connections,
            "rates": args.rates,
            "rate_rounds": args.rate_rounds,
            "max_rounds": args.max_rounds,
        },
        "runs": list(by_label.values()),
        "max_throughput": {
            "rounds": args.max_rounds,
            "verified_durable_per_s": verified_rate,
            "bare_per_s": bare_rate,
            "ratio_to_bare": round(verified_rate / bare_rate, 3),
            "ratio_to_bare_per_round": per_round,
            "median_of_round_ratios": round(statistics.median(per_round), 3),
            "target": ">= 2000/s and >= 0.5 of bare",
            "verified_per_s_per_round": [v["accepted_per_s"] for v in verifieds],
            "bare_per_s_per_round": [b["accepted_per_s"] for b in bares],
            "receiver_cpu_pct_of_core": {
                "bare": median(bares, "receiver_cpu_pct_of_core"),
                "verified": median(verifieds, "receiver_cpu_pct_of_core"),
            },
            "receiver_cpu_us_per_200": {
                "bare": median(bares, "receiver_cpu_us_per_200"),
                "verified": median(verifieds, "receiver_cpu_us_per_200"),
            },
        },
        "at_offered_rates": {f"{rate:g}/s": at_rate(rate, by_label, args.rate_rounds) for rate in args.rates},
        "cpu_per_webhook": cpu_per_webhook(
            {f"{rate:g}/s": rounds_at(by_label, "verified", rate, args.rate_rounds) for rate in args.rates},
            {f"{rate:g}/s": rounds_at(by_label, "bare", rate, args.rate_rounds) for rate in args.rates},
            verifieds,
            bares,
        ),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "durability": {"accepted_200": accepted, "records_on_topic": on_topic, "lossless": on_topic == accepted},
        "salesforce_cdc": cdc,
    }


#: issue 15: CPU per verified webhook at 500/s and 2,000/s at most this many times its figure at max
CPU_PER_WEBHOOK_TARGET = 2.0


def rounds_at(by_label: dict[str, dict[str, Any]], kind: str, rate: float, rounds: int) -> list[dict[str, Any]]:
    """The summaries of every round of one endpoint at one offered rate."""
    return [by_label[f"{kind}@{rate:g}/s#{n}"] for n in range(1, rounds + 1)]


def spread(runs: list[dict[str, Any]], field: str) -> dict[str, float]:
    """Median and range of one figure over rounds (runs without it are left out)."""
    values = [run[field] for run in runs if run[field] is not None]
    return {"median": round(statistics.median(values), 2), "min": min(values), "max": max(values)}


def at_rate(rate: float, by_label: dict[str, dict[str, Any]], rounds: int) -> dict[str, Any]:
    """Both endpoints at one offered rate: medians and ranges over the rounds."""
    fields = (
        "accepted_per_s",
        "p50_ms",
        "p99_ms",
        "receiver_cpu_pct_of_core",
        "receiver_cpu_us_per_200",
        "receiver_sys_share",
    )
    kinds = {kind: rounds_at(by_label, kind, rate, rounds) for kind in ("verified", "bare")}
    out: dict[str, Any] = {kind: {f: spread(runs, f) for f in fields} for kind, runs in kinds.items()}
    ratios = [v["accepted_per_s"] / b["accepted_per_s"] for v, b in zip(kinds["verified"], kinds["bare"], strict=True)]
    out["ratio_to_bare"] = round(statistics.median(ratios), 3)
    return out


def cpu_per_webhook(
    verified_at: dict[str, list[dict[str, Any]]],
    bare_at: dict[str, list[dict[str, Any]]],
    verified_max: list[dict[str, Any]],
    bare_max: list[dict[str, Any]],
) -> dict[str, Any]:
    """Receiver CPU per accepted webhook (the receiver process's CPU time over a run / its 200
    answers), in us: median and range over the rounds at every offered rate and at max, and the
    target of issue 15 on the medians (verified at each offered rate against verified at max)."""
    field = "receiver_cpu_us_per_200"
    verified = {rate: spread(runs, field) for rate, runs in verified_at.items()}
    verified["max"] = spread(verified_max, field)
    bare = {rate: spread(runs, field) for rate, runs in bare_at.items()}
    bare["max"] = spread(bare_max, field)
    ratios = {rate: round(verified[rate]["median"] / verified["max"]["median"], 2) for rate in verified_at}
    return {
        "verified_us": verified,
        "bare_us": bare,
        "verified_ratio_to_max": ratios,
        # the receiver's own share: a request costs more CPU when requests come apart (the bare route
        # too), so verified against bare at the same rate is what the verified path adds there
        "verified_over_bare": {rate: round(verified[rate]["median"] / bare[rate]["median"], 2) for rate in verified},
        "target": f"verified at 500/s and 2,000/s <= {CPU_PER_WEBHOOK_TARGET:g}x its median at max (issue 15)",
        "met": all(ratio <= CPU_PER_WEBHOOK_TARGET for ratio in ratios.values()),
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[500.0, 2000.0])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--max-rate-guess", type=float, default=4000.0, help="sizes the closed-loop runs")
    parser.add_argument("--max-rounds", type=int, default=5, help="interleaved bare/verified closed-loop rounds")
    parser.add_argument("--rate-rounds", type=int, default=3, help="interleaved bare/verified rounds per offered rate")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-cdc", action="store_true", help="webhook runs only (the CDC part is bench.cdc_bench)")
    parser.add_argument("--cdc-rounds", type=int, default=3, help="interleaved CometD/Pub/Sub rounds of the CDC part")
    parser.add_argument("--serve", nargs=3, metavar=("PORT", "TOPIC", "DLQ"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    options = parse_args(sys.argv[1:])
    if options.serve:
        run_server(int(options.serve[0]), options.serve[1], options.serve[2])
        sys.exit(0)
    result = asyncio.run(main(options))
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(result, indent=2) + "\n")
    summary = {"cpu_per_webhook": result["cpu_per_webhook"], "durability": result["durability"]}
    print(json.dumps(result["max_throughput"] | summary, indent=2))
