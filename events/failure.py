"""Header names of the failure path: retry-topic scheduling and dead-letter provenance.

A record on ``<group>.retry.<n>``, ``<group>.dlq`` or ``<group>.parked`` keeps the original key,
value and headers byte for byte and carries these extra headers (documented in
``docs/dead-letters.md``). Names follow Karafka Pro's ``source_*`` vocabulary (the one Kafka
Streams and Flink use) so existing tooling recognises them.
"""

from __future__ import annotations

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


class Stage:
    DECODE = "decode"
    VALIDATE = "validate"
    HANDLE = "handle"
    PRODUCE = "produce"
