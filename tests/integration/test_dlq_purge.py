"""`fleet dlq purge` against the real broker and Postgres.

Contract: purge marks the selected dead letters in Postgres and from then on ``list``, ``show`` and
``replay`` hide them; ``truncate`` deletes, per partition, only the prefix of records that are all
purged (Kafka DeleteRecords); a dry run marks nothing; every run leaves an audit row.
"""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from adapters.kafka import ensure_topics
from events.errors import InvalidPayload
from events.topics import dlq_topic, group_topics, retry_topic
from workers.dlq import browse, purge
from workers.dlq.filters import Filter
from workers.dlq.reader import TopicReader
from workers.dlq.replay import ReplayOptions, replay
from workers.dlq.testing import Letter, produce

pytestmark = pytest.mark.integration


class Quiet:
    def planned(self, actions: object) -> None:
        pass

    def sent(self, count: int) -> None:
        pass


async def setup(env: dict[str, str], letters: list[Letter]) -> str:
    group = f"t-dlq-purge-{uuid.uuid4().hex[:6]}"
    await ensure_topics(env["KAFKA_BOOTSTRAP"], group_topics(group))
    await produce(env["KAFKA_BOOTSTRAP"], group, letters)
    return group


async def do_purge(env: dict[str, str], group: str, filt: Filter, **options: bool) -> purge.PurgeReport:
    plan = await purge.prepare(env["KAFKA_BOOTSTRAP"], env["DATABASE_URL"], group, filt)
    opts = purge.PurgeOptions(group, filt, "pytest", **options)
    return await purge.execute(env["KAFKA_BOOTSTRAP"], env["DATABASE_URL"], plan, opts)


def letters() -> list[Letter]:
    # partition 0: bad, bad, good ; partition 1: good
    return [
        Letter(event_id="bad-1", error=InvalidPayload("x"), source_partition=0),
        Letter(event_id="bad-2", error=InvalidPayload("x"), source_partition=0),
        Letter(event_id="good-1", source_partition=0),
        Letter(event_id="good-2", source_partition=1),
    ]


async def test_purged_records_are_hidden_from_list_show_and_replay(stack_env: dict[str, str]) -> None:
    group = await setup(stack_env, letters())
    report = await do_purge(stack_env, group, Filter(error_classes=("InvalidPayload",)))
    assert report.counts["purged"] == 2

    (overview,) = await browse.overviews(stack_env["KAFKA_BOOTSTRAP"], stack_env["DATABASE_URL"], [group])
    assert (overview.total.count, overview.purged_hidden) == (2, 2)
    (view,) = await browse.find(stack_env["KAFKA_BOOTSTRAP"], stack_env["DATABASE_URL"], group, event_id="bad-1")
    assert view.purged, "show still finds it, and says it is purged"

    opts = ReplayOptions(group, Filter(), "pytest", 3)
    replayed = await replay(stack_env["KAFKA_BOOTSTRAP"], stack_env["DATABASE_URL"], opts, Quiet())
    assert (replayed.counts["replayed"], replayed.counts["purged_hidden"]) == (2, 2)
    async with TopicReader(stack_env["KAFKA_BOOTSTRAP"], retry_topic(group, 1)) as reader:
        assert sorted([r.event_id async for r in reader.read()]) == ["good-1", "good-2"]


async def test_dry_run_purge_marks_nothing(stack_env: dict[str, str]) -> None:
    group = await setup(stack_env, letters())
    report = await do_purge(stack_env, group, Filter(), dry_run=True)
    assert report.counts["would_purge"] == 4 and report.counts["purged"] == 0
    conn = await asyncpg.connect(stack_env["DATABASE_URL"])
    try:
        assert await conn.fetchval("SELECT count(*) FROM dlq_purged WHERE consumer_group = $1", group) == 0
        row = await conn.fetchrow("SELECT dry_run, action, status FROM dlq_audit WHERE consumer_group = $1", group)
    finally:
        await conn.close()
    assert row is not None and tuple(row.values()) == (True, "purge", "completed")


async def test_truncate_deletes_only_a_purged_prefix(stack_env: dict[str, str]) -> None:
    group = await setup(stack_env, letters())
    report = await do_purge(stack_env, group, Filter(error_classes=("InvalidPayload",)), truncate=True)
    assert report.truncated == {0: 2}, "partition 0 is cut before good-1; partition 1 starts with a kept record"

    async with TopicReader(stack_env["KAFKA_BOOTSTRAP"], dlq_topic(group)) as reader:
        ranges = await reader.ranges()
        remaining = sorted([r.event_id async for r in reader.read()])
    assert ranges[0].start == 2
    assert remaining == ["good-1", "good-2"]


async def test_purging_twice_keeps_the_first_mark(stack_env: dict[str, str]) -> None:
    group = await setup(stack_env, letters())
    first = await do_purge(stack_env, group, Filter(event_ids=("good-2",)))
    second = await do_purge(stack_env, group, Filter(event_ids=("good-2",)))
    assert first.counts["purged"] == 1
    assert (second.counts["purged"], second.counts["already_purged"]) == (0, 1)
    conn = await asyncpg.connect(stack_env["DATABASE_URL"])
    try:
        job = await conn.fetchval("SELECT job_id FROM dlq_purged WHERE consumer_group = $1", group)
    finally:
        await conn.close()
    assert job == first.job_id
