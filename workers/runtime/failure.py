"""Retry-topic and dead-letter records: the original record byte for byte plus provenance headers.

Owns what the consume runtime puts in them: the record's own headers, then the provenance of
``events.failure.provenance`` (the builder every dead-letter writer shares; documented in
``docs/dead-letters.md``). Must not decide *whether* a record is retried or dead-lettered (that is
``policy``) nor produce it (that is the worker). Provenance always points at the record's first
source: a record that fails again on a retry topic keeps its source headers, its first failure
time and its replay count, and its attempts accumulate.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from events import failure as fh
from workers.runtime.message import header_int

Header = fh.Header


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
    are kept (byte for byte) and the attempts add up.
    """
    error = failure.error
    out = fh.provenance(
        source_topic=prior.get(fh.SOURCE_TOPIC) or record.topic,
        source_partition=prior.get(fh.SOURCE_PARTITION) or record.partition,
        source_offset=prior.get(fh.SOURCE_OFFSET) or record.offset,
        source_timestamp=prior.get(fh.SOURCE_TIMESTAMP) or record.timestamp,
        source_group=prior.get(fh.SOURCE_GROUP) or group,
        attempts=header_int(prior, fh.ATTEMPTS) + failure.attempts,
        error_class=fh.class_of(error),
        error_code=fh.code_of(error),
        error_message=str(error) or fh.class_of(error),
        error_stacktrace="".join(traceback.format_exception(error)),
        stage=failure.stage,
        first_failed_at=prior.get(fh.FIRST_FAILED_AT) or fh.iso_utc(failure.first_failed_at),
        last_failed_at=fh.iso_utc(failure.last_failed_at),
        replay_count=header_int(prior, fh.REPLAY_COUNT),
    )
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
