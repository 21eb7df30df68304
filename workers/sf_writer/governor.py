"""The daily API budget governor: which Salesforce writes may spend the org's API allocation now.

Owns one rule: once the share of the rolling 24 h allocation in use (``Sforce-Limit-Info:
api-usage=used/limit``, as the adapter last saw it) reaches ``low_priority_share``, low-priority
writes are deferred; high-priority writes (activations) are never deferred by the governor: only
Salesforce itself refusing (``REQUEST_LIMIT_EXCEEDED``) stops them. Must not call Salesforce.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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
    """

    low_priority_share: float
    usage: Callable[[], tuple[int, int] | None]
    defer_s: float = 6.0
    deferred: int = 0

    def share_used(self) -> float | None:
        seen = self.usage()
        if seen is None or seen[1] <= 0:
            return None
        return seen[0] / seen[1]

    def admits(self, priority: Priority) -> bool:
        if priority == "high":
            return True
        share = self.share_used()
        # unknown usage (nothing sent yet) admits: the first answer tells us where we stand
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
