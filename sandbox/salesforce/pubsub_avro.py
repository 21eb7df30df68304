"""Avro schemas and encoding for the sandbox's Pub/Sub API: the bus's CometD-shaped messages as Salesforce's records.

Owns one schema per topic (``<Entity>ChangeEvent`` for the CDC entities, ``Account_Eligibility_Update__e``),
every schema version ever issued (by schema id), which version each already-published event was written
with, and the encoding. It derives each change event's fields from the org's store (``store.FIELDS``
through ``events.change_body``, so the Billing address compounds exactly as the bus compounds it) and
knows nothing about gRPC or streams (``pubsub.py`` serves them).

Shape, per the Pub/Sub API docs ("Event Deserialization Considerations", "Change Event Body Fields"):
field 0 is ``ChangeEventHeader``; then every object field as ``["null", T]`` with default null, unchanged
fields null; ``changedFields``/``nulledFields``/``diffFields`` as hex bitmaps (first element over the
top-level positions, bit i = field i, least significant bit = position 0; ``"P-0xHH"`` over the children
of the compound field at position P, whose own top-level bit stays clear). Our inferences: the field
types below, the ``"doc": "Data:DateTime"`` / ``"Data:Date"`` convention on epoch-millisecond longs, the
position of the audit fields (after the object's own), ``"0x00"`` as the first element when only compound
children are listed, ``diffFields`` always empty (the sandbox never sends diffs) and the schema id (16
bytes of SHA-256 over the Avro parsing canonical form, base64url: stable, opaque, new on evolution).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from fastavro import parse_schema, schemaless_writer
from fastavro.schema import to_parsing_canonical_form

from sandbox.salesforce.events import CDC_ENTITIES, PLATFORM_CHANNEL, PLATFORM_EVENT, change_body, channel_for
from sandbox.salesforce.store import FIELDS, SYSTEM_FIELDS

NAMESPACE = "com.sforce.eventbus"
HEADER = "ChangeEventHeader"
CHANGE_TYPES = ("CREATE", "UPDATE", "DELETE", "UNDELETE", "GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE",
                "GAP_OVERFLOW", "SNAPSHOT")  # fmt: skip
#: the components of a compound address field, as Salesforce's Address record lists them
ADDRESS_PARTS = ("Street", "City", "State", "PostalCode", "Country", "StateCode", "CountryCode", "Latitude",
                 "Longitude", "Xyz", "GeocodeAccuracy")  # fmt: skip
#: the custom fields of ``Account_Eligibility_Update__e`` (what ``/_sandbox/events/platform`` carries)
PLATFORM_FIELDS = ("Account_Id__c", "Eligibility_Status__c", "Verification_Status__c")
#: field kinds a schema knows (and ``add_field`` accepts); everything not listed below is a string
KINDS = ("string", "double", "boolean", "datetime", "date")
_DATETIME = frozenset({"CreatedDate", "LastModifiedDate", "Activation_Scheduled_At__c"})
_DATE = frozenset({"EffectiveDate", "MNP_Expiry_Date__c", "CloseDate"})
_DOUBLE = frozenset({"TotalAmount", "Quantity", "UnitPrice", "TotalPrice", "VPN_Display_Order__c"})
_BOOLEAN = frozenset({"IsActive", "IsStandard", "UseStandardPrice", "Portal_Catalog__c", "Portal_Accessible__c",
                      "SIM_Has_Family_Discount__c", "Weekend_Install__c", "Hikari_Denwa__c", "SIM_Voice_Mail__c",
                      "SIM_Call_Waiting__c", "Address_Changed__c"})  # fmt: skip
_ADDRESS_DOUBLES = frozenset({"Latitude", "Longitude"})
_AVRO_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class EncodingError(Exception):
    """A bus message carries a value its schema cannot hold (a sandbox bug, not a client's)."""


def kind_of(name: str) -> str:
    if name in _DATETIME:
        return "datetime"
    if name in _DATE:
        return "date"
    if name in _DOUBLE:
        return "double"
    return "boolean" if name in _BOOLEAN else "string"


# --- schemas ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SchemaVersion:
    """One schema of one topic: ``fields[i]`` is top-level position i; ``children`` the compound fields."""

    topic: str
    schema: dict[str, Any]
    schema_id: str
    fields: tuple[str, ...]
    kinds: Mapping[str, str]
    children: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    parsed: Any = field(default=None, compare=False, repr=False)

    @property
    def schema_json(self) -> str:
        return json.dumps(self.schema, separators=(",", ":"))

    @property
    def is_change_event(self) -> bool:
        return self.fields[:1] == (HEADER,)

    def position(self, name: str) -> int:
        return self.fields.index(name)


def _optional(name: str, kind: str) -> dict[str, Any]:
    avro = {"string": "string", "double": "double", "boolean": "boolean", "datetime": "long", "date": "long"}[kind]
    spec: dict[str, Any] = {"name": name, "type": ["null", avro], "default": None}
    if kind in ("datetime", "date"):
        spec["doc"] = "Data:DateTime" if kind == "datetime" else "Data:Date"
    return spec


def _header_schema() -> dict[str, Any]:
    strings = {"type": "array", "items": "string"}
    return {
        "type": "record", "name": HEADER, "namespace": NAMESPACE,
        "fields": [
            {"name": "entityName", "type": "string"},
            {"name": "recordIds", "type": strings},
            {"name": "changeType", "type": {"type": "enum", "name": "ChangeType", "namespace": NAMESPACE,
                                            "symbols": list(CHANGE_TYPES)}},
            {"name": "changeOrigin", "type": "string"},
            {"name": "transactionKey", "type": "string"},
            {"name": "sequenceNumber", "type": "int"},
            {"name": "commitTimestamp", "type": "long"},
            {"name": "commitNumber", "type": "long"},
            {"name": "commitUser", "type": "string"},
            {"name": "nulledFields", "type": strings},
            {"name": "diffFields", "type": strings},
            {"name": "changedFields", "type": strings},
        ],
    }  # fmt: skip


def _address_schema() -> dict[str, Any]:
    parts = [_optional(p, "double" if p in _ADDRESS_DOUBLES else "string") for p in ADDRESS_PARTS]
    return {"type": "record", "name": "Address", "namespace": NAMESPACE, "fields": parts}


def _change_event_layout(entity: str, extra: Iterable[tuple[str, str]]) -> tuple[list[str], dict[str, str]]:
    """Top-level field names after the header (compounds once, at their first component) and their kinds."""
    _, names = change_body(dict.fromkeys((*FIELDS[entity], *SYSTEM_FIELDS)))
    fields: list[str] = []
    kinds: dict[str, str] = {}
    for name in names:
        top = name.partition(".")[0]
        if top not in kinds:
            fields.append(top)
            kinds[top] = "address" if "." in name else kind_of(name)
    for name, kind in extra:
        fields.append(name)
        kinds[name] = kind
    return fields, kinds


def build_change_event(entity: str, extra: Iterable[tuple[str, str]] = ()) -> SchemaVersion:
    """``<Entity>ChangeEvent``: header, the entity's fields, then fields added at run time (``extra``)."""
    fields, kinds = _change_event_layout(entity, extra)
    specs: list[dict[str, Any]] = [{"name": HEADER, "type": _header_schema()}]
    children: dict[str, tuple[str, ...]] = {}
    for name in fields:
        if kinds[name] == "address":
            specs.append({"name": name, "type": ["null", _address_schema()], "default": None})
            children[name] = ADDRESS_PARTS
        else:
            specs.append(_optional(name, kinds[name]))
    schema = {"type": "record", "name": f"{entity}ChangeEvent", "namespace": NAMESPACE, "fields": specs}
    topic = channel_for(entity) or f"/data/{entity}ChangeEvent"
    return _version(topic, schema, (HEADER, *fields), kinds, children)


def build_platform_event(extra: Iterable[tuple[str, str]] = ()) -> SchemaVersion:
    """``Account_Eligibility_Update__e``: ``CreatedDate`` (long), ``CreatedById``, its custom fields."""
    custom = [(name, "string") for name in PLATFORM_FIELDS] + list(extra)
    specs: list[dict[str, Any]] = [
        {"name": "CreatedDate", "type": "long", "doc": "Data:DateTime"},
        {"name": "CreatedById", "type": "string"},
        *(_optional(name, kind) for name, kind in custom),
    ]
    schema = {"type": "record", "name": PLATFORM_EVENT, "namespace": NAMESPACE, "fields": specs}
    kinds = {"CreatedDate": "datetime", "CreatedById": "string", **dict(custom)}
    return _version(PLATFORM_CHANNEL, schema, ("CreatedDate", "CreatedById", *(n for n, _ in custom)), kinds, {})


def _version(topic: str, schema: dict[str, Any], fields: tuple[str, ...], kinds: dict[str, str],
             children: dict[str, tuple[str, ...]]) -> SchemaVersion:  # fmt: skip
    parsed = parse_schema(schema)
    canonical = to_parsing_canonical_form(parsed)
    digest = hashlib.sha256(canonical.encode()).digest()[:16]
    schema_id = base64.urlsafe_b64encode(digest).decode().rstrip("=")
    return SchemaVersion(topic, schema, schema_id, fields, kinds, children, parsed)


class SchemaRegistry:
    """The current schema per topic, every version by id, and which version each published event uses."""

    def __init__(self) -> None:
        self._extra: dict[str, list[tuple[str, str]]] = {}
        self._current: dict[str, SchemaVersion] = {}
        self._by_id: dict[str, SchemaVersion] = {}
        #: (topic, replay id) → schema id, for events published before their topic's schema changed
        self._pinned: dict[tuple[str, int], str] = {}
        for entity in CDC_ENTITIES:
            self._install(build_change_event(entity))
        self._install(build_platform_event())

    @property
    def topics(self) -> list[str]:
        return sorted(self._current)

    def current(self, topic: str) -> SchemaVersion | None:
        return self._current.get(topic)

    def get(self, schema_id: str) -> SchemaVersion | None:
        return self._by_id.get(schema_id)

    def for_event(self, topic: str, replay_id: int) -> SchemaVersion:
        pinned = self._pinned.get((topic, replay_id))
        return self._by_id[pinned] if pinned else self._current[topic]

    def add_field(self, topic: str, name: str, kind: str = "string", *, published: Iterable[int] = ()) -> SchemaVersion:
        """Evolve ``topic``'s schema with one more field (a new schema id); events already ``published``
        (their replay ids) keep the schema they were written with, later events use the new one."""
        old = self._current.get(topic)
        if old is None:
            raise KeyError(topic)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}")
        if not _AVRO_NAME.match(name) or name in old.fields or name in old.children:
            raise ValueError(f"{name!r} is not a new, valid Avro field name for {topic}")
        for replay_id in published:
            self._pinned.setdefault((topic, replay_id), old.schema_id)
        extra = self._extra.setdefault(topic, [])
        extra.append((name, kind))
        entity = old.schema["name"].removesuffix("ChangeEvent")
        new = build_change_event(entity, extra) if old.is_change_event else build_platform_event(extra)
        self._install(new)
        return new

    def encode(self, message: Mapping[str, Any]) -> tuple[str, bytes]:
        """A bus message (``{"channel", "data": {"payload", "event"}}``) → (schema id, Avro bytes)."""
        topic = str(message["channel"])
        version = self.for_event(topic, int(message["data"]["event"]["replayId"]))
        payload = message["data"]["payload"]
        record = change_record(version, payload) if version.is_change_event else platform_record(version, payload)
        return version.schema_id, write(version, record)

    def _install(self, version: SchemaVersion) -> None:
        self._current[version.topic] = version
        self._by_id[version.schema_id] = version


def write(version: SchemaVersion, record: Mapping[str, Any]) -> bytes:
    out = io.BytesIO()
    try:
        schemaless_writer(out, version.parsed, dict(record))
    except (ValueError, TypeError) as exc:
        raise EncodingError(f"{version.topic}: {exc}") from exc
    return out.getvalue()


# --- records ------------------------------------------------------------------------------------
def change_record(version: SchemaVersion, payload: Mapping[str, Any]) -> dict[str, Any]:
    """CometD change payload (header + changed fields, Billing compounded) → the full Pub/Sub record."""
    header = dict(payload[HEADER])
    record: dict[str, Any] = dict.fromkeys(version.fields[1:])
    for name, value in payload.items():
        if name == HEADER or name not in record:
            continue  # a field the schema does not (yet) know travels only over CometD
        if name in version.children:
            record[name] = _compound(name, version.children[name], value)
        else:
            record[name] = coerce(name, version.kinds[name], value)
    changed = [str(n) for n in header.get("changedFields") or []]
    nulled = [n for n in changed if _value_at(payload, n) is None] if header.get("changeType") == "UPDATE" else []
    record[HEADER] = {
        "entityName": str(header["entityName"]),
        "recordIds": [str(i) for i in header.get("recordIds") or []],
        "changeType": str(header["changeType"]),
        "changeOrigin": header.get("changeOrigin") or "",
        "transactionKey": str(header.get("transactionKey") or ""),
        "sequenceNumber": int(header.get("sequenceNumber") or 0),
        "commitTimestamp": int(header["commitTimestamp"]),
        "commitNumber": int(header.get("commitNumber") or 0),
        "commitUser": str(header.get("commitUser") or ""),
        "nulledFields": bitmaps(version, nulled),
        "diffFields": [],
        "changedFields": bitmaps(version, changed),
    }
    return record


def platform_record(version: SchemaVersion, payload: Mapping[str, Any]) -> dict[str, Any]:
    record = {name: coerce(name, version.kinds[name], payload.get(name)) for name in version.fields}
    if record["CreatedDate"] is None or record["CreatedById"] is None:
        raise EncodingError(f"{version.topic}: CreatedDate and CreatedById are required")
    return record


def _compound(name: str, parts: tuple[str, ...], value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise EncodingError(f"{name} must be an object of {', '.join(parts)}")
    return {p: coerce(p, "double" if p in _ADDRESS_DOUBLES else "string", value.get(p)) for p in parts}


def _value_at(payload: Mapping[str, Any], name: str) -> Any:
    top, _, child = name.partition(".")
    value = payload.get(top)
    return value.get(child) if child and isinstance(value, Mapping) else value


def bitmaps(version: SchemaVersion, names: Iterable[str]) -> list[str]:
    """Field names (``Status``, ``BillingAddress.City``) → ``["0x…", "P-0x…"]``; unknown names are skipped."""
    top = 0
    nested: dict[int, int] = {}
    for name in names:
        parent, _, child = name.partition(".")
        if parent not in version.fields:
            continue
        position = version.position(parent)
        if child and child in version.children.get(parent, ()):
            nested[position] = nested.get(position, 0) | 1 << version.children[parent].index(child)
        elif not child:
            top |= 1 << position
    if not top and not nested:
        return []
    return [_hex(top), *(f"{p}-{_hex(bits)}" for p, bits in sorted(nested.items()))]


def _hex(bits: int) -> str:
    # upper-case, whole bytes: the forcedotcom Java parser reads byte pairs, pozil's Node one only A-F
    digits = f"{bits:X}"
    return "0x" + ("0" + digits if len(digits) % 2 else digits)


def coerce(name: str, kind: str, value: Any) -> Any:
    """A CometD/JSON value → the Avro value of ``kind`` (None stays None)."""
    if value is None:
        return None
    try:
        if kind == "datetime":
            return value if isinstance(value, int) and not isinstance(value, bool) else epoch_ms(str(value))
        if kind == "date":
            return value if isinstance(value, int) and not isinstance(value, bool) else date_ms(str(value))
        if kind == "double":
            return float(value)
        if kind == "boolean":
            return _boolean(value)
    except ValueError as exc:
        raise EncodingError(f"{name}: {value!r} is not a {kind}") from exc
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(value)


def epoch_ms(value: str) -> int:
    """``2026-01-01T09:30:00.000Z`` (or ``+0000``, ``+00:00``) → epoch milliseconds."""
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000


def date_ms(value: str) -> int:
    """``2026-01-01`` → epoch milliseconds at UTC midnight."""
    return epoch_ms(date.fromisoformat(value[:10]).isoformat() + "T00:00:00+00:00")
