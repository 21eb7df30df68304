"""``adapters.kafka.groups`` on the real broker: several groups with members described in one
request (aiokafka 0.14 alone fails to decode that answer from a broker speaking v3)."""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]

from adapters.kafka import admin_client, ensure_topics
from adapters.kafka.groups import describe_groups
from events.topics import DAY_MS, TopicSpec
from tests.support import eventually


async def test_several_groups_with_members_are_described(stack_env: dict[str, str]) -> None:  # noqa: F811
    bootstrap, suffix = stack_env["KAFKA_BOOTSTRAP"], uuid.uuid4().hex[:8]
    topic, groups = f"it.groups.{suffix}", [f"it.groups.{suffix}.a", f"it.groups.{suffix}.b"]
    await ensure_topics(bootstrap, [TopicSpec(topic, 2, DAY_MS)])
    consumers = [
        AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=g, client_id=f"member-of-{g}") for g in groups
    ]
    try:
        for consumer in consumers:
            await consumer.start()
        # joined: each group has its assignment
        await eventually(lambda: all(c.assignment() for c in consumers), what="the assignments")
        async with admin_client(bootstrap, "it-groups") as admin:
            described = await describe_groups(admin, groups)
        assert {g: (d[2], [m[1] for m in d[5]]) for g, d in described.items()} == {
            g: ("Stable", [f"member-of-{g}"]) for g in groups
        }
    finally:
        for consumer in consumers:
            await consumer.stop()
