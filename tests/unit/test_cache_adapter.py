"""``RedisCache``'s error mapping and ``FakeCache``'s bookkeeping, without a Redis server.

Contract: connection trouble and timeouts → ``DependencyUnavailable`` (retryable); a command Redis
refuses (``WRONGTYPE``) → ``RejectedByUpstream`` (permanent); a read-only replica during failover
→ retryable. The fake deletes values and SETs, SREMs untracked members and drops emptied SETs.
"""

from __future__ import annotations

from typing import Any

import pytest
from redis import exceptions as rx

from adapters.cache import FakeCache, InvalidationNotice, RedisCache
from events.errors import DependencyUnavailable, RejectedByUpstream


class _Pipe:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def unlink(self, *_: Any) -> None: ...

    def srem(self, *_: Any) -> None: ...

    def smembers(self, *_: Any) -> None: ...

    async def execute(self) -> list[Any]:
        raise self.error


class _FailingRedis:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def pipeline(self, transaction: bool = True) -> _Pipe:
        return _Pipe(self.error)

    async def publish(self, channel: str, message: str) -> int:
        raise self.error


def cache_failing_with(error: Exception) -> RedisCache:
    return RedisCache(_FailingRedis(error), channel="c")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "error", [rx.ConnectionError("refused"), rx.TimeoutError("slow"), rx.BusyLoadingError("loading"), OSError("x")]
)
async def test_unreachable_redis_is_retryable(error: Exception) -> None:
    cache = cache_failing_with(error)

    with pytest.raises(DependencyUnavailable) as caught:
        await cache.invalidate(["k"])
    assert caught.value.retriable and caught.value.upstream == "redis"
    with pytest.raises(DependencyUnavailable):
        await cache.publish(InvalidationNotice("e", "t", ("k",), "r"))
    with pytest.raises(DependencyUnavailable):
        await cache.dependents("idx")


async def test_a_read_only_replica_is_retryable_and_a_wrong_type_is_not() -> None:
    with pytest.raises(DependencyUnavailable):
        await cache_failing_with(rx.ReadOnlyError("READONLY")).invalidate(["k"])
    with pytest.raises(RejectedByUpstream) as caught:
        await cache_failing_with(rx.ResponseError("WRONGTYPE Operation against a key")).dependents("idx")
    assert not caught.value.retriable


async def test_nothing_to_do_makes_no_round_trip() -> None:
    cache = cache_failing_with(rx.ConnectionError("would fail"))

    assert await cache.invalidate([]) == 0
    assert await cache.dependents() == {}


def test_the_notice_is_compact_json_with_event_id_keys_and_reason() -> None:
    notice = InvalidationNotice("evt-1", "fleet.billing.invoice-changed.v1", ("a", "b"), "invoice 1 changed")

    assert notice.to_json() == (
        '{"event_id":"evt-1","event_type":"fleet.billing.invoice-changed.v1","keys":["a","b"],'
        '"reason":"invoice 1 changed"}'
    )


async def test_the_fake_untracks_members_and_drops_an_emptied_set() -> None:
    cache = FakeCache(values={"a": "1", "b": "2"})
    cache.track("idx", "a", "b")

    deleted = await cache.invalidate(["a"], untrack={"idx": ["a"]})
    assert deleted == 1 and cache.sets["idx"] == {"b"}
    await cache.invalidate(["b"], untrack={"idx": ["b"]})
    assert "idx" not in cache.sets and cache.values == {}
