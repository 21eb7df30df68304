"""An operator's "resume this order": one audited activation request on the saga's first retry tier.

Owns the rule of ``fleet orders retry`` and of the console's "retry" button (both call
``request_retry``): refuse an order the saga never saw (unless forced) or one already fulfilled,
send the same activation request a wake-up is, and note who asked and why in the order's timeline.
Must not build clients (the caller hands it the store and a producer) or run any saga step itself:
the worker resumes the order from its first unfinished step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from adapters.kafka import ProducerPort
from adapters.saga_store import HistoryEntry, SagaStore
from workers.fulfillment.model import OrderState
from workers.fulfillment.wakeup import RetryTopicScheduler, resume_request

log = structlog.get_logger(__name__)


class RetryRefused(Exception):
    """The order cannot be resumed; the message says why."""


@dataclass(frozen=True)
class RetryRequest:
    sf_order_id: str
    operator: str
    reason: str = ""
    force: bool = False


async def request_retry(
    store: SagaStore,
    producer: ProducerPort,
    request: RetryRequest,
    *,
    group: str,
    tier_delays_ms: Sequence[int],
    clock_ms: Callable[[], int],
) -> str:
    """Send the activation request; returns its event id. Raises ``RetryRefused``."""
    oid = request.sf_order_id
    record = await store.get(oid)
    if record is None and not request.force:
        raise RetryRefused(f"order {oid} is unknown to the saga (use --force to start it)")
    if record is not None and record.order.state == OrderState.FULFILLED:
        raise RetryRefused(f"order {oid} is already fulfilled: nothing to resume")
    envelope = resume_request(oid, record.order.sf_account_id if record else None)
    await RetryTopicScheduler(producer, group, tier_delays_ms, clock_ms=clock_ms).send(envelope, 1, now=True)
    audit = {"by": request.operator, "event_id": envelope.id, "reason": request.reason, "group": group}
    await store.append_history(oid, HistoryEntry("retry_requested", None, audit))
    log.info("order_retry_requested", sf_order_id=oid, **audit)
    return envelope.id
