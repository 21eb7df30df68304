"""The multi-broker stack (``fleet stack up --brokers 3``) on a private instance: its own state directory
and free ports, so the shared single-node stack is never touched.

Contract: three KRaft nodes come up as one cluster and the catalog is RF 3 / min ISR 2; when the leader
of a partition is killed with ``kill -9``, a new leader is elected and acks=all writes to that partition
keep succeeding with two in-sync replicas, and nothing acknowledged is lost; ``restart_node`` brings the
killed node back and it rejoins every ISR; ``up`` is then a no-op and ``down`` stops all three.

Wall time on the 2-core machine: 33-37 s (cold format and start of the whole stack 11-15 s; a new
leader 3.0-3.2 s after the kill, writes resume 0.4 s later; restart 4.2-4.4 s and back in every ISR
0.6 s later; controlled shutdown of three nodes). Every wait polls a condition under a deadline.
"""

from __future__ import annotations

import asyncio
import random
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # type: ignore[import-untyped]

from adapters.kafka import ensure_topics, plan_topics
from devtools import stack
from devtools.stack.envfile import KAFKA_BOOTSTRAP, read
from devtools.stack.kafka import cluster_brokers
from devtools.stack.process import is_gone, port_is_free, wait_gone
from events.topics import TopicPolicy, TopicSpec, catalog
from workers.config import StackSettings

pytestmark = pytest.mark.integration

BROKERS = 3
DEADLINE_S = 60.0  # for every condition polled below; each is met in seconds


@dataclass(frozen=True)
class Cluster:
    settings: StackSettings
    env_file: Path
    up: stack.UpResult

    @property
    def stack(self) -> stack.Stack:
        return stack.Stack.from_settings(self.settings)


def _free_port_block(size: int) -> int:
    """A run of ``size`` free ports below the ephemeral range (node i takes base+2i and base+2i+1)."""
    for _ in range(500):
        base = random.randrange(20_000, 30_000)
        if all(port_is_free(base + offset) for offset in range(size)):
            return base
    raise RuntimeError("no block of free ports found")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _poll(what: str, condition: Callable[[], Awaitable[bool]], timeout_s: float = DEADLINE_S) -> float:
    """Seconds until ``condition()`` held; fails the test after ``timeout_s``."""
    began = time.monotonic()
    while not await condition():
        assert time.monotonic() - began < timeout_s, f"{what}: not within {timeout_s:.0f} s"
        await asyncio.sleep(0.1)
    return time.monotonic() - began


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def cluster() -> AsyncIterator[Cluster]:
    # Not under pytest's tmp_path: its parents are 0700, and the postgres user must traverse the path.
    state_dir = Path(tempfile.mkdtemp(prefix="fleet-stack-cluster-"))
    base = _free_port_block(2 * BROKERS)
    settings = StackSettings(
        dir=state_dir,
        brokers=BROKERS,
        kafka_port=base,
        kafka_controller_port=base + 1,
        redis_port=_free_port(),
        postgres_port=_free_port(),
    )
    env_file = state_dir.with_name(state_dir.name + ".env")
    try:
        yield Cluster(settings, env_file, await stack.up(settings, env_file=env_file))
    finally:
        await stack.down(settings, env_file=env_file, purge=True)


async def test_three_nodes_form_one_cluster_and_the_catalog_is_rf3_min_isr2(cluster: Cluster) -> None:
    built = cluster.stack
    print(f"\n3-node stack ready in {cluster.up.seconds:.1f} s (cold: storage formatted)")

    assert [s.name for s in cluster.up.services] == ["kafka-1", "kafka-2", "kafka-3", "redis", "postgres"]
    assert [s.name for s in stack.status(cluster.settings) if s.running] == [s.name for s in cluster.up.services]
    assert [node.port for node in built.kafka_nodes] == [built.kafka.port + 2 * i for i in range(BROKERS)]
    assert await cluster_brokers(built.bootstrap) == {1, 2, 3}
    env = read(cluster.env_file)
    assert env[KAFKA_BOOTSTRAP] == env["FLEET_KAFKA__BOOTSTRAP"] == built.bootstrap
    assert len(built.bootstrap.split(",")) == BROKERS
    assert (env["FLEET_TOPICS__REPLICATION_FACTOR"], env["FLEET_TOPICS__MIN_INSYNC_REPLICAS"]) == ("3", "2")

    # replicas and min ISR as wanted. `stack up` created the topics through one broker; the others
    # learn of them a moment later, and the plan may ask one of those (topics "absent" then): wait
    # for the metadata to agree, then nothing may be left to change
    wanted = catalog(TopicPolicy(3, 2))

    async def settled() -> bool:
        return not (await plan_topics(built.bootstrap, wanted)).changes

    await _poll("every broker knows the catalog's topics as created", settled, timeout_s=30)
    plan = await plan_topics(built.bootstrap, wanted)
    assert (plan.brokers, plan.changes) == (BROKERS, [])


async def test_a_killed_partition_leader_loses_no_acknowledged_write_and_rejoins(cluster: Cluster) -> None:
    began = time.monotonic()
    built, settings = cluster.stack, cluster.settings
    bootstrap = built.bootstrap
    topic = f"t-cluster-{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [TopicSpec(topic, 3, 3_600_000, replication_factor=3, min_insync_replicas=2)])
    await _poll("the topic's partitions have leaders and full ISRs", lambda: _fully_replicated(bootstrap, topic))

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,  # retries across the failover must not duplicate records
        request_timeout_ms=30_000,  # a batch waits out the election rather than expire
        retry_backoff_ms=100,
        metadata_max_age_ms=5_000,
    )
    await producer.start()
    sent: list[bytes] = []

    async def produce(count: int) -> None:
        values = [f"{len(sent) + i}".encode() for i in range(count)]
        futures = [await producer.send(topic, value, partition=0) for value in values]
        await asyncio.gather(*futures)  # each one acknowledged by every in-sync replica
        sent.extend(values)

    try:
        await produce(100)
        leader = (await stack.partition_leaders(bootstrap, topic))[0]
        controller = (await _describe_cluster(bootstrap))["controller_id"]
        victim = built.kafka_node(leader)
        killed_pid = victim.kill()
        assert killed_pid is not None
        assert await wait_gone([killed_pid], 10)
        killed_at = time.monotonic()
        elected = asyncio.create_task(_poll("a new leader", lambda: _led_by_another(bootstrap, topic, leader)))

        await produce(100)  # sent at once: the first attempts meet the dead leader and are retried
        failover_s = time.monotonic() - killed_at
        elected_s = await elected
        after = await stack.describe_partitions(bootstrap, topic)
        assert after[0].leader not in (leader, -1)
        assert leader not in after[0].isr and len(after[0].isr) == 2, after[0]
        await produce(100)
    finally:
        await producer.stop()

    assert await _read_partition(bootstrap, topic, 0, len(sent)) == sent  # all, once, in order

    restarted = await stack.restart_node(settings, leader)
    assert (restarted.name, restarted.running) == (f"kafka-{leader}", True)
    assert restarted.pid != killed_pid
    rejoin_s = await _poll("the restarted node is back in every ISR", lambda: _fully_replicated(bootstrap, topic))

    again = await stack.up(settings, env_file=cluster.env_file, provision=False)
    assert all(s.note == "already running" for s in again.services), again.services

    pids = [node.running_pid() for node in built.kafka_nodes]
    states = await stack.down(settings, env_file=cluster.env_file)
    assert [s.running for s in states] == [False] * len(states)
    assert all(pid is not None and is_gone(pid) for pid in pids)
    assert not any(s.running for s in stack.status(settings))
    print(
        f"\nkilled node {leader} (leader of partition 0; active controller: {controller}); new leader in "
        f"{elected_s:.1f} s, acks=all writes resumed in {failover_s:.1f} s; "
        f"restart + rejoin of every ISR {restarted.seconds or 0:.1f} + "
        f"{rejoin_s:.1f} s; scenario {time.monotonic() - began:.1f} s"
    )


async def _fully_replicated(bootstrap: str, topic: str) -> bool:
    try:
        partitions = await stack.describe_partitions(bootstrap, topic)
    except (stack.StackError, OSError):
        return False
    return bool(partitions) and all(
        p.leader != -1 and sorted(p.isr) == list(range(1, BROKERS + 1)) for p in partitions.values()
    )


async def _led_by_another(bootstrap: str, topic: str, old_leader: int) -> bool:
    try:
        leader = (await stack.partition_leaders(bootstrap, topic))[0]
    except (stack.StackError, OSError):
        return False
    return leader not in (old_leader, -1)


async def _describe_cluster(bootstrap: str) -> dict[str, object]:
    from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described: dict[str, object] = await admin.describe_cluster()
        return described
    finally:
        await admin.close()


async def _read_partition(bootstrap: str, topic: str, partition: int, count: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        values: list[bytes] = []
        deadline = time.monotonic() + DEADLINE_S
        while len(values) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(tp, timeout_ms=1_000)
            values.extend(record.value for record in batches.get(tp, []))
        return values
    finally:
        await consumer.stop()
