"""A development trace collector: an OTLP/HTTP receiver that stores spans as JSON lines, and a tree view.

For looking at the fleet's traces where no Jaeger or collector runs (``docs/tracing.md``): point the
workers at it (``OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318``), and ``fleet traces show
--order <Salesforce Order Id>`` renders the order's traces as trees. It accepts what the SDK's
exporter sends, ``POST /v1/traces`` with an ``ExportTraceServiceRequest`` in protobuf (or OTLP JSON),
and answers as a collector does. Decoding uses ``opentelemetry-proto`` (the protocol's own messages):
the one import of OpenTelemetry outside ``adapters/tracing.py``, in a tool the product never imports.
Not a product component: no retention, no auth, loopback only.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

PATH = "/v1/traces"
#: the attributes a tree line shows (besides the service, the name and the timing)
SHOWN = (
    "fleet.order.id",
    "fleet.saga.step",
    "fleet.step.outcome",
    "fleet.saga.state",
    "fleet.event.type",
    "fleet.cdc.entity",
    "fleet.cdc.change_type",
    "fleet.whmcs.client_id",
    "fleet.whmcs.order_id",
    "fleet.step.whmcs_order_id",
    "fleet.attempts",
    "messaging.batch.message_count",
    "peer.service",
    "http.request.method",
    "http.method",
    "url.full",
    "http.url",
    "http.route",
    "http.response.status_code",
    "http.status_code",
    "db.operation.name",
)
KINDS = {0: "", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


def spans_of_request(body: bytes, content_type: str) -> list[dict[str, Any]]:
    """Flatten one OTLP ``ExportTraceServiceRequest`` (protobuf or JSON) into span dicts."""
    from google.protobuf.json_format import MessageToDict, Parse
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    if content_type.startswith("application/json"):
        Parse(body.decode(), request)
    else:
        request.ParseFromString(body)
    out: list[dict[str, Any]] = []
    for rs in request.resource_spans:
        resource = {a.key: _value(MessageToDict(a.value)) for a in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    {
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_id": s.parent_span_id.hex() or None,
                        "name": s.name,
                        "kind": KINDS.get(s.kind, str(s.kind)),
                        "service": resource.get("service.name", "?"),
                        "scope": ss.scope.name,
                        "start_ns": s.start_time_unix_nano,
                        "end_ns": s.end_time_unix_nano,
                        "status": {0: "unset", 1: "ok", 2: "error"}.get(s.status.code, "?"),
                        "attributes": {a.key: _value(MessageToDict(a.value)) for a in s.attributes},
                        "links": [{"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex()} for link in s.links],
                    }
                )
    return out


def _value(v: dict[str, Any]) -> Any:
    """An OTLP ``AnyValue`` (as protobuf's JSON mapping) as a plain value."""
    if "arrayValue" in v:
        return [_value(x) for x in v["arrayValue"].get("values", [])]
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in v:
            return v[key]
    if "intValue" in v:
        return int(v["intValue"])
    return None


class Collector:
    """The receiver: every span it is sent appended to ``out`` (JSON lines) and kept in ``spans``."""

    def __init__(self, out: Path | None) -> None:
        self.out = out
        self.spans: list[dict[str, Any]] = []
        self.changed = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post(PATH, self._export)
        return app

    async def _export(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            spans = spans_of_request(body, request.content_type)
        except Exception as exc:  # a body we cannot read: the exporter logs it and drops the batch
            return web.Response(status=400, text=f"cannot decode: {exc}")
        self.spans.extend(spans)
        if self.out is not None:
            with self.out.open("a") as f:
                for span in spans:
                    f.write(json.dumps(span, separators=(",", ":")) + "\n")
        self.changed.set()
        if request.content_type.startswith("application/json"):
            return web.json_response({})
        return web.Response(body=b"", content_type="application/x-protobuf")  # an empty ExportTraceServiceResponse


async def serve(collector: Collector, host: str, port: int, stop: asyncio.Event) -> None:
    runner = web.AppRunner(collector.app(), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        await stop.wait()
    finally:
        await runner.cleanup()


def load(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def traces_of_order(spans: Iterable[dict[str, Any]], order_id: str) -> list[list[dict[str, Any]]]:
    """The traces holding a span tagged ``fleet.order.id`` = ``order_id`` (or listing it), oldest first."""
    spans = list(spans)
    by_trace: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in spans:
        by_trace[s["trace_id"]].append(s)
    wanted = []
    for trace_id, members in by_trace.items():
        for s in members:
            tag = s["attributes"].get("fleet.order.id")
            if tag == order_id or (isinstance(tag, list) and order_id in tag) or order_id in str(tag).split(","):
                wanted.append(trace_id)
                break
    found = [by_trace[t] for t in wanted]
    return sorted(found, key=lambda members: min(s["start_ns"] for s in members))


#: the instrumentation scopes of the database and cache client spans (``show --no-db``)
DB_SCOPES = ("opentelemetry.instrumentation.asyncpg", "opentelemetry.instrumentation.redis")


def without_db(members: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trace without its Postgres and Redis client spans (leaves: nothing hangs below them)."""
    return [s for s in members if not s["scope"].startswith(DB_SCOPES)]


def render(members: list[dict[str, Any]]) -> str:
    """One trace as an indented tree: start offset and duration in ms, service, kind, name, attributes."""
    by_id = {s["span_id"]: s for s in members}
    children: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
    for s in members:
        parent = s["parent_id"] if s["parent_id"] in by_id else None
        children[parent].append(s)
    for kids in children.values():
        kids.sort(key=lambda s: s["start_ns"])
    t0 = min(s["start_ns"] for s in members)
    lines = [f"trace {members[0]['trace_id']}  ({len(members)} spans)"]

    def walk(span: dict[str, Any], prefix: str, last: bool) -> Iterator[str]:
        start = (span["start_ns"] - t0) / 1e6
        took = (span["end_ns"] - span["start_ns"]) / 1e6
        attrs = " ".join(f"{k}={_short(span['attributes'][k])}" for k in SHOWN if k in span["attributes"])
        links = f" links={[link['trace_id'][:8] for link in span['links']]}" if span["links"] else ""
        error = " ERROR" if span["status"] == "error" else ""
        kind = f" [{span['kind']}]" if span["kind"] not in ("", "internal") else ""
        branch = "└─ " if last else "├─ "
        head = f"{start:8.1f} {took:7.1f}  {prefix}{branch}{span['service']}: {span['name']}{kind}{error}"
        yield f"{head}  {attrs}{links}".rstrip()
        kids = children.get(span["span_id"], [])
        for n, kid in enumerate(kids):
            yield from walk(kid, prefix + ("   " if last else "│  "), n == len(kids) - 1)

    lines.append("start_ms dur_ms")
    roots = children[None]
    for n, root in enumerate(roots):
        lines.extend(walk(root, "", n == len(roots) - 1))
    return "\n".join(lines)


def _short(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, list) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."
