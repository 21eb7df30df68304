"""Runtime benchmark: records/s of our consume runtime against a raw aiokafka consumer and faust-streaming.

    python -m bench.runtime_bench [--records 200000] [--size 500] [--key-rounds 3] [--out bench/results/runtime.json]

One fresh topic (4 partitions) is filled once with N CloudEvents-binary records of a real event type
(``fleet.order.changed.v1``, value ~``--size`` bytes), each with a key (order id) of its own, then
three consumers read all of it, each in a fresh subprocess (no shared loop, caches or GC), each from
the earliest offset in a fresh group:

  a. raw    aiokafka ``AIOKafkaConsumer`` with auto-commit and ``getmany``; touches each record, no work
  b. runtime  ``workers.runtime.serve`` with a no-op handler and the default ``RuntimeSettings``: decode
             + validate headers and payload into the event model, dispatch (records of different keys
             of one partition side by side, up to ``max_in_flight_per_partition``), at-least-once
             commits (manual, after handling), health server
  c. faust  a faust-streaming agent (``value_serializer="raw"``) iterating its stream with a no-op body;
             faust acks each event and commits on its own timer (at-least-once)

The keys are distinct (before 2026-12-07 5,000 order ids repeated 40 times each), so nothing in b's
per-key ordering holds a record back and the row measures what key concurrency costs at no work.

Key concurrency (``key_concurrency``): after those rounds, ``--key-rounds`` more (interleaved) run b
with a handler that does ``await asyncio.sleep(0.02)`` (an I/O-bound handler), once with
``max_in_flight_per_partition=1`` and once with 32, reading the first records of the same
topic in a fresh group each; records/s of both and their ratio (target ``key_concurrency_speedup``).
The serial run reads fewer records (``--key-records-serial``: 4 partitions x 1 / 20 ms is at most
200/s) than the one at 32 (``--key-records``), so its run stays short: rates are compared, not times.

Tracing (``tracing``): after those, ``--tracing-rounds`` more (interleaved) run b three ways: ``absent``
(the same child from the tree of the commit before the tracing seam arrived, exported with ``git
archive``: no seam at all), ``off`` (this tree, no ``OTEL_*`` variable: how the fleet runs by default)
and ``on`` (this tree, tracing on: a span per record and one per handler, through the SDK's
``BatchSpanProcessor`` into an exporter that drops them, so the cost of spans without a network).
Reported: each round's off/absent and on/off rate ratios with their median, min and max, and b/a with
tracing off and absent (the medians of these rows over the median of a). Target: off within 3 % of absent.

Each child reports its start (before the consumer is built), first record, the record at which the
timed window opens (``--warm-up``, 10,000 by default: see ``Clock``) and the last (N-th) record.
``rate`` = records in the window / its length: steady state, without the group join and the first
poll. ``rate_from_first_record`` (N / (last - first), the headline before 2026-11-26) and
``wall_rate`` (N / (last - start), join included) are kept. ``cpu_us_per_record`` is the child's
CPU time in the window per record and ``cpu_share`` its share of one core (near 1.0: the variant is
CPU-bound; lower: it waited for data). With ``--repeat R`` the variants run interleaved R times
(a b c a b c ...: drift on a shared machine hits every variant alike); the report keeps every run's
rate, the best (``ratios``), the median (``ratios_of_medians``, the headline) and each round's
ratios with their median (``ratios_per_round``). Ratios b/a and b/c use ``rate``.
Results, with machine info, go to ``--out``.
Every Kafka client (the fill, the three variants, the topic admin) connects through the fleet's
``KafkaConnection``: the address of ``--bootstrap`` (else the stack's), TLS and SASL from the
``FLEET_KAFKA__*`` settings (``bench.kafka_connection``); faust gets the same through its own
``broker_credentials``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapters.kafka import KafkaConnection

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "runtime.json"
PARTITIONS = 4
VARIANTS = ("raw", "runtime", "faust")
#: the tracing row's settings, in the order each round runs them
TRACING_SETTINGS = ("absent", "off", "on")
#: b/a is issue 15's 0.75 (was 0.7 before the runtime split; the split was to win the speed back)
TARGETS = {"b_over_a": 0.75, "b_over_c": 1.5, "key_concurrency_speedup": 20.0}
#: the key-concurrency row: its handler's await, and the two settings it compares (the runtime's default
#: is 1 where a route sets none: see workers.config.RuntimeSettings.max_in_flight_per_partition)
KEY_SLEEP_S = 0.02
KEY_SETTINGS: dict[str, int | None] = {"max_in_flight_1": 1, "max_in_flight_32": 32}
#: group-join tuning shared by every variant (infra-notes: small timeouts; the broker has no initial delay)
SESSION_TIMEOUT_MS, HEARTBEAT_MS, REBALANCE_TIMEOUT_MS = 6_000, 500, 5_000


# --- the data ------------------------------------------------------------------------------------


def order_id(i: int) -> str:
    """Record ``i``'s order id, hence its Kafka key (and ``ce_subject``): one per record, fixed width."""
    return f"801{i:015d}"


def make_record(i: int, size: int) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """Record ``i``: an ``OrderChanged`` envelope whose JSON value is about ``size`` bytes."""
    from events.base import to_envelope
    from events.envelope import to_record
    from events.salesforce import OrderChanged

    base = OrderChanged(sf_order_id=order_id(i), changed_fields=["Status"], change={"pad": ""})
    pad = max(0, size - len(base.model_dump_json(exclude_defaults=False)) - 1)
    event = base.model_copy(update={"change": {"pad": "x" * pad}})
    return to_record(to_envelope(event, source="/bench/runtime", id=f"bench-{i}"))


async def fill_topic(connection: KafkaConnection, topic: str, n: int, size: int) -> dict[str, Any]:
    """Create ``topic`` and produce ``n`` records round-robin over its partitions; returns sizes.

    Written the way the fleet's workers write: ``adapters.kafka.durable_producer`` (idempotent,
    acks=all, 2 ms linger, aiokafka's 16 KB batches), so the record batches a consumer reads have the
    production layout. (Before 2026-11-26 the fill used 512 KB batches and a 20 ms linger, a layout
    no worker writes; in the interleaved runs that compared both, the raw consumer read either at
    about the same rate and the runtime ~5% faster from the small batches.)"""
    from adapters.kafka import durable_producer, ensure_topics, start_client
    from events.topics import TopicSpec

    await ensure_topics(connection, [TopicSpec(topic, PARTITIONS, 6 * 3_600_000)])
    producer = durable_producer(connection, "bench-runtime-fill")
    await start_client(producer, connection)
    started = time.perf_counter()
    try:
        template = [make_record(i, size) for i in range(min(n, 5_000))]
        pending = []
        for i in range(n):
            j = i % len(template)
            key, value, headers = template[j]
            # A key per record: template j's order id becomes record i's (same width, so same sizes)
            # in the key, the value and ce_subject; building each record's model would slow the fill.
            old, new = order_id(j).encode(), order_id(i).encode()
            key, value = new, value.replace(old, new)
            headers = [(h, f"bench-{i}".encode() if h == "ce_id" else v.replace(old, new)) for h, v in headers]
            pending.append(await producer.send(topic, value=value, key=key, headers=headers, partition=i % PARTITIONS))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    key, value, headers = template[0]
    return {
        "value_bytes": len(value),
        "header_bytes": sum(len(h) + len(v) for h, v in headers),
        "key_bytes": len(key),
        "keys": f"distinct: {n} (one order id per record)",
        "produce_s": round(time.perf_counter() - started, 2),
        "producer": "adapters.kafka.durable_producer (idempotent, acks=all, linger 2 ms, 16 KB batches)",
    }


# --- the variants (each runs in its own child process) --------------------------------------------


class Clock:
    """Start, first, steady and last record times of one variant (perf_counter seconds), and CPU time.

    The timed window opens at the ``warm_up``-th record (the first records cost a variant's start:
    the raw consumer builds its whole first fetch, some 5,800 records, before the loop sees record
    one, which a window opening at record one would leave out for it and not for the others). A
    variant that works in polls (raw) calls ``poll()`` before each one: its window then opens where
    the poll holding that record began, counting that poll's records, so no poll's unpacking falls
    outside the window while its records fall inside."""

    def __init__(self, n: int, warm_up: int = 0) -> None:
        self.n, self.seen = n, 0
        self.warm_up = min(warm_up, max(0, n - 1))
        self.start = time.perf_counter()
        self.first: float | None = None
        self.steady: float | None = None  # the timed window opens here...
        self.steady_seen = 0  # ...after this many records
        self.last: float | None = None
        self.steady_cpu = self.last_cpu = 0.0  # process CPU time (user + system) at those two points
        self._poll: tuple[float, float, int] | None = None  # (time, cpu, seen) before the current poll

    def poll(self) -> None:
        """Before a poll (raw): its records' unpacking starts now."""
        if self.steady is None:
            self._poll = (time.perf_counter(), time.process_time(), self.seen)

    def saw(self, count: int = 1) -> bool:
        """Count ``count`` records; True once all N were seen."""
        if self.first is None:
            self.first = time.perf_counter()
        if self.steady is None and self.seen + count > self.warm_up:
            if self._poll is not None:
                self.steady, self.steady_cpu, self.steady_seen = self._poll
            else:
                self.steady, self.steady_cpu, self.steady_seen = time.perf_counter(), time.process_time(), self.seen
        self.seen += count
        if self.seen >= self.n and self.last is None:
            self.last = time.perf_counter()
            self.last_cpu = time.process_time()
        return self.last is not None

    def result(self, **extra: Any) -> dict[str, Any]:
        assert self.first is not None and self.steady is not None and self.last is not None
        timed, counted = self.last - self.steady, self.n - self.steady_seen
        wall = self.last - self.start
        cpu = self.last_cpu - self.steady_cpu
        return {
            "records": self.seen,
            "timed_records": counted,
            "join_s": round(self.first - self.start, 3),
            "timed_s": round(timed, 3),
            "wall_s": round(wall, 3),
            "rate": round(counted / timed, 1),
            "rate_from_first_record": round(self.n / (self.last - self.first), 1),
            "wall_rate": round(self.n / wall, 1),
            "cpu_share": round(cpu / timed, 2),
            "cpu_us_per_record": round(cpu / counted * 1e6, 2),
            **extra,
        }


async def run_raw(connection: KafkaConnection, topic: str, n: int, warm_up: int) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer

    from adapters.kafka import start_client

    clock = Clock(n, warm_up)
    consumer = AIOKafkaConsumer(
        topic,
        **connection.options(),
        group_id=f"bench-raw-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=True,
        auto_offset_reset="earliest",
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=HEARTBEAT_MS,
        rebalance_timeout_ms=REBALANCE_TIMEOUT_MS,
    )
    await start_client(consumer, connection)
    try:
        done = False
        while not done:
            clock.poll()
            batch = await consumer.getmany(timeout_ms=100)
            for records in batch.values():
                for _record in records:  # "see" every record, do nothing with it
                    done = clock.saw()
    finally:
        await consumer.stop()
    return clock.result(config="aiokafka defaults, getmany, enable_auto_commit=True")


async def run_runtime(
    settings: Any, topic: str, n: int, group: str, warm_up: int, sleep_s: float = 0.0, tracing_on: bool = False
) -> dict[str, Any]:
    """``group``'s retry tiers were created by the parent well before, as in production (a topic created
    right before subscribing can miss the first metadata and cost a rebalance inside the timed window).
    ``settings``: the child's (``_bench_settings``); ``serve`` builds its connection from their Kafka
    section, the same one ``bench_connection`` builds for the other variants. ``sleep_s`` > 0: the
    handler awaits that long first (the key-concurrency row), else it does nothing."""
    from events.salesforce import OrderChanged
    from workers.runtime import Message, Route, serve

    stop = asyncio.Event()
    clock = Clock(n, warm_up)

    async def noop(event: OrderChanged, msg: Message) -> None:
        if clock.saw():
            stop.set()

    async def sleeper(event: OrderChanged, msg: Message) -> None:
        await asyncio.sleep(sleep_s)
        if clock.saw():
            stop.set()

    if tracing_on:
        _trace_to_nowhere()
    route = Route("bench", group, (topic,), handlers={OrderChanged: sleeper if sleep_s > 0 else noop})
    await serve(route, settings, stop)
    stopped = time.perf_counter()
    assert clock.last is not None
    in_flight = settings.runtime.max_in_flight_per_partition
    return clock.result(
        shutdown_s=round(stopped - clock.last, 3),
        max_in_flight_per_partition=in_flight,
        handler=f"await asyncio.sleep({sleep_s})" if sleep_s > 0 else "no-op",
        config="workers.runtime.serve, default RuntimeSettings loop knobs, no Postgres pool (no inbox), "
        f"dead letters on, max_in_flight_per_partition={in_flight}",
    )


def _trace_to_nowhere() -> None:
    """Tracing on in this child, as ``configure`` sets it up (a ``BatchSpanProcessor``), with an exporter
    that drops every span: the cost of making, ending and queueing spans, without the network's."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from adapters import tracing

    class Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    trace.set_tracer_provider(provider)
    tracing.use(provider)


def _bench_settings(settings: Any, bootstrap: str, max_in_flight: int | None = None) -> Any:
    """The group-join tuning, and ``max_in_flight_per_partition`` when given (None: the default), with
    the worker's cap (``max_in_flight``, 64 by default) raised to every partition's keys at once: the
    row measures keys per partition, not the cap."""
    kafka = settings.kafka.model_copy(
        update={"bootstrap": bootstrap, "session_timeout_ms": SESSION_TIMEOUT_MS, "heartbeat_interval_ms": HEARTBEAT_MS}
    )
    update: dict[str, Any] = {"kafka": kafka}
    if max_in_flight is not None:
        runtime = {"max_in_flight_per_partition": max_in_flight, "max_in_flight": PARTITIONS * max_in_flight}
        update["runtime"] = settings.runtime.model_copy(update=runtime)
    return settings.model_copy(update=update)


def run_faust(
    connection: KafkaConnection, topic: str, n: int, max_poll_records: int | None, warm_up: int
) -> dict[str, Any]:
    import faust

    clock = Clock(n, warm_up)
    result: dict[str, Any] = {}
    stopping: list[asyncio.Future[None]] = []
    datadir = tempfile.mkdtemp(prefix="bench-faust-")  # faust writes <app id>-data into the cwd otherwise
    app = faust.App(
        f"bench-faust-{uuid.uuid4().hex[:8]}",
        datadir=datadir,
        broker=f"kafka://{connection.bootstrap}",
        broker_credentials=faust_credentials(connection),
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        web_enabled=False,
        topic_partitions=PARTITIONS,
        topic_disable_leader=True,  # no extra leader topic to create and join
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=SESSION_TIMEOUT_MS / 1000,
        broker_heartbeat_interval=HEARTBEAT_MS / 1000,
        broker_rebalance_timeout=REBALANCE_TIMEOUT_MS / 1000,
        broker_max_poll_records=max_poll_records,
        stream_wait_empty=False,
    )
    source = app.topic(topic, key_type=bytes, value_type=bytes, value_serializer="raw", key_serializer="raw")

    @app.agent(source)
    async def noop(stream: Any) -> None:
        async for _value in stream:
            if clock.saw() and not result:
                result.update(clock.result(config=f"faust agent, broker_max_poll_records={max_poll_records}"))
                stopping.append(asyncio.ensure_future(worker.stop()))  # leave the group, then exit the loop

    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit:
        pass
    finally:
        shutil.rmtree(datadir, ignore_errors=True)
    if not result:
        raise RuntimeError("faust stopped before it saw every record")
    return result


def faust_credentials(connection: KafkaConnection) -> Any:
    """faust's ``broker_credentials`` for ``connection``: None for PLAINTEXT (as before).

    faust builds its own aiokafka clients, so a secured connection is passed through faust's API
    rather than skipping the variant: ``faust.SSLCredentials`` (SSL) or ``faust.SASLCredentials``
    (SASL_PLAINTEXT, or SASL_SSL with an ssl context) carrying our ssl context (same CA, client
    certificate and hostname check) and SASL user, mechanism and password. faust turns them into
    aiokafka options for its consumer, producer and topic creation; they are checked here against
    ``connection.options()`` so the variant cannot connect differently from the other two."""
    import faust
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    if connection.security_protocol == "PLAINTEXT":
        return None
    context = connection.ssl_context() if connection.uses_tls else None
    credentials: Any
    if connection.uses_sasl:
        credentials = faust.SASLCredentials(
            username=connection.sasl_username,
            password=connection.sasl_password,
            ssl_context=context,
            mechanism=connection.sasl_mechanism,
        )
    else:
        credentials = faust.SSLCredentials(context)
    ours = {k: v for k, v in connection.options().items() if k != "bootstrap_servers"}
    theirs = {k: v for k, v in credentials_to_aiokafka_auth(credentials).items() if v is not None}
    if theirs != ours:
        raise RuntimeError(f"faust would not connect as {connection.describe()}: {sorted(theirs)} != {sorted(ours)}")
    return credentials


# --- orchestration --------------------------------------------------------------------------------


def run_child(
    variant: str,
    connection: KafkaConnection,
    topic: str,
    n: int,
    timeout_s: float,
    extra: list[str],
    root: Path = ROOT,
) -> dict[str, Any]:
    """One variant in a fresh interpreter; it writes its JSON result to a file (faust owns the terminal).
    The child sees none of the ``FLEET_*`` settings but the connection's security ones: it rebuilds
    ``connection`` from those and ``--bootstrap`` (``run_variant``)."""
    from bench.kafka_connection import connection_env

    out = Path(tempfile.mkstemp(prefix=f"bench-{variant}-", suffix=".json")[1])
    cmd = [sys.executable, "-m", "bench.runtime_bench", "--variant", variant, "--bootstrap", connection.bootstrap]
    cmd += ["--topic", topic, "--records", str(n), "--result-file", str(out), *extra]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env.update(connection_env())
    env["FLEET_LOG__LEVEL"] = "WARNING"
    env = {k: v for k, v in env.items() if not k.startswith("OTEL_")}  # tracing on only where asked (--tracing)
    if root != ROOT:  # another tree's code (the tracing row's ``absent``), first on the path
        env["PYTHONPATH"] = str(root)
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout_s)
        text = out.read_text()
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f}s"}
    finally:
        out.unlink(missing_ok=True)
    if proc.returncode != 0 or not text:
        return {"error": f"exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-2000:]}"}
    result: dict[str, Any] = json.loads(text)
    return result


def machine_info(bootstrap: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "aiokafka": metadata.version("aiokafka"),
        "faust_streaming": metadata.version("faust-streaming"),
        "bootstrap": bootstrap,
    }
    try:
        from devtools.stack.kafka import kafka_version

        info["kafka"] = kafka_version()
    except Exception as exc:  # only informational; a foreign broker has no pom here
        info["kafka"] = f"unknown ({type(exc).__name__})"
    return info


def ratios(results: dict[str, dict[str, Any]], field: str) -> dict[str, float | None]:
    def rate(name: str) -> float | None:
        value = results.get(name, {}).get(field)
        return float(value) if value else None

    a, b, c = rate("raw"), rate("runtime"), rate("faust")
    return {
        "b_over_a": round(b / a, 3) if a and b else None,
        "b_over_c": round(b / c, 3) if b and c else None,
    }


async def _create_group_topics(connection: KafkaConnection, groups: list[str]) -> list[str]:
    from adapters.kafka import ensure_topics
    from events.topics import group_topics

    created = []
    for group in groups:
        created += await ensure_topics(connection, group_topics(group))
    await asyncio.sleep(1.0)  # let the broker's metadata settle before a consumer subscribes
    return created


def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    connection = _stack_connection(args.bootstrap)
    bootstrap = connection.bootstrap
    machine = machine_info(bootstrap)
    topic = f"bench.runtime.{uuid.uuid4().hex[:8]}"
    print(f"filling {topic} with {args.records} records of ~{args.size} bytes on {bootstrap} ...", flush=True)
    data = asyncio.run(fill_topic(connection, topic, args.records, args.size))
    groups = [f"bench-runtime-{uuid.uuid4().hex[:8]}" for _ in range(args.repeat)]
    key_groups = [f"bench-runtime-keys-{uuid.uuid4().hex[:8]}" for _ in range(args.key_rounds * len(KEY_SETTINGS))]
    trace_groups = [f"bench-runtime-trace-{uuid.uuid4().hex[:8]}" for _ in range(args.tracing_rounds * 3)]
    created = asyncio.run(_create_group_topics(connection, groups + key_groups + trace_groups))
    trace_runs: dict[str, list[dict[str, Any]]] = {setting: [] for setting in TRACING_SETTINGS}
    absent = tree_without_tracing() if args.tracing_rounds else None
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
    key_plan = key_records(args)
    key_runs: dict[str, list[dict[str, Any]]] = {setting: [] for setting in KEY_SETTINGS}
    try:
        # Interleaved (a b c a b c ...): drift on a shared machine hits every variant alike.
        for round_ in range(args.repeat):
            for variant in args.variants:
                child = _child_args(variant, args, groups)
                runs[variant].append(run_child(variant, connection, topic, args.records, args.timeout, child))
                print(f"  [{round_ + 1}/{args.repeat}] {variant:8} {_describe(runs[variant][-1])}", flush=True)
        # Then the key-concurrency row, its two settings interleaved the same way.
        for round_ in range(args.key_rounds):
            for setting, in_flight in KEY_SETTINGS.items():
                child = _key_child_args(in_flight, args, key_groups)
                n = key_plan[setting]
                key_runs[setting].append(run_child("runtime", connection, topic, n, args.timeout, child))
                label = f"sleep {setting}"
                print(f"  [{round_ + 1}/{args.key_rounds}] {label:22} {_describe(key_runs[setting][-1])}", flush=True)
        # Then the tracing row: the seam absent, tracing off, tracing on; interleaved the same way.
        for round_ in range(args.tracing_rounds if absent is not None else 0):
            for setting in TRACING_SETTINGS:
                child = ["--warm-up", str(args.warm_up), "--group", trace_groups.pop()]
                if setting == "on":
                    child += ["--tracing", "on"]
                root = absent if setting == "absent" and absent is not None else ROOT
                result = run_child("runtime", connection, topic, args.records, args.timeout, child, root)
                trace_runs[setting].append(result)
                print(f"  [{round_ + 1}/{args.tracing_rounds}] tracing {setting:14} {_describe(result)}", flush=True)
    finally:
        if absent is not None:
            shutil.rmtree(absent, ignore_errors=True)
        if not args.keep:
            from adapters.kafka import delete_topics

            asyncio.run(delete_topics(connection, [topic, *created]))
    results = {variant: summarize_runs(r) for variant, r in runs.items()}
    for variant, result in results.items():
        print(f"  {variant:8} best {_describe(result)}; median {result.get('median_rate')}", flush=True)
    report: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench.runtime_bench " + " ".join(sys.argv[1:]),
        "machine": machine,
        "workload": {"records": args.records, "record_size_target": args.size, "partitions": PARTITIONS, **data},
        "results": results,
        "ratios": ratios(results, "rate"),
        "ratios_of_medians": ratios(results, "median_rate"),
        "ratios_per_round": per_round(runs),
        "targets": TARGETS,
        "method": __doc__,
    }
    if args.key_rounds:
        report["key_concurrency"] = key_concurrency(key_runs, key_plan)
    if any(trace_runs.values()):
        report["tracing"] = tracing_row(trace_runs, results.get("raw", {}).get("median_rate"))
    return report


def tree_without_tracing() -> Path | None:
    """This repository's tree as of the commit before ``adapters/tracing.py`` was added (``git archive``
    into a temporary directory, with the generated gRPC stubs, which are never committed), or None
    when git cannot say (then the row has no ``absent`` column)."""

    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        added = git("log", "--diff-filter=A", "--format=%H", "-1", "--", "adapters/tracing.py")
        if not added:
            return None
        base = git("rev-parse", f"{added}^")
        out = Path(tempfile.mkdtemp(prefix="bench-no-tracing-"))
        archive = subprocess.run(["git", "archive", base], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"  tracing row: no tree without the seam ({exc}); absent column skipped", flush=True)
        return None
    stubs = ROOT / "schemas" / "salesforce_pubsub"
    for stub in stubs.glob("*_pb2*.py"):
        shutil.copy(stub, out / "schemas" / "salesforce_pubsub" / stub.name)
    (out / "BASE_COMMIT").write_text(base + "\n")
    return out


def tracing_row(runs: dict[str, list[dict[str, Any]]], raw_median: float | None) -> dict[str, Any]:
    """The tracing row: per round off/absent and on/off (runs of one round ran back to back), their
    medians and spread, each setting's rates, and b/a with the seam absent and with tracing off."""

    def per_round_ratio(num: str, den: str) -> list[float]:
        pairs = zip(runs.get(num, []), runs.get(den, []), strict=False)
        return [round(n["rate"] / d["rate"], 3) for n, d in pairs if "rate" in n and "rate" in d]

    def spread(values: list[float]) -> dict[str, Any]:
        if not values:
            return {"per_round": [], "median": None, "min": None, "max": None}
        return {
            "per_round": values,
            "median": round(statistics.median(values), 3),
            "min": min(values),
            "max": max(values),
        }

    results = {setting: summarize_runs(r) for setting, r in runs.items() if r}
    medians = {setting: r.get("median_rate") for setting, r in results.items()}
    b_over_a = {setting: round(m / raw_median, 3) if m and raw_median else None for setting, m in medians.items()}
    return {
        "settings": {
            "absent": "the runtime variant from the tree before adapters/tracing.py existed (git archive)",
            "off": "this tree, no OTEL_* variable (the default)",
            "on": "this tree, tracing on: record + handler spans, BatchSpanProcessor, exporter that drops",
        },
        "median_rates": medians,
        "cpu_us_per_record": {s: r.get("cpu_us_per_record") for s, r in results.items()},
        "b_over_a_of_medians": b_over_a,
        "off_over_absent": spread(per_round_ratio("off", "absent")),
        "on_over_off": spread(per_round_ratio("on", "off")),
        "target": "off_over_absent median within 0.97..1.03",
        "results": results,
    }


def key_records(args: argparse.Namespace) -> dict[str, int]:
    """Records per run of each key-concurrency setting, at most the topic's.

    Sized for a few seconds each at the ideal rates (4 partitions x in flight / 20 ms: 200/s serial,
    6,400/s at 32)."""
    serial = min(args.key_records_serial, args.records)
    return {"max_in_flight_1": serial, "max_in_flight_32": min(args.key_records, args.records)}


def key_concurrency(runs: dict[str, list[dict[str, Any]]], records: dict[str, int]) -> dict[str, Any]:
    """The key-concurrency row: both settings' runs, best and median rates, and the ratio (32 / serial)."""
    results = {setting: summarize_runs(r) for setting, r in runs.items()}
    in_flight = {s: results[s].get("max_in_flight_per_partition", KEY_SETTINGS[s]) for s in KEY_SETTINGS}
    ideal = {s: round(PARTITIONS * n / KEY_SLEEP_S, 1) if isinstance(n, int) else None for s, n in in_flight.items()}

    def ratio(field: str) -> float | None:
        fast, slow = results["max_in_flight_32"].get(field), results["max_in_flight_1"].get(field)
        return round(fast / slow, 2) if fast and slow else None

    pairs = zip(runs["max_in_flight_32"], runs["max_in_flight_1"], strict=False)
    per_round = [round(d["rate"] / s["rate"], 2) for d, s in pairs if "rate" in d and "rate" in s]
    headline = ratio("median_rate")
    target = TARGETS["key_concurrency_speedup"]
    return {
        "handler": f"await asyncio.sleep({KEY_SLEEP_S})",
        "partitions": PARTITIONS,
        "records": records,
        "max_in_flight_per_partition": in_flight,
        "ideal_rate": ideal,
        "results": results,
        "ratio": ratio("rate"),
        "ratio_of_medians": headline,
        "ratios_per_round": per_round,
        "ratios_per_round_median": round(statistics.median(per_round), 2) if per_round else None,
        "target": target,
        "met": None if headline is None else headline >= target,
        "config": (
            f"{len(runs['max_in_flight_32'])} rounds, each (the two interleaved): the runtime in a fresh "
            f"process and group with a handler that awaits asyncio.sleep({KEY_SLEEP_S}), reading the first "
            f"records of the topic above (distinct keys, round-robin over {PARTITIONS} partitions): with "
            f"max_in_flight_per_partition=1 the first {records['max_in_flight_1']:,} "
            f"({_ideal(in_flight['max_in_flight_1'], records['max_in_flight_1'])}), with 32 the first "
            f"{records['max_in_flight_32']:,} ({_ideal(in_flight['max_in_flight_32'], records['max_in_flight_32'])}). "
            "Rate over the steady window (from a tenth of the records on, as above). The serial run reads fewer "
            "records so that it stays short: compare rates, not times. Headline: the ratio of the median rates "
            "(32 / serial)."
        ),
    }


def _child_args(variant: str, args: argparse.Namespace, groups: list[str]) -> list[str]:
    """Per run: the warm-up; faust's poll size; for the runtime a fresh group whose retry topics already exist."""
    common = ["--warm-up", str(args.warm_up)]
    if variant == "faust":
        return [*common, "--faust-max-poll-records", str(args.faust_max_poll_records)]
    if variant == "runtime":
        return [*common, "--group", groups.pop()]
    return common


def _ideal(in_flight: Any, records: int) -> str:
    """``ideal 4 x 32 / 20 ms = 6,400/s, ~3 s`` for a run of ``records`` at ``in_flight`` keys per partition."""
    if not isinstance(in_flight, int):
        return "its setting unknown: the runs failed"
    rate = PARTITIONS * in_flight / KEY_SLEEP_S
    return f"ideal {PARTITIONS} x {in_flight} / {KEY_SLEEP_S * 1000:g} ms = {rate:,.0f}/s, ~{records / rate:.1f} s"


def _key_child_args(in_flight: int | None, args: argparse.Namespace, groups: list[str]) -> list[str]:
    """A key-concurrency run: the sleep handler, a fresh group, and its ``max_in_flight_per_partition``."""
    child = ["--warm-up", str(args.warm_up), "--group", groups.pop(), "--sleep-ms", str(KEY_SLEEP_S * 1000)]
    return child + (["--max-in-flight", str(in_flight)] if in_flight is not None else [])


def per_round(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """b/a and b/c of each round (the runs of one round ran back to back), and their medians."""
    out: dict[str, Any] = {}
    for name, other in (("b_over_a", "raw"), ("b_over_c", "faust")):
        pairs = zip(runs.get("runtime", []), runs.get(other, []), strict=False)
        values = [round(b["rate"] / a["rate"], 3) for b, a in pairs if "rate" in b and "rate" in a]
        out[name] = values
        out[f"{name}_median"] = round(statistics.median(values), 3) if values else None
    return out


def summarize_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest run (each was a fresh process and group), plus every run's rate and their median."""
    ok = [r for r in runs if "rate" in r]
    if not ok:
        return runs[-1]
    best = dict(max(ok, key=lambda r: r["rate"]))
    best["all_rates"] = [r.get("rate") for r in runs]
    best["median_rate"] = round(statistics.median(r["rate"] for r in ok), 1)
    return best


def _describe(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"FAILED: {result['error'][:300]}"
    return (
        f"{result['rate']:>10,.0f} msg/s  (wall incl. join {result['wall_rate']:,.0f} msg/s, join {result['join_s']} s;"
        f" cpu {result.get('cpu_share')} of a core, {result.get('cpu_us_per_record')} us/record)"
    )


def _stack_connection(bootstrap: str | None) -> KafkaConnection:
    """``bootstrap`` (default: the local stack's), TLS and SASL from the ``FLEET_KAFKA__*`` settings."""
    from bench.kafka_connection import bench_connection
    from workers.config import STACK_ENV_FILE, load_settings

    return bench_connection(load_settings(env_file=ROOT / STACK_ENV_FILE), bootstrap)


def run_variant(args: argparse.Namespace) -> None:
    from bench.kafka_connection import bench_connection
    from workers.config import load_settings

    # The child's settings: defaults, plus the security variables run_child passed on (the stack's
    # env file holds addresses only, and the address is --bootstrap), so the same connection.
    settings = _bench_settings(load_settings(env_file=None), args.bootstrap, args.max_in_flight)
    connection = bench_connection(settings)
    if args.variant == "raw":
        result = asyncio.run(run_raw(connection, args.topic, args.records, warm_up(args)))
    elif args.variant == "runtime":
        sleep_s = args.sleep_ms / 1000
        on = args.tracing == "on"
        result = asyncio.run(run_runtime(settings, args.topic, args.records, args.group, warm_up(args), sleep_s, on))
    else:
        mpr = args.faust_max_poll_records or None
        result = run_faust(connection, args.topic, args.records, mpr, warm_up(args))
    Path(args.result_file).write_text(json.dumps(result))


def warm_up(args: argparse.Namespace) -> int:
    return int(min(args.warm_up, args.records // 10))


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--records", type=int, default=200_000, help="N records (smoke: 5000)")
    p.add_argument(
        "--warm-up", type=int, default=10_000, help="records before the timed window opens (at most a tenth of N)"
    )
    p.add_argument("--size", type=int, default=500, help="target value size in bytes")
    p.add_argument("--variants", type=lambda s: s.split(","), default=list(VARIANTS), help="raw,runtime,faust")
    p.add_argument("--repeat", type=int, default=1, help="runs per variant; the fastest is reported")
    p.add_argument("--timeout", type=float, default=600, help="seconds per variant run")
    p.add_argument("--faust-max-poll-records", type=int, default=0, help="0 = faust's default (unbounded)")
    p.add_argument(
        "--key-rounds",
        type=int,
        default=3,
        help="key-concurrency rounds (sleep handler, max_in_flight_per_partition 1 vs 32); 0 skips the row",
    )
    p.add_argument(
        "--key-records",
        type=int,
        default=20_000,
        help="records per key-concurrency run at max_in_flight_per_partition=32",
    )
    p.add_argument(
        "--key-records-serial",
        type=int,
        default=1_000,
        help="records per key-concurrency run at max_in_flight_per_partition=1 (at most 200/s: keep it small)",
    )
    p.add_argument(
        "--bootstrap",
        help="default: the local stack's (FLEET_KAFKA__BOOTSTRAP / .fleet/stack.env); TLS/SASL: FLEET_KAFKA__*",
    )
    p.add_argument(
        "--tracing-rounds",
        type=int,
        default=5,
        help="tracing rounds (the runtime with the seam absent, tracing off, tracing on); 0 skips the row",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--keep", action="store_true", help="keep the benchmark topic")
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # child mode
    p.add_argument("--topic", help=argparse.SUPPRESS)
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    p.add_argument("--group", help=argparse.SUPPRESS)
    p.add_argument("--sleep-ms", type=float, default=0.0, help=argparse.SUPPRESS)  # runtime: the handler's await
    p.add_argument("--max-in-flight", type=int, help=argparse.SUPPRESS)  # runtime: None = the default setting
    p.add_argument("--tracing", choices=("off", "on"), default="off", help=argparse.SUPPRESS)  # runtime
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.variant:
        run_variant(args)
        return
    report = orchestrate(args)
    for label, r in (("best", report["ratios"]), ("median", report["ratios_of_medians"])):
        print(f"{label:6}: b/a = {r['b_over_a']} (target >= {TARGETS['b_over_a']})", end=", ")
        print(f"b/c = {r['b_over_c']} (target >= {TARGETS['b_over_c']})")
    rounds = report["ratios_per_round"]
    print(
        f"rounds: b/a {rounds['b_over_a']} (median {rounds['b_over_a_median']}), b/c median {rounds['b_over_c_median']}"
    )
    if "key_concurrency" in report:
        keys = report["key_concurrency"]
        slow, fast = keys["results"]["max_in_flight_1"], keys["results"]["max_in_flight_32"]
        in_flight = keys["max_in_flight_per_partition"]["max_in_flight_32"]
        print(
            f"key concurrency (sleep {KEY_SLEEP_S * 1000:g} ms, {PARTITIONS} partitions, medians): "
            f"max_in_flight 1 {slow.get('median_rate')}/s, {in_flight} {fast.get('median_rate')}/s: "
            f"{keys['ratio_of_medians']}x (target >= {keys['target']:g}); rounds {keys['ratios_per_round']}"
        )
    if "tracing" in report:
        row = report["tracing"]
        off, on = row["off_over_absent"], row["on_over_off"]
        print(
            f"tracing (medians {row['median_rates']}): off/absent {off['median']} "
            f"(min {off['min']}, max {off['max']}; target 0.97..1.03), on/off {on['median']} "
            f"(min {on['min']}, max {on['max']}); b/a {row['b_over_a_of_medians']}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
