"""Re-ingesting a refused webhook (``fleet dlq replay -g ingress``) with the receiver itself and fakes.

Contract: the record ``webhook_server._dead_letter`` writes reads as an ingress dead letter (identity =
webhook-id, type = ``whmcs-webhooks:<hook>``, error = the 400's code); while the receiver still refuses
the body, re-ingesting it is refused with the receiver's code and sends nothing; once the receiver
accepts the body, re-ingesting it gives exactly the records the receiver produces for it (key, value,
headers, CloudEvent id ``whmcs-webhook:<id>``), on the partition its producer picks. Records of other
ingress workers (sf-cdc) are never re-ingested.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from aiokafka.partitioner import murmur2
from pydantic import Field, TypeAdapter

from adapters.kafka import FakeProducer
from adapters.webhook_dedupe import FakeDedupeStore
from events import failure as fh
from events.envelope import H_ID
from schemas.whmcs_webhook import ClientWebhook, OrderWebhook, PayMethodWebhook, ServiceWebhook
from tests.unit.test_webhook_receiver import DLQ, SECRET, TOPIC, payload, signed
from workers.dlq.browse import RecordView
from workers.dlq.ingress import TARGET, NotReplayable, plan_reingest, reingest, replay_event_id
from workers.dlq.models import DeadLetter, header_dict
from workers.dlq.render import action_line, record_sections
from workers.dlq.selection import REFUSED, REPLAYED, action_records
from workers.ingress import webhook_server
from workers.ingress.webhook_server import PATH, SignatureVerifier, WebhookReceiver, build_app

#: a receiver one release older: it does not know the invoice hooks yet (``unknown_event``)
OLD_SCHEMA: TypeAdapter[object] = TypeAdapter(
    Annotated[OrderWebhook | ServiceWebhook | ClientWebhook | PayMethodWebhook, Field(discriminator="event")]
)


class Receiver:
    def __init__(self, client: TestClient, producer: FakeProducer) -> None:  # type: ignore[type-arg]
        self.client, self.producer = client, producer

    async def post(self, body: bytes, webhook_id: str) -> int:
        async with self.client.post(PATH, data=body, headers=signed(body, webhook_id)) as response:
            return response.status

    def dead_letter(self) -> DeadLetter:
        (key, value, headers) = self.producer.on(DLQ)[-1]
        return DeadLetter(DLQ, 0, len(self.producer.on(DLQ)) - 1, 0, key, value, tuple(headers))


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    producer = FakeProducer()
    app = build_app(
        WebhookReceiver(
            verifier=SignatureVerifier([SECRET], tolerance_s=300),
            dedupe=FakeDedupeStore(),
            producer=producer,
            max_body_bytes=256 * 1024,
            topic=TOPIC,
            dlq_topic=DLQ,
        )
    )
    async with TestClient(TestServer(app)) as client:
        yield Receiver(client, producer)


async def test_a_refused_body_replays_as_exactly_what_the_receiver_produces_once_it_accepts_it(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = payload("InvoicePaid", client_id=4242)
    with monkeypatch.context() as old_release:
        old_release.setattr(webhook_server, "parse_webhook", OLD_SCHEMA.validate_json)
        assert await receiver.post(body, "msg_replay_1") == 400
        dl = receiver.dead_letter()
        assert (dl.event_id, dl.event_type, dl.error_class) == (
            "msg_replay_1",
            "whmcs-webhooks:InvoicePaid",
            "unknown_event",
        )
        assert dl.value == body and replay_event_id(dl) == "whmcs-webhook:msg_replay_1"
        with pytest.raises(NotReplayable) as still:
            reingest(dl)
        assert still.value.code == "unknown_event"
        assert plan_reingest(dl, partitions=4).outcome == REFUSED

    # the fixed receiver accepts the same body and webhook-id: the replay must be that record, byte for byte
    assert await receiver.post(body, "msg_replay_1") == 200
    [produced] = receiver.producer.on(TOPIC)
    assert reingest(dl) == [produced]
    assert header_dict(produced[2])[H_ID] == b"whmcs-webhook:msg_replay_1"

    action = plan_reingest(dl, partitions=4)
    assert (action.outcome, action.target_topic) == (REPLAYED, TARGET)
    assert action.target_partition == (murmur2(b"4242") & 0x7FFFFFFF) % 4, "the receiver's producer's partition"
    [(key, value, headers)] = action_records(action, job_id="job-1", now_ms=0)
    assert (key, value, list(headers)) == (produced[0], produced[1], [*produced[2], (fh.REPLAY_JOB, b"job-1")])
    line = action_line(action, dry_run=True)
    assert line.startswith("would replay 0:0  webhook_id=msg_replay_1  type=whmcs-webhooks:InvoicePaid")
    assert line.endswith(f"-> {TARGET}[{action.target_partition}]  as id=whmcs-webhook:msg_replay_1")


async def test_a_body_that_is_not_json_stays_refused(receiver: Receiver) -> None:
    assert await receiver.post(b"{not json", "msg_bad_json") == 400
    action = plan_reingest(receiver.dead_letter(), partitions=4)
    assert action.outcome == REFUSED and action.reason.startswith("malformed_json: ")
    assert action_line(action, dry_run=False).startswith("refused      0:0  key=msg_bad_json")


def test_a_cdc_delivery_on_the_ingress_dlq_is_not_reingested() -> None:
    headers = ((fh.ERROR_CODE, b"INVALID_PAYLOAD"), (fh.SOURCE_TOPIC, b"/data/OrderChangeEvent"))
    dl = DeadLetter(DLQ, 0, 3, 0, b"/data/OrderChangeEvent", b"{}", headers)
    assert dl.event_type == "/data/OrderChangeEvent" and replay_event_id(dl) is None
    action = plan_reingest(dl, partitions=4)
    assert action.outcome == REFUSED and "from /data/OrderChangeEvent" in action.reason


def _sections(dl: DeadLetter) -> dict[str, dict[str, str]]:
    return {title: dict(pairs) for title, pairs in record_sections(RecordView(dl, None, False))}


def test_a_refused_body_reads_the_same_from_a_receiver_before_and_after_the_shared_header_builder() -> None:
    """``fleet dlq`` reads both: the old five headers (``failed_at``, no class) and the provenance of now."""
    body = payload("InvoiceTeleported")
    old = (
        (fh.WEBHOOK_ID, b"msg_old"),
        (fh.INGRESS, b"whmcs-webhooks"),
        (fh.ERROR_CODE, b"unknown_event"),
        (fh.ERROR_MESSAGE, b"unknown event 'InvoiceTeleported'"),
        (fh.LEGACY_FAILED_AT, b"2027-01-15T08:00:00.000001+00:00"),
    )
    rejection = webhook_server.Rejection(400, "unknown_event", "unknown event 'InvoiceTeleported'")
    new = ((fh.WEBHOOK_ID, b"msg_new"), (fh.INGRESS, b"whmcs-webhooks"))
    new += tuple(webhook_server.dead_letter_provenance(rejection, 1_800_000_000.0))
    for headers, failed_at in ((old, "2027-01-15T08:00:00.000001+00:00"), (new, "2027-01-15T08:00:00.000Z")):
        dl = DeadLetter(DLQ, 0, 1, 0, headers[0][1], body, headers)
        assert (dl.event_type, dl.error_class, dl.failed_at) == (
            "whmcs-webhooks:InvoiceTeleported",
            "unknown_event",
            failed_at,
        )
        error = _sections(dl)["error"]
        assert (error["code"], error["failed at"]) == ("unknown_event", failed_at)
        assert error["message"] == "unknown event 'InvoiceTeleported'"
    assert _sections(DeadLetter(DLQ, 0, 1, 0, b"k", body, new))["error"]["stage"] == "decode"
