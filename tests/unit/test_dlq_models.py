"""Decoding a dead letter written with the runtime's header code: every field `fleet dlq show` prints."""

from __future__ import annotations

from datetime import UTC, datetime

from events.errors import InvalidPayload
from workers.dlq.browse import summarize
from workers.dlq.models import DeadLetter
from workers.dlq.purge import truncate_points
from workers.dlq.reader import PartitionRange
from workers.dlq.testing import Letter, build

GROUP = "fleet.test"


def make(letter: Letter, partition: int = 0, offset: int = 0, ts: int = 1_764_158_400_000) -> DeadLetter:
    key, value, headers = build(letter, GROUP)
    return DeadLetter(f"{GROUP}.dlq", partition, offset, ts, key, value, tuple(headers))


def test_typed_views_of_the_header_contract() -> None:
    dl = make(Letter(key="801X", event_id="e-1", error=InvalidPayload("bad"), replay_count=2, source_offset=41))
    assert dl.event_id == "e-1"
    assert dl.event_type == "fleet.order.changed.v1"
    assert dl.error_class == "events.errors.InvalidPayload"
    assert dl.replay_count == 2
    assert dl.key_text == "801X"
    assert dl.header("source_offset") == "41"
    assert dl.header_int("source_attempts") == 3
    assert dl.dead_lettered_at == datetime(2025, 11, 26, 12, 0, tzinfo=UTC)
    assert dl.payload() == {"sf_order_id": "801X", "status": "Processed"}


def test_unparseable_payload_is_shown_as_text_and_bad_ints_default() -> None:
    dl = DeadLetter("t", 0, 0, 0, None, b"\xffnot json", (("replay_count", b"x"),))
    assert isinstance(dl.payload(), str)
    assert dl.replay_count == 0
    assert dl.event_type == "?"
    assert dl.key_text == ""


def test_overview_groups_by_error_class_and_event_type_hiding_purged() -> None:
    records = [
        make(Letter(), 0, 0, ts=1_000),
        make(Letter(), 0, 1, ts=3_000),
        make(Letter(error=InvalidPayload("x")), 1, 0, ts=2_000),
        make(Letter(), 1, 1, ts=500),
    ]
    overview = summarize(GROUP, records, purged={(1, 1)}, outcomes={(0, 0): "replayed", (0, 1): "parked"})
    assert overview.total.count == 3
    assert overview.purged_hidden == 1
    first, second = overview.sorted_buckets()
    assert (first.error_class, first.count, first.replayed, first.parked) == ("events.errors.UpstreamTimeout", 2, 1, 1)
    assert first.oldest == datetime.fromtimestamp(1, UTC)
    assert first.newest == datetime.fromtimestamp(3, UTC)
    assert (second.error_class, second.count) == ("events.errors.InvalidPayload", 1)


def test_truncation_stops_at_the_first_record_that_is_not_purged() -> None:
    ranges = {0: PartitionRange(0, 0, 4), 1: PartitionRange(1, 10, 12), 2: PartitionRange(2, 5, 5)}
    offsets = {0: [0, 1, 2, 3], 1: [10, 11]}
    purged = {(0, 0), (0, 1), (0, 3), (1, 10), (1, 11)}
    assert truncate_points(offsets, ranges, purged) == {0: 2, 1: 12}


def test_truncation_skips_partitions_whose_first_record_is_kept() -> None:
    ranges = {0: PartitionRange(0, 0, 2)}
    assert truncate_points({0: [0, 1]}, ranges, {(0, 1)}) == {}
