"""Filter options of `fleet dlq replay/purge`: relative and ISO times, coordinates, and matching."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from events.errors import InvalidPayload, UpstreamTimeout
from workers.dlq.filters import Filter, FilterError, parse_coordinates, parse_when
from workers.dlq.models import DeadLetter
from workers.dlq.testing import Letter, build

NOW = datetime(2025, 11, 26, 12, 0, 0, tzinfo=UTC)
GROUP = "fleet.test"


def dead_letter(letter: Letter, *, partition: int = 0, offset: int = 0, at: datetime = NOW) -> DeadLetter:
    key, value, headers = build(letter, GROUP)
    return DeadLetter("fleet.test.dlq", partition, offset, int(at.timestamp() * 1000), key, value, tuple(headers))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2h", NOW - timedelta(hours=2)),
        ("30m", NOW - timedelta(minutes=30)),
        ("90min", NOW - timedelta(minutes=90)),
        ("45s", NOW - timedelta(seconds=45)),
        ("1.5d", NOW - timedelta(hours=36)),
        ("1w", NOW - timedelta(days=7)),
        (" 3H ", NOW - timedelta(hours=3)),
        ("now", NOW),
    ],
)
def test_relative_times_count_back_from_now(text: str, expected: datetime) -> None:
    assert parse_when(text, NOW) == expected


def test_iso_times_keep_their_zone_and_naive_ones_are_utc() -> None:
    assert parse_when("2025-11-26T09:00:00+09:00", NOW) == datetime(2025, 11, 26, 0, 0, tzinfo=UTC)
    assert parse_when("2025-11-26T09:00:00Z", NOW) == datetime(2025, 11, 26, 9, 0, tzinfo=UTC)
    assert parse_when("2025-11-26T09:00", NOW) == datetime(2025, 11, 26, 9, 0, tzinfo=UTC)
    assert parse_when("2025-11-26", NOW) == datetime(2025, 11, 26, tzinfo=UTC)


@pytest.mark.parametrize("text", ["yesterday", "2 hours", "-2h", "2025-13-01", ""])
def test_unreadable_times_say_what_was_expected(text: str) -> None:
    with pytest.raises(FilterError, match="relative time"):
        parse_when(text, NOW)


def test_coordinates_are_partition_colon_offset() -> None:
    assert parse_coordinates("2:1045") == (2, 1045)
    for bad in ("2", "2:", ":5", "a:b", "2:-1"):
        with pytest.raises(FilterError, match="PARTITION:OFFSET"):
            parse_coordinates(bad)


def test_since_after_until_is_refused() -> None:
    with pytest.raises(FilterError, match="after --until"):
        Filter(since=NOW, until=NOW - timedelta(seconds=1))


def test_an_empty_filter_matches_everything() -> None:
    assert Filter().is_empty
    assert Filter().matches(dead_letter(Letter()))


def test_time_window_is_on_the_dead_letter_timestamp_inclusive() -> None:
    dl = dead_letter(Letter(), at=NOW - timedelta(hours=3))
    assert Filter(since=NOW - timedelta(hours=3)).matches(dl)
    assert not Filter(since=NOW - timedelta(hours=2)).matches(dl)
    assert Filter(until=NOW - timedelta(hours=3)).matches(dl)
    assert not Filter(until=NOW - timedelta(hours=4)).matches(dl)


def test_error_class_matches_full_or_short_name_and_globs() -> None:
    dl = dead_letter(Letter(error=UpstreamTimeout("slow")))
    assert Filter(error_classes=("UpstreamTimeout",)).matches(dl)
    assert Filter(error_classes=("events.errors.UpstreamTimeout",)).matches(dl)
    assert Filter(error_classes=("Upstream*",)).matches(dl)
    assert Filter(error_classes=("InvalidPayload", "UpstreamTimeout")).matches(dl), "repeated values are OR"
    assert not Filter(error_classes=("InvalidPayload",)).matches(dl)
    assert not Filter(error_classes=("upstreamtimeout",)).matches(dl), "class names are case-sensitive"


def test_event_type_key_event_id_and_record_filters() -> None:
    letter = Letter(event_type="fleet.order.changed.v1", key="801AAA", event_id="evt-1")
    dl = dead_letter(letter, partition=2, offset=7)
    assert Filter(event_types=("fleet.order.*",)).matches(dl)
    assert not Filter(event_types=("fleet.catalog.changed.v1",)).matches(dl)
    assert Filter(keys=("801AAA",)).matches(dl)
    assert not Filter(keys=("801AA",)).matches(dl), "keys match exactly"
    assert Filter(event_ids=("evt-1",)).matches(dl)
    assert not Filter(event_ids=("evt-2",)).matches(dl)
    assert Filter(records=((2, 7),)).matches(dl)
    assert not Filter(records=((2, 8),)).matches(dl)


def test_filters_combine_with_and() -> None:
    dl = dead_letter(Letter(error=InvalidPayload("x"), key="801BBB"))
    assert Filter(error_classes=("InvalidPayload",), keys=("801BBB",)).matches(dl)
    assert not Filter(error_classes=("InvalidPayload",), keys=("801CCC",)).matches(dl)


def test_audit_json_keeps_only_given_filters_with_utc_times() -> None:
    filt = Filter(since=NOW - timedelta(hours=2), error_classes=("UpstreamTimeout",), records=((1, 2),))
    assert filt.as_json() == {"since": "2025-11-26T10:00:00Z", "error_class": ["UpstreamTimeout"], "record": ["1:2"]}
