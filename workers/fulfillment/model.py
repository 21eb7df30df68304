"""The saga's vocabulary: steps and their order per order type, states, error codes, step outcomes.

Owns names only (the strings stored in ``fulfillment_*`` tables and written to Salesforce). Must not
do I/O or decide policy; ``policy.py`` says what each outcome means, ``saga.py`` acts on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Step(StrEnum):
    VALIDATE = "validate"  # re-read Order + OrderItems + Product2 mapping; build the plan
    SCHEDULE = "schedule"  # Activation_Type__c = Scheduled: wait (a durable timer) for Activation_Scheduled_At__c
    RESOLVE_CLIENT = "resolve_client"  # id_mappings: SF Account → WHMCS client
    PAYMENT_GATE = "payment_gate"  # WHMCS GetPayMethods: none → park
    SIM_PROCESSED = "sim_processed"  # an agent's Status = Processed: the SIM steps may run (no I/O but a read)
    SIM_ASSIGN = "sim_assign"  # a free card of Salesforce SIM_Inventory__c, reserved for this order
    SIM_REGISTER = "sim_register"  # Freebit PA02-01 (physical) / PA05-41 (eSIM), submitted
    SIM_CONFIRM = "sim_confirm"  # Freebit PA03-02 until the account is active
    SIM_VOICE = "sim_voice"  # Freebit PA05-05 voice options, submitted then confirmed by PA03-02
    WHMCS_CREATE = "whmcs_create"  # WHMCS AddOrder (notes carry sfOrderId=<id>)
    WHMCS_ACCEPT = "whmcs_accept"  # WHMCS AcceptOrder
    WHMCS_LINKS = "whmcs_links"  # the Opportunity on the main WHMCS service (custom field OpportunityId)
    WHMCS_SIM_FIELDS = "whmcs_sim_fields"  # SIM Number / Serial Number / EID on the WHMCS service
    SF_WRITEBACK = "sf_writeback"  # UpdateSalesforceRecord commands: Activated, WHMCS ids


class TimerReason(StrEnum):
    """Why an order holds a row of ``fulfillment_timers``."""

    SCHEDULED = "scheduled"  # a scheduled activation's time
    PAYMENT_RECHECK = "payment_recheck"  # the next GetPayMethods of an order parked for a missing pay method


#: ``Trigger.reason`` of the resume request a fired timer sends (``timers.py``)
TIMER_REASON = "timer"


class OrderType(StrEnum):
    INTERNET = "Internet"
    SIM = "SIM"
    VPN = "VPN"


_COMMON = (Step.VALIDATE, Step.SCHEDULE, Step.RESOLVE_CLIENT, Step.PAYMENT_GATE)
_BILLING = (Step.WHMCS_CREATE, Step.WHMCS_ACCEPT, Step.WHMCS_LINKS)

#: the steps of each order type, in order. SIM, as the portal since March 2026 (domain-facts §2.3):
#: billed in WHMCS on approval (Activation_Status__c = Activating), the SIM taken from inventory and
#: registered at Freebit only once an agent set Status = Processed
PLANS: dict[OrderType, tuple[Step, ...]] = {
    OrderType.INTERNET: (*_COMMON, *_BILLING, Step.SF_WRITEBACK),
    OrderType.VPN: (*_COMMON, *_BILLING, Step.SF_WRITEBACK),
    OrderType.SIM: (
        *_COMMON,
        *_BILLING,
        Step.SIM_PROCESSED,
        Step.SIM_ASSIGN,
        Step.SIM_REGISTER,
        Step.SIM_CONFIRM,
        Step.SIM_VOICE,
        Step.WHMCS_SIM_FIELDS,
        Step.SF_WRITEBACK,
    ),
}


def steps_for(order_type: str | None) -> tuple[Step, ...]:
    """The plan of a validated order; before validation only ``validate`` is known."""
    if order_type in PLANS:
        return PLANS[OrderType(order_type)]
    return (Step.VALIDATE,)


def seq_of(step: Step) -> int:
    """A stable position for display (the SIM plan is the superset of every plan)."""
    return PLANS[OrderType.SIM].index(step) + 1


class OrderState(StrEnum):
    RECEIVED = "received"
    RUNNING = "running"
    WAITING = "waiting"  # an asynchronous Freebit job is being confirmed
    SCHEDULED = "scheduled"  # a scheduled activation waits for its time (a durable timer)
    PARKED = "parked"  # waiting for the customer or a human; resumes by itself when possible
    FAILED = "failed"  # needs a human; a new activation request resumes it
    FULFILLED = "fulfilled"


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    DONE = "done"
    SKIPPED = "skipped"
    PARKED = "parked"
    FAILED = "failed"
    COMPENSATED = "compensated"  # its effect was undone; it runs again on resume


FINISHED = frozenset({StepStatus.DONE, StepStatus.SKIPPED})
#: step statuses a resumed order starts over (a new attempt window)
REOPENED = frozenset({StepStatus.PARKED, StepStatus.FAILED, StepStatus.COMPENSATED})


class ErrorCode(StrEnum):
    """Written to ``Order.Activation_Error_Code__c``; documented in ``docs/fulfillment.md``."""

    ORDER_INVALID = "ORDER_INVALID"
    PRODUCT_MAPPING_MISSING = "PRODUCT_MAPPING_MISSING"
    WHMCS_CLIENT_NOT_MAPPED = "WHMCS_CLIENT_NOT_MAPPED"
    PAYMENT_METHOD_MISSING = "PAYMENT_METHOD_MISSING"
    #: not an error: a SIM order billed on approval waits for an agent's Status = Processed (parked
    #: quietly: nothing is written to the Order's error fields)
    AWAITING_PROCESSED = "AWAITING_PROCESSED"
    #: no Available card of the order's SIM type in SIM_Inventory__c: stock the inventory, re-approve
    SIM_INVENTORY_EMPTY = "SIM_INVENTORY_EMPTY"
    #: the inventory gave a card whose phone number another order already holds: fix the inventory record
    SIM_INVENTORY_CONFLICT = "SIM_INVENTORY_CONFLICT"
    #: a SIM order ports a number but its MNP fields are incomplete or malformed: fix them, re-approve
    MNP_RESERVATION_INVALID = "MNP_RESERVATION_INVALID"
    #: the MNP reservation expired before the SIM was registered: the customer needs a new one
    MNP_RESERVATION_EXPIRED = "MNP_RESERVATION_EXPIRED"
    FREEBIT_REGISTRATION_FAILED = "FREEBIT_REGISTRATION_FAILED"
    FREEBIT_TIMEOUT = "FREEBIT_TIMEOUT"
    WHMCS_ORDER_REJECTED = "WHMCS_ORDER_REJECTED"
    WHMCS_SERVICE_UPDATE_FAILED = "WHMCS_SERVICE_UPDATE_FAILED"
    #: the ledger fulfilled the order, but Salesforce shows another order (WHMCS id, account or lines)
    LEDGER_MISMATCH = "LEDGER_MISMATCH"


class LedgerVerdict(StrEnum):
    """What a new request's snapshot says about an order the ledger calls fulfilled (``policy.check_ledger``)."""

    NO_EVIDENCE = "no_evidence"  # no snapshot, or one read before the order was fulfilled
    IN_SYNC = "in_sync"  # Salesforce shows it Activated with the ledger's WHMCS order
    REPAIR = "repair"  # the same order, without the write-back: send it again
    MISMATCH = "mismatch"  # Salesforce shows something the ledger did not fulfil: a human decides


# --- what a step function returns ----------------------------------------------------------------
# Business outcomes are values; technical trouble (timeouts, 5xx, Kafka down) is raised and retried.


@dataclass(frozen=True)
class Done:
    ids: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Skipped:
    reason: str


@dataclass(frozen=True)
class Wait:
    """An asynchronous upstream job is still running: look again after ``retry_after`` seconds."""

    retry_after: float
    ids: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WaitUntil:
    """The order waits until ``until`` (a scheduled activation): a durable timer, not a retry hop."""

    until: datetime


@dataclass(frozen=True)
class Park:
    code: ErrorCode
    message: str


@dataclass(frozen=True)
class Fail:
    """The order cannot proceed. ``compensated`` names earlier steps whose effect the failing step
    undid; they run again when the order resumes."""

    code: ErrorCode
    message: str
    compensated: tuple[Step, ...] = ()


Outcome = Done | Skipped | Wait | WaitUntil | Park | Fail
