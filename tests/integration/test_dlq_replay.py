"""`fleet dlq replay` against the real broker and Postgres.

Contract: exactly the dead letters a filter selects are re-sent to the failed group's own
``<group>.retry.1`` (never the source topic), key and value byte-identical, original headers kept,
``replay_count`` + 1; a dry run sends and records nothing but its audit row; a re-run never sends a
record twice, even after a job died between producing and recording; the loop guard parks records
that reached ``max_replays``; one job per group at a time.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from adapters.dlq_store import PgDlqStore, Sending
from adapters.kafka import durable_producer, ensure_topics
from events import failure as fh
from events.errors import InvalidPayload, RejectedByUpstream
from events.topics import TopicSpec, dlq_topic, group_topics, parked_topic, retry_topic
from workers.dlq import audit
from workers.dlq.filters import Filter
from workers.dlq.models import DeadLetter, fingerprint
from workers.dlq.reader import TopicMissing, TopicReader
from workers.dlq.replay import ReplayOptions, ReplayReport, replay
from workers.dlq.selection import Action, replay_headers
from workers.dlq.testing import Letter, Produced, produce

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000


class Quiet:
    def planned(self, actions: Sequence[Action]) -> None:
        self.actions = list(actions)

    def sent(self, count: int) -> None:
        pass


def new_group(name: str) -> str:
    return f"t-dlq-{name}-{uuid.uuid4().hex[:6]}"


async def setup_group(env: dict[str, str], name: str, letters: list[Letter]) -> tuple[str, list[Produced]]:
    group = new_group(name)
    await ensure_topics(env["KAFKA_BOOTSTRAP"], group_topics(group))
    return group, await produce(env["KAFKA_BOOTSTRAP"], group, letters)


async def run(env: dict[str, str], group: str, filt: Filter | None = None, **options: Any) -> ReplayReport:
    opts = ReplayOptions(
        group, filt or Filter(), options.pop("operator", "pytest"), options.pop("max_replays", 3), **options
    )
    return await replay(env["KAFKA_BOOTSTRAP"], env["DATABASE_URL"], opts, Quiet())


async def records_on(env: dict[str, str], topic: str) -> list[DeadLetter]:
    async with TopicReader(env["KAFKA_BOOTSTRAP"], topic) as reader:
        return [r async for r in reader.read()]


async def db_rows(env: dict[str, str], sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(env["DATABASE_URL"])
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def mixed_letters() -> list[Letter]:
    """Six dead letters that differ in exactly one attribute each, so every filter selects a known subset."""
    now_ms = int(time.time() * 1000)
    return [
        Letter(key="801A", event_id="e-a", source_partition=0, dead_lettered_ms=now_ms - 5 * HOUR_MS),
        Letter(key="801B", event_id="e-b", source_partition=1, dead_lettered_ms=now_ms - 3 * HOUR_MS),
        Letter(key="801C", event_id="e-c", source_partition=2, error=InvalidPayload("missing sf_order_id")),
        Letter(key="801D", event_id="e-d", source_partition=3, error=RejectedByUpstream("WHMCS said no")),
        Letter(key="801E", event_id="e-e", source_partition=0, event_type="fleet.catalog.changed.v1"),
        Letter(key="801F", event_id="e-f", source_partition=1, event_type="fleet.order.activation-requested.v1"),
    ]


NOW = datetime.now(UTC)


@pytest.mark.parametrize(
    ("filt", "limit", "expected"),
    [
        (Filter(since=NOW - timedelta(hours=4), until=NOW - timedelta(hours=2)), None, {"e-b"}),
        (Filter(since=NOW - timedelta(hours=1)), None, {"e-c", "e-d", "e-e", "e-f"}),
        (Filter(until=NOW - timedelta(hours=1)), None, {"e-a", "e-b"}),
        (Filter(error_classes=("InvalidPayload", "RejectedBy*")), None, {"e-c", "e-d"}),
        (Filter(error_classes=("events.errors.UpstreamTimeout",)), None, {"e-a", "e-b", "e-e", "e-f"}),
        (Filter(event_types=("fleet.catalog.changed.v1",)), None, {"e-e"}),
        (Filter(event_types=("fleet.order.*",)), None, {"e-a", "e-b", "e-c", "e-d", "e-f"}),
        (Filter(keys=("801D", "801F")), None, {"e-d", "e-f"}),
        (Filter(event_ids=("e-c",)), None, {"e-c"}),
        (Filter(), 2, {"e-a", "e-b"}),  # the limit takes the oldest first
    ],
    ids=[
        "window",
        "since",
        "until",
        "error-class",
        "error-class-full",
        "event-type",
        "event-type-glob",
        "key",
        "event-id",
        "limit",
    ],
)
async def test_replay_sends_exactly_the_selected_records_to_retry_1(
    stack_env: dict[str, str], filt: Filter, limit: int | None, expected: set[str]
) -> None:
    group, produced = await setup_group(stack_env, "filter", mixed_letters())
    report = await run(stack_env, group, filt, limit=limit)

    copies = await records_on(stack_env, retry_topic(group, 1))
    assert {c.event_id for c in copies} == expected
    assert len(copies) == len(expected)
    assert report.counts["replayed"] == len(expected)
    assert report.counts["filtered_out"] + report.counts["deferred_by_limit"] == len(produced) - len(expected)
    by_id = {p.letter.event_id: p for p in produced}
    for copy in copies:
        original = by_id[copy.event_id]
        assert copy.key == original.key and copy.value == original.value, "bytes unchanged"
        assert copy.original_headers() == [(n, v) for n, v in original.headers if n not in fh.FLEET_HEADERS]
        assert copy.replay_count == 1
        assert copy.header(fh.REPLAY_JOB) == str(report.job_id)
        assert copy.header(fh.SOURCE_TOPIC) == "sf.order.v1"
        assert abs(copy.header_int(fh.NOT_BEFORE) - time.time() * 1000) < 60_000
        assert copy.partition == original.letter.source_partition
    assert await records_on(stack_env, parked_topic(group)) == []


async def test_dry_run_sends_nothing_and_records_only_its_audit_row(stack_env: dict[str, str]) -> None:
    group, produced = await setup_group(stack_env, "dry", mixed_letters())
    listener = Quiet()
    opts = ReplayOptions(group, Filter(keys=("801A", "801B")), "alice", 3, dry_run=True)
    report = await replay(stack_env["KAFKA_BOOTSTRAP"], stack_env["DATABASE_URL"], opts, listener)

    assert [a.dl.event_id for a in listener.actions] == ["e-a", "e-b"]
    assert report.counts["replayed"] == 2, "what a real run would replay"
    assert await records_on(stack_env, retry_topic(group, 1)) == []
    assert await db_rows(stack_env, "SELECT 1 FROM dlq_replay_progress WHERE consumer_group = $1", group) == []
    (row,) = await db_rows(stack_env, "SELECT * FROM dlq_audit WHERE consumer_group = $1", group)
    assert (row["dry_run"], row["status"], row["operator"], row["action"]) == (True, "completed", "alice", "replay")
    assert '"key": ["801A", "801B"]' in row["filters"]


async def test_rerun_after_a_limited_run_replays_the_rest_exactly_once(stack_env: dict[str, str]) -> None:
    group, produced = await setup_group(stack_env, "resume", [Letter(source_partition=i % 4) for i in range(10)])
    first = await run(stack_env, group, limit=4)
    second = await run(stack_env, group)
    third = await run(stack_env, group)

    assert (first.counts["replayed"], first.counts["deferred_by_limit"]) == (4, 6)
    assert (second.counts["replayed"], second.counts["skipped_already_replayed"]) == (6, 4)
    assert (third.counts["replayed"], third.counts["skipped_already_replayed"]) == (0, 10)
    ids = [c.event_id for c in await records_on(stack_env, retry_topic(group, 1))]
    assert sorted(ids) == sorted(p.letter.event_id for p in produced)
    rows = await db_rows(stack_env, "SELECT state, job_id FROM dlq_replay_progress WHERE consumer_group = $1", group)
    assert {r["state"] for r in rows} == {"done"} and len(rows) == 10
    assert {r["job_id"] for r in rows} == {first.job_id, second.job_id}


async def test_again_replays_already_replayed_records_once_more(stack_env: dict[str, str]) -> None:
    group, _ = await setup_group(stack_env, "again", [Letter(), Letter()])
    await run(stack_env, group)
    again = await run(stack_env, group, again=True)
    assert again.counts["replayed"] == 2
    copies = await records_on(stack_env, retry_topic(group, 1))
    assert len(copies) == 4
    rows = await db_rows(stack_env, "SELECT replays FROM dlq_replay_progress WHERE consumer_group = $1", group)
    assert [r["replays"] for r in rows] == [2, 2]


async def test_in_doubt_sends_of_a_killed_job_are_confirmed_or_requeued(stack_env: dict[str, str]) -> None:
    """A job died after writing 'sending' for two records: one copy reached the broker, one did not."""
    group, produced = await setup_group(stack_env, "doubt", [Letter(source_partition=0), Letter(source_partition=0)])
    dead_job = uuid.uuid4()
    dls = [d for d in await records_on(stack_env, dlq_topic(group))]
    headers = [replay_headers(d, job_id=str(dead_job), now_ms=1) for d in dls]
    conn = await asyncpg.connect(stack_env["DATABASE_URL"])
    try:
        rows = [
            Sending(d.partition, d.offset, "replayed", d.event_id, fingerprint(h), retry_topic(group, 1), 0, 0)
            for d, h in zip(dls, headers, strict=True)
        ]
        await PgDlqStore(conn).mark_sending(group, dead_job, rows)
    finally:
        await conn.close()
    producer = durable_producer(stack_env["KAFKA_BOOTSTRAP"], "test-dead-job")
    await producer.start()
    try:  # only the first copy made it before the "crash"
        await producer.send_and_wait(
            retry_topic(group, 1), key=dls[0].key, value=dls[0].value, headers=headers[0], partition=0
        )
    finally:
        await producer.stop()

    report = await run(stack_env, group)

    assert report.counts["in_doubt_confirmed"] == 1
    assert report.counts["in_doubt_requeued"] == 1
    assert report.counts["replayed"] == 1 and report.counts["skipped_already_replayed"] == 1
    ids = [c.event_id for c in await records_on(stack_env, retry_topic(group, 1))]
    assert sorted(ids) == sorted(p.letter.event_id for p in produced), "each record exactly once"


async def test_loop_guard_parks_records_at_the_replay_limit(stack_env: dict[str, str]) -> None:
    letters = [Letter(event_id="fresh", replay_count=1), Letter(event_id="spent", replay_count=2)]
    group, produced = await setup_group(stack_env, "guard", letters)
    report = await run(stack_env, group, max_replays=2)

    assert (report.counts["replayed"], report.counts["parked"]) == (1, 1)
    (replayed,) = await records_on(stack_env, retry_topic(group, 1))
    (parked,) = await records_on(stack_env, parked_topic(group))
    assert (replayed.event_id, replayed.replay_count) == ("fresh", 2)
    assert (parked.event_id, parked.replay_count) == ("spent", 2)
    assert parked.value == produced[1].value
    assert parked.header(fh.REPLAY_JOB) == str(report.job_id)
    rerun = await run(stack_env, group, max_replays=2)
    assert rerun.counts["skipped_already_replayed"] == 2, "a parked record is not parked twice"


async def test_one_job_per_group_at_a_time(stack_env: dict[str, str]) -> None:
    group, _ = await setup_group(stack_env, "busy", [Letter()])
    holder = await asyncpg.connect(stack_env["DATABASE_URL"])
    try:
        assert await PgDlqStore(holder).try_lock_group(group)
        with pytest.raises(audit.GroupBusy):
            await run(stack_env, group)
        dry = await run(stack_env, group, dry_run=True)
        assert dry.counts["replayed"] == 1, "a dry run needs no lock"
    finally:
        await holder.close()
    assert (await run(stack_env, group)).counts["replayed"] == 1


async def test_missing_retry_topic_fails_before_anything_is_sent(stack_env: dict[str, str]) -> None:
    group = new_group("notopic")
    await ensure_topics(stack_env["KAFKA_BOOTSTRAP"], [TopicSpec(dlq_topic(group), 1, HOUR_MS)])
    with pytest.raises(TopicMissing, match=retry_topic(group, 1)):
        await run(stack_env, group)
    (row,) = await db_rows(stack_env, "SELECT status, error FROM dlq_audit WHERE consumer_group = $1", group)
    assert row["status"] == "failed" and "TopicMissing" in row["error"]


async def test_reading_never_creates_a_consumer_group(stack_env: dict[str, str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    group, _ = await setup_group(stack_env, "nogroup", [Letter()])
    await run(stack_env, group, dry_run=True)
    admin = AIOKafkaAdminClient(bootstrap_servers=stack_env["KAFKA_BOOTSTRAP"])
    await admin.start()
    try:
        names = {g[0] for g in await admin.list_consumer_groups()}
    finally:
        await admin.close()
    assert not any(name.startswith(group) for name in names)
    assert not any(name.startswith("fleet-dlq") for name in names)


async def test_a_replay_drops_the_dead_letters_hop_and_keeps_where_the_event_was_created(
    stack_env: dict[str, str],
) -> None:
    """Tracing (docs/tracing.md): the replayed copy carries no Kafka ``traceparent`` (the failed
    consumer's hop, hours old), so the consumer starts a new trace; its ``ce_traceparent`` is the
    original's byte for byte, which that trace's first span links (tests/unit/test_tracing.py)."""
    created = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    hop = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
    group, _ = await setup_group(stack_env, "trace", [Letter(event_id="e-t", traceparent=created, hop=hop)])
    await run(stack_env, group)

    [copy] = await records_on(stack_env, retry_topic(group, 1))
    assert copy.header("ce_traceparent") == created
    assert all(name != "traceparent" for name, _ in copy.headers)
