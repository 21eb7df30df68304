"""The concurrency cap: at most ``limit`` Salesforce calls of this writer in flight at once.

Salesforce allows 25 concurrent long-running calls per org, shared by every integration; a writer
with a backlog sends a run's chunks (and a refused request's halves) concurrently, and this gate is
what bounds them. Owns the semaphore and the in-flight count the metrics read; must not know what
a call does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class CallGate:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the concurrency cap must be at least 1")
        self.limit = limit
        self._slots = asyncio.Semaphore(limit)
        #: calls in flight now, the most ever in flight at once, calls made
        self.in_flight = 0
        self.peak = 0
        self.calls = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._slots:
            self.in_flight += 1
            self.calls += 1
            self.peak = max(self.peak, self.in_flight)
            try:
                yield
            finally:
                self.in_flight -= 1
