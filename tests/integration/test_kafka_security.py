"""The fleet's Kafka clients over SASL_SSL, against a broker this module starts (certificates made by the
test, SCRAM users written at storage format): the producer, the consume runtime with its dead-letter
producer, the admin client and `fleet dlq list` all go through it; each SASL mechanism authenticates;
a wrong password and an untrusted CA end at once in one error naming the setting, for a library call,
a worker process and the webhook receiver (which retries Kafka outages, but not a refused credential).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from adapters.kafka import (
    AiokafkaProducer,
    KafkaConnection,
    KafkaSecurityError,
    durable_producer,
    ensure_topics,
    list_topics,
    start_client,
)
from events.base import to_envelope
from events.errors import InvalidPayload
from events.salesforce import OrderChanged
from events.topics import DAY_MS, TopicSpec, dlq_topic, group_topics
from tests.secure_kafka import SecureBroker, free_port, secure_broker
from workers.config import KafkaSettings, RuntimeSettings, Settings, WhmcsSettings
from workers.dlq.reader import TopicReader
from workers.ingress import webhook_server
from workers.runtime import Message, Route, serve

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TEST_CONSUMER = {"session_timeout_ms": 6_000, "heartbeat_interval_ms": 500, "rebalance_timeout_ms": 5_000}
#: a refused connection is diagnosed in one round trip; this only catches a hang or a retry loop
FAIL_FAST_S = 15.0


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def broker() -> AsyncIterator[SecureBroker]:
    async with secure_broker() as running:
        yield running


def kafka_settings(connection: KafkaConnection) -> KafkaSettings:
    return KafkaSettings(
        bootstrap=connection.bootstrap,
        security_protocol=connection.security_protocol,
        sasl_mechanism=connection.sasl_mechanism,
        sasl_username=connection.sasl_username,
        sasl_password=connection.sasl_password,  # type: ignore[arg-type]
        ssl_cafile=connection.ssl_cafile,
        session_timeout_ms=6_000,
        heartbeat_interval_ms=500,
    )


def kafka_env(connection: KafkaConnection) -> dict[str, str]:
    return {
        "FLEET_KAFKA__BOOTSTRAP": connection.bootstrap,
        "FLEET_KAFKA__SECURITY_PROTOCOL": connection.security_protocol,
        "FLEET_KAFKA__SASL_MECHANISM": connection.sasl_mechanism,
        "FLEET_KAFKA__SASL_USERNAME": connection.sasl_username,
        "FLEET_KAFKA__SASL_PASSWORD": connection.sasl_password,
        "FLEET_KAFKA__SSL_CAFILE": str(connection.ssl_cafile),
    }


def fleet(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers", *args],
        cwd=ROOT,
        env={**os.environ, "FLEET_LOG__LEVEL": "ERROR", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_producer_runtime_dead_letters_and_dlq_list_work_over_sasl_ssl(
    broker: SecureBroker, stack_env: dict[str, str]
) -> None:
    connection = broker.connection()
    tag = uuid.uuid4().hex[:8]
    topic, group = f"t-secure-{tag}", f"test.secure.{tag}"
    await ensure_topics(connection, [TopicSpec(topic, 2, DAY_MS), *group_topics(group, 2)])
    orders = [f"801SECURE{tag}{n}" for n in range(3)]
    poison = orders[1]

    producer = durable_producer(connection, "test-secure-producer")
    await start_client(producer, connection)
    try:
        for order in orders:
            await AiokafkaProducer(producer).publish(
                topic, to_envelope(OrderChanged(sf_order_id=order), source="/fleet/test")
            )
    finally:
        await producer.stop()

    handled: list[str] = []

    async def handle(event: OrderChanged, msg: Message) -> None:
        if event.sf_order_id == poison:
            raise InvalidPayload(f"order {poison} is poison")
        handled.append(event.sf_order_id)

    settings = Settings(
        kafka=kafka_settings(connection), runtime=RuntimeSettings(shutdown_grace_s=5, retry_tier_delays_ms=[100, 100])
    )
    route = Route("secure", group, (topic,), {OrderChanged: handle})
    stop = asyncio.Event()
    worker = asyncio.create_task(serve(route, settings, stop, consumer_overrides=TEST_CONSUMER))
    try:
        async with asyncio.timeout(60):
            while len(handled) < 2 or await dead_letters(connection, group) < 1:
                assert not worker.done(), worker.exception()
                await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)
    assert sorted(handled) == sorted(o for o in orders if o != poison)

    listed = fleet(
        "dlq",
        "list",
        "-g",
        group,
        "--json",
        env={**kafka_env(connection), "FLEET_POSTGRES__DSN": stack_env["DATABASE_URL"]},
    )
    assert listed.returncode == 0, listed.stderr
    (overview,) = json.loads(listed.stdout)
    assert (overview["group"], overview["count"]) == (group, 1)
    (bucket,) = overview["by_error_and_type"]
    assert (bucket["error class"], bucket["event type"]) == ("events.errors.InvalidPayload", OrderChanged.TYPE)


async def dead_letters(connection: KafkaConnection, group: str) -> int:
    async with TopicReader(connection, dlq_topic(group)) as reader:
        return sum(r.count for r in (await reader.ranges()).values())


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_each_sasl_mechanism_authenticates(broker: SecureBroker, mechanism: str) -> None:
    assert f"t-secure-probe-{mechanism}" not in await list_topics(broker.connection(sasl_mechanism=mechanism))


@pytest.mark.parametrize(
    ("change", "setting"),
    [
        ({"sasl_password": "not-the-password"}, "sasl_password"),
        ({"sasl_mechanism": "PLAIN", "sasl_password": "not-the-password"}, "sasl_password"),
        ("rogue-ca", "ssl_cafile"),
        ({"security_protocol": "PLAINTEXT", "sasl_username": "", "sasl_password": ""}, "security_protocol"),
    ],
)
async def test_a_refused_connection_fails_fast_naming_the_setting(
    broker: SecureBroker, change: dict[str, str] | str, setting: str
) -> None:
    connection = broker.connection(**({"ssl_cafile": broker.pki.rogue_ca} if change == "rogue-ca" else change))
    producer = durable_producer(connection, "test-secure-refused")
    try:
        async with asyncio.timeout(FAIL_FAST_S):
            with pytest.raises(KafkaSecurityError) as info:
                await start_client(producer, connection)
    finally:
        await producer.stop()
    assert info.value.setting == setting


@pytest.mark.parametrize(
    ("wrong", "variable"), [("password", "FLEET_KAFKA__SASL_PASSWORD"), ("ca", "FLEET_KAFKA__SSL_CAFILE")]
)
def test_a_worker_process_with_a_refused_credential_exits_with_one_line(
    broker: SecureBroker, stack_env: dict[str, str], wrong: str, variable: str
) -> None:
    connection = broker.connection(
        **({"sasl_password": "wrong"} if wrong == "password" else {"ssl_cafile": broker.pki.rogue_ca})
    )
    env = {
        **kafka_env(connection),
        "FLEET_POSTGRES__DSN": stack_env["DATABASE_URL"],
        "FLEET_REDIS__URL": stack_env["REDIS_URL"],
        "FLEET_RUNTIME__HEALTH_PORT": "0",
    }
    began = time.monotonic()
    run = fleet("run", "cache-invalidator", env=env)
    assert run.returncode == 2, run.stderr
    assert time.monotonic() - began < 60  # no retry loop (a JVM-free process: ~2 s)
    errors = [line for line in run.stderr.splitlines() if line.startswith("fleet: ")]
    assert len(errors) == 1 and errors[0].startswith(f"fleet: {variable}: kafka: "), run.stderr
    assert "Traceback" not in run.stderr

    listed = fleet("dlq", "list", env={**env})
    assert listed.returncode == 2 and f"fleet: {variable}: " in listed.stderr


async def test_the_webhook_receiver_stops_instead_of_retrying_a_refused_credential(
    broker: SecureBroker, stack_env: dict[str, str]
) -> None:
    """It retries an unreachable Kafka (a 503 for the sender meanwhile), but a wrong password never heals."""
    connection = broker.connection(sasl_password="wrong")
    settings = Settings(
        kafka=kafka_settings(connection),
        whmcs=WhmcsSettings(webhook_listen_port=free_port()),
        redis={"url": stack_env["REDIS_URL"]},  # type: ignore[arg-type]
    )
    async with asyncio.timeout(FAIL_FAST_S):
        with pytest.raises(KafkaSecurityError) as info:
            await webhook_server.serve(settings, asyncio.Event())
    assert info.value.setting == "sasl_password"
