"""``MemorySagaStore``: the saga store in memory, for unit tests and local runs without PostgreSQL.

Same contract as ``PgSagaStore``; stores deep copies, so a caller that crashes mid-step leaks nothing
it did not save. Must not grow behaviour the real store lacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from adapters.saga_store.port import (
    HistoryEntry,
    InboxClaim,
    OrderBusy,
    SagaOrder,
    SagaRecord,
    SimCard,
    StepRecord,
    Timer,
)


@dataclass
class MemorySagaStore:
    """The fake: stores deep copies, so an engine that crashes mid-step leaks nothing it did not save.

    ``inbox`` holds claimed (group, event_id) pairs; ``saves`` counts transactions;
    ``fail_next_save`` raises once."""

    orders: dict[str, SagaRecord] = field(default_factory=dict)
    timeline: dict[str, list[HistoryEntry]] = field(default_factory=dict)
    inbox: set[tuple[str, str]] = field(default_factory=set)
    #: order id → its timer (``fulfillment_timers``)
    timers: dict[str, Timer] = field(default_factory=dict)
    #: order id → the SIM card it holds (``sim_card_assignments``)
    sim_cards: dict[str, SimCard] = field(default_factory=dict)
    saves: int = 0
    fail_next_save: Exception | None = None
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    @contextlib.asynccontextmanager
    async def locked(self, sf_order_id: str, wait_s: float = 30.0) -> AsyncIterator[None]:
        lock = self._locks.setdefault(sf_order_id, asyncio.Lock())
        try:
            await asyncio.wait_for(lock.acquire(), wait_s)
        except TimeoutError:
            raise OrderBusy(f"order {sf_order_id} is being handled by another delivery") from None
        try:
            yield
        finally:
            lock.release()

    async def get(self, sf_order_id: str) -> SagaRecord | None:
        return copy.deepcopy(self.orders.get(sf_order_id))

    async def save(
        self,
        order: SagaOrder,
        steps: Sequence[StepRecord] = (),
        history: Sequence[HistoryEntry] = (),
        claim: InboxClaim | None = None,
    ) -> bool:
        if self.fail_next_save is not None:
            error, self.fail_next_save = self.fail_next_save, None
            raise error
        self.saves += 1
        record = self.orders.setdefault(order.sf_order_id, SagaRecord(copy.deepcopy(order)))
        record.order = copy.deepcopy(order)
        record.steps.update({s.step: copy.deepcopy(s) for s in steps})
        self.timeline.setdefault(order.sf_order_id, []).extend(history)
        if claim is None:
            return True
        key = (claim.group, claim.event_id)
        fresh = key not in self.inbox
        self.inbox.add(key)
        return fresh

    async def processed(self, claim: InboxClaim) -> bool:
        return (claim.group, claim.event_id) in self.inbox

    async def reserve_sim_account(self, sf_order_id: str, account: str) -> bool:
        holders = [k for k, r in self.orders.items() if r.order.sim_account == account and k != sf_order_id]
        record = self.orders.get(sf_order_id)
        if holders or record is None or record.order.sim_account not in (None, account):
            return False
        record.order.sim_account = account
        return True

    async def reserve_sim_card(self, sf_order_id: str, candidates: Sequence[SimCard]) -> SimCard | None:
        held = self.sim_cards.get(sf_order_id)
        if held is not None:
            return held
        taken = {card.card_id for card in self.sim_cards.values()}
        card = next((c for c in candidates if c.card_id not in taken), None)
        if card is not None:
            self.sim_cards[sf_order_id] = card
        return card

    async def set_timer(self, sf_order_id: str, reason: str, due_at: datetime) -> None:
        old = self.timers.get(sf_order_id)
        same = old is not None and old.reason == reason
        since = old.since if same and old is not None else due_at if reason == "scheduled" else _now()
        fired = old.fired if same and old is not None else 0
        self.timers[sf_order_id] = Timer(sf_order_id, due_at, reason, fired, since)

    async def clear_timer(self, sf_order_id: str) -> None:
        self.timers.pop(sf_order_id, None)

    async def timer(self, sf_order_id: str) -> Timer | None:
        return self.timers.get(sf_order_id)

    async def take_due_timers(self, now: datetime, lease_s: float, limit: int) -> list[Timer]:
        due = sorted((t for t in self.timers.values() if t.due_at <= now), key=lambda t: t.due_at)[:limit]
        taken = []
        for t in due:
            moved = replace(t, due_at=now + timedelta(seconds=lease_s), fired=t.fired + 1)
            self.timers[t.sf_order_id] = moved
            taken.append(moved)
        return taken

    async def stuck_orders(self, now: datetime, deadlines: dict[str, float]) -> list[tuple[SagaOrder, datetime]]:
        found = []
        for record in self.orders.values():
            order, timer = record.order, self.timers.get(record.order.sf_order_id)
            if order.state not in deadlines:
                continue
            since = timer.due_at if order.state == "scheduled" and timer else (timer.since if timer else None)
            since = since or order.updated_at or now
            if since < now - timedelta(seconds=deadlines[order.state]):
                found.append((copy.deepcopy(order), since))
        return sorted(found, key=lambda pair: pair[1])

    async def parked_for_client(self, whmcs_client_id: int) -> list[str]:
        parked = [r.order for r in self.orders.values() if r.order.state == "parked"]
        return [o.sf_order_id for o in parked if o.whmcs_client_id == whmcs_client_id]

    async def count_orders(self) -> dict[tuple[str, str | None], int]:
        counts: dict[tuple[str, str | None], int] = {}
        for record in self.orders.values():
            order = record.order
            key = (str(order.state), order.error_code if order.state == "parked" else None)
            counts[key] = counts.get(key, 0) + 1
        return counts

    async def list_orders(self, state: str | None = None, limit: int = 50) -> list[SagaOrder]:
        found = [copy.deepcopy(r.order) for r in self.orders.values() if state in (None, r.order.state)]
        return list(reversed(found))[:limit]

    async def search_orders(self, text: str, limit: int = 50) -> list[SagaOrder]:
        wanted = text.strip()
        found = [
            copy.deepcopy(r.order)
            for r in self.orders.values()
            if wanted in (r.order.sf_order_id, r.order.sf_account_id, str(r.order.whmcs_client_id),
                          str(r.order.whmcs_order_id))
        ]  # fmt: skip
        return list(reversed(found))[:limit]

    async def history(self, sf_order_id: str) -> list[HistoryEntry]:
        return list(self.timeline.get(sf_order_id, []))

    async def append_history(self, sf_order_id: str, entry: HistoryEntry) -> bool:
        if sf_order_id not in self.orders:
            return False
        self.timeline.setdefault(sf_order_id, []).append(entry)
        return True


def _now() -> datetime:
    return datetime.now(UTC)
