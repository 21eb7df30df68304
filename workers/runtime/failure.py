"""Retry-topic and dead-letter records: the original record byte for byte plus provenance headers.

Owns the header contract of ``events.failure`` on the producing side (documented in
``docs/dead-letters.md``). Must not decide *whether* a record is retried or dead-lettered (that is
``policy``) nor produce it (that is the worker). Provenance always points at the record's first
source: a record that fails again on a retry topic keeps its source headers, its first failure
time and its replay count, and its attempts accumulate.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from events import failure as fh
from events.errors import FleetError
from workers.runtime.message import header_int

Header = tuple[str, bytes]

# Carried over unchanged from the failing record when present (never rewritten).
_KEPT = (fh.SOURCE_TOPIC, fh.SOURCE_PARTITION, fh.SOURCE_OFFSET, fh.SOURCE_TIMESTAMP, fh.SOURCE_GROUP)
UNCLASSIFIED = "UNCLASSIFIED"


@dataclass(frozen=True)
class FailedRecord:
    """The record that failed, as consumed."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]]


@dataclass(frozen=True)
class FailureInfo:
    """What went wrong in this worker's run of the record."""

    error: BaseException
    stage: str  # events.failure.Stage
    attempts: int  # handler invocations in this run (prior tiers are read from the headers)
    first_failed_at: float  # epoch seconds, this run
    last_failed_at: float


def iso_utc(epoch_s: float) -> str:
    """ISO-8601 UTC with milliseconds and a ``Z``: ``2025-11-26T07:27:01.123Z``."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def error_class(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def error_code(exc: BaseException) -> str:
    return exc.code if isinstance(exc, FleetError) else UNCLASSIFIED


def truncate_head(text: str, limit: int) -> bytes:
    """At most ``limit`` UTF-8 bytes from the start, cut on a character boundary."""
    raw = text.encode("utf-8", errors="replace")
    return raw if len(raw) <= limit else raw[:limit].decode("utf-8", errors="ignore").encode()


def truncate_tail(text: str, limit: int) -> bytes:
    """At most ``limit`` UTF-8 bytes from the end: a stack trace's innermost frames and its
    exception line are at the end, so that is the part worth keeping."""
    raw = text.encode("utf-8", errors="replace")
    if len(raw) <= limit:
        return raw
    marker = b"...\n"
    return marker + raw[len(raw) - limit + len(marker) :].decode("utf-8", errors="ignore").encode()


def original_headers(headers: Sequence[tuple[str, bytes | None]]) -> list[Header]:
    """The record's own headers, in order and byte for byte, without any earlier fleet failure header."""
    return [(name, value if value is not None else b"") for name, value in headers if name not in fh.FLEET_HEADERS]


def provenance_headers(
    record: FailedRecord,
    prior: Mapping[str, bytes | None],
    *,
    group: str,
    failure: FailureInfo,
) -> list[Header]:
    """The provenance headers of a record leaving ``record.topic`` after ``failure``.

    ``prior`` is the failing record's header dict: when it already carries provenance (it sits on a
    retry topic, or an operator replayed it), the source, the first failure time and the replay count
    are kept and the attempts add up.
    """
    own = {
        fh.SOURCE_TOPIC: record.topic.encode(),
        fh.SOURCE_PARTITION: str(record.partition).encode(),
        fh.SOURCE_OFFSET: str(record.offset).encode(),
        fh.SOURCE_TIMESTAMP: str(record.timestamp).encode(),
        fh.SOURCE_GROUP: group.encode(),
    }
    out: list[Header] = [(name, prior.get(name) or own[name]) for name in _KEPT]
    error = failure.error
    message = str(error) or error_class(error)
    stack = "".join(traceback.format_exception(error))
    out += [
        (fh.ATTEMPTS, str(header_int(prior, fh.ATTEMPTS) + failure.attempts).encode()),
        (fh.ERROR_CLASS, error_class(error).encode()),
        (fh.ERROR_CODE, error_code(error).encode()),
        (fh.ERROR_MESSAGE, truncate_head(message, fh.ERROR_MESSAGE_MAX)),
        (fh.ERROR_STACKTRACE, truncate_tail(stack, fh.STACKTRACE_MAX)),
        (fh.ERROR_STAGE, failure.stage.encode()),
        (fh.FIRST_FAILED_AT, prior.get(fh.FIRST_FAILED_AT) or iso_utc(failure.first_failed_at).encode()),
        (fh.LAST_FAILED_AT, iso_utc(failure.last_failed_at).encode()),
        (fh.REPLAY_COUNT, str(header_int(prior, fh.REPLAY_COUNT)).encode()),
    ]
    job = prior.get(fh.REPLAY_JOB)
    if job:
        out.append((fh.REPLAY_JOB, job))  # audit trail of the replay that re-sent it
    return out


def retry_record_headers(
    record: FailedRecord,
    prior: Mapping[str, bytes | None],
    *,
    group: str,
    failure: FailureInfo,
    tier: int,
    not_before_ms: int,
) -> list[Header]:
    """Headers of the copy produced to ``<group>.retry.<tier>``: original + provenance + schedule."""
    return [
        *original_headers(record.headers),
        *provenance_headers(record, prior, group=group, failure=failure),
        (fh.RETRY_TIER, str(tier).encode()),
        (fh.NOT_BEFORE, str(not_before_ms).encode()),
    ]


def dead_letter_headers(
    record: FailedRecord, prior: Mapping[str, bytes | None], *, group: str, failure: FailureInfo
) -> list[Header]:
    """Headers of the copy produced to ``<group>.dlq``: original + provenance."""
    return [*original_headers(record.headers), *provenance_headers(record, prior, group=group, failure=failure)]


def target_partition(prior: Mapping[str, bytes | None], record: FailedRecord, partitions: int | None) -> int | None:
    """Source partition modulo the target's partition count: a key keeps its partition affinity.

    ``None`` (count unknown) leaves the choice to the producer's key hash, which also keeps one key
    on one partition.
    """
    if not partitions:
        return None
    return header_int(prior, fh.SOURCE_PARTITION, record.partition) % partitions
