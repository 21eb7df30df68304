"""The tracing seam: the one module of the fleet that imports OpenTelemetry.

Off by default (``workers.config.TracingSettings``, read from the standard ``OTEL_*`` variables). Off,
nothing here imports the SDK, the composition root wraps nothing, and the code that asks pays one
check of ``enabled()`` (a module global) where it builds something, never per record: the consume
runtime wraps its handlers only when tracing is on (``workers.runtime.traced``), the composition root
wraps its producers (``TracingProducer``) and instruments its HTTP clients only then. ``span`` (saga
steps, CDC deliveries) returns a shared null context when off.

Where the maintained instrumentations fit, they are used: ``opentelemetry-instrumentation-httpx`` on
each vendor client (Salesforce, WHMCS, Freebit; ``instrument_http``), ``-aiohttp-server`` on the
webhook receiver's app (``aiohttp_middleware``), ``-asyncpg`` and ``-redis`` process-wide.
Where they do not, the spans are ours, named and tagged as the messaging conventions say:

* Kafka produce (``TracingProducer``), not ``opentelemetry-instrumentation-aiokafka``: it wraps
  ``AIOKafkaProducer.send`` only, so the webhook receiver's closed batches (``create_batch`` /
  ``send_batch``, ``adapters.kafka.BatchingProducer``) would carry no context; it injects
  ``traceparent`` only into a mutable list of headers (a tuple: nothing propagates); and it
  appends, so a retry or dead-letter copy (which keeps the original headers) would carry two
  ``traceparent`` headers, and the propagator reads the first: the stale hop.
* Kafka consume (``record_span``, ``batch_span``): its receive span ends before the handler runs
  (and ``getmany`` adds a poll span and a span per topic for every fetch), so a handler's spans
  would not be inside it. The runtime opens the record's span around the handler instead.

Two contexts travel with a record (docs/tracing.md): the Kafka header ``traceparent`` is the hop
(the span that produced this copy: the consumer's span is its child), replaced at each produce; the
CloudEvents extension ``ce_traceparent`` is where the event was created, written by the first traced
producer and never rewritten, so it survives retry tiers, dead letters and replays. A consumer's span
links it when it belongs to another trace (a replayed dead letter, whose hop the replay removed).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from events.envelope import H_HOP_TRACEPARENT, H_ID, H_TRACEPARENT, Envelope, to_record

if TYPE_CHECKING:
    import asyncio

    import httpx
    from aiohttp import web
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Link, Span, Tracer

    from adapters.kafka.producer import Delivered, ProducerPort

#: the W3C trace-context header of the Kafka hop (the CloudEvents one is ``events.envelope.H_TRACEPARENT``)
HOP = H_HOP_TRACEPARENT

#: the span attribute the console searches traces by: the Salesforce Order Id
ORDER_ID = "fleet.order.id"
EVENT_ID = "fleet.event.id"
EVENT_TYPE = "fleet.event.type"

_tracer: Tracer | None = None
_NULL: contextlib.nullcontext[None] = contextlib.nullcontext()


def enabled() -> bool:
    """Is tracing on in this process (``configure`` or ``use`` ran)?"""
    return _tracer is not None


@dataclass(frozen=True)
class Exporting:
    """What ``configure`` builds from (plain values: ``workers.config.TracingSettings`` decides them)."""

    service_name: str
    exporter: str = "otlp"  # otlp (OTLP/HTTP protobuf) | console
    endpoint: str | None = None  # the traces endpoint, ``.../v1/traces``; None: the SDK's default
    headers: Mapping[str, str] | None = None
    sampler_ratio: float = 1.0  # parent-based, ratio for root spans
    resource: Mapping[str, str] | None = None


def configure(exporting: Exporting) -> Callable[[], None]:
    """Turn tracing on for this process: a ``TracerProvider`` with a batch processor on the exporter,
    the global provider and W3C propagator, the asyncpg and redis instrumentations. Returns the
    shutdown (flushes what is queued). Called once per process, by the composition root."""
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    resource = Resource.create({"service.name": exporting.service_name, **(exporting.resource or {})})
    provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(exporting.sampler_ratio)))
    exporter: SpanExporter
    if exporting.exporter == "console":
        exporter = ConsoleSpanExporter(service_name=exporting.service_name)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=exporting.endpoint, headers=dict(exporting.headers or {}) or None)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    use(provider, instrument_libraries=True)
    return provider.shutdown


def use(provider: TracerProvider, *, instrument_libraries: bool = False) -> None:
    """Turn tracing on with ``provider`` (tests: one session-wide provider with an in-memory exporter)."""
    global _tracer
    _tracer = provider.get_tracer("fulfillment-fleet")
    if instrument_libraries:
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        AsyncPGInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
        RedisInstrumentor().instrument(tracer_provider=provider)


def disable() -> None:
    """Off again (tests)."""
    global _tracer
    _tracer = None


def _on() -> Tracer:
    assert _tracer is not None, "tracing is off: check enabled() first"
    return _tracer


# --- spans of our own -----------------------------------------------------------------------------


def span(name: str, attributes: Mapping[str, Any] | None = None) -> contextlib.AbstractContextManager[Any]:
    """An internal span around a block (a saga step, a CDC delivery); the shared null context when off."""
    tracer = _tracer
    if tracer is None:
        return _NULL
    return tracer.start_as_current_span(name, attributes=_clean(attributes))


def set_attributes(attributes: Mapping[str, Any]) -> None:
    """Tag the current span (ids learnt inside it: the WHMCS order id a step created). Off: nothing."""
    if _tracer is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes(_clean(attributes))


def current_traceparent() -> str | None:
    """The current span's context as a W3C ``traceparent`` value; None when off or outside a span."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


@contextlib.contextmanager
def record_span(
    topic: str,
    group: str,
    headers: Mapping[str, bytes | None],
    *,
    partition: int,
    offset: int,
    attempts: int,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[Span]:
    """The CONSUMER span of one record (``<topic> process``): the child of the hop's ``traceparent``;
    linked to the event's creation context (``ce_traceparent``) when that is another trace."""
    parent, links = _contexts(headers)
    attrs = {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": topic,
        "messaging.consumer.group.name": group,
        "messaging.destination.partition.id": str(partition),
        "messaging.kafka.offset": offset,
        "messaging.message.id": _text(headers.get(H_ID)),
        "fleet.attempts": attempts,
        **(attributes or {}),
    }
    from opentelemetry.trace import SpanKind

    with _on().start_as_current_span(
        f"{topic} process", context=parent, kind=SpanKind.CONSUMER, links=links, attributes=_clean(attrs)
    ) as s:
        yield s


@contextlib.contextmanager
def batch_span(
    name: str, topic: str, group: str, headers: Sequence[Mapping[str, bytes | None]], attributes: Mapping[str, Any]
) -> Iterator[Span]:
    """The CONSUMER span of a batch handler's call: the child of its head record's hop (so a batch of
    one order's records stays in that order's trace), linked to every other record's hop and to any
    creation context from another trace."""
    parent, links = _contexts(headers[0]) if headers else (None, [])
    for h in headers[1:]:
        other, more = _contexts(h)
        links.extend(more)
        if other is not None:
            from opentelemetry import trace
            from opentelemetry.trace import Link

            links.append(Link(trace.get_current_span(other).get_span_context()))
    attrs = {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": topic,
        "messaging.consumer.group.name": group,
        "messaging.batch.message_count": len(headers),
        **attributes,
    }
    from opentelemetry.trace import SpanKind

    with _on().start_as_current_span(
        name, context=parent, kind=SpanKind.CONSUMER, links=links, attributes=_clean(attrs)
    ) as s:
        yield s


def _contexts(headers: Mapping[str, bytes | None]) -> tuple[Context | None, list[Link]]:
    """(the hop's context or None, a link to the creation context when it is another trace)."""
    from opentelemetry import trace
    from opentelemetry.trace import Link

    parent = _extract(headers.get(HOP))
    created = _extract(headers.get(H_TRACEPARENT))
    links: list[Link] = []
    if created is not None:
        made = trace.get_current_span(created).get_span_context()
        hop_trace = trace.get_current_span(parent).get_span_context().trace_id if parent is not None else None
        if made.trace_id != hop_trace:
            links.append(Link(made, {"fleet.link": "created"}))
    return parent, links


def _extract(raw: bytes | str | None) -> Context | None:
    if not raw:
        return None
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    global _propagator
    if _propagator is None:
        _propagator = TraceContextTextMapPropagator()
    value = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
    ctx = _propagator.extract({HOP: value})
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


_propagator: Any = None  # the W3C trace-context propagator, built on first use


# --- Kafka produce --------------------------------------------------------------------------------


def stamp(headers: Iterable[tuple[str, bytes]], traceparent: str | None) -> list[tuple[str, bytes]]:
    """``headers`` with the hop ``traceparent`` replaced by ``traceparent`` (removed when None), and
    ``ce_traceparent`` added when the record is a CloudEvent without one (set once: never rewritten).
    Pure: also what a dead-letter replay uses to drop the stale hop with tracing off."""
    out = [(n, v) for n, v in headers if n != HOP]
    if traceparent is not None:
        value = traceparent.encode()
        if any(n == H_ID for n, _ in out) and not any(n == H_TRACEPARENT for n, _ in out):
            out.append((H_TRACEPARENT, value))
        out.append((HOP, value))
    return out


class TracingProducer:
    """A ``ProducerPort`` around another: one PRODUCER span per record (``<topic> publish``, the child
    of the current span), whose context goes in the record's ``traceparent``; a new event's
    ``ce_traceparent`` is the same context. Built by the composition root only when tracing is on."""

    def __init__(self, inner: ProducerPort) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:  # flush, and whatever else the wrapped producer offers
        return getattr(self.inner, name)

    async def publish(self, topic: str, envelope: Envelope) -> Delivered:
        key, value, headers = to_record(envelope)
        return await self.publish_raw(topic, key, value, headers)

    async def publish_raw(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
        partition: int | None = None,
    ) -> Delivered:
        with self._span(topic, key, headers) as stamped:
            return await self.inner.publish_raw(topic, key, value, stamped, partition)

    def submit(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]
    ) -> asyncio.Future[Delivered]:
        with self._span(topic, key, headers) as stamped:  # the span covers the hand-over, not the ack
            return self.inner.submit(topic, key, value, stamped)

    @contextlib.contextmanager
    def _span(
        self, topic: str, key: bytes | None, headers: Sequence[tuple[str, bytes]]
    ) -> Iterator[list[tuple[str, bytes]]]:
        from opentelemetry.trace import SpanKind

        attrs = {
            "messaging.system": "kafka",
            "messaging.operation.type": "send",
            "messaging.destination.name": topic,
            "messaging.kafka.message.key": _text(key),
            "messaging.message.id": _text(dict(headers).get(H_ID)),
        }
        from opentelemetry import trace

        parent = None
        if not trace.get_current_span().get_span_context().is_valid:
            # a copy produced outside any span (the runtime's retry and dead-letter path runs after
            # the handler's span ended) continues the trace of the record it copies
            parent = _extract(next((v for n, v in headers if n == HOP), None))
        with _on().start_as_current_span(
            f"{topic} publish", context=parent, kind=SpanKind.PRODUCER, attributes=_clean(attrs)
        ):
            yield stamp(headers, current_traceparent())


# --- maintained instrumentations ------------------------------------------------------------------


def instrument_http(client: httpx.AsyncClient, upstream: str) -> None:
    """A CLIENT span per request of ``client`` (opentelemetry-instrumentation-httpx), tagged with the
    vendor (``peer.service``); the request carries ``traceparent`` (the sandboxes ignore it)."""
    from opentelemetry import trace
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    async def tag(span: Span, _request: Any) -> None:  # an AsyncClient calls async hooks only
        span.set_attribute("peer.service", upstream)

    HTTPXClientInstrumentor.instrument_client(client, tracer_provider=trace.get_tracer_provider(), request_hook=tag)


def aiohttp_middleware(paths: Collection[str]) -> Callable[..., Any]:
    """opentelemetry-instrumentation-aiohttp-server's middleware, for one app's ``paths`` (the webhook
    receiver's POST; not its probes and metrics, scraped every few seconds).

    Its instrumentor replaces ``aiohttp.web.Application`` process-wide, so every app built later
    (the health and metrics servers) would trace too, and its middleware needs the globals
    ``instrument()`` sets. So: instrument, take the middleware, put ``Application`` back."""
    from opentelemetry import trace
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor, create_aiohttp_middleware

    instrumentor = AioHttpServerInstrumentor()
    provider = trace.get_tracer_provider()
    if not instrumentor.is_instrumented_by_opentelemetry:
        with warnings.catch_warnings():
            # its replacement subclasses web.Application, which aiohttp 3.14 deprecates; it is put back below
            warnings.simplefilter("ignore", DeprecationWarning)
            instrumentor.instrument(tracer_provider=provider)
        instrumentor.uninstrument()  # web.Application as it was; the globals stay set
    traced: Callable[[web.Request, Any], Awaitable[web.StreamResponse]] = create_aiohttp_middleware(
        tracer_provider=provider
    )
    wanted = frozenset(paths)
    from aiohttp import web as aioweb

    @aioweb.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path in wanted:
            return await traced(request, handler)
        response: web.StreamResponse = await handler(request)
        return response

    return middleware


def _clean(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """OpenTelemetry refuses None values: drop them."""
    return {k: v for k, v in (attributes or {}).items() if v is not None}


def _text(raw: bytes | None) -> str | None:
    return raw.decode("utf-8", "replace") if raw is not None else None
