"""``BatchingProducer`` without a broker: what it does with metadata that names no partitions."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from adapters.kafka import BatchingProducer
from events.errors import DependencyUnavailable


class _Cluster:
    def __init__(self) -> None:
        self.lookups = 0

    def partitions_for_topic(self, _topic: str) -> set[int]:
        self.lookups += 1
        return set()  # aiokafka stores a topic answered without error but without partitions like this

    def add_listener(self, _listener: Any) -> None:
        pass


class _Producer:
    def __init__(self) -> None:
        self.client = type("Client", (), {"cluster": _Cluster()})()

    async def partitions_for(self, _topic: str) -> set[int]:
        return set()


async def test_a_topic_without_partitions_answers_dependency_unavailable_at_once() -> None:
    """Not a loop between ``submit`` and ``publish_raw``, each sending the record to the other."""
    raw = _Producer()
    producer = BatchingProducer(raw, timeout_s=5)  # type: ignore[arg-type]
    with pytest.raises(DependencyUnavailable, match="no partitions"):
        await asyncio.wait_for(producer.submit("t", b"k", b"v", []), 2)
    assert raw.client.cluster.lookups < 10
