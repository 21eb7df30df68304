"""The Salesforce Pub/Sub API (gRPC) pieces the CDC ingress builds on: channel, metadata, errors, schemas, decoding.

``open_channel`` makes the one HTTP/2 connection (TLS, keepalive pings, 1 MB+ messages);
``call_metadata`` the ``accesstoken``/``instanceurl``/``tenantid`` every call carries; ``error_code``
reads the ``error-code`` trailer Salesforce ends a failed stream with. ``SchemaCache`` fetches each
Avro schema once per ``schema_id`` (a fingerprint: a field added to the object gives a new id
mid-stream, and older events keep theirs). ``to_cometd`` turns a decoded event into the message
shape the Streaming API (CometD) delivers, so the translator and everything after it are the same
for both transports:

* Pub/Sub sends every field, unchanged ones null; CometD sends only the changed ones. Only
  ``nulledFields`` says a field was cleared, so a null value is kept only for fields named there
  (or in ``changedFields``), and dropped otherwise;
* ``changedFields``/``nulledFields``/``diffFields`` arrive as hex bitmaps over the schema's field
  positions (``0x…`` for top-level fields, ``P-0x…`` for the children of the compound field at
  position P); they become names (``BillingAddress.City`` for a child), as CometD spells them;
* DateTime and Date fields arrive as epoch milliseconds; CometD sends ISO strings. Which long is a
  date is read from the field's ``doc`` (``…:DateTime`` / ``…:Date``).

Why hand-written: Salesforce ships no Python client, and the small PyPI ones (``aiosfpubsub``,
``pysfpubsub``) neither expand bitmaps nor map error codes (docs/ingress.md). Must not subscribe,
retry, checkpoint or read configuration: ``workers.ingress.pubsub_source`` does.
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import fastavro
import grpc
from grpc import aio

from adapters.salesforce.auth import AccessToken
from schemas.salesforce_pubsub import pubsub_api_pb2 as pb

#: every Pub/Sub error code starts with this (``…subscription.fetch.replayid.corrupted``)
ERROR_PREFIX = "sfdc.platform.eventbus.grpc."
#: events may be up to 1 MB each, and a FetchResponse carries up to 100 of them
MAX_MESSAGE_BYTES = 128 * 1024 * 1024
_HEADER = "ChangeEventHeader"
_BITMAP_FIELDS = ("changedFields", "nulledFields", "diffFields")
_LOOPBACK = ("localhost", "127.0.0.1", "[::1]", "::1")
_MEMO_LIMIT = 4096


# --- connection ---------------------------------------------------------------------------------
def is_loopback(endpoint: str) -> bool:
    host = endpoint.rsplit(":", 1)[0] if endpoint.count(":") == 1 or endpoint.startswith("[") else endpoint
    return host in _LOOPBACK


def open_channel(endpoint: str, *, tls: bool | None = None, keepalive_s: float = 60.0) -> aio.Channel:
    """One channel (HTTP/2 connection) for every stream. Keepalive pings find a dead connection
    (the application watchdog finds a live connection whose stream went silent). ``tls`` None:
    TLS unless ``endpoint`` is loopback (the sandbox)."""
    options = [
        ("grpc.keepalive_time_ms", int(keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    if tls is None:
        tls = not is_loopback(endpoint)
    if tls:
        return aio.secure_channel(endpoint, grpc.ssl_channel_credentials(), options=options)
    return aio.insecure_channel(endpoint, options=options)


def call_metadata(token: AccessToken) -> tuple[tuple[str, str], ...]:
    """The authentication metadata of every call (the org id is the ``tenantid``)."""
    return (
        ("accesstoken", token.access_token),
        ("instanceurl", token.instance_url),
        ("tenantid", token.org_id or ""),
    )


def error_code(exc: BaseException) -> str:
    """The ``error-code`` trailer without its common prefix (``subscription.fetch.replayid.corrupted``),
    or the gRPC status name (``UNAVAILABLE``) when the server sent none (a transport failure)."""
    if not isinstance(exc, aio.AioRpcError):
        return type(exc).__name__
    for key, value in exc.trailing_metadata() or ():
        if key == "error-code":
            text = value.decode() if isinstance(value, bytes) else str(value)
            return text.removeprefix(ERROR_PREFIX)
    return str(exc.code().name)


# --- schemas ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EventSchema:
    """A parsed Avro schema and what decoding needs from it: field names by position, the
    children of compound fields, and which fields hold epoch-millisecond dates."""

    schema_id: str
    parsed: Any
    fields: tuple[str, ...]
    children: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    dates: Mapping[str, str] = field(default_factory=dict)  # field (or "Parent.Child") -> "DateTime" | "Date"
    #: bitmap lists already expanded (a stream repeats a handful of them: the same fields change
    #: together); bounded by ``_MEMO_LIMIT``, a plain dict so a hit costs one lookup
    _memo: dict[tuple[str, ...], tuple[str, ...]] = field(default_factory=dict, compare=False, repr=False)

    def names(self, entries: Sequence[str] | None) -> tuple[str, ...]:
        """``expand_bitmaps``, memoised per bitmap list."""
        if not entries:
            return ()
        key = tuple(entries)
        found = self._memo.get(key)
        if found is None:
            found = tuple(expand_bitmaps(self, key))
            if len(self._memo) < _MEMO_LIMIT:
                self._memo[key] = found
        return found

    @classmethod
    def from_json(cls, schema_id: str, schema_json: str) -> EventSchema:
        raw = json.loads(schema_json)
        parsed = fastavro.parse_schema(raw)
        fields: list[str] = []
        children: dict[str, tuple[str, ...]] = {}
        dates: dict[str, str] = {}
        for entry in raw.get("fields", []):
            name = entry["name"]
            fields.append(name)
            if (kind := _date_kind(entry)) is not None:
                dates[name] = kind
            record = _record_of(entry["type"])
            if record is not None and name != _HEADER:
                children[name] = tuple(child["name"] for child in record.get("fields", []))
                for child in record.get("fields", []):
                    if (kind := _date_kind(child)) is not None:
                        dates[f"{name}.{child['name']}"] = kind
        return cls(schema_id, parsed, tuple(fields), children, dates)

    def decode(self, payload: bytes) -> dict[str, Any]:
        """Raises ``ValueError`` (or fastavro's errors) when ``payload`` is not this schema's Avro."""
        record = fastavro.schemaless_reader(io.BytesIO(payload), self.parsed, None)
        if not isinstance(record, dict):
            raise ValueError("the payload is not an Avro record")
        return record


def _record_of(avro_type: Any) -> dict[str, Any] | None:
    """The record inside an optional (``["null", {record}]``) or plain record type."""
    if isinstance(avro_type, dict) and avro_type.get("type") == "record":
        return avro_type
    if isinstance(avro_type, list):
        for branch in avro_type:
            if isinstance(branch, dict) and branch.get("type") == "record":
                return branch
    return None


def _date_kind(entry: Mapping[str, Any]) -> str | None:
    doc = entry.get("doc")
    if not isinstance(doc, str):
        return None
    suffix = doc.rsplit(":", 1)[-1]
    return suffix if suffix in ("DateTime", "Date") else None


SchemaFetcher = Callable[[str], Awaitable[pb.SchemaInfo]]


class SchemaCache:
    """Schemas by id, each fetched once (``GetSchema``); concurrent misses of one id fetch once."""

    def __init__(self, fetch: SchemaFetcher) -> None:
        self._fetch = fetch
        self._schemas: dict[str, EventSchema] = {}
        self.fetches = 0

    async def get(self, schema_id: str) -> EventSchema:
        cached = self._schemas.get(schema_id)
        if cached is not None:
            return cached
        self.fetches += 1
        info = await self._fetch(schema_id)
        schema = EventSchema.from_json(schema_id, info.schema_json)
        self._schemas[schema_id] = schema
        return schema


# --- bitmaps and the CometD shape ---------------------------------------------------------------
def expand_bitmaps(schema: EventSchema, entries: Sequence[str]) -> list[str]:
    """``['0x650004E0', '4-0x10']`` → field names (``Parent.Child`` for compound children); entries
    that are already names (an older API version) pass through. Raises ``ValueError`` for a bitmap
    naming a position the schema does not have."""
    names: list[str] = []
    for entry in entries:
        if entry.startswith("0x"):
            names.extend(schema.fields[i] for i in _bits(entry, len(schema.fields)))
        elif "-0x" in entry:
            position, bitmap = entry.split("-", 1)
            parent = schema.fields[_position(position, len(schema.fields))]
            kids = schema.children.get(parent)
            if kids is None:
                raise ValueError(f"bitmap {entry!r}: field {parent!r} is not compound")
            names.extend(f"{parent}.{kids[i]}" for i in _bits(bitmap, len(kids)))
        else:
            names.append(entry)
    return names


def _bits(bitmap: str, size: int) -> list[int]:
    value = int(bitmap, 16)  # "0x…": bit i (least significant first) = the field at position i
    positions = [i for i in range(value.bit_length()) if value >> i & 1]
    if positions and positions[-1] >= size:
        raise ValueError(f"bitmap {bitmap} names position {positions[-1]} of {size} fields")
    return positions


def _position(text: str, size: int) -> int:
    position = int(text)
    if not 0 <= position < size:
        raise ValueError(f"compound position {position} of {size} fields")
    return position


def to_cometd(
    topic: str, schema: EventSchema, record: Mapping[str, Any], *, replay_id: bytes, event_id: str
) -> dict[str, Any]:
    """A decoded event as the Streaming API would have delivered it (see the module docstring)."""
    header = record.get(_HEADER)
    if isinstance(header, Mapping):
        payload, created = _change_payload(schema, record, header), header.get("commitTimestamp")
    else:
        payload = {name: _cometd_value(schema, name, value) for name, value in record.items() if value is not None}
        created = record.get("CreatedDate")
    event: dict[str, Any] = {"replayId": replay_id, "EventUuid": event_id or None}
    if isinstance(created, int):
        event["createdDate"] = _iso_ms(created)
    elif isinstance(created, str):
        event["createdDate"] = created
    return {"channel": topic, "data": {"schema": schema.schema_id, "payload": payload, "event": event}}


def _change_payload(schema: EventSchema, record: Mapping[str, Any], header: Mapping[str, Any]) -> dict[str, Any]:
    # the hot path of a Pub/Sub backlog (once per event, ~40 mostly-null fields): non-null values in
    # one comprehension, then only the few named, dated and compound fields by name; bitmaps are
    # expanded once per distinct list (``EventSchema.names``)
    out_header = dict(header)
    changed = schema.names(header.get("changedFields"))
    nulled = schema.names(header.get("nulledFields"))
    out_header["changedFields"], out_header["nulledFields"] = list(changed), list(nulled)
    out_header["diffFields"] = list(schema.names(header.get("diffFields")))
    named = set(changed).union(nulled) if nulled else set(changed)
    payload = {name: value for name, value in record.items() if value is not None}
    payload[_HEADER] = out_header
    for name in named:
        if name not in payload and name in record:  # a top-level field cleared (a child's name is not in record)
            payload[name] = None
    for name in schema.dates.keys() & payload.keys():
        payload[name] = _cometd_value(schema, name, payload[name])
    for name, kids in schema.children.items():
        value = record.get(name)
        if value is None and name not in named and named.isdisjoint(f"{name}.{kid}" for kid in kids):
            continue
        nested = _compound(schema, name, value, named)
        if nested:
            payload[name] = nested
        else:
            payload.pop(name, None)
    return payload


def _compound(schema: EventSchema, name: str, value: Any, named: set[str]) -> dict[str, Any]:
    values = value if isinstance(value, Mapping) else {}
    return {
        child: _cometd_value(schema, f"{name}.{child}", values.get(child))
        for child in schema.children[name]
        if values.get(child) is not None or f"{name}.{child}" in named or name in named
    }


def _cometd_value(schema: EventSchema, name: str, value: Any) -> Any:
    kind = schema.dates.get(name)
    if kind is None or not isinstance(value, int) or isinstance(value, bool):
        return value
    return _iso_ms(value) if kind == "DateTime" else datetime.fromtimestamp(value / 1000, UTC).strftime("%Y-%m-%d")


@functools.lru_cache(maxsize=256)  # an event's commitTimestamp is usually its LastModifiedDate too
def _iso_ms(epoch_ms: int) -> str:
    moment = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"
