"""What a fresh stack needs before workers and tests use it: the topic catalog and the SQL schema.

Owns: calling ``fleet topics ensure``'s and ``fleet db migrate``'s logic after ``fleet stack up``.
Must not: hide their failures. Only a module that does not exist (yet) is skipped, and the
report says so; any error raised by the calls themselves fails ``up``.
"""

from __future__ import annotations

import asyncio


async def ensure_topics_and_schema(bootstrap: str, dsn: str) -> list[str]:
    """Create the missing catalog topics and apply pending migrations, concurrently."""
    topics, migrations = await asyncio.gather(_ensure_topics(bootstrap), _migrate(dsn))
    return [topics, migrations]


async def _ensure_topics(bootstrap: str) -> str:
    try:
        from workers.cli.topics import ensure_catalog
    except ImportError as exc:
        return f"topics: skipped, workers.cli.topics.ensure_catalog is not importable ({exc})"
    created = await ensure_catalog(bootstrap)
    return f"topics: {len(created)} created"


async def _migrate(dsn: str) -> str:
    try:
        from adapters.db import migrate
    except ImportError as exc:
        return f"migrations: skipped, adapters.db.migrate is not importable ({exc})"
    applied = await migrate(dsn)
    return f"migrations: {len(applied)} applied"
