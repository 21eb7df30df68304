"""Property: whatever arrives on the wire, the receiver answers with a known status and JSON, never crashes.

Requests are written as raw HTTP/1.1 bytes (header values included, so no client library cleans
them up first) to a real aiohttp server on an ephemeral port, with fakes behind it. Half the
examples are signed with the real secret, so the parser and the dedupe/produce path are reached
too. The only 5xx allowed is 503 ``kafka_unavailable``, and only when the fake Kafka is failing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from adapters.kafka import FakeProducer
from adapters.webhook_dedupe import FakeDedupeStore
from events.errors import DependencyUnavailable
from schemas.whmcs_webhook import KNOWN_EVENTS
from workers.ingress.webhook_server import PATH, SignatureVerifier, WebhookReceiver, build_app, decode_secret

SECRET = "whsec_c2FuZGJveC13ZWJob29rLXNlY3JldA=="
MAX_BODY = 4096
ALLOWED = {200, 400, 401, 409, 413}

#: what HTTP allows in a field value (VCHAR, obs-text, inner SP/HTAB); anything else aiohttp refuses itself
header_bytes = st.binary(max_size=120).map(
    lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F or c == 0x09).strip(b" \t")
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
webhook_like = st.fixed_dictionaries(
    {
        "event": st.sampled_from(sorted(KNOWN_EVENTS)) | st.text(max_size=20),
        "occurred_at": st.sampled_from(["2027-01-15T08:00:00Z", "2027-01-15", "soon"]) | st.text(max_size=10),
        "data": st.fixed_dictionaries(
            {"client_id": st.integers(-5, 10**12) | json_values},
            optional={
                key: st.integers(-5, 10**12) | json_values
                for key in ("invoice_id", "order_id", "service_id", "paymethod_id", "status", "service_ids")
            },
        ),
    },
    optional={"extra": json_values},
).map(lambda d: json.dumps(d).encode())
valid_webhooks = st.builds(
    lambda event, client, record, extra: json.dumps(
        {"event": event, "occurred_at": "2027-01-15T08:00:00Z", "data": {**extra, "client_id": client,
         "invoice_id": record, "order_id": record, "service_id": record, "paymethod_id": record}}
    ).encode(),
    st.sampled_from(sorted(KNOWN_EVENTS)),
    st.integers(1, 10**9),
    st.integers(1, 10**9),
    st.dictionaries(st.text(max_size=8), json_values, max_size=3),
)  # fmt: skip
#: weighted towards webhook-shaped JSON so the parser and the produce path are reached often
bodies = st.one_of(
    valid_webhooks, valid_webhooks, webhook_like, webhook_like, st.binary(max_size=600), st.just(b"x" * (MAX_BODY + 1))
)
webhook_ids = st.one_of(
    st.from_regex(r"msg_[A-Za-z0-9_-]{1,40}", fullmatch=True).map(str.encode),
    st.from_regex(r"msg_[A-Za-z0-9_-]{1,40}", fullmatch=True).map(str.encode),
    header_bytes.map(lambda b: b or b"x"),
)


@pytest_asyncio.fixture(loop_scope="session")
async def server() -> AsyncIterator[tuple[TestServer, WebhookReceiver]]:
    receiver = WebhookReceiver(
        verifier=SignatureVerifier([SECRET], tolerance_s=300),
        dedupe=FakeDedupeStore(),
        producer=FakeProducer(),
        max_body_bytes=MAX_BODY,
        topic="test.props",
        dlq_topic="test.props.dlq",
    )
    test_server = TestServer(build_app(receiver))
    await test_server.start_server()
    yield test_server, receiver
    await test_server.close()


async def exchange(port: int, raw: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        return int(head[9:12]), await reader.readexactly(length)
    finally:
        writer.close()


def request(body: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    lines = [b"POST " + PATH.encode() + b" HTTP/1.1", b"Host: test", b"Content-Length: " + str(len(body)).encode()]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def signed_headers(webhook_id: bytes, body: bytes, skew_s: int) -> list[tuple[bytes, bytes]]:
    """Standard Webhooks over raw bytes (the reference library only signs text)."""
    ts = str(int(time.time()) + skew_s).encode()
    mac = hmac.new(decode_secret(SECRET), webhook_id + b"." + ts + b"." + body, hashlib.sha256).digest()
    signature = b"v1," + base64.b64encode(mac)
    return [(b"webhook-id", webhook_id), (b"webhook-timestamp", ts), (b"webhook-signature", signature)]


async def check(server: tuple[TestServer, WebhookReceiver], raw: bytes, kafka_down: bool) -> None:
    test_server, receiver = server
    producer: Any = receiver.producer
    producer.fail_next_with = DependencyUnavailable("down", upstream="kafka") if kafka_down else None
    status, answer = await exchange(test_server.port or 0, raw)
    decoded = json.loads(answer)
    event(f"{status} {decoded.get('error', decoded.get('status'))}")  # see --hypothesis-show-statistics
    if status == 503:
        assert kafka_down and decoded["error"] == "kafka_unavailable"
    else:
        assert status in ALLOWED, (status, decoded)
    if status != 200:
        assert set(decoded) == {"error", "reason"}
    live, _ = await exchange(test_server.port or 0, b"GET /livez HTTP/1.1\r\nHost: test\r\n\r\n")
    assert live == 200


SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(
    body=bodies,
    webhook_id=webhook_ids,
    skew_s=st.sampled_from([0, 0, 0, -299, 120, -3600]),
    kafka_down=st.sampled_from([False, False, False, True]),
)
async def test_any_signed_request_gets_a_known_status_and_a_json_answer(
    server: tuple[TestServer, WebhookReceiver], body: bytes, webhook_id: bytes, skew_s: int, kafka_down: bool
) -> None:
    await check(server, request(body, signed_headers(webhook_id, body, skew_s)), kafka_down)


@SETTINGS
@given(
    body=bodies,
    headers=st.lists(
        st.tuples(
            st.sampled_from([b"webhook-id", b"webhook-timestamp", b"webhook-signature", b"x-junk"]), header_bytes
        ),
        max_size=4,
    ),
)
async def test_any_unsigned_request_gets_a_known_status_and_a_json_answer(
    server: tuple[TestServer, WebhookReceiver], body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await check(server, request(body, headers), kafka_down=False)


async def test_requests_that_are_not_valid_http_are_refused_by_aiohttp_and_the_server_lives_on(
    server: tuple[TestServer, WebhookReceiver],
) -> None:
    test_server, _ = server
    status, _ = await exchange(test_server.port or 0, request(b"{}", [(b"webhook-id", b"a\x00b")]))
    assert status == 400  # aiohttp's own answer (plain text): this never reaches the receiver
    live, _ = await exchange(test_server.port or 0, b"GET /livez HTTP/1.1\r\nHost: test\r\n\r\n")
    assert live == 200
