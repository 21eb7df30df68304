"""Scenario: an operator inspects and resumes orders with ``fleet orders`` against the local stack.

Contract: ``show`` prints the order's state, every planned step (attempts, last error, external ids,
durations) and its timeline, or one JSON document; ``list --state`` filters by state; ``retry``
puts an activation request keyed by the order on the fulfillment group's first retry tier (due
now), records who asked in the order's timeline and logs ``order_retry_requested``; unknown and
fulfilled orders are refused.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from click.testing import CliRunner

from adapters.db import create_pool, migrate
from adapters.kafka import ensure_topics
from adapters.saga_store import HistoryEntry, PgSagaStore, SagaOrder, StepRecord
from events import failure as fh
from events.envelope import Envelope, from_record
from events.topics import group_topics, retry_topic
from workers.cli import main
from workers.dlq.reader import partitions_of
from workers.fulfillment.wakeup import RETRY_SOURCE

pytestmark = pytest.mark.e2e

#: a group of our own: the default group's retry tier may feed a live worker (a demo) on the shared stack
GROUP = f"fleet.fulfillment.cli-{uuid.uuid4().hex[:8]}"
RETRY_1 = retry_topic(GROUP, 1)


def order_id() -> str:
    return ("801C" + uuid.uuid4().hex.upper())[:18]


async def seed(dsn: str, oid: str, state: str) -> None:
    await migrate(dsn)
    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        store, at = PgSagaStore(pool), datetime.now(UTC) - timedelta(minutes=3)
        sim_account = f"070{uuid.uuid4().int % 10**8:08d}"  # unique: the shared database keeps rows
        order = SagaOrder(oid, state=state, sf_account_id="0015g00000000002AA", order_type="SIM",
                          current_step="sim_confirm", whmcs_client_id=1002, sim_account=sim_account,
                          error_code="FREEBIT_TIMEOUT", error_message="Freebit did not complete the registration",
                          requests=1, created_at=at)  # fmt: skip
        steps = [
            StepRecord("validate", 1, "done", 1, {"order_type": "SIM"}, started_at=at, finished_at=at),
            StepRecord("sim_register", 4, "done", 1, {"account": "07011112222"}, started_at=at, finished_at=at),
            StepRecord("sim_confirm", 5, state if state == "failed" else "waiting", 7, {},
                       "FREEBIT_TIMEOUT", "Freebit did not complete", started_at=at),
        ]  # fmt: skip
        history = [HistoryEntry("requested", None, {"reason": "test"}, at), HistoryEntry("failed", "sim_confirm", {})]
        await store.save(order, steps, history)
    finally:
        await pool.close()


async def retry_records(bootstrap: str, key: str) -> list[tuple[dict[str, bytes], Envelope]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(RETRY_1, p) for p in await partitions_of(bootstrap, RETRY_1)]
        consumer.assign(partitions)
        end = await consumer.end_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, max(0, end[tp] - 200))
        found: list[tuple[dict[str, bytes], Envelope]] = []
        while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                found += [
                    (dict(r.headers), from_record(r.key, r.value, r.headers)) for r in records if r.key == key.encode()
                ]
        return found
    finally:
        await consumer.stop()


@pytest.fixture
def cli(stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("FLEET_POSTGRES__DSN", stack_env["DATABASE_URL"])
    monkeypatch.setenv("FLEET_KAFKA__BOOTSTRAP", stack_env["KAFKA_BOOTSTRAP"])
    monkeypatch.setenv("FLEET_LOG__FORMAT", "json")
    return CliRunner()


def test_show_prints_steps_errors_ids_and_the_timeline(cli: CliRunner, stack_env: dict[str, str]) -> None:
    oid = order_id()
    asyncio.run(seed(stack_env["DATABASE_URL"], oid, "failed"))

    result = cli.invoke(main, ["orders", "show", oid])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert f"order {oid}  SIM  state=failed  at=sim_confirm" in text
    assert "error FREEBIT_TIMEOUT: Freebit did not complete the registration" in text
    assert "sim_register" in text and "account=07011112222" in text
    assert "whmcs_create" in text and "pending" in text, "planned steps not reached yet are listed"
    assert "FREEBIT_TIMEOUT: Freebit did not complete" in text and "requested" in text

    as_json = cli.invoke(main, ["orders", "show", oid, "--json"])
    doc = json.loads(as_json.stdout)
    assert doc["order"]["state"] == "failed" and [s["step"] for s in doc["steps"]][:2] == ["validate", "schedule"]
    assert [h["kind"] for h in doc["timeline"]] == ["requested", "failed"]


def test_an_unknown_order_is_an_error(cli: CliRunner) -> None:
    result = cli.invoke(main, ["orders", "show", order_id()])
    assert result.exit_code == 1 and "unknown to the fulfillment saga" in result.output


def test_list_filters_by_state(cli: CliRunner, stack_env: dict[str, str]) -> None:
    failed, waiting = order_id(), order_id()
    asyncio.run(seed(stack_env["DATABASE_URL"], failed, "failed"))
    asyncio.run(seed(stack_env["DATABASE_URL"], waiting, "waiting"))
    listed = cli.invoke(main, ["orders", "list", "--state", "failed", "--limit", "10000"]).stdout
    assert failed in listed and waiting not in listed
    lines = cli.invoke(main, ["orders", "list", "--state", "waiting", "--json", "--limit", "10000"]).stdout
    assert waiting in [json.loads(line)["sf_order_id"] for line in lines.splitlines()]


def test_list_stuck_shows_orders_past_their_states_deadline_with_their_timer(
    cli: CliRunner, stack_env: dict[str, str]
) -> None:
    waiting, scheduled = order_id(), order_id()
    asyncio.run(seed(stack_env["DATABASE_URL"], waiting, "waiting"))
    asyncio.run(seed(stack_env["DATABASE_URL"], scheduled, "waiting"))
    asyncio.run(_schedule(stack_env["DATABASE_URL"], scheduled, datetime.now(UTC) + timedelta(hours=5)))
    deadlines = json.dumps({"waiting": 0.0, "scheduled": 0.0})
    out = cli.invoke(main, ["orders", "list", "--stuck", "--json", "--limit", "10000"],
                     env={"FLEET_FULFILLMENT__STUCK_AFTER_S": deadlines}).stdout  # fmt: skip
    stuck = {doc["sf_order_id"]: doc for doc in map(json.loads, out.splitlines())}
    assert waiting in stuck and stuck[waiting]["stuck_since"] and scheduled not in stuck, "not due yet"
    listed = cli.invoke(main, ["orders", "list", "--state", "scheduled", "--limit", "10000"]).stdout
    assert scheduled in listed and "scheduled 20" in listed, "the due time is shown"


async def _schedule(dsn: str, oid: str, at: datetime) -> None:
    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        store = PgSagaStore(pool)
        record = await store.get(oid)
        assert record is not None
        record.order.state = "scheduled"
        await store.save(record.order)
        await store.set_timer(oid, "scheduled", at)
    finally:
        await pool.close()


def test_retry_sends_an_audited_activation_request_to_the_first_retry_tier(
    cli: CliRunner, stack_env: dict[str, str]
) -> None:
    oid = order_id()
    asyncio.run(seed(stack_env["DATABASE_URL"], oid, "failed"))
    asyncio.run(ensure_topics(stack_env["KAFKA_BOOTSTRAP"], group_topics(GROUP)))

    result = cli.invoke(main, ["orders", "retry", oid, "--reason", "Freebit caught up", "--group", GROUP])
    assert result.exit_code == 0, result.output
    assert "order_retry_requested" in result.stderr and "Freebit caught up" in result.stderr

    [(headers, envelope)] = asyncio.run(retry_records(stack_env["KAFKA_BOOTSTRAP"], oid))
    assert envelope.type == "fleet.order.activation-requested.v2" and envelope.source == RETRY_SOURCE
    assert envelope.data["sf_order_id"] == oid and envelope.data["sf_account_id"] == "0015g00000000002AA"
    assert int(headers[fh.NOT_BEFORE]) <= int(datetime.now(UTC).timestamp() * 1000)
    timeline = json.loads(cli.invoke(main, ["orders", "show", oid, "--json"]).stdout)["timeline"]
    assert timeline[-1]["kind"] == "retry_requested" and timeline[-1]["detail"]["reason"] == "Freebit caught up"
    assert timeline[-1]["detail"]["event_id"] == envelope.id and timeline[-1]["detail"]["group"] == GROUP


def test_retry_refuses_unknown_and_fulfilled_orders(cli: CliRunner, stack_env: dict[str, str]) -> None:
    unknown = cli.invoke(main, ["orders", "retry", order_id(), "--group", GROUP])
    assert unknown.exit_code == 1 and "--force" in unknown.output
    done = order_id()
    asyncio.run(seed(stack_env["DATABASE_URL"], done, "fulfilled"))
    refused = cli.invoke(main, ["orders", "retry", done, "--group", GROUP])
    assert refused.exit_code == 1 and "already fulfilled" in refused.output
