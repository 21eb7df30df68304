"""The webhook dedupe store's port: the ``Claim`` answers and the ``DedupeStore`` contract.

A webhook id moves through two marks: ``claim`` sets an *in-progress* mark atomically (only one
request may produce a given id at a time; it expires by itself if its owner dies), ``complete``
replaces it with a *done* mark that lives longer than the sender's signature tolerance (so a
replayed, still-valid request is recognised), ``release`` removes the in-progress mark after a
failed produce so the sender's retry is treated as new. Must not know Redis: ``redis.py``
implements the port, ``fake.py`` in memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from enum import Enum
from typing import Protocol

from events.errors import DependencyUnavailable

#: the value of a done mark, and the prefix of an in-progress mark's (``inflight:<owner>``)
DONE = "done"
INFLIGHT = "inflight:"

#: told about a store error that no caller awaited (a queued done mark that could not be written)
ErrorListener = Callable[[DependencyUnavailable], None]


class Claim(Enum):
    NEW = "new"  # the caller owns the id now: produce, then complete or release
    DUPLICATE = "done"  # produced before: answer 2xx without producing again
    IN_PROGRESS = "inflight"  # another request is producing it right now: ask the sender to retry


class DedupeStore(Protocol):
    def claim(self, webhook_id: str, owner: str) -> asyncio.Future[Claim]:
        """Atomically mark ``webhook_id`` in progress for ``owner`` unless a mark exists. Any
        ``complete`` called before is applied first. A future, not a coroutine: the caller awaits
        it directly (one coroutine frame less to resume per webhook). It raises
        ``DependencyUnavailable`` when the store cannot answer."""
        ...

    def complete(self, webhook_id: str) -> None:
        """Queue the replacement of the in-progress mark by the long-lived done mark (idempotent);
        returns at once. Never raises: a mark that cannot be written goes to the store's error listener
        (the in-progress mark then expires by itself)."""
        ...

    async def release(self, webhook_id: str, owner: str) -> None:
        """Remove the in-progress mark if ``owner`` still holds it (idempotent).
        Raises ``DependencyUnavailable``."""
        ...

    async def flush(self) -> None:
        """Write the queued done marks now (at shutdown, before the client closes). Never raises."""
        ...
