"""What a fresh stack needs before workers and tests use it: the topic catalog and the SQL schema.

Owns: calling ``fleet topics ensure``'s and ``fleet db migrate``'s logic after ``fleet stack up``.
Must not: hide their failures; any error raised by the calls fails ``up``.
"""

from __future__ import annotations

import asyncio

from adapters.db import migrate
from adapters.kafka import ensure_topics
from events.topics import catalog


async def ensure_catalog(bootstrap: str) -> list[str]:
    """Create every catalog topic that is missing; returns the names created. Lives here, not in the
    CLI: the stack and the demo need it too, and workers/stack must not import workers/cli (a cycle)."""
    return await ensure_topics(bootstrap, catalog())


async def ensure_topics_and_schema(bootstrap: str, dsn: str) -> list[str]:
    """Create the missing catalog topics and apply pending migrations, concurrently."""
    topics, migrations = await asyncio.gather(ensure_catalog(bootstrap), migrate(dsn))
    return [f"topics: {len(topics)} created", f"migrations: {len(migrations)} applied"]
