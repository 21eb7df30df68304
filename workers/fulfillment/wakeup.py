"""Durable delays for the saga: an activation request for the order, produced to the group's retry tier.

Owns how "look again in N seconds" and "resume this order now" travel: an ``OrderActivationRequested``
keyed by the order id on ``<group>.retry.<tier>`` with ``retry_not_before`` set, which the runtime
holds until due and then hands to the same handler as any activation request. Nothing sleeps, and
a crashed worker loses nothing (the record is in Kafka). Must not decide when to wait (``policy``).

Why not raise a retryable error until the job is done: a wait is not a failure. Raising would spend
the route's retry budget (3 in place, 2 tiers, then the dead letter) long before Freebit's 10-minute
jobs finish, and would hand the deadline to the runtime; the saga owns ``FREEBIT_TIMEOUT`` and its
cadence instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from adapters.kafka import ProducerPort
from adapters.saga_store import SagaOrder
from events import failure as fh
from events.base import to_envelope
from events.envelope import Envelope, to_record
from events.salesforce import OrderActivationRequested
from events.topics import retry_topic
from workers.fulfillment.run import child_envelope

#: ``ce_source`` of wake-ups the saga schedules for itself (stale ones are ignored: see ``saga._wanted``)
WAKEUP_SOURCE = "fleet/fulfillment/wakeup"
#: ``ce_source`` of the resume requests fired timers send (``timers.py``): they run only orders that
#: are still parked or scheduled
TIMER_SOURCE = "fleet/fulfillment/timer"
#: ``ce_source`` of operator-requested resumes (``fleet orders retry``)
RETRY_SOURCE = "fleet/cli/orders-retry"


class RetryTopicScheduler:
    """Schedules wake-ups on the retry tier whose delay fits best.

    ``retry_not_before`` is the tier's own delay, never a custom one: every record on a tier then
    falls due in the order it was produced, so a long wait never blocks a shorter one behind it.
    """

    def __init__(
        self, producer: ProducerPort, group: str, tier_delays_ms: Sequence[int], clock_ms: Callable[[], int]
    ) -> None:
        if not tier_delays_ms:
            raise ValueError("the fulfillment route needs at least one retry tier to schedule wake-ups")
        self._producer = producer
        self._group = group
        self._delays = tuple(tier_delays_ms)
        self._clock_ms = clock_ms

    def tier_for(self, delay_s: float) -> int:
        """The first tier at least as long as ``delay_s``, else the longest (1-based)."""
        wanted_ms = delay_s * 1000
        return next((n for n, d in enumerate(self._delays, start=1) if d >= wanted_ms), len(self._delays))

    async def schedule(self, order: SagaOrder, delay_s: float, cause: Envelope | None) -> str:
        """A wake-up of ``order`` after about ``delay_s``; returns its event id."""
        event = OrderActivationRequested(sf_order_id=order.sf_order_id, sf_account_id=order.sf_account_id)
        envelope = child_envelope(event, WAKEUP_SOURCE, cause)  # a fresh event id: the inbox must not dedupe it
        await self.send(envelope, self.tier_for(delay_s))
        return envelope.id

    async def send(self, envelope: Envelope, tier: int, *, now: bool = False) -> None:
        key, value, headers = to_record(envelope)
        due = self._clock_ms() + (0 if now else self._delays[tier - 1])
        headers += [(fh.RETRY_TIER, str(tier).encode()), (fh.NOT_BEFORE, str(due).encode())]
        await self._producer.publish_raw(retry_topic(self._group, tier), key, value, headers)


def resume_request(sf_order_id: str, sf_account_id: str | None, *, source: str = RETRY_SOURCE) -> Envelope:
    """An activation request that resumes an order from its first unfinished step (``fleet orders retry``)."""
    event = OrderActivationRequested(sf_order_id=sf_order_id, sf_account_id=sf_account_id)
    return to_envelope(event, source=source)
