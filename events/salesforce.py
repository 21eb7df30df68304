"""Domain events the Salesforce CDC ingress emits (facts about orders, catalog and accounts).

Keyed by the Salesforce record id, so every change of one record stays in order on one partition.
``change`` keeps the raw change event (header + changed fields) for audit and replay.

Versions: the activation requests are at v2, which adds ``snapshot`` (the order and its lines as
sf-cdc read them in bulk right after the change), so the saga needs no read of its own. v1 stays
registered so records already on the topic (and dead letters replayed later) still decode; a v1
record, or a v2 without a snapshot, makes the saga read the order itself. Consumers of a new
version deploy before its producers (an older consumer dead-letters a type it does not know,
replayable once it is upgraded). ``LINEAGE`` names the first version, so one change keeps one
event id across the bump and inbox deduplication holds over an upgrade.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict

from events.base import DomainEvent


class OrderLineSnapshot(BaseModel):
    """One order line as read: its product's WHMCS mapping and billing cycles."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sf_order_item_id: str
    sf_product2_id: str | None = None
    product_name: str | None = None
    sku: str | None = None
    item_class: str | None = None
    #: the WHMCS ``pid`` the product maps to (text, as Salesforce holds it)
    whmcs_product_id: str | None = None
    #: the line's own billing cycle, and the product's (the line's wins when set)
    billing_cycle: str | None = None
    product_billing_cycle: str | None = None
    quantity: float = 1.0


class OrderSnapshot(BaseModel):
    """An Order and its lines at ``read_at`` (event-carried state for the fulfillment saga)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sf_order_id: str
    read_at: datetime
    last_modified_at: datetime | None = None
    sf_account_id: str | None = None
    order_type: str | None = None
    status: str | None = None
    activation_status: str | None = None
    activation_type: str | None = None
    activation_scheduled_at: datetime | None = None
    #: the WHMCS order id Salesforce already holds (an order fulfilled before the fleet saw it)
    whmcs_order_id: str | None = None
    sim_type: str | None = None
    eid: str | None = None
    sim_voice_mail: bool | None = None
    sim_call_waiting: bool | None = None
    opportunity_id: str | None = None
    mnp_reservation_number: str | None = None
    mnp_expiry_date: date | None = None
    mnp_phone_number: str | None = None
    lines: list[OrderLineSnapshot] = []


def _replay_text(value: Any) -> Any:
    return value.hex() if isinstance(value, bytes | bytearray) else value


#: where the change sat in Salesforce's stream: a CometD replay id (an integer), or a Pub/Sub replay
#: id (opaque bytes) as hex; for tracing a change back, never for computing with
ReplayId = Annotated[int | str | None, BeforeValidator(_replay_text)]


class _OrderRequest(DomainEvent):
    """Fields every activation request carries (no ``TYPE``: not an event type of its own)."""

    LINEAGE: ClassVar[str]
    sf_order_id: str
    sf_account_id: str | None = None
    status: str | None = None
    replay_id: ReplayId = None
    change: dict[str, Any] | None = None

    def key(self) -> str:
        return self.sf_order_id


class OrderActivationRequested(_OrderRequest):
    """``Activation_Status__c`` became ``Activating`` with ``Status`` in the trigger set."""

    TYPE = "fleet.order.activation-requested.v2"
    LINEAGE = "fleet.order.activation-requested"
    order_type: str | None = None
    snapshot: OrderSnapshot | None = None


class SimActivationRequested(_OrderRequest):
    """``Status`` became ``Processed`` on a SIM order: the Freebit step may run."""

    TYPE = "fleet.order.sim-activation-requested.v2"
    LINEAGE = "fleet.order.sim-activation-requested"
    sim_type: str | None = None
    snapshot: OrderSnapshot | None = None


class OrderActivationRequestedV1(_OrderRequest):
    """v1 of ``OrderActivationRequested`` (no snapshot); decoded and handled, no longer produced."""

    TYPE = "fleet.order.activation-requested.v1"
    LINEAGE = "fleet.order.activation-requested"
    order_type: str | None = None


class SimActivationRequestedV1(_OrderRequest):
    """v1 of ``SimActivationRequested`` (no snapshot); decoded and handled, no longer produced."""

    TYPE = "fleet.order.sim-activation-requested.v1"
    LINEAGE = "fleet.order.sim-activation-requested"
    sim_type: str | None = None


#: every activation request the saga takes, any version
ActivationRequest = (
    OrderActivationRequested | SimActivationRequested | OrderActivationRequestedV1 | SimActivationRequestedV1
)


class OrderChanged(DomainEvent):
    """A customer-facing field of an Order or OrderItem changed (the portal's order caches go stale)."""

    TYPE = "fleet.order.changed.v1"
    sf_order_id: str
    entity: Literal["Order", "OrderItem"] = "Order"
    record_id: str | None = None
    sf_account_id: str | None = None
    changed_fields: list[str] = []
    change_type: str = "UPDATE"
    replay_id: ReplayId = None
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
    replay_id: ReplayId = None
    change: dict[str, Any] | None = None

    def key(self) -> str:
        return self.record_id


class AccountEligibilityChanged(DomainEvent):
    """The platform event ``Account_Eligibility_Update__e`` for one account."""

    TYPE = "fleet.account.eligibility-changed.v1"
    sf_account_id: str
    eligibility: str | None = None
    verification_status: str | None = None
    replay_id: ReplayId = None
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
