"""The daily API budget governor: which Salesforce writes may spend the org's API allocation now.

Owns one rule: once the share of the rolling 24 h allocation in use (``Sforce-Limit-Info:
api-usage=used/limit``, as the adapter last saw it) reaches ``low_priority_share``, low-priority
writes are deferred; high-priority writes (activations) are never deferred by the governor: only
Salesforce itself refusing (``REQUEST_LIMIT_EXCEEDED``) stops them. Which write is which is decided
where the commands are built (``workers.fulfillment.writeback``); the command carries it. Must not
call Salesforce.

A reading is only as fresh as the last answer: a writer that defers everything makes no call, so
it would never see the budget recover. A reading older than ``max_age_s`` therefore counts as
unknown, and unknown admits (the first answer tells where we stand): at most one run of low-priority
writes per ``max_age_s`` while the budget stays tight, and a replay after the budget recovered is
written instead of deferred again on an old number.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from events.errors import RateLimited

Priority = Literal["high", "low"]
DEFERRED_CODE = "API_BUDGET_RESERVED"


@dataclass
class BudgetGovernor:
    """``usage`` returns the latest ``(used, limit)`` (``SalesforcePort.api_usage``), None before any call.

    ``defer_s`` is the ``retry_after`` a deferral carries: longer than the runtime's in-place
    back-off cap, so a deferred record leaves its partition at once for the retry tiers (it never
    holds up the high-priority records behind it) and, when the budget is still tight after the
    last tier, lands in the dead-letter topic under ``API_BUDGET_RESERVED`` for a replay later.

    ``max_age_s`` (None: never stale) bounds how old a reading may be; ``observed()`` marks it fresh
    (the writer calls it after each of its calls). A reading that changed since the last look (an
    answer to another adapter sharing ``usage``) counts as fresh from that look.
    """

    low_priority_share: float
    usage: Callable[[], tuple[int, int] | None]
    defer_s: float = 6.0
    max_age_s: float | None = None
    clock: Callable[[], float] = time.monotonic
    deferred: int = 0
    _reading: tuple[int, int] | None = field(default=None, init=False, repr=False)
    _read_at: float = field(default=0.0, init=False, repr=False)

    def observed(self) -> None:
        """A call was just answered: whatever ``usage`` says now is fresh."""
        self._reading, self._read_at = self.usage(), self.clock()

    def share_used(self) -> float | None:
        """The share of the budget in use, or None when unknown (no reading yet, or a stale one)."""
        seen = self.usage()
        if seen is None or seen[1] <= 0:
            return None
        if seen != self._reading:
            self._reading, self._read_at = seen, self.clock()
        elif self.max_age_s is not None and self.clock() - self._read_at > self.max_age_s:
            return None
        return seen[0] / seen[1]

    def admits(self, priority: Priority) -> bool:
        if priority == "high":
            return True
        share = self.share_used()
        # unknown usage (nothing sent yet, or too long ago) admits: the answer tells us where we stand
        return share is None or share < self.low_priority_share

    def deferral(self, record_id: str) -> RateLimited:
        self.deferred += 1
        share = self.share_used() or 0.0
        return RateLimited(
            f"low-priority write of {record_id} deferred: {share:.0%} of the daily API budget used "
            f"(low priority stops at {self.low_priority_share:.0%})",
            upstream="salesforce",
            code=DEFERRED_CODE,
            retry_after=self.defer_s,
        )
