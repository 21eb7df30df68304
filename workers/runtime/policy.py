"""The retry policy of a route: in-place attempts with jittered back-off, then retry tiers, then the DLQ.

Owns the decisions, driven by the error tree (``events.errors.is_retriable``): a transient error
gets in-place attempts (tenacity ``AsyncRetrying`` with an injected ``sleep`` so unit tests are
instant and so the worker can pause the partition while it waits), then moves along the retry
tiers; a permanent error goes to the dead letter at once. Must not produce, commit or touch the
consumer: the worker acts on the ``Decision``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tenacity import RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential_jitter
from tenacity.asyncio import AsyncRetrying
from tenacity.stop import stop_base

from events.errors import is_retriable

Sleep = Callable[[float], Awaitable[None]]


class Verdict(enum.Enum):
    RETRY_TOPIC = "retry_topic"  # produce to <group>.retry.<tier>, acknowledge the original
    DEAD_LETTER = "dead_letter"  # produce to <group>.dlq, acknowledge the original
    BLOCK = "block"  # no dead letters and transient: keep retrying in place, never skip
    DROP = "drop"  # no dead letters and permanent: log and acknowledge (retrying cannot help)


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    tier: int = 0  # the retry tier to move to (RETRY_TOPIC)
    delay_s: float = 0.0  # how long that tier waits before handling it again


def retriable(exc: BaseException) -> bool:
    """Transient per the error tree; anything that is not an ``Exception`` (cancellation, exit) never is."""
    return isinstance(exc, Exception) and is_retriable(exc)


def retry_after(exc: BaseException) -> float | None:
    """The delay an error asks for itself (HTTP 429 ``Retry-After`` → ``FleetError.retry_after``)."""
    value = getattr(exc, "retry_after", None)
    if isinstance(value, int | float) and math.isfinite(value) and value >= 0:
        return float(value)
    return None


class _StopOnLongRetryAfter(stop_base):
    """Stop waiting in place when the error asks for longer than the in-place cap: such a wait
    belongs on a retry topic (the partition moves on) rather than holding the partition."""

    def __init__(self, cap_s: float) -> None:
        self._cap_s = cap_s

    def __call__(self, retry_state: RetryCallState) -> bool:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        delay = retry_after(exc) if exc is not None else None
        return delay is not None and delay > self._cap_s


class RetryPolicy:
    """Decides what happens to a failing record; runs its in-place attempts."""

    def __init__(
        self,
        *,
        attempts: int,
        backoff_initial_s: float,
        backoff_max_s: float,
        tier_delays_ms: tuple[int, ...],
        dead_letter: bool = True,
    ) -> None:
        self.attempts = max(1, attempts)
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.tier_delays_ms = tier_delays_ms
        self.dead_letter = dead_letter
        self._jitter = wait_exponential_jitter(
            multiplier=max(backoff_initial_s, 1e-3), max=backoff_max_s, jitter=backoff_initial_s
        )

    def wait_s(self, retry_state: RetryCallState) -> float:
        """The error's own delay when it has one, else jittered exponential back-off."""
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        own = retry_after(exc) if exc is not None else None
        return own if own is not None else float(self._jitter(retry_state))

    async def run_in_place(
        self,
        call: Callable[[int], Awaitable[None]],
        first_error: BaseException,
        *,
        sleep: Sleep,
        on_retry: Callable[[BaseException, int, float], None] | None = None,
    ) -> tuple[BaseException | None, int]:
        """Continue the in-place attempts after the first one failed with ``first_error``.

        ``call(attempt)`` runs attempt number ``attempt`` (1-based). The loop's first attempt ran
        inline, outside tenacity, because the success path must stay allocation-free; tenacity is
        handed that outcome as its own attempt 1 so its attempt numbers, stop and wait stay the
        real ones. Returns ``(None, attempts)`` on success, ``(last_error, attempts)`` otherwise.
        Cancellation propagates (never a failure).
        """
        made = 0

        async def attempt() -> None:
            nonlocal made
            made += 1
            if made == 1:
                raise first_error
            await call(made)

        def before_sleep(state: RetryCallState) -> None:
            if on_retry is not None and state.outcome is not None and state.next_action is not None:
                exc = state.outcome.exception()
                if exc is not None:
                    on_retry(exc, state.attempt_number, state.next_action.sleep)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.attempts) | _StopOnLongRetryAfter(self.backoff_max_s),
            wait=self.wait_s,
            retry=retry_if_exception(retriable),
            sleep=sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            await retrying(attempt)
        except Exception as exc:  # the last attempt's error; BaseException (cancellation) propagates
            return exc, made
        return None, made

    def decide(self, error: BaseException, tier: int) -> Decision:
        """Where a record goes after its in-place attempts on tier ``tier`` (0 = source topic) failed."""
        if not self.dead_letter:
            return Decision(Verdict.BLOCK if retriable(error) else Verdict.DROP)
        if not retriable(error):
            # permanent: retrying the same input cannot help, so it skips every retry tier
            return Decision(Verdict.DEAD_LETTER)
        next_tier = tier + 1
        if next_tier > len(self.tier_delays_ms):
            return Decision(Verdict.DEAD_LETTER)
        delay_s = self.tier_delays_ms[next_tier - 1] / 1000
        own = retry_after(error)
        return Decision(Verdict.RETRY_TOPIC, next_tier, max(delay_s, own or 0.0))
