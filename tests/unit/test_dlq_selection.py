"""What replay does with each dead letter: selection rules, the loop guard, and the copies' headers.

The dead letters here are built with the runtime's own header code (``workers.runtime.failure``), so
these tests pin the replay side of the contract in ``events.failure``.
"""

from __future__ import annotations

from events import failure as fh
from events.envelope import header_map
from workers.dlq.filters import Filter
from workers.dlq.models import DeadLetter, fingerprint
from workers.dlq.selection import (
    DEFERRED_BY_LIMIT,
    FILTERED_OUT,
    PARKED,
    PURGED_HIDDEN,
    REPLAYED,
    SKIPPED_ALREADY_REPLAYED,
    Selector,
    parked_headers,
    plan_action,
    replay_headers,
)
from workers.dlq.testing import Letter, build

GROUP = "fleet.test"
PARTITIONS = {f"{GROUP}.retry.1": 4, f"{GROUP}.parked": 4}


def dl_at(partition: int, offset: int, ts: int = 1_000, **letter: object) -> DeadLetter:
    key, value, headers = build(Letter(source_partition=partition, **letter), GROUP)  # type: ignore[arg-type]
    return DeadLetter(f"{GROUP}.dlq", partition, offset, ts, key, value, tuple(headers))


def test_selector_counts_every_record_once_by_reason() -> None:
    records = [dl_at(0, 0, key="k1"), dl_at(0, 1, key="k2"), dl_at(0, 2, key="k1"), dl_at(0, 3, key="k1")]
    sel = Selector(Filter(keys=("k1",)), purged={(0, 2)}, done={(0, 3)})
    for r in records:
        sel.offer(r)
    chosen = sel.finish()
    assert [r.offset for r in chosen] == [0]
    assert sel.counts[FILTERED_OUT] == 1
    assert sel.counts[PURGED_HIDDEN] == 1
    assert sel.counts[SKIPPED_ALREADY_REPLAYED] == 1


def test_again_reselects_already_replayed_but_never_purged_records() -> None:
    sel = Selector(Filter(), purged={(0, 1)}, done={(0, 0), (0, 1)}, again=True)
    for r in (dl_at(0, 0), dl_at(0, 1)):
        sel.offer(r)
    assert [r.offset for r in sel.finish()] == [0]


def test_limit_takes_the_oldest_first_and_defers_the_rest() -> None:
    sel = Selector(Filter(), limit=3)
    # partition 1 holds the oldest records; partition 0 the newest
    for r in (dl_at(0, 0, ts=500), dl_at(0, 1, ts=600), dl_at(1, 0, ts=100), dl_at(1, 1, ts=200)):
        sel.offer(r)
    chosen = sel.finish()
    assert [(r.partition, r.offset) for r in chosen] == [(1, 0), (1, 1), (0, 0)]
    assert sel.counts[DEFERRED_BY_LIMIT] == 1


def test_offset_order_within_a_partition_wins_over_skewed_timestamps() -> None:
    """Two runtime hosts with skewed clocks: a later offset may carry an earlier timestamp."""
    sel = Selector(Filter())
    for r in (dl_at(0, 0, ts=900), dl_at(0, 1, ts=100), dl_at(1, 0, ts=500)):
        sel.offer(r)
    order = [(r.partition, r.offset) for r in sel.finish()]
    assert order.index((0, 0)) < order.index((0, 1))


def test_loop_guard_parks_records_that_reached_max_replays() -> None:
    fresh = plan_action(dl_at(2, 0, replay_count=2), group=GROUP, max_replays=3, partitions=PARTITIONS)
    spent = plan_action(dl_at(2, 1, replay_count=3), group=GROUP, max_replays=3, partitions=PARTITIONS)
    assert (fresh.outcome, fresh.target_topic) == (REPLAYED, f"{GROUP}.retry.1")
    assert (spent.outcome, spent.target_topic) == (PARKED, f"{GROUP}.parked")


def test_replays_never_target_the_shared_source_topic() -> None:
    action = plan_action(dl_at(1, 0), group=GROUP, max_replays=3, partitions=PARTITIONS)
    assert action.dl.header(fh.SOURCE_TOPIC) == "sf.order.v1"
    assert action.target_topic == f"{GROUP}.retry.1"


def test_target_partition_follows_the_source_partition() -> None:
    action = plan_action(dl_at(3, 0), group=GROUP, max_replays=3, partitions={**PARTITIONS, f"{GROUP}.retry.1": 2})
    assert action.target_partition == 1  # source partition 3 modulo 2 partitions


def test_replay_copy_keeps_original_headers_byte_for_byte_and_bumps_the_count() -> None:
    dl = dl_at(0, 5, replay_count=1)
    headers = replay_headers(dl, job_id="job-1", now_ms=1_234)
    original = [(n, v) for n, v in dl.headers if n not in fh.FLEET_HEADERS]
    assert headers[: len(original)] == original
    h = dict(headers)
    assert h[fh.REPLAY_COUNT] == b"2"
    assert h[fh.REPLAY_JOB] == b"job-1"
    assert h[fh.NOT_BEFORE] == b"1234"
    assert h[fh.RETRY_TIER] == b"1"
    for name in (fh.SOURCE_TOPIC, fh.SOURCE_PARTITION, fh.SOURCE_OFFSET, fh.ERROR_CLASS, fh.FIRST_FAILED_AT):
        assert h[name] == dict(dl.headers)[name], f"provenance header {name} is kept"
    names = [n for n, _ in headers]
    assert len(names) == len(set(names)), "no fleet header appears twice"


def test_parked_copy_keeps_the_count_and_names_the_job() -> None:
    dl = dl_at(0, 5, replay_count=3)
    h = dict(parked_headers(dl, job_id="job-2"))
    assert h[fh.REPLAY_COUNT] == b"3"
    assert h[fh.REPLAY_JOB] == b"job-2"
    assert fh.NOT_BEFORE not in h


def test_fingerprint_of_sent_headers_is_recognisable_when_read_back() -> None:
    dl = dl_at(0, 5)
    sent = replay_headers(dl, job_id="j", now_ms=1)
    read_back = DeadLetter(f"{GROUP}.retry.1", 0, 99, 1, dl.key, dl.value, tuple(sent))
    assert read_back.fingerprint() == fingerprint(sent)
    assert fingerprint(sent) != dl.fingerprint(), "the replay count is part of it"


def test_a_null_header_value_survives_into_the_copy() -> None:
    dl = DeadLetter("t", 0, 0, 0, b"k", b"{}", (("x-null", None), ("ce_id", b"e1")))
    assert ("x-null", None) in replay_headers(dl, job_id="j", now_ms=1)
    assert header_map(replay_headers(dl, job_id="j", now_ms=1))["x-null"] == ""
