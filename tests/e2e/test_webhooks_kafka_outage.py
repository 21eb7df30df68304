"""Scenario: Kafka stops while WHMCS keeps sending webhooks, then comes back.

Contract: while Kafka is down every webhook is answered 503 with Retry-After (never 200: nothing is
acknowledged that Kafka did not take); the sender retries after the restart and every webhook is
accepted; afterwards each webhook id is on the topic (no loss). A 503 whose record Kafka got after
all (the ack was what went missing) is produced again by the retry under the same CloudEvent id,
which the downstream inbox deduplicates, so records may repeat but ids never differ.

The shared stack's broker is never touched: this test starts its own single-node broker (the
stack's ``Kafka`` with a private state directory and free ports), stops and restarts that one.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from standardwebhooks.webhooks import Webhook

from adapters.kafka import ensure_topics
from devtools.stack.kafka import Kafka
from devtools.stack.process import stop as stop_process
from events.topics import TopicSpec
from tests.integration.test_webhook_receiver import SECRET, free_port, read_topic, wait_ready
from workers.config import Settings
from workers.ingress.webhook_server import PATH, serve

pytestmark = pytest.mark.e2e

START_TIMEOUT_S = 60.0


async def start_broker(kafka: Kafka) -> None:
    await kafka.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not await kafka.probe():
        assert time.monotonic() < deadline, "private broker did not start"
        await asyncio.sleep(0.2)


async def stop_broker(kafka: Kafka) -> None:
    pid = kafka.running_pid()
    if pid is not None:
        await stop_process(pid, kafka.signature, signal.SIGTERM, 30.0)
    await kafka.clean_stale()


@pytest_asyncio.fixture
async def broker() -> AsyncIterator[Kafka]:
    state = Path(tempfile.mkdtemp(prefix="fleet-webhook-outage-"))
    kafka = Kafka(state, port=free_port(), controller_port=free_port(), heap="256m")
    await start_broker(kafka)
    try:
        yield kafka
    finally:
        await stop_broker(kafka)
        shutil.rmtree(state, ignore_errors=True)


def signed_request(webhook_id: str) -> tuple[bytes, dict[str, str]]:
    data = {"client_id": 4242, "invoice_id": 9001}
    body = json.dumps({"event": "InvoicePaid", "occurred_at": "2027-01-15T08:00:00Z", "data": data})
    now = datetime.now(UTC)  # signed at each attempt, as a sender retrying later would
    headers = {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(SECRET).sign(webhook_id, now, body),
        "content-type": "application/json",
    }
    return body.encode(), headers


async def send(http: aiohttp.ClientSession, url: str, webhook_id: str) -> tuple[int, str | None, str]:
    body, headers = signed_request(webhook_id)
    async with http.post(url + PATH, data=body, headers=headers) as response:
        answer = await response.json()
        return response.status, response.headers.get("Retry-After"), answer.get("error") or answer["status"]


async def test_webhooks_get_503_while_kafka_is_down_and_none_is_lost_after_it_returns(
    broker: Kafka, stack_env: dict[str, str]
) -> None:
    began = time.monotonic()
    topic, port = f"test.whmcs.outage.{uuid.uuid4().hex[:8]}", free_port()
    await ensure_topics(broker.endpoint, [TopicSpec(topic, 2, 3_600_000), TopicSpec(topic + ".dlq", 1, 3_600_000)])
    settings = Settings(
        kafka={"bootstrap": broker.endpoint, "request_timeout_ms": 5_000},
        redis={"url": stack_env["REDIS_URL"]},
        whmcs={"webhook_listen_port": port},
    )
    stop = asyncio.Event()
    server = asyncio.create_task(serve(settings, stop, topic=topic, dlq_topic=topic + ".dlq"))
    url = f"http://127.0.0.1:{port}"
    ids = [f"msg_outage_{uuid.uuid4().hex}" for _ in range(15)]
    try:
        async with aiohttp.ClientSession() as http:
            await wait_ready(http, url, server)
            before = await asyncio.gather(*(send(http, url, i) for i in ids[:5]))
            assert {status for status, _, _ in before} == {200}

            await stop_broker(broker)
            during = await asyncio.gather(*(send(http, url, i) for i in ids[5:]))
            assert {(status, retry_after, error) for status, retry_after, error in during} == {
                (503, "5", "kafka_unavailable")
            }

            await start_broker(broker)
            after = await retry_until_accepted(http, url, ids[5:])
            assert set(after) <= {"accepted", "duplicate"}
    finally:
        stop.set()
        await asyncio.wait_for(server, 30)

    records = await read_topic(broker.endpoint, topic, len(ids), timeout_s=20)
    on_topic = Counter(dict(r.headers)["ce_id"].decode() for r in records)
    assert set(on_topic) == {f"whmcs-webhook:{i}" for i in ids}  # every webhook, and nothing else
    # Records buffered in the producer during the outage may still reach the broker after it returns
    # (their 503 went out first); the retries then add a second record under the same id.
    assert sum(on_topic.values()) <= len(ids) + len(during)
    assert time.monotonic() - began < 90


async def retry_until_accepted(http: aiohttp.ClientSession, url: str, ids: list[str]) -> list[str]:
    """What a sender does with 503 + Retry-After: try again until a 2xx (a short back-off here)."""
    outcomes: dict[str, str] = {}
    deadline = time.monotonic() + 45
    while len(outcomes) < len(ids):
        assert time.monotonic() < deadline, f"still refused: {sorted(set(ids) - set(outcomes))}"
        pending = [i for i in ids if i not in outcomes]
        for webhook_id, (status, _, outcome) in zip(
            pending, await asyncio.gather(*(send(http, url, i) for i in pending)), strict=True
        ):
            if status == 200:
                outcomes[webhook_id] = outcome
        await asyncio.sleep(0.5)
    return list(outcomes.values())
