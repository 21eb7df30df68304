"""The error tree classifies itself; topic names are derived in one place."""

from __future__ import annotations

import asyncio

import pytest

from events import errors
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
