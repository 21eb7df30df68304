"""What the saga does when a step cannot proceed: retry, park for a human, fail, or compensate.

Owns the mapping of upstream rejections to the error-code vocabulary, which codes park rather than
fail, and the Freebit polling schedule. ``docs/fulfillment.md`` is the prose version of this module;
keep the two together. Must not do I/O.
"""

from __future__ import annotations

from datetime import datetime

from events.errors import FleetError, MappingMissing, RejectedByUpstream
from workers.fulfillment.model import ErrorCode, Step

#: a rejection (``RejectedByUpstream`` / ``MappingMissing``) raised inside a step means this code.
#: Everything else (retryable errors, ``AuthenticationFailed``, ``InvalidPayload``, bugs) is raised
#: to the runtime: retried, then dead-lettered, with the step's attempts and last error recorded.
REJECTION_CODES: dict[Step, ErrorCode] = {
    Step.VALIDATE: ErrorCode.ORDER_INVALID,  # e.g. the Order id does not exist
    Step.RESOLVE_CLIENT: ErrorCode.WHMCS_CLIENT_NOT_MAPPED,
    Step.PAYMENT_GATE: ErrorCode.WHMCS_CLIENT_NOT_MAPPED,  # the mapped client does not exist in WHMCS
    Step.SIM_REGISTER: ErrorCode.FREEBIT_REGISTRATION_FAILED,
    Step.SIM_CONFIRM: ErrorCode.FREEBIT_REGISTRATION_FAILED,
    Step.SIM_VOICE: ErrorCode.FREEBIT_REGISTRATION_FAILED,
    Step.WHMCS_CREATE: ErrorCode.WHMCS_ORDER_REJECTED,
    Step.WHMCS_ACCEPT: ErrorCode.WHMCS_ORDER_REJECTED,
    Step.WHMCS_SIM_FIELDS: ErrorCode.WHMCS_SERVICE_UPDATE_FAILED,
}

#: adapter codes that say more precisely what is wrong than the step's default
UPSTREAM_CODES: dict[str, ErrorCode] = {
    "WHMCS_CLIENT_NOT_FOUND": ErrorCode.WHMCS_CLIENT_NOT_MAPPED,
    "WHMCS_PRODUCT_NOT_FOUND": ErrorCode.PRODUCT_MAPPING_MISSING,
}

#: codes that park the order (resumed automatically by the event that fixes them) instead of failing it
PARKING_CODES = frozenset({ErrorCode.PAYMENT_METHOD_MISSING})

#: How old an activation request's snapshot (the order as sf-cdc read it right after the change) may
#: be for ``validate`` to build the plan from it instead of reading Salesforce again. The snapshot is
#: the order as approved; a backlog of a few minutes is normal under a burst, while a request older
#: than this (a dead letter replayed hours later, a long retry) reads the order as it is now.
SNAPSHOT_MAX_AGE_S = 300.0

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
