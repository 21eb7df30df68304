"""The saga store's port and value types: an order, its steps, its timeline, the inbox claim.

Owns the shapes the saga reads and writes and the contract of every method (which transaction,
what is idempotent). Must not know SQL: ``pg.py`` implements it over asyncpg, ``memory.py`` in memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from events.errors import DependencyUnavailable

#: first key of the two-int advisory lock; the second is ``hashtext(sf_order_id)``
LOCK_NAMESPACE = 0x46554C  # "FUL"
UPSTREAM = "postgres"


@dataclass(frozen=True)
class SimCard:
    """A card of Salesforce ``SIM_Inventory__c`` as the saga reserves it (``sim_card_assignments``)."""

    card_id: str
    name: str
    phone_number: str
    serial_number: str | None = None


@dataclass(frozen=True)
class Timer:
    """An order waiting for a time (migration 0008): ``reason`` says for what; ``fired`` counts how
    often a timer loop took it; ``since`` is when the order began this wait (kept across re-arms)."""

    sf_order_id: str
    due_at: datetime
    reason: str
    fired: int = 0
    since: datetime | None = None


@dataclass
class StepRecord:
    """One step of one order; ``started_at`` opens the current attempt window (reset on resume)."""

    step: str
    seq: int
    status: str = "pending"
    attempts: int = 0
    external_ids: dict[str, Any] = field(default_factory=dict)
    last_error_code: str | None = None
    last_error_message: str | None = None
    started_at: datetime | None = None
    last_attempt_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass
class SagaOrder:
    sf_order_id: str
    state: str = "received"
    sf_account_id: str | None = None
    order_type: str | None = None
    current_step: str | None = None
    whmcs_client_id: int | None = None
    whmcs_order_id: int | None = None
    sim_account: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    plan: dict[str, Any] = field(default_factory=dict)
    requests: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass
class SagaRecord:
    order: SagaOrder
    steps: dict[str, StepRecord] = field(default_factory=dict)


@dataclass(frozen=True)
class HistoryEntry:
    kind: str
    step: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    at: datetime | None = None


@dataclass(frozen=True)
class InboxClaim:
    """Identity of the delivery whose outcome is being saved (``inbox`` table of migration 0001)."""

    group: str
    event_id: str
    event_type: str
    topic: str
    partition: int
    offset: int


class OrderBusy(DependencyUnavailable):
    """Another delivery holds the order's lock past the wait bound; retryable."""

    default_code = "ORDER_BUSY"


class SagaStore(Protocol):
    def locked(self, sf_order_id: str, wait_s: float = 30.0) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold the order's exclusive lock for the block; raises ``OrderBusy`` after ``wait_s``.
        Released when the block ends or the process dies (a session lock dies with its connection).
        Every method raises ``DependencyUnavailable`` when PostgreSQL cannot answer."""
        ...

    async def get(self, sf_order_id: str) -> SagaRecord | None:
        """The order and its steps, or None when the saga never saw it. Idempotent."""
        ...

    async def save(
        self,
        order: SagaOrder,
        steps: Sequence[StepRecord] = (),
        history: Sequence[HistoryEntry] = (),
        claim: InboxClaim | None = None,
    ) -> bool:
        """Upsert the order and ``steps``, append ``history`` and claim ``claim``, in ONE transaction.
        Returns False when the claim was already taken (the delivery was a duplicate); the writes
        still commit, since they are the same state the first delivery wrote."""
        ...

    async def processed(self, claim: InboxClaim) -> bool:
        """True when this event id was already handled by this group. Idempotent."""
        ...

    async def reserve_sim_account(self, sf_order_id: str, account: str) -> bool:
        """Tie ``account`` to the order; False when another order holds it. Idempotent per order."""
        ...

    async def reserve_sim_card(self, sf_order_id: str, candidates: Sequence[SimCard]) -> SimCard | None:
        """The card the order holds: the one it took before (``candidates`` are then ignored), else the
        first candidate no other order holds, taken now, atomically (two orders racing for one card:
        one gets it). None when every candidate is held by another order. One statement."""
        ...

    async def parked_for_client(self, whmcs_client_id: int) -> list[str]:
        """Salesforce Order ids parked for this WHMCS client, oldest first."""
        ...

    async def set_timer(self, sf_order_id: str, reason: str, due_at: datetime) -> None:
        """Arm (or move) the order's one timer. Re-arming for the same reason keeps ``fired`` and
        ``since``; another reason starts both afresh. Idempotent."""
        ...

    async def clear_timer(self, sf_order_id: str) -> None:
        """The order waits for no time any more. Idempotent."""
        ...

    async def timer(self, sf_order_id: str) -> Timer | None: ...

    async def take_due_timers(self, now: datetime, lease_s: float, limit: int) -> list[Timer]:
        """Up to ``limit`` timers due at ``now``, each moved ``lease_s`` ahead and counted as fired, in
        one statement; rows another taker holds are skipped. A taker that dies before it acted
        loses nothing: the row falls due again after the lease."""
        ...

    async def stuck_orders(self, now: datetime, deadlines: dict[str, float]) -> list[tuple[SagaOrder, datetime]]:
        """Orders in a state of ``deadlines`` (state → seconds) for longer than its deadline, with
        since when: waiting/running without a change, parked since its wait began, scheduled past
        its due time."""
        ...

    async def count_orders(self) -> dict[tuple[str, str | None], int]:
        """How many orders are in each state, one count per (state, error code) for parked orders and
        per (state, None) for the others: one aggregate query (the metrics' orders by state)."""
        ...

    async def list_orders(self, state: str | None = None, limit: int = 50) -> list[SagaOrder]:
        """Orders, most recently updated first, optionally in one state."""
        ...

    async def search_orders(self, text: str, limit: int = 50) -> list[SagaOrder]:
        """Orders whose Salesforce order id, account id, WHMCS client id or WHMCS order id is ``text``
        (exactly), most recently updated first."""
        ...

    async def history(self, sf_order_id: str) -> list[HistoryEntry]:
        """The order's timeline, oldest first."""
        ...

    async def append_history(self, sf_order_id: str, entry: HistoryEntry) -> bool:
        """Add one timeline entry without touching the order row (operators' audit notes).
        False when the saga never saw the order."""
        ...
