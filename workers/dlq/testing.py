"""Synthetic dead letters for tests and demos, built with the runtime's own header code.

Owns nothing production uses. The headers come from ``workers.runtime.failure`` (the producing side
of the contract in ``events.failure``), so a test that passes here reads what a real worker writes.
Must not be imported by production code.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from adapters.kafka import KafkaTarget, durable_producer, start_client
from events import failure as fh
from events.envelope import H_HOP_TRACEPARENT, Envelope, to_record
from events.errors import UpstreamTimeout
from events.topics import Topic, dlq_topic
from workers.runtime.failure import FailedRecord, FailureInfo, dead_letter_headers, target_partition

DLQ_PARTITIONS = 4


@dataclass(frozen=True)
class Letter:
    """One dead letter to produce; everything has a sensible default."""

    key: str = field(default_factory=lambda: f"801{uuid.uuid4().hex[:15]}")
    event_type: str = "fleet.order.changed.v1"
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    data: dict[str, Any] | None = None
    error: BaseException = field(default_factory=lambda: UpstreamTimeout("WHMCS did not answer in 10s"))
    source_topic: str = Topic.SF_ORDER
    source_partition: int = 0
    source_offset: int = 0
    source_timestamp_ms: int = 1_700_000_000_000  # when the failed record was produced
    replay_count: int = 0
    attempts: int = 3
    dead_lettered_ms: int | None = None  # the DLQ record's timestamp (None: now)
    traceparent: str | None = None  # the event's ``ce_traceparent`` (where it was created)
    hop: str | None = None  # the failed record's Kafka ``traceparent`` (the span that produced it)


@dataclass(frozen=True)
class Produced:
    letter: Letter
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    partition: int
    offset: int


def build(letter: Letter, group: str) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of the dead letter a worker of ``group`` would write for ``letter``."""
    data = letter.data if letter.data is not None else {"sf_order_id": letter.key, "status": "Processed"}
    env = Envelope(
        id=letter.event_id,
        source="/fleet/test",
        type=letter.event_type,
        key=letter.key,
        data=data,
        traceparent=letter.traceparent,
    )
    key, value, original = to_record(env)
    if letter.hop is not None:
        original.append((H_HOP_TRACEPARENT, letter.hop.encode()))
    record = FailedRecord(
        letter.source_topic,
        letter.source_partition,
        letter.source_offset,
        letter.source_timestamp_ms,
        key,
        value,
        original,
    )
    prior = {fh.REPLAY_COUNT: str(letter.replay_count).encode()} if letter.replay_count else {}
    failure = FailureInfo(_raised(letter.error), fh.Stage.HANDLE, letter.attempts, 1_700_000_000.0, 1_700_000_001.0)
    return key, value, dead_letter_headers(record, prior, group=group, failure=failure)


def _raised(error: BaseException) -> BaseException:
    """The error with a real traceback, as a handler would have raised it."""
    try:
        raise error
    except BaseException as exc:
        return exc


async def produce(kafka: KafkaTarget, group: str, letters: Sequence[Letter]) -> list[Produced]:
    """Produce ``letters`` to ``<group>.dlq`` in order; partitioned as the runtime partitions them."""
    producer = durable_producer(kafka, "fleet-dlq-testing")
    await start_client(producer, kafka)
    try:
        out = []
        for letter in letters:
            key, value, headers = build(letter, group)
            partition = target_partition({}, _as_failed(letter), DLQ_PARTITIONS)
            meta = await producer.send_and_wait(
                dlq_topic(group),
                key=key,
                value=value,
                headers=headers,
                partition=partition,
                timestamp_ms=letter.dead_lettered_ms,
            )
            out.append(Produced(letter, key, value, headers, meta.partition, meta.offset))
        return out
    finally:
        await producer.stop()


def _as_failed(letter: Letter) -> FailedRecord:
    return FailedRecord(letter.source_topic, letter.source_partition, letter.source_offset, 0, None, None, ())
