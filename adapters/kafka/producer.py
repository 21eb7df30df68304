"""Kafka producer port, its aiokafka implementations and an in-memory fake.

Produces are durable when they return: ``acks=all`` with the idempotent producer, so a caller
may checkpoint (a Salesforce replay id, a 2xx to a webhook) only after ``publish`` returned.
Consuming and offsets are not here: they belong to ``workers.runtime`` alone.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]
from aiokafka.partitioner import murmur2  # type: ignore[import-untyped]

from adapters.kafka.connection import KafkaTarget, as_connection
from events.envelope import Envelope, to_record
from events.errors import DependencyUnavailable

Headers = Sequence[tuple[str, bytes]]

#: a round of at least this many records means load: the next one may linger (``linger_s``) until
#: twice as many are queued, or ``LINGER_MAX_RECORDS``
LINGER_FROM_RECORDS = 8
LINGER_MAX_RECORDS = 512


class Delivered(NamedTuple):
    """Where a record landed. A named tuple, not a frozen dataclass: the batching producer builds one
    per record, and a frozen dataclass costs twice as much to build (an ``object.__setattr__`` per field)."""

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

    def submit(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers) -> asyncio.Future[Delivered]:
        """``publish_raw`` as a future: the record is handed over now, the future settles once it is
        acknowledged (or with ``DependencyUnavailable``). A caller that awaits it directly skips a
        coroutine per record; ``BatchingProducer`` queues without one, the others wrap ``publish_raw``."""
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
            raise _produce_failed(topic, exc) from exc
        return Delivered(meta.topic, meta.partition, meta.offset)

    def submit(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers) -> asyncio.Future[Delivered]:
        return asyncio.ensure_future(self.publish_raw(topic, key, value, headers))


class BatchingProducer:
    """``ProducerPort`` for many concurrent callers (a webhook receiver): their records go to Kafka
    together, one closed batch per partition (aiokafka's ``create_batch``/``send_batch``).

    Same durability as ``AiokafkaProducer``: a caller returns only once the broker acknowledged the
    batch holding its record (``acks=all``, idempotent producer); a failed batch, or no answer within
    ``timeout_s``, raises ``DependencyUnavailable`` in its callers. Same partitions: a key goes where
    ``send`` puts it (murmur2), and one key's records keep their order (one batch per partition per
    round, rounds one after the other). Batching: one round of batches is in flight at a time; what
    arrives meanwhile waits here and leaves as the next round, so batches grow with the load and
    nothing lingers when it is quiet; under load a round may wait ``linger_s`` to grow (``_fill``).
    The price: a partition whose leader is slow holds the next round of every partition, for at most
    ``timeout_s`` (their callers get 503 and retry either way).
    Why not ``send_and_wait``: aiokafka's per-record work (metadata check, accumulator lookup, a
    future and a timer per call) and its ~150 us of Python per produce request dominated the
    receiver's CPU. Records without a key, or with an explicit partition, take ``send_and_wait``.
    """

    def __init__(
        self,
        producer: AIOKafkaProducer,
        *,
        timeout_s: float = 15.0,
        linger_s: float = 0.0,
        linger_from: int = LINGER_FROM_RECORDS,
    ) -> None:
        self._producer = producer
        self._timeout_s = timeout_s
        self._single = AiokafkaProducer(producer, timeout_s=timeout_s)
        self._queued: dict[tuple[str, int], list[_Queued]] = {}
        self._queued_count = 0
        #: under load, the next round waits (``linger_s`` at most) until this many records are queued
        self._linger_s, self._linger_from = linger_s, linger_from
        self._filled: asyncio.Future[None] | None = None
        self._fill_to = 0
        self._sender: asyncio.Task[None] | None = None
        #: callers of this turn; one timer per turn bounds their wait (not one per call)
        self._turn: list[asyncio.Future[Delivered]] = []
        #: partitions per topic as aiokafka's metadata says, forgotten at each metadata update
        #: (``partitions_for_topic`` builds a set per call); the listener is aiokafka's public hook
        self._partition_counts: dict[str, int] = {}
        producer.client.cluster.add_listener(self._metadata_updated)

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
        if key is None or partition is not None:
            return await self._single.publish_raw(topic, key, value, headers, partition)
        if not (self._partition_counts.get(topic) or self._partitions_of(topic)):
            # not fetched yet: the only wait before queueing, bounded like a produce
            try:
                async with asyncio.timeout(self._timeout_s):
                    await self._producer.partitions_for(topic)
            except (KafkaError, TimeoutError) as exc:
                raise _produce_failed(topic, exc) from exc
            if not self._partitions_of(topic):  # metadata without partitions: ``submit`` would send it back here
                raise _produce_failed(topic, KafkaError("the topic's metadata lists no partitions"))
        return await self.submit(topic, key, value, headers)

    def submit(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers) -> asyncio.Future[Delivered]:
        # aiokafka's metadata, as ``send`` reads it (partitions added to a topic count from its next update)
        partitions = self._partition_counts.get(topic) or self._partitions_of(topic)
        if key is None or not partitions:  # unkeyed, or the topic's metadata is not fetched yet
            return asyncio.ensure_future(self.publish_raw(topic, key, value, headers))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Delivered] = loop.create_future()
        tp = (topic, _partition_of(key, partitions))
        self._queued.setdefault(tp, []).append((key, value, list(headers), future))
        self._queued_count += 1
        if self._filled is not None and self._queued_count >= self._fill_to and not self._filled.done():
            self._filled.set_result(None)
        if self._sender is None:
            self._sender = loop.create_task(self._send())  # first runs next turn: collects this one
        if not self._turn:
            loop.call_soon(self._time_turn)
        self._turn.append(future)
        return future

    def _partitions_of(self, topic: str) -> int:
        partitions = self._producer.client.cluster.partitions_for_topic(topic)
        if not partitions:
            return 0
        self._partition_counts[topic] = count = len(partitions)
        return count

    def _metadata_updated(self, _cluster: object) -> None:
        self._partition_counts.clear()

    async def flush(self) -> None:
        """Hand every queued record to aiokafka (its ``stop()`` then flushes them); waits at most one
        produce timeout, as long as any caller could still be waiting for an answer."""
        if self._sender is not None:
            sender = self._sender
            _, late = await asyncio.wait([sender], timeout=self._timeout_s)
            if late:  # Kafka is away: its callers have been answered 503 already
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)

    def _time_turn(self) -> None:
        turn, self._turn = self._turn, []
        asyncio.get_running_loop().call_later(self._timeout_s, _expire, turn, self._timeout_s)

    async def _send(self) -> None:
        try:
            while self._queued:
                queued, self._queued = self._queued, {}
                sent, self._queued_count = self._queued_count, 0
                in_flight = []
                for (topic, partition), records in queued.items():
                    live = [record for record in records if not record[3].done()]  # skip callers timed out
                    for batch, members in self._batches(live):
                        try:
                            delivered = await self._producer.send_batch(batch, topic, partition=partition)
                        except Exception as exc:  # KafkaError, or the producer stopped under us
                            _fail(topic, members, exc)
                            continue
                        delivered.add_done_callback(functools.partial(_settle, topic, partition, members))
                        in_flight.append(delivered)
                if in_flight:
                    # One round of batches in flight at a time (one produce request per broker): what
                    # arrives meanwhile leaves in the next round, so batches grow with the load and
                    # nothing lingers when it is quiet. Bounded, so a stuck batch holds the next round
                    # no longer than their callers wait.
                    await asyncio.wait(in_flight, timeout=self._timeout_s)
                if self._linger_s and sent >= self._linger_from and self._queued_count < sent:
                    await self._fill(min(2 * sent, LINGER_MAX_RECORDS))
        finally:
            self._sender = None
            # left early (cancelled at shutdown): whoever still waits gets an error, never a silent drop
            for (topic, _), records in self._queued.items():
                _fail(topic, records, KafkaError("producer stopped before sending"))
            self._queued = {}

    async def _fill(self, size: int) -> None:
        """Under load (the last round carried ``linger_from`` records or more), wait until ``size``
        records are queued (twice the last round), or ``linger_s``: fewer and larger rounds. Each
        partition's batch costs ~30 us of aiokafka Python whatever it holds; at the ingress bench's
        maximum a round carried ~26 records over 4 partitions. There a 1 ms linger took the receiver
        from 66-71 to ~64 us per webhook (3 interleaved pairs) and 2 ms to ~57 us, with a lower p50
        (4.3-4.5 ms without, 3.9-4.0 with). At low rates rounds are small and leave at once. (A
        target of the last round's size alone, rather than twice it, did not grow the rounds.)"""
        self._filled, self._fill_to = asyncio.get_running_loop().create_future(), size
        try:
            await asyncio.wait([self._filled], timeout=self._linger_s)
        finally:
            self._filled = None

    def _batches(self, records: list[_Queued]) -> list[tuple[Any, list[_Queued]]]:
        batches: list[tuple[Any, list[_Queued]]] = []
        batch, members = None, list[_Queued]()
        for record in records:
            key, value, headers, _ = record
            if batch is None or batch.append(timestamp=None, key=key, value=value, headers=headers) is None:
                if batch is not None:
                    batches.append((batch, members))
                batch, members = self._producer.create_batch(), []
                batch.append(timestamp=None, key=key, value=value, headers=headers)  # a first record always fits
            members.append(record)
        if batch is not None:
            batches.append((batch, members))
        for built, _ in batches:
            built.close()  # closed: aiokafka sends it without lingering (this class already batched)
        return batches


#: key, value, headers, the caller's future
_Queued = tuple[bytes, bytes | None, list[tuple[str, bytes]], "asyncio.Future[Delivered]"]


#: partition count → key → partition; cleared when it reaches ``_PARTITION_CACHE_SIZE`` keys
_partition_cache: dict[int, dict[bytes, int]] = {}
_PARTITION_CACHE_SIZE = 65_536


def _partition_of(key: bytes, partitions: int) -> int:
    """aiokafka's ``DefaultPartitioner`` for a key (murmur2, as the Java client), cached: murmur2 is
    pure Python (~1 us), and a topic's keys (client ids, order ids) repeat. A plain dict of bytes to
    ints, not ``functools.lru_cache``: the LRU keeps a list per entry that the garbage collector
    tracks and keeps scanning. Timed inside the webhook receiver at full load (the ingress bench's
    50,000 client ids miss about half the time): 2.8 us per publish with the LRU, 1.7 us with this."""
    by_key = _partition_cache.get(partitions)
    if by_key is None:
        by_key = _partition_cache[partitions] = {}
    partition = by_key.get(key)
    if partition is None:
        if len(by_key) >= _PARTITION_CACHE_SIZE:
            by_key.clear()
        partition = by_key[key] = int(murmur2(key) & 0x7FFFFFFF) % partitions
    return partition


def _settle(topic: str, partition: int, records: list[_Queued], delivered: asyncio.Future[Any]) -> None:
    if delivered.cancelled():
        _fail(topic, records, KafkaError("batch delivery cancelled"))
        return
    exc = delivered.exception()
    if exc is not None:
        _fail(topic, records, exc)
        return
    base = delivered.result().offset
    for n, (_, _, _, future) in enumerate(records):
        if not future.done():
            future.set_result(Delivered(topic, partition, base + n))


def _fail(topic: str, records: list[_Queued], exc: BaseException) -> None:
    for _, _, _, future in records:
        if not future.done():  # one exception per caller: a shared one would collect every traceback
            future.set_exception(_produce_failed(topic, exc))


def _expire(futures: list[asyncio.Future[Delivered]], timeout_s: float) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(_unavailable(f"kafka produce failed: no acknowledgement within {timeout_s:g} s"))


def _produce_failed(topic: str, cause: BaseException) -> DependencyUnavailable:
    """What every producer here raises (or settles a caller with) when Kafka did not take a record."""
    return _unavailable(f"kafka produce to {topic} failed: {cause!r}", cause)


def _unavailable(reason: str, cause: BaseException | None = None) -> DependencyUnavailable:
    error = DependencyUnavailable(reason, upstream="kafka")
    error.__cause__ = cause
    return error


def durable_producer(target: KafkaTarget, client_id: str, **overrides: object) -> AIOKafkaProducer:
    """An idempotent ``acks=all`` producer (not started); callers start it with ``start_client``."""
    options: dict[str, object] = {
        **as_connection(target).options(),
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

    def submit(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers) -> asyncio.Future[Delivered]:
        return asyncio.ensure_future(self.publish_raw(topic, key, value, headers))  # subclasses' faults apply

    def on(self, topic: str) -> list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]:
        return [(k, v, h) for t, k, v, h in self.records if t == topic]
