"""The coalescer's linger policies: when a forming call may wait for more items, and how long.

``ByRate`` reads the arrival rate (``ArrivalRate``), ``ByRound`` the size of the last call. Both are
pure: the ``Coalescer`` owns the state and asks ``plan(load)`` each time a call forms. Must not
touch the event loop.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol


class ArrivalRate:
    """How many things arrived per second over the last ``window_s`` (a sliding window)."""

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


class Load(NamedTuple):
    """What a forming call knows when it asks its ``Linger`` whether to wait (times: the loop's clock)."""

    now: float
    oldest: float  # when the oldest queued item arrived
    queued: int  # weight queued
    last: int  # weight the previous call carried (0: none yet)
    last_end: float  # when the previous call returned
    rate: float  # weight per second over the last second (taken by calls, plus what is queued)


class Linger(Protocol):
    def plan(self, load: Load) -> tuple[float, int | None] | None:
        """``None``: leave now. Else ``(deadline, fill)``: wait until the deadline (the loop's clock)
        or until ``fill`` weight is queued (``None``: a full call), whichever comes first."""
        ...


@dataclass(frozen=True)
class ByRate:
    """Wait ``quiet_s`` while items arrive slowly and ``busy_s`` once they arrive at ``busy_rate``
    per second or more, counted from the oldest queued item's arrival (so no item waits longer than
    that plus the call in flight ahead of it); stop early once ``fill`` is queued (``None``: a full
    call), and never wait longer than ``fill`` items take to arrive at the current rate: when they
    come in bursts (a closed loop of callers, each waiting for its answer before asking again), the
    tail of one burst does not sit out the whole linger for the next. ``quiet_s = 0`` (the default):
    a linger under load only."""

    busy_s: float
    busy_rate: float
    quiet_s: float = 0.0
    fill: int | None = None

    def plan(self, load: Load) -> tuple[float, int | None] | None:
        wait = self.busy_s if load.rate >= self.busy_rate else self.quiet_s
        if self.fill is not None and load.rate > 0:
            wait = min(wait, self.fill / load.rate)
        return (load.oldest + wait, self.fill) if wait > 0 else None


@dataclass(frozen=True)
class ByRound:
    """After a call of ``busy_from`` or more (load), while less than that is queued, the next call
    waits until ``grow`` times the last call is queued (at most ``cap``), or ``linger_s`` after the
    last call returned: fewer, larger calls under load. After smaller calls nothing waits."""

    linger_s: float
    busy_from: int
    grow: float = 2.0
    cap: int = 512

    def plan(self, load: Load) -> tuple[float, int | None] | None:
        if self.linger_s <= 0 or load.last < self.busy_from or load.queued >= load.last:
            return None
        return load.last_end + self.linger_s, min(int(self.grow * load.last), self.cap)
