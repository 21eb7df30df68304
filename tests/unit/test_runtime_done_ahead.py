"""The commit metadata that carries records done beyond the committed offset (workers.runtime.done_ahead)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from workers.runtime import done_ahead


@given(st.integers(0, 2**40), st.sets(st.integers(1, 4_000), max_size=200))
def test_what_is_encoded_decodes_back(committed: int, gaps: set[int]) -> None:
    done = {committed + gap for gap in gaps}
    metadata = done_ahead.encode(committed, done)
    assert len(metadata) <= done_ahead.MAX_CHARS
    assert done_ahead.decode(committed, metadata) == done


def test_nothing_done_ahead_is_no_metadata_and_offsets_at_or_below_the_commit_are_left_out() -> None:
    assert done_ahead.encode(10, []) == ""
    assert done_ahead.encode(10, [3, 10]) == ""
    assert done_ahead.decode(10, done_ahead.encode(10, [9, 10, 11, 13])) == {11, 13}


def test_past_the_size_limit_the_highest_offsets_are_dropped_never_invented() -> None:
    """Kafka refuses metadata over offset.metadata.max.bytes (4,096 by default): the far ones are
    left out, which only means they are delivered again."""
    done = set(range(1, 100_000, 2))
    metadata = done_ahead.encode(0, done)
    assert len(metadata) <= done_ahead.MAX_CHARS
    decoded = done_ahead.decode(0, metadata)
    assert decoded and decoded < done
    assert min(done - decoded) > max(decoded)


def test_metadata_that_is_not_ours_or_is_broken_skips_nothing() -> None:
    for metadata in ("", "some tool's note", "fleet-done:1:!!!", "fleet-done:1:é", "fleet-done:2:AQ=="):
        assert done_ahead.decode(5, metadata) == set()
