"""What the saga does when a step cannot proceed: retry, park for a human, fail, or compensate.

Owns the mapping of upstream rejections to the error-code vocabulary, which codes park rather than
fail, the Freebit polling schedule, and what a new request for a fulfilled order means
(``check_ledger``: repair a lost write-back, or a mismatch a human must decide).
``docs/fulfillment.md`` is the prose version of this module; keep the two together. Must not do I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from events.errors import FleetError, MappingMissing, RejectedByUpstream
from events.salesforce import OrderSnapshot
from workers.fulfillment.model import ErrorCode, LedgerVerdict, Step
from workers.fulfillment.plan import OrderPlan
from workers.fulfillment.writeback import ACTIVATED

#: a rejection (``RejectedByUpstream`` / ``MappingMissing``) raised inside a step means this code.
#: Everything else (retryable errors, ``AuthenticationFailed``, ``InvalidPayload``, bugs) is raised
#: to the runtime: retried, then dead-lettered, with the step's attempts and last error recorded.
REJECTION_CODES: dict[Step, ErrorCode] = {
    Step.VALIDATE: ErrorCode.ORDER_INVALID,  # e.g. the Order id does not exist
    Step.SCHEDULE: ErrorCode.ORDER_INVALID,
    Step.RESOLVE_CLIENT: ErrorCode.WHMCS_CLIENT_NOT_MAPPED,
    Step.PAYMENT_GATE: ErrorCode.WHMCS_CLIENT_NOT_MAPPED,  # the mapped client does not exist in WHMCS
    Step.SIM_PROCESSED: ErrorCode.ORDER_INVALID,  # the Order id no longer exists
    Step.SIM_REGISTER: ErrorCode.FREEBIT_REGISTRATION_FAILED,
    Step.SIM_CONFIRM: ErrorCode.FREEBIT_REGISTRATION_FAILED,
    Step.SIM_VOICE: ErrorCode.FREEBIT_REGISTRATION_FAILED,
    Step.WHMCS_CREATE: ErrorCode.WHMCS_ORDER_REJECTED,
    Step.WHMCS_ACCEPT: ErrorCode.WHMCS_ORDER_REJECTED,
    Step.WHMCS_LINKS: ErrorCode.WHMCS_SERVICE_UPDATE_FAILED,
    Step.WHMCS_SIM_FIELDS: ErrorCode.WHMCS_SERVICE_UPDATE_FAILED,
}

#: adapter codes that say more precisely what is wrong than the step's default
UPSTREAM_CODES: dict[str, ErrorCode] = {
    "WHMCS_CLIENT_NOT_FOUND": ErrorCode.WHMCS_CLIENT_NOT_MAPPED,
    "WHMCS_PRODUCT_NOT_FOUND": ErrorCode.PRODUCT_MAPPING_MISSING,
}

#: codes that park the order (resumed automatically by the event that fixes them) instead of failing it
PARKING_CODES = frozenset({ErrorCode.PAYMENT_METHOD_MISSING, ErrorCode.AWAITING_PROCESSED})
#: parks that are a normal wait, not a problem: no error code is written to the Order (staff see
#: Status = Approved with Activation_Status__c = Activating, which already says "process me")
QUIET_PARKING_CODES = frozenset({ErrorCode.AWAITING_PROCESSED})
#: the Order.Status that lets a SIM order's Freebit steps run (domain-facts §2.3, since 2026-03-07)
SIM_GO_STATUS = "Processed"

#: How old an activation request's snapshot (the order as sf-cdc read it right after the change) may
#: be for ``validate`` to build the plan from it instead of reading Salesforce again. The snapshot is
#: the order as approved; a backlog of a few minutes is normal under a burst, while a request older
#: than this (a dead letter replayed hours later, a long retry) reads the order as it is now.
SNAPSHOT_MAX_AGE_S = 300.0


def payment_recheck_delay(rechecks: int, schedule: list[float]) -> float:
    """Seconds until the next re-check of an order parked for a missing pay method, after
    ``rechecks`` re-checks so far: ``schedule`` in order, its last value repeating."""
    return float(schedule[min(rechecks, len(schedule) - 1)])


#: Freebit polling: first look after 5 s, doubling, at most once a minute (PA03-02, one account per call)
POLL_FIRST_S = 5.0
POLL_MAX_S = 60.0


def rejection_code(step: Step, exc: BaseException) -> ErrorCode | None:
    """The business error an exception raised in ``step`` means, or None to raise it to the runtime."""
    if not isinstance(exc, RejectedByUpstream | MappingMissing) or step not in REJECTION_CODES:
        return None
    code = exc.code if isinstance(exc, FleetError) else ""
    return UPSTREAM_CODES.get(code, REJECTION_CODES[step])


def poll_delay(attempt: int, remaining_s: float) -> float:
    """Seconds until the next look at an asynchronous Freebit job (never past the deadline)."""
    delay = min(POLL_FIRST_S * 2.0 ** max(attempt - 1, 0), POLL_MAX_S)
    return max(min(delay, remaining_s), 1.0)


def snapshot_usable(read_at: datetime, now: datetime) -> bool:
    """May ``validate`` plan from a snapshot read at ``read_at``? (Clock skew backwards counts as fresh.)"""
    return (now - read_at).total_seconds() <= SNAPSHOT_MAX_AGE_S


def reverts_status(order_type: str | None) -> bool:
    """A failed SIM order goes back to ``Status = Approved`` so staff can re-trigger it (portal, Mar 2026)."""
    return order_type == "SIM"


# --- a new request for an order the ledger calls fulfilled ------------------------------------------


@dataclass(frozen=True)
class LedgerCheck:
    """``verdict`` and, for a mismatch, every ``difference`` between Salesforce and the ledger."""

    verdict: LedgerVerdict
    reason: str
    differences: tuple[str, ...] = ()


def check_ledger(
    plan: OrderPlan, whmcs_order_id: int | None, fulfilled_at: datetime | None, snapshot: OrderSnapshot | None
) -> LedgerCheck:
    """Compare what Salesforce showed (the request's snapshot) with what the ledger fulfilled.

    Only a snapshot of this order read after it was fulfilled is evidence: an older one (a replay,
    a late duplicate) shows it as it was before the write-back. The same order (account, lines and
    their WHMCS products, and no other WHMCS order) without ``Activated`` and its WHMCS order id is
    a lost write-back: ``REPAIR``. Anything else that differs is a ``MISMATCH``; the saga never
    decides between the two records (see ``docs/fulfillment.md``, "A request for a fulfilled order")."""
    if snapshot is None or not same_record(snapshot.sf_order_id, plan.sf_order_id):
        return LedgerCheck(LedgerVerdict.NO_EVIDENCE, "the request carries no snapshot of the order")
    if fulfilled_at is not None and _aware(snapshot.read_at) <= fulfilled_at:
        return LedgerCheck(LedgerVerdict.NO_EVIDENCE, "the snapshot was read before the order was fulfilled")
    differences = tuple(_differences(plan, whmcs_order_id, snapshot))
    if differences:
        return LedgerCheck(LedgerVerdict.MISMATCH, "; ".join(differences), differences)
    shown = f"Activation_Status__c={snapshot.activation_status}, WHMCS_Order_ID__c={snapshot.whmcs_order_id or 'empty'}"
    if snapshot.whmcs_order_id and snapshot.activation_status == ACTIVATED:
        return LedgerCheck(LedgerVerdict.IN_SYNC, f"Salesforce shows {shown}")
    return LedgerCheck(LedgerVerdict.REPAIR, f"Salesforce shows {shown} (Status={snapshot.status})")


def mismatch_message(whmcs_order_id: int | None, whmcs_client_id: int | None, check: LedgerCheck) -> str:
    """``Activation_Error_Message__c`` of ``LEDGER_MISMATCH``: both sides, the ledger's WHMCS order first
    (the field keeps 255 characters)."""
    return (
        f"Fulfilled as WHMCS order {whmcs_order_id} (client {whmcs_client_id}), but Salesforce shows "
        f"{check.reason}. Nothing was created; check both and correct the order."
    )


def same_record(a: str, b: str) -> bool:
    """Do two Salesforce ids name one record? (The API always answers 18 characters; a 15-character
    id is the same record as the 18-character id it begins.)"""
    return a == b if len(a) == len(b) else a[:15] == b[:15]


def _differences(plan: OrderPlan, whmcs_order_id: int | None, snapshot: OrderSnapshot) -> list[str]:
    found: list[str] = []
    shown_order = (snapshot.whmcs_order_id or "").strip()
    if shown_order and shown_order != str(whmcs_order_id):
        found.append(f"WHMCS_Order_ID__c {shown_order}")
    if snapshot.sf_account_id and plan.sf_account_id and not same_record(snapshot.sf_account_id, plan.sf_account_id):
        found.append(f"AccountId {snapshot.sf_account_id} (ledger: {plan.sf_account_id})")
    billed = {line.order_item_id: line.pid for line in plan.lines}
    shown = {line.sf_order_item_id: _pid(line.whmcs_product_id) for line in snapshot.lines}
    if shown.keys() != billed.keys():
        found.append(f"order lines {sorted(shown)} (ledger: {sorted(billed)})")
    else:
        found += [
            f"line {item} with WHMCS pid {pid} (ledger: {billed[item]})"
            for item, pid in shown.items()
            if pid is not None and pid != billed[item]
        ]
    return found


def _pid(text: str | None) -> int | None:
    value = (text or "").strip()
    return int(value) if value.isdigit() else None


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
