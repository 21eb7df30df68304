"""The error tree classifies itself; topic names are derived in one place; one builder of dead-letter provenance."""

from __future__ import annotations

import asyncio

import pytest

from events import errors
from events import failure as fh
from events.topics import ConsumerGroup, Topic, catalog, dlq_topic, parked_topic, retry_topic


@pytest.mark.parametrize(
    ("exc", "retriable"),
    [
        (errors.UpstreamUnavailable("x"), True),
        (errors.UpstreamTimeout("x"), True),
        (errors.RateLimited("x", retry_after=3), True),
        (errors.DependencyUnavailable("x"), True),
        (errors.InvalidPayload("x"), False),
        (errors.MappingMissing("x"), False),
        (errors.RejectedByUpstream("x"), False),
        (ValueError("bug"), True),  # unclassified counts as transient
    ],
)
def test_is_retriable(exc: BaseException, retriable: bool) -> None:
    assert errors.is_retriable(exc) is retriable


def test_error_carries_context() -> None:
    exc = errors.RateLimited("slow down", upstream="salesforce", status=429, retry_after=2.5)
    assert exc.retry_after == 2.5 and exc.code == "RATE_LIMITED"
    assert "upstream=salesforce" in str(exc) and "status=429" in str(exc)


def test_cancellation_is_not_a_fleet_error() -> None:
    assert not isinstance(asyncio.CancelledError(), Exception)


def test_failure_topics_are_derived_per_group() -> None:
    group = ConsumerGroup.FULFILLMENT
    assert retry_topic(group, 1) == "fleet.fulfillment.retry.1"
    assert dlq_topic(group) == "fleet.fulfillment.dlq"
    assert parked_topic(group) == "fleet.fulfillment.parked"
    with pytest.raises(ValueError):
        retry_topic(group, 0)


def test_catalog_has_unique_versioned_names() -> None:
    names = [s.name for s in catalog()]
    assert len(names) == len(set(names))
    assert all(t.value.endswith(".v1") for t in Topic)
    for group in ConsumerGroup:
        assert dlq_topic(group) in names and retry_topic(group, 2) in names


@pytest.mark.parametrize(
    ("exc", "systemic"),
    [
        (errors.UpstreamUnavailable("x"), True),
        (errors.AuthenticationFailed("x"), True),  # revoked credentials fail every record alike
        (errors.InvalidPayload("x"), False),  # a poison message
        (errors.RejectedByUpstream("x"), False),
        (errors.MappingMissing("x"), False),
        (KeyError("bug"), True),
    ],
)
def test_only_systemic_failures_can_trip_the_breaker(exc: BaseException, systemic: bool) -> None:
    assert errors.is_systemic(exc) is systemic


def test_provenance_writes_every_name_in_order_and_leaves_what_does_not_apply_empty() -> None:
    """Whoever writes a dead letter, it carries the same names: a missing value is an empty header."""
    headers = fh.provenance(
        error_class="events.errors.InvalidPayload",
        error_code="INVALID_PAYLOAD",
        error_message="é" * 600,  # 1,200 bytes: cut to the limit on a character boundary
        stage=fh.Stage.DECODE,
        attempts=0,
        first_failed_at=b"\xff kept byte for byte",  # a value carried over from an earlier hop
        last_failed_at=fh.iso_utc(0.0),
        source_topic="/data/OrderChangeEvent",
    )
    assert [name for name, _ in headers] == list(fh.PROVENANCE)
    h = dict(headers)
    assert h[fh.SOURCE_PARTITION] == h[fh.SOURCE_OFFSET] == h[fh.SOURCE_GROUP] == h[fh.ERROR_STACKTRACE] == b""
    assert (h[fh.SOURCE_TOPIC], h[fh.ATTEMPTS], h[fh.REPLAY_COUNT]) == (b"/data/OrderChangeEvent", b"0", b"0")
    assert h[fh.ERROR_MESSAGE].decode() == "é" * 500
    assert h[fh.FIRST_FAILED_AT] == b"\xff kept byte for byte"
    assert h[fh.LAST_FAILED_AT] == b"1970-01-01T00:00:00.000Z"
