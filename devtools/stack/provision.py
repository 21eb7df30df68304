"""What a fresh stack needs before workers and tests use it: the topic catalog and the SQL schema.

Owns: calling ``fleet topics ensure``'s and ``fleet db migrate``'s logic after ``fleet stack up``.
Must not: hide their failures; any error raised by the calls fails ``up``.
"""

from __future__ import annotations

import asyncio

from adapters.db import migrate
from adapters.kafka import ensure_topics
from devtools.stack.kafka import cluster_brokers, replication
from devtools.stack.process import StackError
from events.topics import TopicPolicy, catalog


async def ensure_catalog(bootstrap: str, policy: TopicPolicy | None = None) -> list[str]:
    """Create every catalog topic that is missing, under ``policy``; returns the names created. Lives
    here, not in the CLI: the stack and the demo need it too, and devtools/stack must not import a
    CLI module (devtools/cli imports it). Without a policy, the stack's own for the cluster's size:
    RF 1 on one broker, RF 3 / min ISR 2 from three brokers on (``kafka.replication``)."""
    if policy is None:
        brokers = await cluster_brokers(bootstrap)
        if brokers is None:
            raise StackError(f"Kafka on {bootstrap} does not answer; cannot create the topic catalog")
        policy = TopicPolicy(*replication(len(brokers)))
    return await ensure_topics(bootstrap, catalog(policy))


async def ensure_topics_and_schema(bootstrap: str, dsn: str, policy: TopicPolicy | None = None) -> list[str]:
    """Create the missing catalog topics (see ``ensure_catalog``) and apply pending migrations,
    concurrently."""
    topics, migrations = await asyncio.gather(ensure_catalog(bootstrap, policy), migrate(dsn))
    return [f"topics: {len(topics)} created", f"migrations: {len(migrations)} applied"]
