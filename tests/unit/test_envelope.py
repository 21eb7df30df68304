"""CloudEvents binary-mode encoding: every attribute travels as a ce_* header, data as the value."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from events.base import decode_event, event_types, to_envelope
from events.envelope import Envelope, from_record, to_record
from events.errors import InvalidPayload, UnknownEventType
from events.salesforce import OrderActivationRequested
from workers.fulfillment.run import child_envelope


def sample() -> Envelope:
    event = OrderActivationRequested(sf_order_id="8015g00000000001AA", sf_account_id="0015g00000000001AA")
    return to_envelope(event, source="/fleet/sf-cdc", correlationid="corr-1", traceparent="00-abc-def-01")


def test_binary_mode_headers_and_key() -> None:
    env = sample()
    key, value, headers = to_record(env)
    h = dict(headers)
    assert key == b"8015g00000000001AA"
    assert h["ce_specversion"] == b"1.0"
    assert h["ce_id"] == env.id.encode()
    assert h["ce_type"] == b"fleet.order.activation-requested.v2"
    assert h["ce_source"] == b"/fleet/sf-cdc"
    assert h["ce_subject"] == b"8015g00000000001AA"
    assert h["ce_correlationid"] == b"corr-1"
    assert h["ce_traceparent"] == b"00-abc-def-01"
    assert h["content-type"] == b"application/json"
    assert "ce_datacontenttype" not in h  # binary mode maps it to content-type
    assert "ce_causationid" not in h  # absent optional attributes are not sent
    assert json.loads(value)["sf_order_id"] == "8015g00000000001AA"


def test_round_trip_preserves_every_attribute() -> None:
    env = sample()
    back = from_record(*to_record(env))
    assert back == env


def test_a_follow_up_event_keeps_the_correlation_id_and_names_its_cause() -> None:
    """What the fulfillment saga produces after a delivery (``workers.fulfillment.run.child_envelope``)."""
    cause = sample()
    event = OrderActivationRequested(sf_order_id="8015g00000000002AA", sf_account_id="0015g00000000001AA")
    follow_up = child_envelope(event, "/fleet/fulfillment", cause)
    assert (follow_up.correlationid, follow_up.causationid) == ("corr-1", cause.id)
    uncorrelated = cause.model_copy(update={"correlationid": None})
    assert child_envelope(event, "/fleet/fulfillment", uncorrelated).correlationid == cause.id
    assert child_envelope(event, "/fleet/fulfillment", None).causationid is None


@pytest.mark.parametrize(
    ("headers", "value", "message"),
    [
        ([], b"{}", "missing ce_specversion"),
        (
            [("ce_specversion", b"0.3"), ("ce_id", b"1"), ("ce_source", b"s"), ("ce_type", b"t")],
            b"{}",
            "specversion",
        ),
        (
            [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_source", b"s"), ("ce_type", b"t")],
            b"{nope",
            "not JSON",
        ),
        (
            [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_source", b"s"), ("ce_type", b"t")],
            b"[1]",
            "JSON object",
        ),
    ],
)
def test_bad_records_are_invalid_payloads(headers: list[tuple[str, bytes]], value: bytes, message: str) -> None:
    with pytest.raises(InvalidPayload, match=message):
        from_record(b"k", value, headers)


def test_decode_event_validates_against_the_model() -> None:
    env = sample()
    assert decode_event(env) == OrderActivationRequested(
        sf_order_id="8015g00000000001AA", sf_account_id="0015g00000000001AA"
    )
    broken = env.model_copy(update={"data": {"sf_account_id": "x"}})
    with pytest.raises(InvalidPayload, match="sf_order_id"):
        decode_event(broken)
    with pytest.raises(UnknownEventType):
        decode_event(env.model_copy(update={"type": "nobody.knows.v1"}))


def test_every_event_type_is_versioned_and_keyed() -> None:
    types = event_types()
    assert len(types) >= 10
    for name in types:
        assert name.startswith("fleet.") and name.rsplit(".", 1)[-1].startswith("v"), name


def test_time_is_utc_iso_with_z() -> None:
    env = sample().model_copy(update={"time": datetime(2026, 11, 26, 1, 2, 3, tzinfo=UTC)})
    _, _, headers = to_record(env)
    assert dict(headers)["ce_time"] == b"2026-11-26T01:02:03Z"


def test_ce_time_stays_exact_for_instants_that_compare_equal() -> None:
    """``ce_time`` is cached per datetime: wall times of one zone that compare equal but name two instants
    (the hour a clock goes back, told apart by ``fold``) still get their own UTC text, and so do
    equal instants written in different zones (one text)."""
    zone = ZoneInfo("America/New_York")
    first, second = datetime(2025, 11, 2, 1, 30, tzinfo=zone), datetime(2025, 11, 2, 1, 30, fold=1, tzinfo=zone)
    assert first == second  # same zone: wall times compared, fold ignored
    times = [first, second, first, datetime(2025, 11, 2, 6, 30, tzinfo=UTC), second.astimezone(UTC)]
    texts = [dict(to_record(sample().model_copy(update={"time": t}))[2])["ce_time"] for t in times]
    assert (
        texts
        == [b"2025-11-02T05:30:00Z", b"2025-11-02T06:30:00Z", b"2025-11-02T05:30:00Z"] + [b"2025-11-02T06:30:00Z"] * 2
    )
