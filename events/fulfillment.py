"""Fulfillment outcomes (facts) and the commands the fulfillment saga sends to other workers.

Outcomes are keyed by Salesforce Order id; Salesforce update commands by the record they change,
so the sf-writer can coalesce several updates of one record into one write.
"""

from __future__ import annotations

from typing import Any, Literal

from events.base import DomainEvent


class _OrderOutcome(DomainEvent):
    sf_order_id: str
    sf_account_id: str | None = None
    whmcs_client_id: int | None = None

    def key(self) -> str:
        return self.sf_order_id


class OrderActivationStarted(_OrderOutcome):
    """The saga started work on an order that was not running: a new order, or a parked or failed one
    a new request resumed (never a wake-up, which only continues one). The portal shows Activating.

    At least once: acknowledged before any save stores the order as running, so a crash before such a
    save publishes it again. ``order_type``: the saga's, else the request's snapshot's (None when neither knows it)."""

    TYPE = "fleet.fulfillment.activation-started.v1"
    order_type: str | None = None


class OrderFulfilled(_OrderOutcome):
    TYPE = "fleet.fulfillment.fulfilled.v1"
    whmcs_order_id: int
    whmcs_service_ids: list[int] = []


class OrderFulfillmentFailed(_OrderOutcome):
    TYPE = "fleet.fulfillment.failed.v1"
    error_code: str
    error_message: str
    step: str | None = None


class OrderParked(_OrderOutcome):
    """Waiting for something a human or the customer must do (e.g. add a payment method)."""

    TYPE = "fleet.fulfillment.parked.v1"
    error_code: str
    error_message: str
    step: str | None = None


class UpdateSalesforceRecord(DomainEvent):
    """Command: set ``fields`` on one sObject. Activations are high priority and never deferred."""

    TYPE = "fleet.salesforce.update-record.v1"
    sobject: str
    record_id: str
    fields: dict[str, Any]
    priority: Literal["high", "low"] = "high"

    def key(self) -> str:
        return self.record_id
