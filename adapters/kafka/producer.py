"""Kafka producer port, its aiokafka implementations and an in-memory fake.

Produces are durable when they return: ``acks=all`` with the idempotent producer, so a caller
may checkpoint (a Salesforce replay id, a 2xx to a webhook) only after ``publish`` returned.
Consuming and offsets are not here: they belong to ``workers.runtime`` alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]
from aiokafka.partitioner import murmur2  # type: ignore[import-untyped]

from adapters.coalescer import ByRound, Coalescer
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
    ``timeout_s`` of ``submit``, raises ``DependencyUnavailable`` in its callers. Same partitions: a
    key goes where ``send`` puts it (murmur2), and one key's records keep their order (one batch per
    partition per round, rounds one after the other). Batching is ``adapters.coalescer``'s: one round
    of batches is in flight at a time; what arrives meanwhile waits and leaves as the next round, so
    batches grow with the load and nothing lingers when it is quiet; under load (a round of
    ``linger_from`` records or more) the next round may wait ``linger_s`` to grow (``ByRound``).
    A round's callers are answered together, once every batch of the round is acknowledged. The
    price: a partition whose leader is slow holds the next round of every partition, for at most
    ``timeout_s`` (their callers get 503 and retry either way).
    Why not ``send_and_wait``: aiokafka's per-record work (metadata check, accumulator lookup, a
    future and a timer per call) and its ~150 us of Python per produce request dominated the
    receiver's CPU. Records without a key, or with an explicit partition, take ``send_and_wait``.

    The linger: each partition's batch costs ~30 us of aiokafka Python whatever it holds; at the
    ingress bench's maximum a round carried ~26 records over 4 partitions. There a 1 ms linger took
    the receiver from 66-71 to ~64 us per webhook (3 interleaved pairs) and 2 ms to ~57 us, with a
    lower p50 (4.3-4.5 ms without, 3.9-4.0 with). (A target of the last round's size alone, rather
    than twice it, did not grow the rounds.)
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
        self._rounds: Coalescer[_Record, Delivered] = Coalescer(
            self._send_round,
            max_items=MAX_ROUND_RECORDS,
            linger=ByRound(linger_s, linger_from, cap=LINGER_MAX_RECORDS),
            timeout_s=timeout_s,  # no caller waits longer, a stuck round included (no timer per caller)
            errors=_record_failed,
            name="kafka-produce-round",
        )
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
        return self._rounds.submit((topic, _partition_of(key, partitions), key, value, list(headers)))

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
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._rounds.drain()
        except TimeoutError:  # Kafka is away: its callers have been answered 503 already
            pass
        await self._rounds.aclose()  # whoever still waits gets an error, never a silent drop

    async def _send_round(self, records: list[_Record]) -> list[Delivered | BaseException]:
        """One round: a closed batch per partition (more if one fills up), all sent at once; each
        record's outcome once they are all acknowledged."""
        outcomes: list[Delivered | BaseException] = [_NOT_SENT] * len(records)
        by_partition: dict[tuple[str, int], list[int]] = {}
        for n, record in enumerate(records):
            by_partition.setdefault((record[0], record[1]), []).append(n)
        sent: list[tuple[str, int, list[int], asyncio.Future[Any]]] = []
        for (topic, partition), members in by_partition.items():
            for batch, batch_members in self._batches(records, members):
                try:
                    delivered = await self._producer.send_batch(batch, topic, partition=partition)
                except Exception as exc:  # KafkaError, or the producer stopped under us
                    for n in batch_members:
                        outcomes[n] = _produce_failed(topic, exc)
                    continue
                sent.append((topic, partition, batch_members, delivered))
        if sent:
            try:
                # One round of batches in flight at a time (one produce request per broker): what
                # arrives meanwhile leaves in the next round. ``asyncio.wait`` never cancels the
                # batches' futures, whatever cuts this wait short.
                await asyncio.wait([delivered for *_, delivered in sent])
            except asyncio.CancelledError:  # the round's deadline, or shutdown: nobody reads them now
                for *_, delivered in sent:
                    delivered.add_done_callback(_retrieve)
                raise
        for topic, partition, members, delivered in sent:
            _settle(outcomes, topic, partition, members, delivered)
        return outcomes

    def _batches(self, records: list[_Record], members: list[int]) -> list[tuple[Any, list[int]]]:
        batches: list[tuple[Any, list[int]]] = []
        batch, in_batch = None, list[int]()
        for n in members:
            _, _, key, value, headers = records[n]
            if batch is None or batch.append(timestamp=None, key=key, value=value, headers=headers) is None:
                if batch is not None:
                    batches.append((batch, in_batch))
                batch, in_batch = self._producer.create_batch(), []
                batch.append(timestamp=None, key=key, value=value, headers=headers)  # a first record always fits
            in_batch.append(n)
        if batch is not None:
            batches.append((batch, in_batch))
        for built, _ in batches:
            built.close()  # closed: aiokafka sends it without lingering (this class already batched)
        return batches


#: topic, partition, key, value, headers
_Record = tuple[str, int, bytes, bytes | None, list[tuple[str, bytes]]]
#: a round carries at most this many records (more queued: the next round, at once)
MAX_ROUND_RECORDS = 4096
_NOT_SENT = KafkaError("record not sent")  # replaced for every record of a round; never seen by a caller


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


def _settle(
    outcomes: list[Delivered | BaseException],
    topic: str,
    partition: int,
    members: list[int],
    delivered: asyncio.Future[Any],
) -> None:
    if delivered.cancelled():
        failure: BaseException | None = KafkaError("batch delivery cancelled")
    else:
        failure = delivered.exception()
    if failure is not None:
        for n in members:  # one exception per caller: a shared one would collect every traceback
            outcomes[n] = _produce_failed(topic, failure)
        return
    base = delivered.result().offset
    for offset, n in enumerate(members, base):
        outcomes[n] = Delivered(topic, partition, offset)


def _retrieve(delivered: asyncio.Future[Any]) -> None:
    if not delivered.cancelled():
        delivered.exception()  # read, so a late failure is not logged as never retrieved


def _record_failed(record: _Record, cause: BaseException) -> DependencyUnavailable:
    return _produce_failed(record[0], cause)


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
