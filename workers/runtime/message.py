"""What a handler may read about the record it handles (besides the typed event itself).

Owns the read-only view of one consumed record. Must not expose offsets to commit or the consumer:
handlers return or raise, and the runtime alone decides about commits, retries and dead letters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from events import failure as fh
from events.envelope import H_CORRELATION, H_ID, Envelope, from_record


def header_int(h: Mapping[str, bytes | None], name: str, default: int = 0) -> int:
    """A decimal header value; ``default`` when absent or malformed (never fails a record)."""
    raw = h.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        return default


class Message:
    """One consumed record, decoded. Built by the runtime once per record; treat as read-only.

    ``attempts`` counts handler invocations of this record so far, this one included and every
    earlier retry tier too; ``replay_count`` is how often an operator replayed it from the
    dead-letter topic. ``source_*`` name the record's original coordinates: the same as
    ``topic``/``partition``/``offset`` on a source topic, the provenance headers on a retry topic.
    """

    __slots__ = (
        "event",
        "group",
        "topic",
        "partition",
        "offset",
        "timestamp",
        "key",
        "value",
        "headers",
        "_header_map",
        "event_type",
        "tier",
        "attempts",
        "_envelope",
    )

    def __init__(  # positional in the loop's hot path (cheaper), keywords everywhere else
        self,
        event: Any,
        group: str,
        topic: str,
        partition: int,
        offset: int,
        timestamp: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes | None]],
        header_map: Mapping[str, bytes | None] | None,
        event_type: str,
        tier: int = 0,
        attempts: int = 1,
    ) -> None:
        self.event = event
        self.group = group
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.timestamp = timestamp  # ms since the epoch
        self.key = key
        self.value = value
        self.headers = headers
        self._header_map = header_map  # None: built from ``headers`` on first access
        self.event_type = event_type
        #: 0 on a source topic, n on ``<group>.retry.<n>``
        self.tier = tier
        self.attempts = attempts
        self._envelope: Envelope | None = None

    @property
    def header_map(self) -> Mapping[str, bytes | None]:
        """The headers by name, last value wins (built on first access when the runtime's header check
        did not need one: most handlers read no header)."""
        h = self._header_map
        if h is None:
            h = self._header_map = dict(self.headers)
        return h

    @property
    def event_id(self) -> str:
        """``ce_id`` (decoded on access: the loop builds a Message per record, few handlers read it)."""
        raw = self.header_map.get(H_ID)
        return raw.decode("utf-8", "replace") if raw else ""

    @property
    def envelope(self) -> Envelope:
        """The full CloudEvents envelope (decoded on first access: most handlers need only the event)."""
        if self._envelope is None:
            self._envelope = from_record(self.key, self.value, self.headers)
        return self._envelope

    @property
    def correlation_id(self) -> str | None:
        raw = self.header_map.get(H_CORRELATION)
        return raw.decode("utf-8", "replace") if raw else None

    def log_context(self) -> dict[str, Any]:
        """The record's log context (``workers.logs.merge_record_context`` adds it to every log line
        emitted while this record is handled): computed only when something is actually logged."""
        key = self.key
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "correlation_id": self.correlation_id,
            "key": key.decode("utf-8", "replace") if key is not None else None,
        }

    @property
    def replay_count(self) -> int:
        return header_int(self.header_map, fh.REPLAY_COUNT)

    @property
    def source_topic(self) -> str:
        raw = self.header_map.get(fh.SOURCE_TOPIC)
        return raw.decode("utf-8", errors="replace") if raw else self.topic

    @property
    def source_partition(self) -> int:
        return header_int(self.header_map, fh.SOURCE_PARTITION, self.partition)

    @property
    def source_offset(self) -> int:
        return header_int(self.header_map, fh.SOURCE_OFFSET, self.offset)

    def __repr__(self) -> str:
        return (
            f"Message({self.event_type} id={self.event_id} {self.topic}[{self.partition}]@{self.offset}"
            f" attempts={self.attempts})"
        )
