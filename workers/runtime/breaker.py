"""The batch circuit breaker: tell a systemic outage from a poison message, and stop moving records.

When most recent outcomes fail the same way (default ≥ 80 % of the last ≥ 10 with one error class)
the cause is the environment (an upstream is down), not the records: moving them all to retry
topics and the dead letter would only make work for operators. The breaker opens, the worker pauses
every partition and holds the failing records; after a cool-down one trial record runs (half-open);
its success closes the breaker, its failure reopens it with a longer cool-down.

Owns the state machine and the waiting. Must not touch the consumer or produce anything: the
worker pauses partitions and exports the alarm. Time comes from the injected ``clock``/``sleep``; the
thresholds from ``workers.config.BreakerSettings`` (``RuntimeSettings.breaker``), read once when built.
"""

from __future__ import annotations

import asyncio
import enum
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from workers.config import BreakerSettings

log = structlog.get_logger(__name__)


class State(enum.IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    def __init__(
        self,
        config: BreakerSettings,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.config = config
        # read once: a pydantic attribute costs ~3x a plain one, and record_failure runs per failed record
        self._enabled, self._min_outcomes, self._threshold = config.enabled, config.min_outcomes, config.threshold
        self._size = config.window
        self._base_cooldown_s, self._max_cooldown_s = config.cooldown_s, config.max_cooldown_s
        self._clock = clock
        self._sleep = sleep
        self._window: deque[str | None] = deque(maxlen=self._size)
        #: successes not yet written to the window: the success path (every record) only counts
        self._streak = 0
        self.state = State.CLOSED
        #: ``state is CLOSED``, kept as a plain attribute: the loop reads it once per record
        self.closed = True
        self.error_class: str | None = None
        self.trips = 0
        self.opened_at: float | None = None
        self._cooldown_s = config.cooldown_s
        self._reopen_at = 0.0
        self._trial_taken = False
        self._changed = asyncio.Event()

    def record_success(self) -> None:
        if self.state is State.HALF_OPEN:
            self._close()
        self._streak += 1

    def record_failure(self, error_class: str) -> bool:
        """Count one failed record; True when the breaker is (now) open: hold the record, don't move it."""
        if not self._enabled:
            return False
        if self.state is State.HALF_OPEN:
            self._open(error_class, reopen=True)
            return True
        if self.state is State.OPEN:
            return True
        if self._streak:
            self._window.extend([None] * min(self._streak, self._size))
            self._streak = 0
        self._window.append(error_class)
        if len(self._window) < self._min_outcomes:
            return False
        same = Counter(c for c in self._window if c is not None)[error_class]
        if same / len(self._window) >= self._threshold:
            self._open(error_class, reopen=False)
            return True
        return False

    async def admit(self) -> bool:
        """Wait until a record may run: True when closed, or once as the half-open trial (the
        caller must then ``record_success``/``record_failure`` or ``release_trial``)."""
        while True:
            if self.state is State.CLOSED:
                return False
            if self.state is State.OPEN and self._clock() >= self._reopen_at:
                self._set(State.HALF_OPEN)
                self._trial_taken = False
                log.warning("circuit_breaker_half_open", error_class=self.error_class)
            if self.state is State.HALF_OPEN and not self._trial_taken:
                self._trial_taken = True
                return True
            await self._wait_change(max(0.0, self._reopen_at - self._clock()) if self.state is State.OPEN else None)

    def release_trial(self) -> None:
        """The trial holder gave up without an outcome (revoked, shutting down): let another try."""
        if self.state is State.HALF_OPEN:
            self._trial_taken = False
            self._notify()

    def _open(self, error_class: str, *, reopen: bool) -> None:
        self._cooldown_s = min(self._cooldown_s * 2, self._max_cooldown_s) if reopen else self._base_cooldown_s
        self._set(State.OPEN)
        self.error_class = error_class
        self.opened_at = self._clock()
        self._reopen_at = self.opened_at + self._cooldown_s
        if not reopen:
            self.trips += 1
        log.error(
            "circuit_breaker_opened",
            error_class=error_class,
            window=len(self._window),
            cooldown_s=self._cooldown_s,
            trial_failed=reopen,
        )
        self._notify()

    def _close(self) -> None:
        open_s = self._clock() - (self.opened_at or 0)
        log.warning("circuit_breaker_closed", error_class=self.error_class, open_s=round(open_s, 3))
        self._set(State.CLOSED)
        self.error_class = None
        self._cooldown_s = self._base_cooldown_s
        self._window.clear()
        self._streak = 0
        self._notify()

    def _set(self, state: State) -> None:
        self.state = state
        self.closed = state is State.CLOSED

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_change(self, timeout_s: float | None) -> None:
        changed = asyncio.ensure_future(self._changed.wait())
        if timeout_s is None:
            await changed
            return
        timer = asyncio.ensure_future(self._sleep(timeout_s))
        try:
            await asyncio.wait({changed, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
            timer.cancel()
