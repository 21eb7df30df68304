"""Scenario: an order the saga fulfilled, whose Salesforce write-back the sf-writer dead-lettered.

Contract (issue 14): ``fleet orders show`` reads the sf-writer's dead letters of the order's records
from ``fleet.sf-writer.dlq`` (the real topic on the local stack, only from the order's creation on)
and puts them in the timeline (when, record, error class and code, message, replay status); the
headline says "write-back dead-lettered" instead of plain "fulfilled" while the last write-back's
dead letter is not replayed, and no longer once the dlq store (Postgres) records its replay. A dead
letter of the same record from before the order existed is not read.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import asyncpg
import pytest
from click.testing import CliRunner

from adapters.db import create_pool, migrate
from adapters.dlq_store import PgDlqStore, Sending
from adapters.saga_store import HistoryEntry, PgSagaStore, SagaOrder, StepRecord
from events.errors import RejectedByUpstream
from events.topics import ConsumerGroup, Topic, retry_topic
from workers.cli import main
from workers.dlq.testing import Letter, Produced, produce

pytestmark = pytest.mark.e2e

GROUP = ConsumerGroup.SF_WRITER.value


def order_id() -> str:
    return ("801W" + uuid.uuid4().hex.upper())[:18]


async def seed_fulfilled(dsn: str, oid: str, at: datetime) -> None:
    """What the saga leaves for a fulfilled SIM order: every step done, the write-back step last."""
    await migrate(dsn)
    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        order = SagaOrder(oid, state="fulfilled", sf_account_id="0015g00000000002AA", order_type="SIM",
                          whmcs_client_id=1002, whmcs_order_id=7001, requests=1, created_at=at,
                          finished_at=at + timedelta(seconds=30))  # fmt: skip
        started, finished = at, at + timedelta(seconds=20)
        steps = [
            StepRecord("validate", 1, "done", 1, started_at=started, finished_at=finished),
            StepRecord(
                "whmcs_create", 3, "done", 1, {"whmcs_order_id": 7001}, started_at=started, finished_at=finished
            ),
            StepRecord(
                "sf_writeback",
                9,
                "done",
                1,
                {"commands": 1},
                started_at=started,
                last_attempt_at=finished,
                finished_at=finished,
            ),  # fmt: skip
        ]
        history = [HistoryEntry("requested", None, {"reason": "test"}, at),
                   HistoryEntry("fulfilled", None, {"whmcs_order_id": 7001}, at + timedelta(seconds=30))]  # fmt: skip
        await PgSagaStore(pool).save(order, steps, history)
    finally:
        await pool.close()


def command_letter(oid: str, *, commanded_ms: int, dead_lettered_ms: int, message: str) -> Letter:
    """The dead letter the sf-writer writes for an ``UpdateSalesforceRecord`` Salesforce refused."""
    return Letter(
        key=oid,
        event_type="fleet.salesforce.update-record.v1",
        data={
            "sobject": "Order",
            "record_id": oid,
            "fields": {"Activation_Status__c": "Activated"},
            "priority": "high",
        },
        error=RejectedByUpstream(message),
        source_topic=Topic.SF_WRITEBACK,
        source_timestamp_ms=commanded_ms,
        dead_lettered_ms=dead_lettered_ms,
    )


async def mark_replayed(dsn: str, dl: Produced) -> None:
    """What a finished ``fleet dlq replay`` leaves in the dlq store for this dead letter."""
    conn = await asyncpg.connect(dsn)
    try:
        job = uuid4()
        row = Sending(dl.partition, dl.offset, "replayed", dl.letter.event_id, "fp", retry_topic(GROUP, 1), 0, 0)
        store = PgDlqStore(conn)
        await store.mark_sending(GROUP, job, [row])
        await store.mark_done(GROUP, job, [((dl.partition, dl.offset), 0)])
    finally:
        await conn.close()


@pytest.fixture
def cli(stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("FLEET_POSTGRES__DSN", stack_env["DATABASE_URL"])
    monkeypatch.setenv("FLEET_KAFKA__BOOTSTRAP", stack_env["KAFKA_BOOTSTRAP"])
    monkeypatch.setenv("FLEET_LOG__FORMAT", "json")
    return CliRunner()


def test_show_says_write_back_dead_lettered_until_the_dead_letter_is_replayed(
    cli: CliRunner, stack_env: dict[str, str]
) -> None:
    oid, now = order_id(), datetime.now(UTC)
    created = now - timedelta(minutes=3)
    asyncio.run(seed_fulfilled(stack_env["DATABASE_URL"], oid, created))
    now_ms = int(time.time() * 1000)
    before_the_order = command_letter(
        oid, commanded_ms=now_ms - 7_200_000, dead_lettered_ms=now_ms - 7_190_000, message="an older order's write-back"
    )
    refused = command_letter(
        oid,
        commanded_ms=int((created + timedelta(seconds=21)).timestamp() * 1000),  # the write-back step's command
        dead_lettered_ms=now_ms,
        message="FIELD_CUSTOM_VALIDATION_EXCEPTION: Activation_Status__c cannot be Activated without a SIM",
    )
    _, dead = asyncio.run(produce(stack_env["KAFKA_BOOTSTRAP"], GROUP, [before_the_order, refused]))

    shown = cli.invoke(main, ["orders", "show", oid])
    assert shown.exit_code == 0, shown.output
    text = shown.stdout
    assert f"order {oid}  SIM  state=fulfilled, write-back dead-lettered\n" in text
    [line] = [x for x in text.splitlines() if " dead_lettered " in x]
    for part in (
        "sf-writer",
        f"record=Order/{oid}",
        "error=events.errors.RejectedByUpstream",
        "code=",
        'message="FIELD_CUSTOM_VALIDATION_EXCEPTION: Activation_Status__c cannot be Activated',
        f"dlq={dead.partition}:{dead.offset}",
        "status=pending (not replayed)",
    ):
        assert part in line, (part, line)
    assert "an older order's write-back" not in text, "the DLQ is read from the order's creation on"
    doc = json.loads(cli.invoke(main, ["orders", "show", oid, "--json"]).stdout)
    assert doc["writeback"]["status"] == "dead-lettered" and len(doc["writeback"]["dead_letters"]) == 1

    asyncio.run(mark_replayed(stack_env["DATABASE_URL"], dead))
    after = cli.invoke(main, ["orders", "show", oid]).stdout
    assert f"order {oid}  SIM  state=fulfilled\n" in after
    assert "status=replayed by job" in after and " dlq_replayed " in after
