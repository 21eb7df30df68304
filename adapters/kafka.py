"""Kafka producer port, its aiokafka implementation and an in-memory fake; topic administration.

Produces are durable when they return: ``acks=all`` with the idempotent producer, so a caller
may checkpoint (a Salesforce replay id, a 2xx to a webhook) only after ``publish`` returned.
Consuming and offsets are not here: they belong to ``workers.runtime`` alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError, TopicAlreadyExistsError  # type: ignore[import-untyped]

from events.envelope import Envelope, to_record
from events.errors import DependencyUnavailable
from events.topics import TopicSpec

Headers = Sequence[tuple[str, bytes]]


@dataclass(frozen=True)
class Delivered:
    topic: str
    partition: int
    offset: int


class ProducerPort(Protocol):
    async def publish(self, topic: str, envelope: Envelope) -> Delivered:
        """Produce one CloudEvents-binary record keyed by ``envelope.key``; returns once acknowledged
        by all in-sync replicas. Raises ``DependencyUnavailable`` when Kafka cannot take it."""
        ...

    async def publish_raw(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        partition: int | None = None,
    ) -> Delivered:
        """Produce bytes as they are (dead letters, retries, replays keep the original record)."""
        ...


class AiokafkaProducer:
    """``ProducerPort`` over a started ``AIOKafkaProducer`` built by the composition root."""

    def __init__(self, producer: AIOKafkaProducer, *, timeout_s: float = 15.0) -> None:
        self._producer = producer
        self._timeout_s = timeout_s

    async def publish(self, topic: str, envelope: Envelope) -> Delivered:
        key, value, headers = to_record(envelope)
        return await self.publish_raw(topic, key, value, headers)

    async def publish_raw(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        partition: int | None = None,
    ) -> Delivered:
        try:
            # asyncio.timeout, not wait_for: no extra task per message on the produce hot path
            async with asyncio.timeout(self._timeout_s):
                meta = await self._producer.send_and_wait(
                    topic, value=value, key=key, headers=list(headers), partition=partition
                )
        except (KafkaError, TimeoutError) as exc:
            raise DependencyUnavailable(f"kafka produce to {topic} failed: {exc!r}", upstream="kafka") from exc
        return Delivered(meta.topic, meta.partition, meta.offset)


def durable_producer(bootstrap: str, client_id: str, **overrides: object) -> AIOKafkaProducer:
    """An idempotent ``acks=all`` producer (not started); callers ``await start()`` in bootstrap."""
    options: dict[str, object] = {
        "bootstrap_servers": bootstrap,
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 2,
        "request_timeout_ms": 15_000,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


@dataclass
class FakeProducer:
    """Records what would have been produced; ``fail_next_with`` makes the next publish raise."""

    records: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = field(default_factory=list)
    fail_next_with: Exception | None = None

    async def publish(self, topic: str, envelope: Envelope) -> Delivered:
        key, value, headers = to_record(envelope)
        return await self.publish_raw(topic, key, value, headers)

    async def publish_raw(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        partition: int | None = None,
    ) -> Delivered:
        if self.fail_next_with is not None:
            exc, self.fail_next_with = self.fail_next_with, None
            raise exc
        self.records.append((topic, key, value, list(headers)))
        return Delivered(topic, partition or 0, len(self.records) - 1)

    def on(self, topic: str) -> list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]:
        return [(k, v, h) for t, k, v, h in self.records if t == topic]


async def ensure_topics(bootstrap: str, specs: Sequence[TopicSpec], *, client_id: str = "fleet-admin") -> list[str]:
    """Create the topics that do not exist yet; returns the names created. Idempotent."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id=client_id, request_timeout_ms=15_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if not missing:
            return []
        new = [NewTopic(s.name, s.partitions, 1, topic_configs=s.configs()) for s in missing]
        try:
            await admin.create_topics(new)
        except TopicAlreadyExistsError:
            pass  # a concurrent ensure won the race; the end state is the same
        return [s.name for s in missing]
    finally:
        await admin.close()


async def list_topics(bootstrap: str, *, client_id: str = "fleet-admin") -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id=client_id, request_timeout_ms=10_000)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()
