"""Tracing (adapters/tracing.py): off by default, on by the OTEL_* variables; spans and the headers on Kafka.

Contract: a record produced inside a span carries that produce span's context as ``traceparent`` (the
hop) and, when the event is new, as ``ce_traceparent`` (its creation, never rewritten); the consumer's
span is the child of the hop and the handler's span the child of that; a retry or dead-letter copy
carries one ``traceparent`` (its own produce span, in the failed record's trace) and the original
``ce_traceparent``; a
record without a hop (a replayed dead letter) starts a new trace linked to its creation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from adapters import tracing
from events.base import to_envelope
from events.envelope import H_TRACEPARENT
from events.errors import InvalidPayload
from events.fulfillment import UpdateSalesforceRecord
from events.salesforce import OrderChanged
from events.topics import dlq_topic
from workers.config import ConfigError, RuntimeSettings, TracingSettings, load_settings
from workers.runtime import Message, Route, Worker
from workers.runtime.batch import BatchHandler, Outcome
from workers.runtime.decode import Decoder
from workers.runtime.testing import FakeClock, FakeConsumer, LoopbackProducer, WorkerRun

GROUP, SRC, OUT = "t.trace", "t.trace.src", "t.trace.out"
DLQ = dlq_topic(GROUP)

_PROVIDER = TracerProvider()
_EXPORTER = InMemorySpanExporter()
_PROVIDER.add_span_processor(SimpleSpanProcessor(_EXPORTER))


@pytest.fixture(scope="session")
def provider() -> TracerProvider:
    """One provider for the session: ``set_tracer_provider`` works once per process."""
    trace.set_tracer_provider(_PROVIDER)
    return _PROVIDER


@pytest.fixture
def spans(provider: TracerProvider) -> Iterator[InMemorySpanExporter]:
    tracing.use(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    tracing.disable()


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def one(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    [span] = named(exporter, name)
    return span


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def ctx(span: ReadableSpan) -> Any:
    context = span.get_span_context()
    assert context is not None
    return context


def traceparent_of(span: ReadableSpan) -> bytes:
    c = ctx(span)
    return f"00-{c.trace_id:032x}-{c.span_id:016x}-{int(c.trace_flags):02x}".encode()


def headers_named(headers: list[tuple[str, bytes]], name: str) -> list[bytes]:
    return [v for n, v in headers if n == name]


# --- configuration --------------------------------------------------------------------------------


def settings_with(monkeypatch: pytest.MonkeyPatch, **env: str) -> TracingSettings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings(env_file=None).tracing


def test_tracing_is_off_when_no_otel_variable_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_with(monkeypatch).exporting("fleet-x") is None


def test_an_otlp_endpoint_turns_tracing_on_with_the_traces_path_and_the_worker_as_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = settings_with(monkeypatch, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4318/")
    exporting = s.exporting("fleet-fulfillment")
    assert (exporting.exporter, exporting.endpoint, exporting.service_name) == (
        "otlp",
        "http://127.0.0.1:4318/v1/traces",
        "fleet-fulfillment",
    )


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"},
    ],
)
def test_sdk_disabled_or_exporter_none_keeps_tracing_off(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    assert settings_with(monkeypatch, **env).exporting("fleet-x") is None


def test_the_standard_variables_set_exporter_headers_sampler_and_service(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings_with(
        monkeypatch,
        OTEL_TRACES_EXPORTER="console",
        OTEL_SERVICE_NAME="svc",
        OTEL_EXPORTER_OTLP_HEADERS="authorization=Bearer%20x,tenant=a",
        OTEL_TRACES_SAMPLER="parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG="0.25",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment=staging",
    )
    e = s.exporting("fleet-x")
    assert (e.exporter, e.service_name, e.sampler_ratio) == ("console", "svc", 0.25)
    assert dict(e.headers) == {"authorization": "Bearer x", "tenant": "a"}
    assert dict(e.resource) == {"deployment.environment": "staging"}


def test_an_unknown_exporter_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER"):
        settings_with(monkeypatch, OTEL_TRACES_EXPORTER="zipkin").exporting("fleet-x")


# --- the consume runtime --------------------------------------------------------------------------


class Run(WorkerRun):
    source_topic = SRC

    def __init__(self, handlers: dict[Any, Any], *, dead_letter: bool = True) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.consumer = FakeConsumer({SRC: 1, OUT: 1, DLQ: 1})
        self.producer = LoopbackProducer(consumer=self.consumer)
        # the composition root's wrapping, with tracing on (``bootstrap.traced``, ``serve``)
        self.traced = tracing.TracingProducer(self.producer) if tracing.enabled() else self.producer
        route = Route("t", GROUP, (SRC,), handlers, in_place_attempts=1, retry_delays_ms=(), dead_letter=dead_letter)
        settings = RuntimeSettings(poll_timeout_ms=2, commit_interval_s=0.005)
        self.worker = Worker(route, self.consumer, self.traced, settings, sleep=self.clock.sleep, clock=self.clock)

    def records(self, topic: str) -> list[list[tuple[str, bytes]]]:
        return [list(h) for _, _, h in self.producer.on(topic)]


def test_off_the_runtime_dispatches_to_the_routes_own_handlers() -> None:
    """Off, the loop runs exactly the untraced code: the decoder's table holds the route's handlers."""

    async def handle(event: OrderChanged, msg: Message) -> None: ...

    assert not tracing.enabled()
    decoder = Decoder(Route("t", GROUP, (SRC,), {OrderChanged: handle}))
    assert decoder.table[OrderChanged.TYPE][1] is handle


async def test_a_record_produced_in_a_span_is_handled_in_its_trace_and_its_follow_up_carries_it(
    spans: InMemorySpanExporter,
) -> None:
    async def handle(event: OrderChanged, msg: Message) -> None:
        with tracing.span("work"):
            follow_up = UpdateSalesforceRecord(sobject="Order", record_id=event.sf_order_id, fields={"A": 1})
            await run.traced.publish(OUT, to_envelope(follow_up, source="/test"))

    run = Run({OrderChanged: handle})
    with tracing.span("origin"):
        await run.traced.publish(SRC, to_envelope(OrderChanged(sf_order_id="801A"), source="/test"))
    await run.until(lambda: len(run.records(OUT)) == 1)
    await run.finish()

    origin, sent = one(spans, "origin"), one(spans, f"{SRC} publish")
    process = one(spans, f"{SRC} process")
    [handler] = [s for s in spans.get_finished_spans() if s.name.startswith("handle ") and s.name.endswith(".handle")]
    work, follow = one(spans, "work"), one(spans, f"{OUT} publish")
    assert {ctx(s).trace_id for s in (origin, sent, process, handler, work, follow)} == {ctx(origin).trace_id}
    assert parent_id(sent) == ctx(origin).span_id
    assert parent_id(process) == ctx(sent).span_id and process.kind == trace.SpanKind.CONSUMER
    assert parent_id(handler) == ctx(process).span_id
    assert parent_id(follow) == ctx(work).span_id
    assert process.attributes is not None and process.attributes[tracing.ORDER_ID] == "801A"
    assert process.links == ()  # created in the same trace: nothing to link
    # on Kafka: the hop and the creation context, once each
    [src_headers] = run.records(SRC)
    assert headers_named(src_headers, "traceparent") == [traceparent_of(sent)]
    assert headers_named(src_headers, H_TRACEPARENT) == [traceparent_of(sent)]
    [out_headers] = run.records(OUT)
    assert headers_named(out_headers, "traceparent") == [traceparent_of(follow)]
    assert headers_named(out_headers, H_TRACEPARENT) == [traceparent_of(follow)]


async def test_a_dead_letter_carries_one_hop_of_the_failed_record_and_the_original_creation_context(
    spans: InMemorySpanExporter,
) -> None:
    async def handle(event: OrderChanged, msg: Message) -> None:
        raise InvalidPayload("refused")

    run = Run({OrderChanged: handle})
    with tracing.span("origin"):
        await run.traced.publish(SRC, to_envelope(OrderChanged(sf_order_id="801B"), source="/test"))
    await run.until(lambda: len(run.records(DLQ)) == 1)
    await run.finish()

    sent, process = one(spans, f"{SRC} publish"), one(spans, f"{SRC} process")
    assert process.status.status_code == trace.StatusCode.ERROR
    [dead] = run.records(DLQ)
    assert headers_named(dead, H_TRACEPARENT) == [traceparent_of(sent)]  # where the event was created
    [hop] = headers_named(dead, "traceparent")
    dl_publish = one(spans, f"{DLQ} publish")
    # produced after the handler's span ended: the copy continues the failed record's trace
    assert hop == traceparent_of(dl_publish) and parent_id(dl_publish) == ctx(sent).span_id


async def test_a_record_without_a_hop_starts_a_trace_that_links_where_the_event_was_created(
    spans: InMemorySpanExporter,
) -> None:
    """A replayed dead letter: ``fleet dlq replay`` drops the hop, ``ce_traceparent`` stays."""

    async def handle(event: OrderChanged, msg: Message) -> None: ...

    created = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    run = Run({OrderChanged: handle})
    run.consumer.append_event(SRC, OrderChanged(sf_order_id="801C"), traceparent=created)
    await run.until(lambda: run.committed() == 1)
    await run.finish()

    process = one(spans, f"{SRC} process")
    assert process.parent is None
    [link] = process.links
    assert (f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}") == (
        "0af7651916cd43dd8448eb211c80319c",
        "b7ad6b7169203331",
    )


async def test_a_batch_call_is_the_child_of_its_head_record_and_links_the_others(spans: InMemorySpanExporter) -> None:
    seen: list[int] = []

    async def write(msgs: Any) -> list[Outcome]:
        seen.append(len(msgs))
        return [None] * len(msgs)

    handler = BatchHandler(write)
    run = Run({UpdateSalesforceRecord: handler})
    parents = []
    for i in range(3):
        with tracing.span(f"origin {i}"):
            cmd = UpdateSalesforceRecord(sobject="Order", record_id=f"801D{i}", fields={})
            await run.traced.publish(SRC, to_envelope(cmd, source="/test"))
        parents.append(one(spans, f"origin {i}"))
    await run.until(lambda: run.committed() == 3)
    await run.finish()

    batches = named(spans, f"{GROUP} batch")
    assert sum(seen) == 3 and len(batches) == len(seen)
    first = batches[0]
    assert ctx(first).trace_id == ctx(parents[0]).trace_id
    assert {link.context.trace_id for link in first.links} == {ctx(p).trace_id for p in parents[1 : seen[0]]}
    assert first.attributes is not None and first.attributes["messaging.batch.message_count"] == seen[0]


# --- saga steps, vendor calls -----------------------------------------------------------------------


async def test_saga_steps_are_spans_tagged_with_the_order_id(spans: InMemorySpanExporter) -> None:
    from tests.unit.test_fulfillment_saga import World

    world = World()
    order_id = world.place_order("tanaka", "Internet", ["INT-1G-GOLD", "INT-INSTALL-SINGLE"])
    await world.request(order_id)

    saga = one(spans, "saga")
    steps = [s for s in spans.get_finished_spans() if s.name.startswith("saga step ")]
    assert len(steps) >= 3
    for step in steps:
        assert step.attributes is not None and step.attributes[tracing.ORDER_ID] == order_id
        assert parent_id(step) == ctx(saga).span_id
    assert saga.attributes is not None and saga.attributes[tracing.ORDER_ID] == order_id
    assert any(s.attributes and "fleet.step.whmcs_order_id" in s.attributes for s in steps)


async def test_a_vendor_call_is_a_client_span_and_carries_traceparent(spans: InMemorySpanExporter) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"result": "success"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        tracing.instrument_http(client, "whmcs")
        with tracing.span("step"):
            await client.post("http://whmcs.test/includes/api.php")

    call = next(s for s in spans.get_finished_spans() if s.kind == trace.SpanKind.CLIENT)
    assert call.attributes is not None and call.attributes["peer.service"] == "whmcs"
    assert parent_id(call) == ctx(one(spans, "step")).span_id
    assert seen[0].headers["traceparent"].encode() == traceparent_of(call)


def test_only_the_seam_imports_opentelemetry() -> None:
    """events/, schemas/, adapters/, workers/: ``adapters/tracing.py`` alone (devtools' collector and the
    benchmark are tools the product never imports)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    found = []
    for package in ("events", "schemas", "adapters", "workers"):
        for path in (root / package).rglob("*.py"):
            if path == root / "adapters" / "tracing.py" or "salesforce_pubsub" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                found += [f"{path.relative_to(root)}: {n}" for n in names if n.split(".")[0] == "opentelemetry"]
    assert found == []


async def test_the_webhook_request_is_a_server_span_and_probes_are_not_traced(spans: InMemorySpanExporter) -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    async def hook(request: web.Request) -> web.Response:
        with tracing.span("inside"):
            return web.Response(status=202)

    async def live(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(middlewares=[tracing.aiohttp_middleware(["/webhooks/whmcs"])])
    app.router.add_post("/webhooks/whmcs", hook)
    app.router.add_get("/livez", live)
    async with TestClient(TestServer(app)) as client:
        assert (await client.post("/webhooks/whmcs", data=b"{}")).status == 202
        assert (await client.get("/livez")).status == 200

    [server] = [s for s in spans.get_finished_spans() if s.kind == trace.SpanKind.SERVER]
    assert server.attributes is not None and server.name == "POST /webhooks/whmcs"
    assert parent_id(one(spans, "inside")) == ctx(server).span_id
