"""Replaying ingress dead letters (``fleet dlq replay -g ingress``): re-ingest a body a receiver refused.

The WHMCS receiver dead-letters a signed body it cannot read (``webhook_server._dead_letter``): key
and ``webhook_id`` header = the webhook-id, value = the raw body as signed, plus ``ingress`` and the
provenance every dead letter carries (``error_code`` = the 400's code). Such a record never reached a consumer group,
so no group has seen its event: replaying it runs the body through the receiver's own parse and
translation again and produces the events to the topic the receiver writes (``whmcs.billing.v1``),
keyed and partitioned as the receiver would, with the CloudEvent ids it would have given them
(``whmcs-webhook:<webhook-id>``), so a copy produced twice is dropped by every group's inbox.
That is right here only: a group's dead letter goes back to its own retry topic, never to a source.

Owns that re-ingestion. Must not send anything for a body that still fails to parse, nor for a
record it cannot re-ingest (``sf_cdc``'s deliveries: resync those from Salesforce).
"""

from __future__ import annotations

from datetime import UTC

from aiokafka.partitioner import murmur2  # type: ignore[import-untyped]

from events import failure as fh
from events.topics import Topic
from workers.dlq.models import DeadLetter
from workers.dlq.selection import REFUSED, REPLAYED, Action, Record

# The receiver's own rules and encoding, not copies of them: a replay produces exactly what the
# receiver would have produced for this body (pinned by tests/unit/test_dlq_ingress.py).
from workers.ingress.webhook_server import (
    INGRESS_NAME,
    MAX_WEBHOOK_ID,
    WEBHOOK_ID,
    Rejection,
    encode_record,
    event_id_of,
    parse_body,
)
from workers.ingress.whmcs_webhooks import translate

WHMCS_WEBHOOKS = INGRESS_NAME.decode()  # the ``ingress`` header of the WHMCS receiver's dead letters
#: where the receiver writes (``WebhookReceiver.topic``), so where its re-ingested events go
TARGET = str(Topic.WHMCS_BILLING)


class NotReplayable(Exception):
    """The dead letter cannot be re-ingested (yet): ``code`` as the receiver would answer, and why."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code, self.reason = code, reason


def reingest(dl: DeadLetter) -> list[Record]:
    """The records the receiver would produce for this body now; ``NotReplayable`` when it still refuses it."""
    if dl.ingress != WHMCS_WEBHOOKS:
        origin = dl.ingress or dl.header(fh.SOURCE_TOPIC) or "?"
        raise NotReplayable(
            "not_reingestible", f"from {origin}: only {WHMCS_WEBHOOKS} bodies are re-ingested (resync CDC instead)"
        )
    webhook_id = dl.header(fh.WEBHOOK_ID) or ""
    if not WEBHOOK_ID.fullmatch(webhook_id):
        raise NotReplayable("invalid_webhook_id", f"webhook-id must be 1-{MAX_WEBHOOK_ID} visible ASCII characters")
    try:
        payload = parse_body(dl.value or b"")
    except Rejection as exc:
        raise NotReplayable(exc.code, exc.reason) from None
    occurred = payload.occurred_at if payload.occurred_at.tzinfo else payload.occurred_at.replace(tzinfo=UTC)
    events = translate(payload, webhook_id=webhook_id)
    return [encode_record(event, event_id_of(webhook_id, n), occurred) for n, event in enumerate(events)]


def replay_event_id(dl: DeadLetter) -> str | None:
    """The CloudEvent id a replay gives this body's (first) event, or None for a non-webhook record."""
    webhook_id = dl.header(fh.WEBHOOK_ID)
    return event_id_of(webhook_id, 0) if dl.ingress == WHMCS_WEBHOOKS and webhook_id else None


def plan_reingest(dl: DeadLetter, *, partitions: int) -> Action:
    """Replay the re-ingested events to ``TARGET``, or refuse (sending nothing) with the receiver's reason."""
    try:
        records = reingest(dl)
    except NotReplayable as exc:
        return Action(dl, REFUSED, TARGET, -1, reason=str(exc))
    if not records:  # translate gives every hook one event today; nothing to send is not "replayed"
        return Action(dl, REFUSED, TARGET, -1, reason="no_events: the body translates to no event")
    # Every event of one webhook has its client's key; the partition is the one the receiver's
    # producer picks (murmur2, as aiokafka's ``send`` and ``BatchingProducer``), so the replayed
    # event queues behind the same client's other billing events.
    key = records[0][0] or b""
    return Action(dl, REPLAYED, TARGET, int(murmur2(key) & 0x7FFFFFFF) % partitions, records=tuple(records))
