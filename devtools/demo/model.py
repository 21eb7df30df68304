"""The demo's progress model: what the scenario knows about each order and seeded key, and what it noted.

Owns plain data and the labels derived from it. Must not do I/O: the scenario fills it in,
``render.py`` draws it, the summary is built from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from devtools.supervisor import ChildStatus


@dataclass
class OrderProgress:
    label: str
    customer: str
    spec: dict[str, Any]
    sf_id: str = ""
    number: str = ""
    status: str | None = None
    activation: str | None = None
    error_code: str | None = None
    whmcs_order_id: str | None = None
    saga_state: str | None = None
    saga_step: str | None = None
    approved_at: float | None = None
    finished_at: float | None = None
    parked_at: float | None = None
    resumed_at: float | None = None
    #: a physical SIM order: billed on approval, then waiting for the agent's Processed (set at this time)
    processed_at: float | None = None
    #: a scheduled activation's time (set when the order is seeded), and whether the saga was seen waiting
    scheduled_for: datetime | None = None
    scheduled_seen: bool = False
    outcome: str = "waiting"  # waiting | fulfilled | failed | timed out
    detail: str = ""

    @property
    def done(self) -> bool:
        return self.outcome != "waiting"

    @property
    def path(self) -> str:
        """The outcome with the detour, as the summary shows it."""
        if self.outcome == "fulfilled" and self.parked_at is not None:
            return "parked → resumed → fulfilled"
        if self.outcome == "fulfilled" and self.processed_at is not None:
            return "billed → Processed → SIM registered → fulfilled"
        if self.outcome == "fulfilled" and self.scheduled_seen:
            return "scheduled → fulfilled at its time"
        return self.outcome if not self.detail else f"{self.outcome}: {self.detail}"

    def elapsed(self, now: float) -> float | None:
        if self.approved_at is None:
            return None
        return (self.finished_at or now) - self.approved_at


@dataclass
class KeyProgress:
    key: str
    why: str  # what should drop it
    seeded_at: float
    dropped_at: float | None = None


@dataclass
class ScenarioState:
    orders: list[OrderProgress]
    started_at: float
    keys: list[KeyProgress] = field(default_factory=list)
    notes: list[tuple[float, str]] = field(default_factory=list)
    workers: list[ChildStatus] = field(default_factory=list)
    api_calls: int | None = None
    dead_letters: dict[str, int] | None = None
    finished: bool = False
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(o.outcome == "fulfilled" for o in self.orders)

    def note(self, now: float, text: str) -> None:
        self.notes.append((now - self.started_at, text))


def order_label(spec: dict[str, Any], customer: dict[str, Any]) -> str:
    kind = str(spec.get("Type"))
    if kind == "SIM":
        kind = "eSIM" if spec.get("SIM_Type__c") == "eSIM" else "SIM (physical)"
    if spec.get("scheduled_in_s") is not None:
        kind = f"{kind}, scheduled"
    return kind if customer.get("paymethods") else f"{kind}, no pay method"


def demo_progress() -> list[OrderProgress]:
    from sandbox.demo_data import CUSTOMERS, DEMO_ORDERS  # demo data, imported only by this dev tool

    by_key = {c["key"]: c for c in CUSTOMERS}
    return [
        OrderProgress(order_label(spec, by_key[spec["customer"]]), spec["customer"], dict(spec)) for spec in DEMO_ORDERS
    ]
