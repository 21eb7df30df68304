"""Which fulfillment outcome the portal's live order view shows, and as what: the order-status notice.

Owns the mapping outcome event → ``OrderStatusNotice`` (the table docs/cache-keys.md, "The
order-status notice", mirrors): ``OrderActivationStarted`` → Activating, ``OrderFulfilled`` →
Activated, ``OrderFulfillmentFailed`` → Failed (but ``LEDGER_MISMATCH``, which leaves the order Activated:
no notice), ``OrderParked`` → Failed unless the park is a wait (``WAITS``: no notice, the portal
keeps showing Activating). Pure: ``batch`` publishes the notice in
the event's own pipeline span, after its keys are gone. Must not do I/O.
"""

from __future__ import annotations

from adapters.cache import OrderStatusNotice
from events.envelope import H_TIME
from events.fulfillment import OrderActivationStarted, OrderFulfilled, OrderFulfillmentFailed, OrderParked
from workers.runtime.message import Message

ACTIVATING = "Activating"
ACTIVATED = "Activated"
FAILED = "Failed"

#: parks that are a normal wait, not a problem: no notice (the portal still shows Activating). The
#: saga's ``workers.fulfillment.policy.QUIET_PARKING_CODES`` (a unit test keeps the two equal). Every
#: other park is something the customer or staff must fix, shown as Failed with its code:
#: ``PAYMENT_METHOD_MISSING`` is the portal's lifecycle stage ``activation.failedPayment``; the order
#: resumes by itself later and then announces Activating again.
WAITS = frozenset({"AWAITING_PROCESSED"})
#: failures that do not change the order's status: ``LEDGER_MISMATCH`` reports a request for an order
#: the ledger fulfilled whose Salesforce record disagrees; the order stays Activated, a human decides
NOT_A_STATUS = frozenset({"LEDGER_MISMATCH"})


def order_status(msg: Message) -> OrderStatusNotice | None:
    """The order-status notice of a fulfillment outcome, or None (another event, or a park that is a wait)."""
    event = msg.event
    code: str | None = None
    message: str | None = None
    if isinstance(event, OrderActivationStarted):
        status = ACTIVATING
    elif isinstance(event, OrderFulfilled):
        status = ACTIVATED
    elif isinstance(event, OrderFulfillmentFailed | OrderParked):
        if isinstance(event, OrderParked) and event.error_code in WAITS:
            return None
        if event.error_code in NOT_A_STATUS:
            return None
        status, code, message = FAILED, event.error_code, event.error_message
    else:
        return None
    raw_time = msg.header_map.get(H_TIME)
    at = raw_time.decode("utf-8", "replace") if raw_time else None
    return OrderStatusNotice(msg.event_id, event.sf_order_id, event.sf_account_id, status, code, message, at)
