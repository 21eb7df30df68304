"""A token bucket that paces replay produces (``fleet dlq replay --rate N``).

Owns the pacing arithmetic only; the clock and the sleep are injected so tests run instantly.
Must not know about Kafka. Capacity defaults to one token: a replay never bursts above its rate,
which matters when it re-injects load into a worker that just recovered (SQS redrive's lesson).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class TokenBucket:
    """``rate`` tokens per second, at most ``capacity`` saved up; ``acquire`` takes one, waiting if needed."""

    def __init__(
        self,
        rate: float,
        *,
        capacity: float = 1.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        if capacity < 1:
            raise ValueError("capacity must hold at least one token")
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._sleep = sleep
        self._tokens = capacity
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now

    async def acquire(self) -> None:
        self._refill()
        while self._tokens < 1:
            await self._sleep((1 - self._tokens) / self.rate)
            self._refill()
        self._tokens -= 1


class Unlimited:
    """The bucket of a replay without ``--rate``."""

    async def acquire(self) -> None:
        return None
