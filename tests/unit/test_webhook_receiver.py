"""The receiver's HTTP contract with fakes for Kafka and Redis: every answer, every mark, every log line.

Contract: 413 before reading a huge body, 401 before parsing, 400 (dead-lettered) for signed bodies
we cannot read, 200 only after the (fake) producer acknowledged, 200 without producing for a done
webhook-id, 409 with Retry-After while another request holds the id, 503 with Retry-After and the
mark released when Kafka fails, and Redis trouble never blocks ingestion. Every error is JSON
``{"error", "reason"}`` and every rejection is logged with the webhook id.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from standardwebhooks.webhooks import Webhook
from structlog.testing import capture_logs

from adapters.kafka import Delivered, FakeProducer
from adapters.webhook_dedupe import Claim, FakeDedupeStore
from events import failure as fh
from events.base import to_envelope
from events.billing import InvoiceChanged
from events.envelope import Envelope, from_record, to_record
from events.errors import DependencyUnavailable
from schemas.whmcs_webhook import parse_webhook
from tests.unit.test_webhook_translate import CASES
from workers.dlq import testing as dlq_testing
from workers.ingress.webhook_server import (
    PATH,
    PRODUCE_BUCKETS,
    SOURCE,
    Metrics,
    SignatureVerifier,
    WebhookReceiver,
    build_app,
    encode_record,
)
from workers.ingress.whmcs_webhooks import translate

SECRET = "whsec_c2FuZGJveC13ZWJob29rLXNlY3JldA=="
TOPIC, DLQ = "test.whmcs.billing", "test.ingress.dlq"


def payload(event: str = "InvoicePaid", **data: Any) -> bytes:
    data = {"client_id": 12, "invoice_id": 9001, **data}
    return json.dumps({"event": event, "occurred_at": "2027-01-15T08:00:00+09:00", "data": data}).encode()


def signed(body: bytes, webhook_id: str | None = None, *, ts: float | None = None) -> dict[str, str]:
    webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    at = datetime.fromtimestamp(ts if ts is not None else time.time(), UTC)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(SECRET).sign(webhook_id, at, body.decode("utf-8", "replace")),
        "content-type": "application/json",
    }


class Harness:
    def __init__(self, client: TestClient[web.Request, web.Application], receiver: WebhookReceiver) -> None:
        self.client, self.receiver = client, receiver
        self.producer: FakeProducer = receiver.producer  # type: ignore[assignment]
        self.dedupe: FakeDedupeStore = receiver.dedupe  # type: ignore[assignment]

    async def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any], dict[str, str]]:
        async with self.client.post(PATH, data=body, headers=headers) as response:
            return response.status, await response.json(), dict(response.headers)

    def produced(self, topic: str = TOPIC) -> list[Envelope]:
        return [from_record(k, v, h) for k, v, h in self.producer.on(topic)]


@pytest_asyncio.fixture
async def harness() -> AsyncIterator[Harness]:
    receiver = WebhookReceiver(
        verifier=SignatureVerifier([SECRET], tolerance_s=300),
        dedupe=FakeDedupeStore(),
        producer=FakeProducer(),
        max_body_bytes=256 * 1024,
        topic=TOPIC,
        dlq_topic=DLQ,
    )
    async with TestClient(TestServer(build_app(receiver))) as client:
        yield Harness(client, receiver)


async def test_a_signed_webhook_is_produced_once_with_a_deterministic_id(harness: Harness) -> None:
    body = payload()
    headers = signed(body, "msg_42")
    status, answer, _ = await harness.post(body, headers)
    assert (status, answer) == (200, {"status": "accepted", "webhook_id": "msg_42", "events": 1})
    [envelope] = harness.produced()
    assert (envelope.id, envelope.key, envelope.type) == (
        "whmcs-webhook:msg_42",
        "12",
        "fleet.billing.invoice-changed.v1",
    )
    assert envelope.time == datetime(2027, 1, 14, 23, 0, tzinfo=UTC)  # occurred_at, normalised to UTC
    assert envelope.data["webhook_id"] == "msg_42"


async def test_a_redelivered_webhook_id_answers_200_without_producing_again(harness: Harness) -> None:
    body = payload()
    headers = signed(body)
    await harness.post(body, headers)
    status, answer, _ = await harness.post(body, headers)
    assert (status, answer["status"]) == (200, "duplicate")
    assert len(harness.produced()) == 1


async def test_a_webhook_id_in_progress_elsewhere_gets_409_with_retry_after(harness: Harness) -> None:
    body = payload()
    headers = signed(body)
    assert await harness.dedupe.claim(headers["webhook-id"], "another-request") is Claim.NEW
    with capture_logs() as logs:
        status, answer, response_headers = await harness.post(body, headers)
    assert (status, answer["error"], response_headers["Retry-After"]) == (409, "in_progress", "1")
    assert harness.produced() == []
    assert {"webhook_id": headers["webhook-id"], "status": 409}.items() <= logs[-1].items()


async def test_kafka_failure_answers_503_and_the_retry_is_produced(harness: Harness) -> None:
    body = payload()
    headers = signed(body)
    harness.producer.fail_next_with = DependencyUnavailable("broker gone", upstream="kafka")
    status, answer, response_headers = await harness.post(body, headers)
    assert (status, answer["error"], response_headers["Retry-After"]) == (503, "kafka_unavailable", "5")
    assert harness.dedupe.marks == {}  # released: nothing half-written
    status, answer, _ = await harness.post(body, headers)
    assert (status, answer["status"]) == (200, "accepted")
    assert len(harness.produced()) == 1


async def test_without_a_producer_webhooks_get_503_and_readyz_says_not_ready(harness: Harness) -> None:
    harness.receiver.producer = None
    body = payload()
    status, answer, _ = await harness.post(body, signed(body))
    assert (status, answer["error"]) == (503, "kafka_unavailable")
    async with harness.client.get("/readyz") as response:
        assert response.status == 503
    async with harness.client.get("/livez") as response:
        assert response.status == 200


async def test_redis_down_fails_open_relying_on_the_deterministic_id(harness: Harness) -> None:
    """Redis is a filter, not the record: with it down a webhook is still accepted (and counted)."""
    harness.dedupe.down = True
    body = payload()
    headers = signed(body)
    assert (await harness.post(body, headers))[0] == 200
    assert (await harness.post(body, headers))[0] == 200
    assert {e.id for e in harness.produced()} == {f"whmcs-webhook:{headers['webhook-id']}"}
    async with harness.client.get("/metrics") as response:
        assert "fleet_whmcs_webhooks_dedupe_unavailable_total 2.0" in await response.text()


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_signature"),
        ({"webhook-signature": "v1,AAAA"}, "invalid_signature"),
        # offsets from the time the test runs (``-600`` / ``+600``), not from collection: the whole suite
        # collects before it runs, and minutes later a timestamp fixed then was within the tolerance
        ({"webhook-timestamp": "-600"}, "stale_timestamp"),
        ({"webhook-timestamp": "+600"}, "stale_timestamp"),
        ({"webhook-timestamp": "yesterday"}, "invalid_timestamp"),
    ],
)
async def test_unauthenticated_requests_get_401_and_are_logged(
    harness: Harness, headers: dict[str, str], code: str
) -> None:
    body = payload()
    offset = headers.get("webhook-timestamp", "")
    if offset[:1] in ("-", "+"):
        headers = {**headers, "webhook-timestamp": str(int(time.time()) + int(offset))}
    sent = {**signed(body, "msg_bad"), **headers} if headers else {"webhook-id": "msg_bad"}
    with capture_logs() as logs:
        status, answer, _ = await harness.post(body, sent)
    assert (status, answer["error"]) == (401, code)
    assert set(answer) == {"error", "reason"}
    assert {"event": "webhook_rejected", "webhook_id": "msg_bad", "status": 401, "error": code}.items() <= logs[
        -1
    ].items()
    assert harness.producer.records == []


async def test_a_tampered_body_gets_401(harness: Harness) -> None:
    headers = signed(payload())
    status, answer, _ = await harness.post(payload(invoice_id=9999), headers)
    assert (status, answer["error"]) == (401, "invalid_signature")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "malformed_json"),
        (payload("InvoiceTeleported"), "unknown_event"),
        (payload(invoice_id="nine"), "invalid_payload"),
        (b"[1, 2]", "invalid_payload"),
    ],
)
async def test_signed_but_unreadable_bodies_get_400_after_being_dead_lettered(
    harness: Harness, body: bytes, code: str
) -> None:
    headers = signed(body)
    status, answer, _ = await harness.post(body, headers)
    assert (status, answer["error"]) == (400, code)
    [(key, value, dlq_headers)] = harness.producer.on(DLQ)
    assert (key, value) == (headers["webhook-id"].encode(), body)
    h = dict(dlq_headers)
    assert (h[fh.ERROR_CODE], h[fh.WEBHOOK_ID], h[fh.INGRESS]) == (code.encode(), key, b"whmcs-webhooks")
    assert h[fh.ERROR_STAGE] == (b"validate" if code == "invalid_payload" else b"decode")
    assert h[fh.ATTEMPTS] == b"0" and h[fh.FIRST_FAILED_AT] == h[fh.LAST_FAILED_AT]
    assert harness.produced() == []


async def test_a_refused_body_carries_the_same_dead_letter_headers_as_the_runtime_writes(harness: Harness) -> None:
    """One builder (``events.failure.provenance``) for every dead letter: the receiver's carry the
    runtime's failure headers, same names in the same order, empty where nothing applies (no source
    partition, offset or group), plus the two that say which receiver refused which webhook."""
    body = payload("InvoiceTeleported")
    status, _, _ = await harness.post(body, signed(body, "msg_same_names"))
    assert status == 400
    [(_, _, received)] = harness.producer.on(DLQ)
    _, _, runtime = dlq_testing.build(dlq_testing.Letter(), "fleet.g")

    def failure_names(headers: list[tuple[str, bytes]]) -> list[str]:
        return [name for name, _ in headers if name in fh.FLEET_HEADERS]

    assert failure_names(received) == failure_names(runtime) == list(fh.PROVENANCE)
    assert [name for name, _ in received if name not in fh.FLEET_HEADERS] == [fh.WEBHOOK_ID, fh.INGRESS]
    h = dict(received)
    assert h[fh.SOURCE_PARTITION] == h[fh.SOURCE_OFFSET] == h[fh.SOURCE_GROUP] == b""
    assert (h[fh.ERROR_CLASS], h[fh.ERROR_MESSAGE]) == (
        b"workers.ingress.webhook_server.Rejection",
        b"unknown event 'InvoiceTeleported'",
    )


async def test_a_body_that_cannot_be_dead_lettered_gets_503_so_it_comes_back(harness: Harness) -> None:
    body = payload("InvoiceTeleported")
    harness.producer.fail_next_with = DependencyUnavailable("broker gone", upstream="kafka")
    status, answer, _ = await harness.post(body, signed(body))
    assert (status, answer["error"]) == (503, "kafka_unavailable")


async def test_a_webhook_id_over_256_characters_is_refused(harness: Harness) -> None:
    body = payload()
    status, answer, _ = await harness.post(body, signed(body, "m" * 257))
    assert (status, answer["error"]) == (400, "invalid_webhook_id")


async def test_a_declared_oversized_body_gets_413_without_being_read(harness: Harness) -> None:
    body = b"x" * (256 * 1024 + 1)
    status, answer, _ = await harness.post(body, signed(b"{}"))
    assert (status, answer["error"]) == (413, "body_too_large")


async def test_an_oversized_chunked_body_gets_413_while_streaming(harness: Harness) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"x" * 8192  # 800 KB in all, no Content-Length

    async with harness.client.post(PATH, data=chunks(), headers=signed(b"{}")) as response:
        assert response.status == 413
        assert (await response.json())["error"] == "body_too_large"


async def test_other_routes_and_methods_answer_json_errors(harness: Harness) -> None:
    async with harness.client.get(PATH) as response:
        assert (response.status, (await response.json())["error"]) == (405, "method_not_allowed")
    async with harness.client.post("/webhooks/nope") as response:
        assert (response.status, (await response.json())["error"]) == (404, "not_found")


async def test_an_unexpected_bug_answers_500_json_and_is_logged(harness: Harness) -> None:
    class Exploding(FakeProducer):
        async def publish_raw(self, *args: Any, **kwargs: Any) -> Delivered:
            raise RuntimeError("bug")

    harness.receiver.producer = Exploding()
    body = payload()
    headers = signed(body)
    with capture_logs() as logs:
        status, answer, _ = await harness.post(body, headers)
    assert (status, answer["error"]) == (500, "internal_error")
    assert any(entry["event"] == "webhook_receiver_error" for entry in logs)
    assert harness.dedupe.marks == {}  # the claim was released, the sender's retry is new


async def test_metrics_count_received_accepted_and_rejected_by_reason(harness: Harness) -> None:
    body = payload()
    headers = signed(body)
    await harness.post(body, headers)
    await harness.post(body, headers)
    await harness.post(body, {})
    async with harness.client.get("/metrics") as response:
        text = await response.text()
    for line in (
        "fleet_whmcs_webhooks_received_total 3.0",
        'fleet_whmcs_webhooks_accepted_total{outcome="produced"} 1.0',
        'fleet_whmcs_webhooks_accepted_total{outcome="duplicate"} 1.0',
        'fleet_whmcs_webhooks_rejected_total{reason="missing_signature"} 1.0',
        "fleet_whmcs_webhooks_produce_seconds_count 1.0",
    ):
        assert line in text


async def test_concurrent_copies_of_one_webhook_produce_it_once(harness: Harness) -> None:
    """Two copies race: exactly one produces, the other is told to retry (409) or sees it done (200)."""
    gate = asyncio.Event()

    class Slow(FakeProducer):
        async def publish_raw(self, *args: Any, **kwargs: Any) -> Delivered:
            await gate.wait()
            return await super().publish_raw(*args, **kwargs)

    harness.receiver.producer = slow = Slow()
    body = payload()
    headers = signed(body)
    first = asyncio.create_task(harness.post(body, headers))
    await asyncio.sleep(0.05)
    second = await harness.post(body, headers)
    gate.set()
    assert (await first)[0] == 200
    assert second[0] == 409
    assert len(slow.records) == 1


async def test_a_hook_that_means_several_events_gets_one_deterministic_id_each(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers.ingress import webhook_server

    def two_events(payload: Any, *, webhook_id: str | None = None) -> list[Any]:
        [event] = translate(payload, webhook_id=webhook_id)
        return [event, event.model_copy(update={"status": "again"})]

    monkeypatch.setattr(webhook_server, "translate", two_events)
    body = payload()
    status, answer, _ = await harness.post(body, signed(body, "msg_two"))
    assert (status, answer["events"]) == (200, 2)
    assert [e.id for e in harness.produced()] == ["whmcs-webhook:msg_two", "whmcs-webhook:msg_two:1"]


async def test_the_answer_echoes_any_valid_webhook_id_as_json(harness: Harness) -> None:
    body = payload()
    tricky = 'msg_"quoted"\\back\\slash'
    status, answer, headers = await harness.post(body, signed(body, tricky))
    assert (status, answer, headers["Content-Type"]) == (
        200,
        {"status": "accepted", "webhook_id": tricky, "events": 1},
        "application/json",
    )
    status, answer, _ = await harness.post(body, signed(body, tricky))
    assert (status, answer) == (200, {"status": "duplicate", "webhook_id": tricky})


@pytest.mark.parametrize(("event", "data", "_"), CASES, ids=[case[0] for case in CASES])
def test_each_record_is_exactly_what_the_envelope_path_encodes(event: str, data: dict[str, Any], _: Any) -> None:
    """``encode_record`` skips the ``Envelope`` model for speed; its bytes must stay the envelope's."""
    occurred = datetime(2027, 1, 15, 8, 0, tzinfo=timezone(timedelta(hours=9)))
    body = {"event": event, "occurred_at": occurred.isoformat(), "data": {"client_id": 12, **data}}
    [domain_event] = translate(parse_webhook(json.dumps(body)), webhook_id='msg_"ü"')
    for event_id in ('whmcs-webhook:msg_"ü"', 'whmcs-webhook:msg_"ü":1'):
        envelope = to_envelope(domain_event, source=SOURCE, id=event_id).model_copy(update={"time": occurred})
        assert encode_record(domain_event, event_id, occurred) == to_record(envelope)


def test_the_record_encoding_keeps_vendor_text_byte_for_byte() -> None:
    event = InvoiceChanged(whmcs_client_id=7, invoice_id=1, status='支払い済み "\\ \n\t', raw={"note": "é\u2028"})
    occurred = datetime(2027, 1, 15, 8, 0, 0, 123456, tzinfo=UTC)
    envelope = to_envelope(event, source=SOURCE, id="whmcs-webhook:x").model_copy(update={"time": occurred})
    assert encode_record(event, "whmcs-webhook:x", occurred) == to_record(envelope)


def test_the_per_request_metrics_expose_what_prometheus_client_would() -> None:
    """``Metrics`` counts in plain numbers; the scrape shows the samples of a ``Counter`` and a ``Histogram``."""
    metrics = Metrics()
    reference = CollectorRegistry()
    received = Counter("fleet_whmcs_webhooks_received", "Webhook requests", registry=reference)
    accepted = Counter("fleet_whmcs_webhooks_accepted", "2xx answers by outcome", ["outcome"], registry=reference)
    produce = Histogram(
        "fleet_whmcs_webhooks_produce_seconds",
        "From produce to the acks=all acknowledgement",
        registry=reference,
        buckets=PRODUCE_BUCKETS,
    )
    accepted.labels("produced")
    for seconds in (0.0004, 0.001, 0.0011, 0.003, 0.5, 5.0, 7.5):  # on a bound, between, past the last
        metrics.received += 1
        received.inc()
        metrics.produced += 1
        accepted.labels("produced").inc()
        metrics.observe_produce(seconds)
        produce.observe(seconds)
    metrics.duplicate += 1
    accepted.labels("duplicate").inc()

    def samples(registry: CollectorRegistry) -> set[str]:  # created timestamps differ by construction
        lines = generate_latest(registry).decode().splitlines()
        return {line for line in lines if "_created" not in line and "rejected" not in line and "dedupe" not in line}

    assert samples(metrics.registry) == samples(reference)
