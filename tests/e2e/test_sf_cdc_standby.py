"""Scenario: two ``fleet run sf-cdc`` processes for one org; one subscribes, the other stands by.

Contract: with two real processes against the in-process Salesforce sandbox and the stack's Kafka
and PostgreSQL, exactly one subscribes (the sandbox sees one CometD client; the standby never even
handshakes) and the other answers /readyz 503 "standby" while /livez is 200. When the leader is
killed with SIGKILL while changes are being committed, the standby subscribes within 15 s and
every change committed in the sandbox reaches Kafka, replayed from the durable checkpoint (a change
produced before the kill but after the last checkpoint is produced again, under the same CloudEvent
id, as after any restart). When the server ends the leader's lease session (``pg_terminate_backend``
on the backend holding the advisory lock), the old leader's CometD subscription ends (its
``/meta/disconnect``) before the new leader's ``/meta/subscribe`` arrives: the sandbox's request log
shows no moment in which both were subscribed; the old leader stays alive as the standby.

Each test has a database of its own on the stack's server (the processes use the default checkpoint
key ``sf-cdc``) and reads the catalog topic ``sf.order.v1`` from its end, keeping only records whose
change carries an ``EventUuid`` this test's sandbox issued.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]

from adapters.db import migrate
from adapters.leader_lease import lease_key, lock_parts
from events.topics import Topic
from sandbox.salesforce import SalesforceSandbox
from tests.e2e.test_sf_cdc_flow import OWN_CLIENT, eventually
from workers.ingress.cdc_leader import lease_name

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
FLEET = Path(sys.executable).with_name("fleet")
ORDER_CH = "/data/OrderChangeEvent"
TAKEOVER_LIMIT_S = 15.0


# --- one `fleet run sf-cdc` process ----------------------------------------------------------------
@dataclass
class Proc:
    name: str
    process: asyncio.subprocess.Process
    logs: list[dict[str, Any]] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.logs if e.get("event") == name]

    @property
    def health_port(self) -> int | None:
        started = self.events("sf_cdc_started")
        return int(started[0]["health_port"]) if started else None

    async def probe(self, path: str) -> tuple[int, str]:
        assert self.health_port is not None
        async with httpx.AsyncClient(timeout=2) as http:
            response = await http.get(f"http://127.0.0.1:{self.health_port}{path}")
            return response.status_code, response.json()["reason"]

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            text = line.decode(errors="replace").strip()
            try:
                self.logs.append(json.loads(text))
            except ValueError:
                self.logs.append({"event": "raw", "text": text})


async def start_cdc(name: str, env: dict[str, str]) -> Proc:
    process = await asyncio.create_subprocess_exec(
        str(FLEET),
        "run",
        "sf-cdc",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    proc = Proc(name, process)
    proc.reader = asyncio.create_task(proc._read())
    await eventually(lambda: proc.health_port is not None or process.returncode is not None, 30, f"{name} started")
    assert process.returncode is None, f"{name} exited: {proc.logs[-20:]}"
    return proc


async def wait_probe(proc: Proc, status: int, reason: str | None = None, timeout: float = 30.0) -> float:
    """Poll /readyz until it answers ``status`` (and ``reason``); returns when (time.time())."""
    deadline = time.monotonic() + timeout
    while True:
        answer = await proc.probe("/readyz")
        if answer[0] == status and (reason is None or answer[1] == reason):
            return time.time()
        assert time.monotonic() < deadline, f"{proc.name} /readyz is {answer}, wanted {status} {reason}"
        await asyncio.sleep(0.05)


# --- the world: sandbox, database, tap, processes --------------------------------------------------
@dataclass
class Tap:
    """Every record of ``topic`` produced after ``start`` (all partitions), as (value, headers)."""

    bootstrap: str
    topic: str
    records: list[tuple[dict[str, Any], dict[str, str]]] = field(default_factory=list)
    _consumer: Any = None
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            (described,) = await admin.describe_topics([self.topic])
        finally:
            await admin.close()
        partitions = [TopicPartition(self.topic, p["partition"]) for p in described["partitions"]]
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await self._consumer.start()
        self._consumer.assign(partitions)
        await self._consumer.seek_to_end(*partitions)
        for tp in partitions:
            await self._consumer.position(tp)  # resolved now, before anything of this test is produced
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=100)
            for messages in batches.values():
                for m in messages:
                    headers = {k: v.decode() for k, v in m.headers or []}
                    self.records.append((json.loads(m.value), headers))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    def by_event_uuid(self, uuids: set[str]) -> dict[str, list[str]]:
        """EventUuid → the CloudEvent ids of the records derived from it (one per production)."""
        found: dict[str, list[str]] = defaultdict(list)
        for value, headers in self.records:
            event_uuid = ((value.get("change") or {}).get("event") or {}).get("EventUuid")
            if event_uuid in uuids:
                found[event_uuid].append(headers["ce_id"])
        return found


@dataclass
class World:
    sandbox: SalesforceSandbox
    http: httpx.AsyncClient
    dsn: str
    tap: Tap
    env: dict[str, str]
    procs: list[Proc] = field(default_factory=list)
    since: int = 0  # the sandbox's last replay id when the first leader had subscribed

    async def start(self, name: str, **env: str) -> Proc:
        proc = await start_cdc(name, {**self.env, **env})
        self.procs.append(proc)
        return proc

    async def seed_order(self) -> str:
        spec = {"customer": "tanaka", "Type": "Internet", "lines": ["INT-1G-GOLD"]}
        response = await self.http.post("/_sandbox/seed", json={"orders": [spec]})
        response.raise_for_status()
        return str(response.json()["orders"][0]["id"])

    async def write(self, orders: list[str], count: int, every_s: float, at: Callable[[int], None]) -> None:
        """``count`` status changes round the orders, one every ``every_s``; ``at(i)`` before each."""
        for i in range(count):
            at(i)
            status = "Draft" if (i // len(orders)) % 2 == 0 else "Pending Review"
            response = await self.http.patch(
                f"/_sandbox/records/Order/{orders[i % len(orders)]}", json={"Status": status}
            )
            response.raise_for_status()
            await asyncio.sleep(every_s)

    def committed(self) -> set[str]:
        """EventUuids of every Order change the sandbox committed since the leader subscribed."""
        return {m["data"]["event"]["EventUuid"] for m in self.sandbox.bus.retained(ORDER_CH, after=self.since)}

    def cometd(self, endpoint: str) -> list[tuple[int, float, str]]:
        """(seq, at, clientId) of the sandbox's logged CometD requests of one kind."""
        found = []
        for r in self.sandbox.requests:
            if r.endpoint == f"cometd.{endpoint}":
                messages = json.loads(r.body)
                first = messages[0] if isinstance(messages, list) else messages
                found.append((r.seq, r.at, str(first.get("clientId", ""))))
        return found

    def subscribers(self) -> list[str]:
        """Client ids that subscribed, in order of their first subscribe."""
        return list(dict.fromkeys(client for _, _, client in self.cometd("subscribe")))

    async def lease_backend(self) -> tuple[int, str]:
        """The backend holding the lease's advisory lock, and its application_name."""
        classid, objid = lock_parts(lease_key(lease_name("sf-cdc", self.sandbox.url)))
        conn = await asyncpg.connect(self.dsn)
        try:
            row = await conn.fetchrow(
                "SELECT l.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1::oid AND l.objid = $2::oid"
                " AND l.objsubid = 1",
                classid,
                objid,
            )
        finally:
            await conn.close()
        assert row is not None, "nobody holds the lease"
        return int(row["pid"]), str(row["application_name"])


def database_url(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture
async def world(stack_env: dict[str, str]) -> AsyncIterator[World]:  # noqa: F811
    async with contextlib.AsyncExitStack() as cleanup:  # whatever step fails, the earlier ones are undone
        dsn = await cleanup.enter_async_context(own_database(stack_env["DATABASE_URL"]))
        await migrate(dsn)
        sandbox = SalesforceSandbox(cometd_timeout_ms=1000)
        cleanup.push_async_callback((await sandbox.start(port=0)).cleanup)
        tap = Tap(stack_env["KAFKA_BOOTSTRAP"], str(Topic.SF_ORDER))
        cleanup.push_async_callback(tap.stop)
        await tap.start()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FLEET_")},
            "FLEET_SECRETS_DIR": os.environ.get("FLEET_SECRETS_DIR", ""),
            "FLEET_KAFKA__BOOTSTRAP": stack_env["KAFKA_BOOTSTRAP"],
            "FLEET_POSTGRES__DSN": dsn,
            "FLEET_REDIS__URL": stack_env["REDIS_URL"],
            "FLEET_SALESFORCE__INSTANCE_URL": sandbox.url,
            "FLEET_SALESFORCE__LOGIN_URL": sandbox.url,
            "FLEET_SALESFORCE__AUTH": "refresh_token",
            "FLEET_SALESFORCE__REFRESH_TOKEN": "sandbox-refresh-token",
            "FLEET_SALESFORCE__CALL_OPTIONS_CLIENT": OWN_CLIENT,
            "FLEET_SALESFORCE__CHANNELS": json.dumps([ORDER_CH]),
            "FLEET_RUNTIME__HEALTH_PORT": "0",
            "FLEET_RUNTIME__SHUTDOWN_GRACE_S": "5",
            "FLEET_LOG__FORMAT": "json",
            "FLEET_LOG__LEVEL": "INFO",
        }
        http = await cleanup.enter_async_context(httpx.AsyncClient(base_url=sandbox.url, timeout=10))
        w = World(sandbox, http, dsn, tap, env)
        cleanup.push_async_callback(stop_all, w.procs)
        yield w


@contextlib.asynccontextmanager
async def own_database(server_dsn: str) -> AsyncIterator[str]:
    """A fresh database on the stack's server for one test (dropped afterwards, connections and all)."""
    database = f"e2e_standby_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
        try:
            yield database_url(server_dsn, database)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await admin.close()


async def stop_all(procs: list[Proc]) -> None:
    for proc in procs:
        if proc.process.returncode is None:
            proc.process.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            await asyncio.wait_for(proc.process.wait(), 20)
        except TimeoutError:
            proc.process.kill()
            await proc.process.wait()
        if proc.reader is not None:
            proc.reader.cancel()


async def leader_and_standby(w: World, **env: str) -> tuple[Proc, Proc]:
    a = await w.start("a", **env)
    await wait_probe(a, 200, "subscribed")
    b = await w.start("b", **env)
    await wait_probe(b, 503, "standby")
    assert await b.probe("/livez") == (200, "standby")
    await asyncio.sleep(1.5)  # the standby keeps trying meanwhile: still nobody but a subscribes
    assert len(w.subscribers()) == 1 and len(w.cometd("handshake")) == 1
    assert await a.probe("/readyz") == (200, "subscribed") and await b.probe("/readyz") == (503, "standby")
    w.since = w.sandbox.bus.last_replay_id
    return a, b


async def everything_on_kafka(w: World, timeout: float = 30.0) -> dict[str, list[str]]:
    committed = w.committed()
    await eventually(lambda: set(w.tap.by_event_uuid(committed)) == committed, timeout, "every committed change")
    await asyncio.sleep(0.5)  # a repeat that would follow arrives by now
    found = w.tap.by_event_uuid(committed)
    assert all(len(set(ids)) == 1 for ids in found.values())  # a repeat is the same CloudEvent
    return found


async def test_the_standby_takes_over_within_15_s_of_a_kill_and_every_change_reaches_kafka(world: World) -> None:
    # the checkpoint lags the stream by up to 1 s (as it may in production), so the takeover really
    # replays changes the killed leader had produced
    a, b = await leader_and_standby(world, FLEET_SALESFORCE__CDC_CHECKPOINT_INTERVAL_S="1.0")
    orders = [await world.seed_order() for _ in range(3)]
    killed: list[float] = []

    def kill_a_third_of_the_way(i: int) -> None:
        if i == 30:
            os.kill(a.pid, signal.SIGKILL)
            killed.append(time.time())

    writer = asyncio.create_task(world.write(orders, 90, 0.1, kill_a_third_of_the_way))
    await eventually(lambda: bool(killed), 20, "the kill")
    ready_at = await wait_probe(b, 200, "subscribed", timeout=TAKEOVER_LIMIT_S + 5)
    await writer
    assert await a.process.wait() == -signal.SIGKILL
    _, client_b = world.subscribers()
    subscribed_at = min(at for _, at, client in world.cometd("subscribe") if client == client_b)
    takeover_s = subscribed_at - killed[0]
    assert takeover_s < TAKEOVER_LIMIT_S and ready_at - killed[0] < TAKEOVER_LIMIT_S
    (took_over,) = [e for e in b.events("sf_cdc_lease_state") if e["state"] == "takeover"]
    assert took_over["reason"] == "lease acquired; grace 3 s"  # a's term did not end cleanly
    found = await everything_on_kafka(world)
    repeats = sum(len(ids) - 1 for ids in found.values())
    print(
        f"\nkill -9 -> standby subscribed {takeover_s:.2f} s, ready {ready_at - killed[0]:.2f} s;"
        f" {len(found)} changes on Kafka, {repeats} produced twice (same ids)"
    )


async def test_a_terminated_lease_session_ends_the_old_subscription_before_the_new_one_begins(
    world: World,
) -> None:
    a, b = await leader_and_standby(world)
    orders = [await world.seed_order() for _ in range(3)]
    writer = asyncio.create_task(world.write(orders, 60, 0.1, lambda i: None))
    await asyncio.sleep(2)
    pid, application = await world.lease_backend()
    assert application == f"sf-cdc lease {socket.gethostname()}:{a.pid}"  # a holds it
    conn = await asyncpg.connect(world.dsn)
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await conn.close()
    terminated = time.time()
    await wait_probe(b, 200, "subscribed", timeout=TAKEOVER_LIMIT_S)
    await wait_probe(a, 503, "standby", timeout=5)
    assert a.process.returncode is None and await a.probe("/livez") == (200, "standby")
    await writer

    client_a, client_b = world.subscribers()
    (a_end_seq, a_end_at, _), *_ = [r for r in world.cometd("disconnect") if r[2] == client_a]
    b_begin_seq, b_begin_at, _ = min(r for r in world.cometd("subscribe") if r[2] == client_b)
    last_a = max(
        seq
        for endpoint in ("connect", "subscribe", "disconnect")
        for seq, _, c in world.cometd(endpoint)
        if c == client_a
    )
    assert a_end_seq < b_begin_seq and a_end_at < b_begin_at  # a's subscription ended first
    assert last_a < b_begin_seq  # nothing of a's reached the server once b subscribed
    (lost,) = a.events("sf_cdc_lease_lost")
    assert lost["reason"] == "connection lost"
    (took_over,) = [e for e in b.events("sf_cdc_lease_state") if e["state"] == "takeover"]
    assert took_over["reason"] == "lease acquired; grace 3 s"
    acquired_at = datetime.fromisoformat(took_over["timestamp"].replace("Z", "+00:00")).timestamp()
    assert b_begin_at - acquired_at >= 3.0  # b waited the grace out after it got the lock
    await everything_on_kafka(world)
    print(
        f"\nlease session terminated: a noticed and disconnected after {a_end_at - terminated:.2f} s,"
        f" b subscribed after {b_begin_at - terminated:.2f} s (gap {b_begin_at - a_end_at:.2f} s)"
    )


async def test_a_pubsub_leader_killed_mid_stream_is_replaced_and_every_change_reaches_kafka(world: World) -> None:
    """The same kill -9 over the Pub/Sub API: the standby resumes from the bytes checkpoint the
    leader wrote (``pubsub_replay_id``), nothing committed is missing from Kafka, and a change
    produced twice carries its one CloudEvent id."""
    port = await world.sandbox.start_pubsub()
    pubsub = {
        "FLEET_SALESFORCE__CDC_TRANSPORT": "pubsub",
        "FLEET_SALESFORCE__PUBSUB_ENDPOINT": f"127.0.0.1:{port}",
        "FLEET_SALESFORCE__CDC_CHECKPOINT_INTERVAL_S": "1.0",  # lag the stream: the takeover replays some
    }
    a = await world.start("a", **pubsub)
    await wait_probe(a, 200, "subscribed")
    b = await world.start("b", **pubsub)
    await wait_probe(b, 503, "standby")
    assert len(world.sandbox.pubsub.streams) == 1  # only the leader subscribes
    world.since = world.sandbox.bus.last_replay_id
    orders = [await world.seed_order() for _ in range(3)]
    killed: list[float] = []

    def kill_a_third_of_the_way(i: int) -> None:
        if i == 20:
            os.kill(a.pid, signal.SIGKILL)
            killed.append(time.time())

    writer = asyncio.create_task(world.write(orders, 60, 0.1, kill_a_third_of_the_way))
    await eventually(lambda: bool(killed), 20, "the kill")
    ready_at = await wait_probe(b, 200, "subscribed", timeout=TAKEOVER_LIMIT_S + 5)
    await writer
    assert await a.process.wait() == -signal.SIGKILL
    assert ready_at - killed[0] < TAKEOVER_LIMIT_S
    found = await everything_on_kafka(world)
    conn = await asyncpg.connect(world.dsn)
    try:
        stored = await conn.fetchrow(
            "SELECT replay_id, pubsub_replay_id FROM sf_cdc_checkpoints WHERE channel = $1", ORDER_CH
        )
    finally:
        await conn.close()
    assert stored is not None and stored["replay_id"] is None and isinstance(stored["pubsub_replay_id"], bytes)
    repeats = sum(len(ids) - 1 for ids in found.values())
    print(f"\npubsub kill -9 -> standby ready {ready_at - killed[0]:.2f} s; {len(found)} changes, {repeats} twice")
