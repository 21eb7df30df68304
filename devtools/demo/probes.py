"""What the demo reads from, and resets in, the stack itself: dead-letter counts and stale saga rows.

Owns the two places the demo looks past the sandboxes. Must not change anything but saga rows of
Order ids the Salesforce sandbox has just handed out (see ``forget_stale_sagas``).
"""

from __future__ import annotations

import asyncio

import asyncpg

from adapters.kafka import KafkaTarget
from events.topics import ConsumerGroup, Topic, dlq_topic
from workers.dlq.reader import TopicMissing, TopicReader


async def forget_stale_sagas(pool: asyncpg.Pool, order_ids: list[str]) -> int:
    """Delete saga rows (steps and history cascade) of Order ids the Salesforce sandbox just created.

    The sandbox numbers records from the same counter every time it starts, while PostgreSQL keeps
    the saga of every earlier run (and of the e2e tests' in-process sandboxes). An id the sandbox
    has just handed out is new in its world, so a saga row with that id is stale; left alone, the
    saga would take the new order for an old, finished one and do nothing."""
    try:
        status = await pool.execute("DELETE FROM fulfillment_orders WHERE sf_order_id = ANY($1::text[])", order_ids)
    except asyncpg.UndefinedTableError:
        return 0  # the saga's migration has not run: nothing can be stale
    return int(status.split()[-1])


def dlq_topics() -> list[str]:
    return [dlq_topic(group) for group in ConsumerGroup] + [str(Topic.INGRESS_DLQ)]


async def dead_letter_offsets(kafka: KafkaTarget) -> dict[str, int]:
    """Records ever written to each dead-letter topic (the sum of its end offsets; a missing topic is 0)."""

    async def ended(topic: str) -> int:
        try:
            async with TopicReader(kafka, topic, client_id="fleet-demo") as reader:
                return sum(r.end for r in (await reader.ranges()).values())
        except TopicMissing:
            return 0

    topics = dlq_topics()
    return dict(zip(topics, await asyncio.gather(*(ended(t) for t in topics)), strict=True))


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {topic: after[topic] - before.get(topic, 0) for topic in after if after[topic] - before.get(topic, 0)}
