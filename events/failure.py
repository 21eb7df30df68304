"""The failure path's headers: their names, and the one builder of the provenance every dead letter carries.

A record on ``<group>.retry.<n>``, ``<group>.dlq`` or ``<group>.parked`` keeps the original key,
value and headers byte for byte and carries these extra headers (documented in
``docs/dead-letters.md``). Names follow Karafka Pro's ``source_*`` vocabulary (the one Kafka
Streams and Flink use) so existing tooling recognises them. Every writer of a dead letter (the
consume runtime, the WHMCS receiver, the CDC subscriber) builds them with ``provenance``, so an
operator reads the same names wherever a record was refused. Pure: no I/O, no clock.
"""

from __future__ import annotations

from datetime import UTC, datetime

from events.errors import FleetError

# where the record first came from (never rewritten when it moves between retry tiers)
SOURCE_TOPIC = "source_topic"
SOURCE_PARTITION = "source_partition"
SOURCE_OFFSET = "source_offset"
SOURCE_TIMESTAMP = "source_timestamp"  # ms since epoch of the original record
SOURCE_GROUP = "source_consumer_group"

# what went wrong
ATTEMPTS = "source_attempts"  # handler invocations so far, all tiers included
ERROR_CLASS = "error_class"  # fully qualified exception class
ERROR_CODE = "error_code"  # FleetError.code when there is one
ERROR_MESSAGE = "error_message"  # truncated to ERROR_MESSAGE_MAX bytes
ERROR_STACKTRACE = "error_stacktrace"  # truncated to STACKTRACE_MAX bytes
ERROR_STAGE = "error_stage"  # decode | validate | handle | produce
FIRST_FAILED_AT = "first_failed_at"  # ISO-8601 UTC
LAST_FAILED_AT = "last_failed_at"  # ISO-8601 UTC

# retry scheduling and replay
RETRY_TIER = "retry_tier"  # 1-based tier of the retry topic the record sits on
NOT_BEFORE = "retry_not_before"  # ms since epoch; the consumer pauses the partition until then
REPLAY_COUNT = "replay_count"  # times an operator replayed this dead letter
REPLAY_JOB = "replay_job"  # id of the replay job that re-sent it (audit)

# only on ``ingress.dlq.v1``: a body an ingress worker refused before any consumer group saw it
INGRESS = "ingress"  # the ingress worker that refused it, e.g. ``whmcs-webhooks``
WEBHOOK_ID = "webhook_id"  # the Standard Webhooks id of a refused webhook (also the record key)
SOURCE_REPLAY_ID = "source_replay_id"  # the Salesforce replay id of a refused CDC delivery
#: when the WHMCS receiver refused a body, in its dead letters written before ``provenance``
#: existed (now ``last_failed_at``): read by ``fleet dlq``, never written
LEGACY_FAILED_AT = "failed_at"

PROVENANCE = (
    SOURCE_TOPIC,
    SOURCE_PARTITION,
    SOURCE_OFFSET,
    SOURCE_TIMESTAMP,
    SOURCE_GROUP,
    ATTEMPTS,
    ERROR_CLASS,
    ERROR_CODE,
    ERROR_MESSAGE,
    ERROR_STACKTRACE,
    ERROR_STAGE,
    FIRST_FAILED_AT,
    LAST_FAILED_AT,
    REPLAY_COUNT,
)
FLEET_HEADERS = frozenset(PROVENANCE + (RETRY_TIER, NOT_BEFORE, REPLAY_JOB))

ERROR_MESSAGE_MAX = 1_000
STACKTRACE_MAX = 4_000
#: ``error_code`` of an exception outside the error tree
UNCLASSIFIED = "UNCLASSIFIED"

Header = tuple[str, bytes]
#: a header value as ``provenance`` takes it: text or a number (encoded as UTF-8 text), bytes (kept
#: byte for byte: a value carried over from an earlier hop), or None (nothing applies: empty value)
Value = str | int | bytes | None


class Stage:
    DECODE = "decode"
    VALIDATE = "validate"
    HANDLE = "handle"
    PRODUCE = "produce"


def provenance(
    *,
    error_class: Value,
    error_code: Value,
    error_message: str,
    stage: str,
    attempts: Value,
    first_failed_at: Value,
    last_failed_at: Value,
    error_stacktrace: str = "",
    source_topic: Value = None,
    source_partition: Value = None,
    source_offset: Value = None,
    source_timestamp: Value = None,
    source_group: Value = None,
    replay_count: Value = 0,
) -> list[Header]:
    """The ``PROVENANCE`` headers of one dead letter (or retry-tier copy), every name, in that order.

    A writer passes what it knows and None for what does not apply to it (a refused webhook has no
    source partition, offset or group): the header is then written empty, so every dead letter
    carries the same names whoever wrote it. The message and the stack trace are truncated here
    (``truncate_head``, ``truncate_tail``); times are ISO-8601 UTC (``iso_utc``).
    """
    values: tuple[Value, ...] = (
        source_topic,
        source_partition,
        source_offset,
        source_timestamp,
        source_group,
        attempts,
        error_class,
        error_code,
        truncate_head(error_message, ERROR_MESSAGE_MAX),
        truncate_tail(error_stacktrace, STACKTRACE_MAX),
        stage,
        first_failed_at,
        last_failed_at,
        replay_count,
    )
    return [(name, _encode(value)) for name, value in zip(PROVENANCE, values, strict=True)]


def _encode(value: Value) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", errors="replace")  # a dead letter is never refused for its text


def iso_utc(epoch_s: float) -> str:
    """ISO-8601 UTC with milliseconds and a ``Z``: ``2025-11-26T07:27:01.123Z``."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def class_of(exc: BaseException) -> str:
    """The ``error_class`` of ``exc``: fully qualified, builtins bare (``KeyError``)."""
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def code_of(exc: BaseException) -> str:
    """The ``error_code`` of ``exc``: ``FleetError.code``, ``UNCLASSIFIED`` outside the error tree."""
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
