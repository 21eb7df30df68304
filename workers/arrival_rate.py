"""``ArrivalRate``: how many things arrived per second over the last moment (a sliding window).

Owns only the counting. The sf-writer's batching window and sf-cdc's bulk Order reads both stretch
their wait while arrivals are frequent (there is something to share a call with) and keep it short
when they are rare; this is the one meter they read. Must not decide anything itself.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class ArrivalRate:
    def __init__(self, window_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._window_s = window_s
        self._clock = clock
        self._arrivals: deque[tuple[float, int]] = deque()  # (when, how many), oldest first
        self._count = 0

    def note(self, count: int = 1) -> None:
        """``count`` things arrived now."""
        now = self._clock()
        self._arrivals.append((now, count))
        self._count += count
        self._forget(now)

    def per_second(self) -> float:
        """Arrivals per second over the last ``window_s``."""
        self._forget(self._clock())
        return self._count / self._window_s

    def _forget(self, now: float) -> None:
        horizon = now - self._window_s
        while self._arrivals and self._arrivals[0][0] < horizon:
            self._count -= self._arrivals.popleft()[1]
