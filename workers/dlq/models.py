"""A dead letter as read from ``<group>.dlq``: the record's bytes plus typed views of its headers.

Owns decoding the header contract of ``events.failure`` (and the CloudEvents ``ce_*`` headers) for
display and filtering; an ingress dead letter (``ingress.dlq.v1``) has no CloudEvent, so its
identity, type and error come from the headers its ingress worker wrote. Reads the records of every
release: a receiver's dead letter from before the shared builder has no ``error_class`` and says
``failed_at`` (``events.failure.LEGACY_FAILED_AT``) where a newer one says ``last_failed_at``.
Must not alter the bytes: replay re-sends ``key``, ``value`` and the original headers exactly as
they were read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from events import failure as fh
from events.envelope import H_ID, H_TYPE

#: a Kafka header as read: a null value stays None so a replay re-sends it as null
Header = tuple[str, bytes | None]


def decode_header(value: bytes | None) -> str:
    return (value or b"").decode("utf-8", errors="replace")


def header_dict(headers: Sequence[Header]) -> dict[str, bytes | None]:
    """Last value wins, as in ``events.envelope.header_map``."""
    return dict(headers)


def ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class DeadLetter:
    """One record of a DLQ topic. ``partition``/``offset`` are its coordinates in the DLQ topic."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...]
    _h: dict[str, bytes | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_h", header_dict(self.headers))

    def header(self, name: str) -> str | None:
        if name not in self._h:
            return None
        return decode_header(self._h[name])

    def header_int(self, name: str, default: int = 0) -> int:
        try:
            return int(self.header(name) or default)
        except ValueError:
            return default

    @property
    def coordinates(self) -> tuple[int, int]:
        return self.partition, self.offset

    @property
    def dead_lettered_at(self) -> datetime:
        """When the runtime produced it to the DLQ (the record's timestamp)."""
        return ms_to_datetime(self.timestamp_ms)

    @property
    def event_id(self) -> str:
        """``ce_id``; for a refused webhook (no CloudEvent yet), its webhook-id."""
        return self.header(H_ID) or self.header(fh.WEBHOOK_ID) or ""

    @property
    def event_type(self) -> str:
        """``ce_type``; for an ingress dead letter, ``<ingress>:<the body's event>`` or the CDC channel."""
        return self.header(H_TYPE) or self._ingress_type() or "?"

    @property
    def error_class(self) -> str:
        """The error's class; for a receiver's refusal its code (``unknown_event``, ...): every
        refusal is of one class (``Rejection``), and older ones carry only the code."""
        if self.ingress is not None:
            return self.header(fh.ERROR_CODE) or self.header(fh.ERROR_CLASS) or "?"
        return self.header(fh.ERROR_CLASS) or self.header(fh.ERROR_CODE) or "?"

    @property
    def failed_at(self) -> str | None:
        """When it last failed (ISO-8601 UTC), as its writer recorded it; None when it did not."""
        return self.header(fh.LAST_FAILED_AT) or self.header(fh.LEGACY_FAILED_AT) or None

    @property
    def ingress(self) -> str | None:
        """The ingress worker that refused this body, when it says so (the WHMCS receiver does)."""
        return self.header(fh.INGRESS)

    def _ingress_type(self) -> str | None:
        if self.ingress is None:  # sf-cdc's dead letters: no consumer group, the channel as source topic
            return None if self.header(fh.SOURCE_GROUP) else self.header(fh.SOURCE_TOPIC)
        body = self.payload()
        event = body.get("event") if isinstance(body, dict) else None
        return f"{self.ingress}:{event if isinstance(event, str) else '?'}"

    @property
    def replay_count(self) -> int:
        return self.header_int(fh.REPLAY_COUNT)

    @property
    def key_text(self) -> str:
        return decode_header(self.key)

    def original_headers(self) -> list[Header]:
        """The failed record's own headers, in order and byte for byte (no fleet failure header)."""
        return [(n, v) for n, v in self.headers if n not in fh.FLEET_HEADERS]

    def provenance_headers(self) -> list[Header]:
        """The fleet failure headers the runtime added, as they are (scheduling headers excluded)."""
        return [(n, v) for n, v in self.headers if n in fh.PROVENANCE]

    def payload(self) -> Any:
        """The value as JSON when it parses, else its text (for display only)."""
        text = decode_header(self.value)
        try:
            return json.loads(text)
        except ValueError:
            return text

    def fingerprint(self) -> str:
        return fingerprint(self.headers)


def fingerprint(headers: Sequence[Header]) -> str:
    """Identifies one replay copy inside one job: source coordinates, replay count and event id.

    Computed from the headers of the copy we send and from those of a record read back from the
    target topic, so an in-doubt send can be recognised there (``workers.dlq.replay``).
    """
    h = header_dict(headers)
    parts = (fh.SOURCE_TOPIC, fh.SOURCE_PARTITION, fh.SOURCE_OFFSET, fh.REPLAY_COUNT, H_ID)
    return "|".join(decode_header(h.get(name)) for name in parts)
