"""Scenario: a webhook the receiver refused is listed, shown and re-ingested with ``fleet dlq -g ingress``.

Contract (issue 14): the WHMCS receiver, served in-process on the local stack by ``serve`` and one
release behind (its schema does not know ``InvoicePaid``), answers 400 and keeps the signed body on
``ingress.dlq.v1``; ``fleet dlq list`` counts it under ``ingress``; ``show`` prints the raw body, the
headers and the cause; ``replay`` while the receiver still refuses the body refuses it too, sends
nothing and exits 1; once the schema knows the hook, ``replay`` produces the event to
``whmcs.billing.v1`` (the topic the receiver writes: no group ever saw it) with the receiver's
CloudEvent id ``whmcs-webhook:<webhook-id>``, audited; a second replay sends nothing. The real topics
are shared, so every command selects this test's record by its key (the webhook-id).
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated

import aiohttp
import asyncpg
import pytest
from click.testing import CliRunner, Result
from pydantic import Field, TypeAdapter
from standardwebhooks.webhooks import Webhook

from events import failure as fh
from events.topics import Topic
from schemas.whmcs_webhook import ClientWebhook, OrderWebhook, PayMethodWebhook, ServiceWebhook
from workers.cli import main
from workers.config import Settings
from workers.dlq.models import DeadLetter
from workers.dlq.reader import TopicReader
from workers.ingress import webhook_server
from workers.ingress.webhook_server import PATH, serve

pytestmark = pytest.mark.e2e

SECRET = "whsec_c2FuZGJveC13ZWJob29rLXNlY3JldA=="  # the default of FLEET_WHMCS__WEBHOOK_SECRETS
#: the schema of a receiver one release behind: it does not know the invoice hooks yet
OLD_SCHEMA: TypeAdapter[object] = TypeAdapter(
    Annotated[OrderWebhook | ServiceWebhook | ClientWebhook | PayMethodWebhook, Field(discriminator="event")]
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def post_to_receiver(stack_env: dict[str, str], body: bytes, webhook_id: str) -> tuple[int, dict[str, str]]:
    """``serve`` with the default topics (``whmcs.billing.v1``, ``ingress.dlq.v1``), one signed POST, stop."""
    port = free_port()
    settings = Settings(
        kafka={"bootstrap": stack_env["KAFKA_BOOTSTRAP"]},
        redis={"url": stack_env["REDIS_URL"]},
        whmcs={"webhook_listen_port": port},
    )
    stop = asyncio.Event()
    server = asyncio.create_task(serve(settings, stop))
    at = datetime.now(UTC)
    headers = {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(SECRET).sign(webhook_id, at, body.decode()),
        "content-type": "application/json",
    }
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:  # ready once its producer is up
                try:
                    async with http.get(url + "/readyz") as ready:
                        if ready.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert time.monotonic() < deadline and not server.done(), "the receiver did not become ready"
                await asyncio.sleep(0.1)
            async with http.post(url + PATH, data=body, headers=headers) as response:
                return response.status, await response.json()
    finally:
        stop.set()
        await asyncio.wait_for(server, 30)


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    async with TopicReader(bootstrap, topic) as reader:
        return {p: r.end for p, r in (await reader.ranges()).items()}


async def records_since(bootstrap: str, topic: str, start: dict[int, int], event_id: str) -> list[DeadLetter]:
    async with TopicReader(bootstrap, topic) as reader:
        return [r async for r in reader.read(start) if r.event_id == event_id]


async def audit_rows(dsn: str, job: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch("SELECT consumer_group, dry_run, status FROM dlq_audit WHERE job_id = $1::uuid", job)
    finally:
        await conn.close()


def summary(stdout: str) -> dict[str, str]:
    (line,) = [x for x in stdout.splitlines() if " summary job=" in x]
    return dict(part.split("=", 1) for part in line[line.index("job=") :].split())


def ingress_count(cli: CliRunner) -> int:
    listed = cli.invoke(main, ["dlq", "list", "-g", "ingress", "--json"])
    assert listed.exit_code == 0, listed.output
    [overview] = json.loads(listed.stdout)
    assert (overview["group"], overview["topic"], overview["exists"]) == ("ingress", Topic.INGRESS_DLQ, True)
    rows = overview["by_error_and_type"]
    return sum(int(r["count"]) for r in rows if r["event type"] == "whmcs-webhooks:InvoicePaid")


@pytest.fixture
def cli(stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("FLEET_POSTGRES__DSN", stack_env["DATABASE_URL"])
    monkeypatch.setenv("FLEET_KAFKA__BOOTSTRAP", stack_env["KAFKA_BOOTSTRAP"])
    monkeypatch.setenv("FLEET_LOG__FORMAT", "json")
    return CliRunner()


def test_a_refused_webhook_is_listed_shown_and_reingested_once(
    cli: CliRunner, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bootstrap, dsn = stack_env["KAFKA_BOOTSTRAP"], stack_env["DATABASE_URL"]
    webhook_id, client_id = f"msg_e2e_{uuid.uuid4().hex}", random.randint(10**6, 10**9)
    body = json.dumps({"event": "InvoicePaid", "occurred_at": "2027-01-15T08:00:00+00:00",
                       "data": {"client_id": client_id, "invoice_id": 9001}}).encode()  # fmt: skip
    by_key = ("--key", webhook_id)
    counted_before = ingress_count(cli)

    monkeypatch.setattr(webhook_server, "parse_webhook", OLD_SCHEMA.validate_json)  # the release behind
    status, answer = asyncio.run(post_to_receiver(stack_env, body, webhook_id))
    assert (status, answer["error"]) == (400, "unknown_event")

    assert ingress_count(cli) == counted_before + 1
    listed = cli.invoke(main, ["dlq", "list"])
    assert "ingress (ingress.dlq.v1): " in listed.stdout, "without -g, ingress is listed with the groups"
    shown = cli.invoke(main, ["dlq", "show", "-g", "ingress", "--event-id", webhook_id])
    assert shown.exit_code == 0, shown.output
    for expected in (
        body.decode(),  # the raw body, as signed
        f"webhook_id: {webhook_id}",
        "ingress: whmcs-webhooks",
        "unknown event 'InvoicePaid'",
        "pending (not replayed)",
        f"whmcs-webhook:{webhook_id}",
    ):
        assert expected in shown.stdout, expected

    before = asyncio.run(end_offsets(bootstrap, Topic.WHMCS_BILLING))
    refused: Result = cli.invoke(main, ["dlq", "replay", "-g", "ingress", *by_key])
    assert refused.exit_code == 1, refused.output
    assert "refused" in refused.stdout and "unknown_event: unknown event 'InvoicePaid'" in refused.stdout
    assert summary(refused.stdout)["refused"] == "1" and summary(refused.stdout)["replayed"] == "0"

    monkeypatch.undo()  # the fixed release: the schema knows InvoicePaid
    dry = cli.invoke(main, ["dlq", "replay", "-g", "ingress", *by_key, "--dry-run"])
    assert f"-> {Topic.WHMCS_BILLING}[" in dry.stdout and f"as id=whmcs-webhook:{webhook_id}" in dry.stdout
    replayed = cli.invoke(main, ["dlq", "replay", "-g", "ingress", *by_key, "--operator", "oncall"])
    assert replayed.exit_code == 0, replayed.output
    counts = summary(replayed.stdout)
    assert (counts["replayed"], counts["group"]) == ("1", "ingress")

    [event] = asyncio.run(records_since(bootstrap, Topic.WHMCS_BILLING, before, f"whmcs-webhook:{webhook_id}"))
    assert (event.key_text, event.event_type) == (str(client_id), "fleet.billing.invoice-changed.v1")
    assert event.header("ce_source") == webhook_server.SOURCE and event.header(fh.REPLAY_JOB) == counts["job"]
    assert json.loads(event.value or b"")["invoice_id"] == 9001
    assert [tuple(r.values()) for r in asyncio.run(audit_rows(dsn, counts["job"]))] == [("ingress", False, "completed")]

    again = cli.invoke(main, ["dlq", "replay", "-g", "ingress", *by_key])
    assert again.exit_code == 0, again.output
    assert (summary(again.stdout)["replayed"], summary(again.stdout)["skipped_already_replayed"]) == ("0", "1")
    assert len(asyncio.run(records_since(bootstrap, Topic.WHMCS_BILLING, before, f"whmcs-webhook:{webhook_id}"))) == 1
    shown = cli.invoke(main, ["dlq", "show", "-g", "ingress", "--event-id", webhook_id])
    assert f"replayed by job {counts['job']} -> {Topic.WHMCS_BILLING}[" in shown.stdout
