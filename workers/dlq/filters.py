"""Which dead letters an operator means: time window, error class, event type, key, event id, coordinates.

Owns parsing the CLI's filter options (``2h``, ISO datetimes, ``P:O``) and matching them against a
``DeadLetter``. Must not read Kafka or Postgres. Filters combine with AND; repeated values of one
option combine with OR; ``--error-class`` and ``--event-type`` accept shell-style wildcards.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

from workers.dlq.models import DeadLetter, iso

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


class FilterError(ValueError):
    """A filter option that cannot be understood; the message says what was expected."""


def parse_when(text: str, now: datetime) -> datetime:
    """``2h`` / ``30m`` / ``1.5d`` (that long before ``now``), ``now``, or an ISO-8601 date or datetime.

    A datetime without a zone is taken as UTC, the zone every fleet header and ``fleet dlq show`` use.
    """
    match = _RELATIVE.match(text)
    if match:
        amount, unit = float(match.group(1)), match.group(2).lower()
        return now - timedelta(seconds=amount * _UNIT_SECONDS[unit])
    if text.strip().lower() == "now":
        return now
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise FilterError(f"{text!r} is neither a relative time (2h, 30m, 1d) nor an ISO datetime") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def parse_coordinates(text: str) -> tuple[int, int]:
    """``P:O`` (DLQ partition and offset, as ``fleet dlq list``/``replay --dry-run`` print them)."""
    partition, sep, offset = text.partition(":")
    if not sep or not partition.strip().isdigit() or not offset.strip().isdigit():
        raise FilterError(f"{text!r} is not PARTITION:OFFSET (e.g. 2:1045)")
    return int(partition), int(offset)


@dataclass(frozen=True)
class Filter:
    """Selection of dead letters; an empty filter selects every record."""

    since: datetime | None = None
    until: datetime | None = None
    error_classes: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    event_ids: tuple[str, ...] = ()
    records: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if self.since and self.until and self.since > self.until:
            raise FilterError(f"--since {iso(self.since)} is after --until {iso(self.until)}")

    @property
    def is_empty(self) -> bool:
        return self == Filter()

    def matches(self, dl: DeadLetter) -> bool:
        return self._in_window(dl.dead_lettered_at) and self._matches_fields(dl)

    def _in_window(self, at: datetime) -> bool:
        return (self.since is None or at >= self.since) and (self.until is None or at <= self.until)

    def _matches_fields(self, dl: DeadLetter) -> bool:
        return (
            _any_glob(self.error_classes, _class_names(dl.error_class))
            and _any_glob(self.event_types, (dl.event_type,))
            and _any_equal(self.keys, dl.key_text)
            and _any_equal(self.event_ids, dl.event_id)
            and _any_equal(self.records, dl.coordinates)
        )

    def as_json(self) -> dict[str, Any]:
        """What the audit table stores: only the filters that were given, times resolved to UTC."""
        out: dict[str, Any] = {
            "since": iso(self.since) if self.since else None,
            "until": iso(self.until) if self.until else None,
            "error_class": list(self.error_classes),
            "event_type": list(self.event_types),
            "key": list(self.keys),
            "event_id": list(self.event_ids),
            "record": [f"{p}:{o}" for p, o in self.records],
        }
        return {name: value for name, value in out.items() if value}


def _class_names(error_class: str) -> tuple[str, str]:
    """``events.errors.UpstreamTimeout`` matches both that and ``UpstreamTimeout``."""
    return error_class, error_class.rsplit(".", 1)[-1]


def _any_glob(patterns: Iterable[str], values: tuple[str, ...]) -> bool:
    patterns = tuple(patterns)
    return not patterns or any(fnmatchcase(v, p) for p in patterns for v in values)


def _any_equal(wanted: tuple[Any, ...], value: Any) -> bool:
    return not wanted or value in wanted
