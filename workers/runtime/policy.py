"""The retry policy of a route: in-place attempts with jittered back-off, then retry tiers, then the DLQ.

Owns the decisions, driven by the error tree (``events.errors.is_retriable``): a transient error
gets in-place attempts, waiting between them the error's own delay or the ``Backoff`` (through an
injected ``sleep``, so unit tests are instant and the worker pauses the partition or the key while
it waits), then moves along the retry tiers; a permanent error goes to the dead letter at once.
Must not produce, commit or touch the consumer: the worker acts on the ``Decision``.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class Backoff:
    """Jittered exponential back-off: after failed attempt ``n`` (1-based), wait ``initial_s * 2**(n-1)``
    plus a uniform jitter of up to ``jitter_s``, at most ``max_s``.

    The formula of tenacity's ``wait_exponential_jitter`` (Google Cloud's retry strategy), as a value:
    the runtime needs the delay, not a retry loop around a call it has already made.
    """

    initial_s: float
    max_s: float
    jitter_s: float

    def delay_s(self, failed: int, *, uniform: Callable[[float, float], float] = random.uniform) -> float:
        """The wait after ``failed`` attempts have failed (``uniform`` draws the jitter)."""
        try:
            wait = self.initial_s * 2.0 ** (failed - 1) + uniform(0.0, self.jitter_s)
        except OverflowError:
            wait = self.max_s
        return max(0.0, min(wait, self.max_s))


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
        self.backoff = Backoff(max(backoff_initial_s, 1e-3), backoff_max_s, jitter_s=backoff_initial_s)

    def wait_in_place_s(self, error: BaseException, failed: int) -> float | None:
        """How long to wait before another attempt in place after ``failed`` attempts, the last one
        failing with ``error``; None when there is none: the error is permanent, the attempts are
        spent, or the error asks for longer than ``backoff_max_s`` (such a wait belongs on a retry
        topic, where the partition moves on, rather than holding it here)."""
        if failed >= self.attempts or not retriable(error):
            return None
        own = retry_after(error)
        if own is None:
            return self.backoff.delay_s(failed)
        return own if own <= self.backoff_max_s else None

    async def run_in_place(
        self,
        call: Callable[[int], Awaitable[None]],
        first_error: BaseException,
        *,
        sleep: Sleep,
        on_retry: Callable[[BaseException, int, float], None] | None = None,
    ) -> tuple[BaseException | None, int]:
        """Continue the in-place attempts after the first one failed with ``first_error``.

        ``call(attempt)`` runs attempt number ``attempt`` (1-based). The first attempt ran inline in
        the caller, because the success path must stay allocation-free; this loop starts only once
        it failed. ``on_retry(error, failed_attempt, wait_s)`` is told before each wait. Returns
        ``(None, attempts)`` on success, ``(last_error, attempts)`` otherwise. Cancellation (and
        anything else that is not an ``Exception``) propagates, never counted as a failure.
        """
        error, made = first_error, 1
        while (wait := self.wait_in_place_s(error, made)) is not None:
            if on_retry is not None:
                on_retry(error, made, wait)
            await sleep(wait)
            made += 1
            try:
                await call(made)
            except Exception as exc:
                error = exc
            else:
                return None, made
        return error, made

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
