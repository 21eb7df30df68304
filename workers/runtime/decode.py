"""How a record becomes a ``Message`` for its handler, or the reason it cannot.

Owns the route's dispatch table in the two forms the loop uses (``fast``: raw ``ce_type`` bytes →
the model's core validator, handler, type, batch mode; ``table``: type → model, handler) and the slow
path for everything the fast path does not take: headers that fail a check, a type this route does
not handle (skipped) or that nobody knows, a payload that does not validate. Must not produce,
commit or retry: it says what the record is, ``workers.runtime.dispatch`` acts on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import ValidationError

from adapters import tracing
from events import failure as fh
from events.base import REGISTRY, event_types
from events.envelope import H_CORRELATION, H_ID, H_TYPE, binary_type, check_binary_headers
from events.errors import InvalidPayload, UnknownEventType
from events.failure import Stage
from workers.runtime.batch import BatchHandler
from workers.runtime.consumer import ConsumerRecord
from workers.runtime.message import Message, header_int
from workers.runtime.route import Handler, Route
from workers.runtime.traced import traced

log = structlog.get_logger(__name__)

#: the loop's dispatch entry: the model's core JSON validator, the handler, ``ce_type``, batch mode
FastEntry = tuple[Callable[[bytes], Any], Handler, str, bool]


@dataclass(frozen=True, slots=True)
class Rejected:
    """The record cannot be handled by anyone: dead-letter it (``stage`` says where it failed)."""

    error: Exception
    stage: str


SKIPPED = "skipped"  # another group's type on a shared topic: acknowledged, counted, not handled

Decoded = tuple[Message, Handler, bool] | Rejected | str


class Decoder:
    """The route's dispatch table and the decoding of one record against it."""

    def __init__(self, route: Route) -> None:
        event_types()  # import every vocabulary module so unknown-type detection sees them all
        self.group = route.group
        self.table = route.handled_types
        if tracing.enabled():  # decided once per worker: off, the loop runs the route's own handlers
            self.table = traced(self.table, route.group)
        # The hot path calls each model's core validator directly: exactly what model_validate_json
        # delegates to (same errors, same result), minus a Python wrapper that costs ~0.35 µs/record.
        # Keyed by the raw ``ce_type`` bytes: the loop looks the header value up without decoding it.
        self.fast: dict[bytes | None, FastEntry] = {
            event_type.encode(): (
                model.__pydantic_validator__.validate_json,
                handler,
                event_type,
                isinstance(handler, BatchHandler),
            )
            for event_type, (model, handler) in self.table.items()
        }

    def message(
        self,
        event: Any,
        rec: ConsumerRecord,
        h: dict[str, bytes | None] | None,
        event_type: str,
        tier: int,
        attempts: int,
    ) -> Message:
        return Message(  # positional: event, group, topic, partition, offset, timestamp, key,
            # value, headers, header_map, event_type, tier, attempts
            event,
            self.group,
            rec.topic,
            rec.partition,
            rec.offset,
            rec.timestamp,
            rec.key,
            rec.value,
            rec.headers,
            h,
            event_type,
            tier,
            attempts,
        )

    def slow(self, rec: ConsumerRecord, h: dict[str, bytes | None], raw_type: bytes | None, tier: int) -> Decoded:
        """A record the fast path did not take. Returns the decoded record and its handler when it
        is one of ours after all (a ``ce_type`` that is not plain UTF-8), else why not."""
        event_type = ""
        try:
            # raw_type is None when a header check failed: check_binary_headers raises saying which
            event_type = raw_type.decode("utf-8", "replace") if raw_type is not None else check_binary_headers(h)
            entry = self.table.get(event_type)
            if entry is not None:
                model, handler = entry
                event = model.model_validate_json(rec.value if rec.value is not None else b"")
                attempts = header_int(h, fh.ATTEMPTS) + 1 if tier else 1
                msg = self.message(event, rec, h, event_type, tier, attempts)
                return msg, handler, isinstance(handler, BatchHandler)
        except InvalidPayload as exc:
            return Rejected(exc, Stage.DECODE)
        except ValidationError as exc:
            return invalid_payload(event_type, exc)
        if event_type in REGISTRY:
            return SKIPPED
        return Rejected(UnknownEventType(f"no model for event type {event_type!r}"), Stage.DECODE)

    def validated(self, rec: ConsumerRecord, h: dict[str, bytes | None], handler: Handler, tier: int) -> Message | None:
        """``rec`` as a Message when ``handler`` takes it and it validates, else None (batch mode
        uses this to gather the records behind a head; the loop takes a None record as usual)."""
        entry = self.fast.get(binary_type(h))  # None: a header check failed, or not a type of this route
        if entry is None or entry[1] is not handler:
            return None
        validate, _, event_type, _ = entry
        try:
            event = validate(rec.value if rec.value is not None else b"")
        except ValidationError:
            return None
        return self.message(event, rec, h, event_type, tier, header_int(h, fh.ATTEMPTS) + 1 if tier else 1)


def invalid_payload(event_type: str, exc: ValidationError) -> Rejected:
    """Map a pydantic error onto the error tree, and tell bad JSON (decode) from a bad field (validate)."""
    first = exc.errors()[0]
    if first["type"] == "json_invalid":
        return Rejected(InvalidPayload(f"record value is not JSON: {first['msg']}"), Stage.DECODE)
    if first["type"] in ("model_type", "model_attributes_type") and not first["loc"]:
        return Rejected(InvalidPayload("record value must be a JSON object"), Stage.DECODE)
    where = ".".join(str(p) for p in first["loc"]) or "<root>"
    return Rejected(InvalidPayload(f"{event_type}: {where}: {first['msg']}"), Stage.VALIDATE)


class RecordLog:
    """The log context of a record that has no ``Message`` (it failed to decode): see ``workers.logs``."""

    __slots__ = ("rec", "h")

    def __init__(self, rec: ConsumerRecord, h: Mapping[str, bytes | None]) -> None:
        self.rec, self.h = rec, h

    def log_context(self) -> dict[str, Any]:
        rec, h = self.rec, self.h
        return {
            "topic": rec.topic,
            "partition": rec.partition,
            "offset": rec.offset,
            "event_id": _text(h.get(H_ID)),
            "event_type": _text(h.get(H_TYPE)),
            "correlation_id": _text(h.get(H_CORRELATION)),
            "key": _text(rec.key),
        }


def _text(raw: bytes | None) -> str | None:
    return raw.decode("utf-8", "replace") if raw is not None else None
