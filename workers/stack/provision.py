"""What a fresh stack needs before workers and tests use it: the topic catalog and the SQL schema.

Owns: calling ``fleet topics ensure``'s and ``fleet db migrate``'s logic after ``fleet stack up``.
Must not: hide their failures; any error raised by the calls fails ``up``.
"""

from __future__ import annotations

import asyncio

from adapters.db import migrate
from workers.cli.topics import ensure_catalog


async def ensure_topics_and_schema(bootstrap: str, dsn: str) -> list[str]:
    """Create the missing catalog topics and apply pending migrations, concurrently."""
    topics, migrations = await asyncio.gather(ensure_catalog(bootstrap), migrate(dsn))
    return [f"topics: {len(topics)} created", f"migrations: {len(migrations)} applied"]
