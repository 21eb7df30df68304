"""Domain events the Salesforce CDC ingress emits (facts about orders, catalog and accounts).

Keyed by the Salesforce record id, so every change of one record stays in order on one partition.
``change`` keeps the raw change event (header + changed fields) for audit and replay.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from events.base import DomainEvent


class OrderActivationRequested(DomainEvent):
    """``Activation_Status__c`` became ``Activating`` with ``Status`` in the trigger set."""

    TYPE = "fleet.order.activation-requested.v1"
    sf_order_id: str
    sf_account_id: str | None = None
    status: str | None = None
    order_type: str | None = None
    replay_id: int | None = None
    change: dict[str, Any] | None = None

    def key(self) -> str:
        return self.sf_order_id


class SimActivationRequested(DomainEvent):
    """``Status`` became ``Processed`` on a SIM order: the Freebit step may run."""

    TYPE = "fleet.order.sim-activation-requested.v1"
    sf_order_id: str
    sf_account_id: str | None = None
    status: str | None = None
    sim_type: str | None = None
    replay_id: int | None = None
    change: dict[str, Any] | None = None

    def key(self) -> str:
        return self.sf_order_id


class OrderChanged(DomainEvent):
    """A customer-facing field of an Order or OrderItem changed (the portal's order caches go stale)."""

    TYPE = "fleet.order.changed.v1"
    sf_order_id: str
    entity: Literal["Order", "OrderItem"] = "Order"
    record_id: str | None = None
    sf_account_id: str | None = None
    changed_fields: list[str] = []
    change_type: str = "UPDATE"
    replay_id: int | None = None
    change: dict[str, Any] | None = None

    def key(self) -> str:
        return self.sf_order_id


class CatalogChanged(DomainEvent):
    """A Product2 or PricebookEntry changed."""

    TYPE = "fleet.catalog.changed.v1"
    entity: Literal["Product2", "PricebookEntry"]
    record_id: str
    product2_id: str | None = None
    changed_fields: list[str] = []
    change_type: str = "UPDATE"
    replay_id: int | None = None
    change: dict[str, Any] | None = None

    def key(self) -> str:
        return self.record_id


class AccountEligibilityChanged(DomainEvent):
    """The platform event ``Account_Eligibility_Update__e`` for one account."""

    TYPE = "fleet.account.eligibility-changed.v1"
    sf_account_id: str
    eligibility: str | None = None
    verification_status: str | None = None
    replay_id: int | None = None
    change: dict[str, Any] | None = None

    def key(self) -> str:
        return self.sf_account_id


class ResyncRequested(DomainEvent):
    """Re-read ``entity`` records modified in a window (gap overflow, lost replay position)."""

    TYPE = "fleet.salesforce.resync-requested.v1"
    entity: str
    since: datetime | None = None
    until: datetime | None = None
    reason: str

    def key(self) -> str:
        return self.entity
