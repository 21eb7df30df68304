"""The CloudEvents 1.0 envelope and its Kafka protocol binding in binary content mode.

Binary mode (CloudEvents Kafka binding §3.2): the event data is the record value as-is
(JSON here), ``datacontenttype`` travels as the ``content-type`` header, every other attribute
as a ``ce_<name>`` header, and the record key is the aggregate id (``partitionkey``).
This module encodes and decodes; it does not produce or consume (that is ``adapters.kafka``).
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from events.errors import InvalidPayload

SPECVERSION = "1.0"
JSON = "application/json"

# Kafka header names of the binary binding; the only place they are spelled.
H_SPECVERSION = "ce_specversion"
H_ID = "ce_id"
H_SOURCE = "ce_source"
H_TYPE = "ce_type"
H_TIME = "ce_time"
H_SUBJECT = "ce_subject"
H_CORRELATION = "ce_correlationid"
H_CAUSATION = "ce_causationid"
H_TRACEPARENT = "ce_traceparent"
H_CONTENT_TYPE = "content-type"
#: W3C trace context of the Kafka hop (the span that produced this copy; replaced at every produce),
#: beside the CloudEvents ``ce_traceparent`` (where the event was created; set once): docs/tracing.md
H_HOP_TRACEPARENT = "traceparent"

REQUIRED_HEADERS = (H_SPECVERSION, H_ID, H_SOURCE, H_TYPE)

Headers = Sequence[tuple[str, bytes]]


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


class Envelope(BaseModel):
    """One CloudEvent as the fleet carries it; ``data`` is the JSON object of the event model."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(default_factory=new_id)
    source: str
    type: str
    specversion: str = SPECVERSION
    time: datetime = Field(default_factory=utcnow)
    subject: str | None = None
    datacontenttype: str = JSON
    correlationid: str | None = None
    causationid: str | None = None
    traceparent: str | None = None
    key: str
    data: dict[str, Any]


def to_record(env: Envelope) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """Encode an envelope as (key, value, headers) in CloudEvents binary mode."""
    headers = binary_headers(
        specversion=env.specversion,
        id=env.id,
        source=env.source,
        type=env.type,
        time=env.time,
        datacontenttype=env.datacontenttype,
        subject=env.subject,
        correlationid=env.correlationid,
        causationid=env.causationid,
        traceparent=env.traceparent,
    )
    value = json.dumps(env.data, separators=(",", ":"), ensure_ascii=False, default=str).encode()
    return env.key.encode(), value, headers


def binary_headers(
    *,
    specversion: str = SPECVERSION,
    id: str,
    source: str,
    type: str,
    time: datetime,
    datacontenttype: str = JSON,
    subject: str | None = None,
    correlationid: str | None = None,
    causationid: str | None = None,
    traceparent: str | None = None,
) -> list[tuple[str, bytes]]:
    """The CloudEvents binary-mode headers of a record, in the one order every producer of the fleet
    writes them (``to_record``, and the webhook receiver, which encodes without an ``Envelope``).
    Any order decodes; this one (the six always present, first) is the consume loop's fast path
    (``ordered_binary_type`` reads them by position)."""
    headers: list[tuple[str, bytes]] = [
        (H_SPECVERSION, specversion.encode()),
        (H_ID, id.encode()),
        (H_SOURCE, source.encode()),
        (H_TYPE, type.encode()),
        (H_TIME, _ce_time(time, time.fold)),
        (H_CONTENT_TYPE, datacontenttype.encode()),
    ]
    # four ifs, not a loop over (name, value) pairs: every record of the fleet passes here
    if subject is not None:
        headers.append((H_SUBJECT, subject.encode()))
    if correlationid is not None:
        headers.append((H_CORRELATION, correlationid.encode()))
    if causationid is not None:
        headers.append((H_CAUSATION, causationid.encode()))
    if traceparent is not None:
        headers.append((H_TRACEPARENT, traceparent.encode()))
    return headers


@functools.lru_cache(maxsize=1024)
def _ce_time(time: datetime, fold: int) -> bytes:
    """``ce_time`` as UTC ISO-8601 with ``Z``. Cached: formatting costs ~1 us per record, and the events
    of a burst share their instants (the webhooks of one second, a replayed batch). Safe to cache on
    ``==`` plus ``fold``: datetimes of one zone compare their wall times, which name two instants in
    the hour a clock goes back (``fold`` tells them apart); otherwise equal aware datetimes are one
    instant, so one UTC text, and a naive one never equals an aware one."""
    return time.astimezone(UTC).isoformat().replace("+00:00", "Z").encode()


def header_map(headers: Iterable[tuple[str, bytes | None]]) -> dict[str, str]:
    """Last value wins, decoded as UTF-8 (CloudEvents headers are strings)."""
    out: dict[str, str] = {}
    for name, value in headers:
        out[name] = (value or b"").decode("utf-8", errors="replace")
    return out


def binary_type(h: Mapping[str, bytes | None]) -> bytes | None:
    """The consume loop's fast path of ``check_binary_headers``: the raw ``ce_type`` when every check
    passes, else ``None`` (then ``check_binary_headers`` says what is wrong). Same rules, no decoding:
    the loop looks the raw type up in its dispatch table."""
    event_type = h.get(H_TYPE)
    if not (event_type and h.get(H_SPECVERSION) == _SPECVERSION_B and h.get(H_ID) and h.get(H_SOURCE)):
        return None
    content_type = h.get(H_CONTENT_TYPE)
    if content_type is not None and not content_type.startswith(_JSON_B):
        return None
    time = h.get(H_TIME)
    if time:
        try:
            _fromisoformat(time.decode("utf-8", "replace"))
        except ValueError:
            return None
    return event_type


def ordered_binary_type(headers: Sequence[tuple[str, bytes | None]]) -> bytes | None:
    """``binary_type`` straight from the record's header list, for the usual record: its first six
    headers in ``to_record``'s order (everything the fleet produces, and the retry copies, which only
    append). Reads them by position instead of building a header dict first (hashing seven fresh
    header names per record), with the same checks on the same values.

    The raw ``ce_type`` when those six are in that order, pass every check of ``binary_type``, and no
    later header repeats one of them (a repeat would win in the header dict); ``None`` otherwise, which
    only means "not decided here": the caller falls back to ``binary_type(dict(headers))``."""
    if len(headers) < 6:
        return None
    (n0, spec), (n1, event_id), (n2, source), (n3, event_type), (n4, time), (n5, content_type) = headers[:6]
    if not (
        n3 == H_TYPE and n1 == H_ID and n4 == H_TIME and n0 == H_SPECVERSION and n2 == H_SOURCE and n5 == H_CONTENT_TYPE
    ):
        return None
    for name, _ in headers[6:]:
        if name in _ORDERED:
            return None
    if not (event_type and spec == _SPECVERSION_B and event_id and source):
        return None
    if content_type is not None and not content_type.startswith(_JSON_B):
        return None
    if time:
        try:
            _fromisoformat(time.decode())  # not UTF-8: UnicodeDecodeError, a ValueError (as not ISO-8601)
        except ValueError:
            return None
    return event_type


def check_binary_headers(h: Mapping[str, bytes | None]) -> str:
    """The header checks of ``from_record`` on a header dict (last value wins), without touching the value.

    The consume loop's checks: it validates the value straight into the event model
    (``model_validate_json``) and builds the ``Envelope`` only when a handler asks for it. Same
    rules and messages as ``from_record``: required attributes present and non-empty, specversion
    1.0, a JSON content type, a parseable ``ce_time``. Returns ``ce_type``.
    """
    event_type = binary_type(h)
    if event_type is not None:
        return event_type.decode("utf-8", "replace")
    missing = [name for name in REQUIRED_HEADERS if not h.get(name)]
    if missing:
        raise InvalidPayload(f"not a CloudEvents binary record: missing {', '.join(missing)}")
    spec = h[H_SPECVERSION]
    if spec != _SPECVERSION_B:
        raise InvalidPayload(f"unsupported CloudEvents specversion {_text(spec)!r}")
    content_type = h.get(H_CONTENT_TYPE)
    if content_type is not None and not content_type.startswith(_JSON_B):
        raise InvalidPayload(f"unsupported content-type {_text(content_type)!r}")
    raise InvalidPayload(f"bad ce_time {_text(h.get(H_TIME))!r}")


_fromisoformat = datetime.fromisoformat
#: the headers ``to_record`` writes first, in its order (``ordered_binary_type`` reads them by position)
_ORDERED = (H_SPECVERSION, H_ID, H_SOURCE, H_TYPE, H_TIME, H_CONTENT_TYPE)
_SPECVERSION_B = SPECVERSION.encode()
_JSON_B = JSON.encode()


def _text(value: bytes | None) -> str:
    return (value or b"").decode("utf-8", errors="replace")


def from_record(key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes | None]]) -> Envelope:
    """Decode a binary-mode record; raises ``InvalidPayload`` naming what is wrong."""
    h: Mapping[str, str] = header_map(headers)
    missing = [name for name in REQUIRED_HEADERS if not h.get(name)]
    if missing:
        raise InvalidPayload(f"not a CloudEvents binary record: missing {', '.join(missing)}")
    if h[H_SPECVERSION] != SPECVERSION:
        raise InvalidPayload(f"unsupported CloudEvents specversion {h[H_SPECVERSION]!r}")
    content_type = h.get(H_CONTENT_TYPE, JSON)
    if not content_type.startswith(JSON):
        raise InvalidPayload(f"unsupported content-type {content_type!r}")
    try:
        data = json.loads(value or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidPayload(f"record value is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidPayload("record value must be a JSON object")
    try:
        time = datetime.fromisoformat(h[H_TIME]) if h.get(H_TIME) else utcnow()
    except ValueError as exc:
        raise InvalidPayload(f"bad ce_time {h[H_TIME]!r}") from exc
    return Envelope(
        id=h[H_ID],
        source=h[H_SOURCE],
        type=h[H_TYPE],
        specversion=h[H_SPECVERSION],
        time=time,
        subject=h.get(H_SUBJECT),
        datacontenttype=content_type,
        correlationid=h.get(H_CORRELATION),
        causationid=h.get(H_CAUSATION),
        traceparent=h.get(H_TRACEPARENT),
        key=(key or b"").decode("utf-8", errors="replace"),
        data=data,
    )
