"""The consume runtime's tracing: its handlers wrapped in a span per record (or per batch call).

Owns which span a handler runs in: ``traced(table, group)`` returns the route's dispatch table with
each handler wrapped (``adapters.tracing.record_span``: the record's CONSUMER span, child of the
Kafka hop, linked to the event's creation when that is another trace; an inner ``handle`` span named
by the handler), and each batch handler wrapped as a batch handler (``batch_span``). The decoder
calls it once, when tracing is on (``adapters.tracing.enabled``); off, the table is the route's own
and the loop runs exactly the code it runs without this module. Must not decide retries or commits:
a wrapped handler raises what the handler raised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adapters import tracing
from events.base import DomainEvent
from workers.runtime.batch import BatchHandler, Outcome
from workers.runtime.message import Message
from workers.runtime.route import Handler


def traced(
    table: dict[str, tuple[type[DomainEvent], Handler]], group: str
) -> dict[str, tuple[type[DomainEvent], Handler]]:
    """The dispatch table with every handler wrapped; one wrapper per handler object, so a batch
    handler shared by several types stays one object (a batch is cut where the handler changes)."""
    wrapped: dict[int, Handler] = {}
    out: dict[str, tuple[type[DomainEvent], Handler]] = {}
    for event_type, (model, handler) in table.items():
        w = wrapped.get(id(handler))
        if w is None:
            w = wrapped[id(handler)] = _wrap(handler, group)
        out[event_type] = (model, w)
    return out


def ids_of(event: Any) -> dict[str, Any]:
    """The ids a record's event carries, as span attributes (the Order Id as ``fleet.order.id``)."""
    attrs: dict[str, Any] = {}
    order = getattr(event, "sf_order_id", None)
    if order is None and getattr(event, "sobject", None) == "Order":  # a write-back command on the Order
        order = getattr(event, "record_id", None)
    if order is not None:
        attrs[tracing.ORDER_ID] = order
    for field, attribute in _IDS:
        value = getattr(event, field, None)
        if value is not None:
            attrs[attribute] = value
    return attrs


#: event field → span attribute, for the ids besides the Order Id
_IDS = (
    ("sf_account_id", "fleet.account.id"),
    ("whmcs_client_id", "fleet.whmcs.client_id"),
    ("whmcs_order_id", "fleet.whmcs.order_id"),
    ("webhook_id", "fleet.webhook.id"),
)


def _wrap(handler: Handler, group: str) -> Handler:
    if isinstance(handler, BatchHandler):
        return _TracedBatch(handler, group)
    name = f"handle {_name(handler)}"

    async def traced_handler(event: Any, msg: Message) -> None:
        with (
            tracing.record_span(
                msg.topic,
                group,
                msg.header_map,
                partition=msg.partition,
                offset=msg.offset,
                attempts=msg.attempts,
                attributes={tracing.EVENT_TYPE: msg.event_type, tracing.EVENT_ID: msg.event_id, **ids_of(event)},
            ),
            tracing.span(name),
        ):
            await handler(event, msg)

    return traced_handler


def _name(handler: Any) -> str:
    """The handler's function name (through ``functools.partial``, as ``bind`` functions build them)."""
    fn = getattr(handler, "func", handler)
    return str(getattr(fn, "__qualname__", None) or type(fn).__name__)


class _TracedBatch(BatchHandler):
    """A batch handler whose calls run in a ``<group> batch`` span (the sf-writer's write-back, the
    cache invalidation); keeps the wrapped handler's ``max_batch`` and its attributes (a worker
    serves a handler's ``collector``)."""

    def __init__(self, inner: BatchHandler, group: str) -> None:
        super().__init__(self._call, max_batch=inner.max_batch)
        self.inner, self.group = inner, group

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def _call(self, msgs: Sequence[Message]) -> Sequence[Outcome]:
        head = msgs[0]
        orders = sorted({o for m in msgs if (o := ids_of(m.event).get(tracing.ORDER_ID))})
        attrs: dict[str, Any] = {
            tracing.EVENT_ID: [m.event_id for m in msgs],
            tracing.EVENT_TYPE: sorted({m.event_type for m in msgs}),
        }
        if orders:
            attrs[tracing.ORDER_ID] = orders[0] if len(orders) == 1 else orders
        with tracing.batch_span(
            f"{self.group} batch", head.topic, self.group, [m.header_map for m in msgs], attrs
        ) as span:
            outcomes = await self.inner.handle_batch(msgs)
            failed = sum(1 for o in outcomes if o is not None)
            span.set_attribute("fleet.batch.not_done", failed)
            return outcomes
