"""``RedisCache``'s error mapping and ``FakeCache``'s bookkeeping, without a Redis server.

Contract: connection trouble and timeouts → ``DependencyUnavailable`` (retryable); a command Redis
refuses (``WRONGTYPE``) → ``RejectedByUpstream`` (permanent); a read-only replica during failover
→ retryable; in a pipeline of several events' commands a refused command fails only its own item.
The fake deletes values and SETs, SREMs untracked members, drops emptied SETs and records notices.
"""

from __future__ import annotations

from typing import Any

import pytest
from redis import exceptions as rx

from adapters.cache import FakeCache, Invalidation, InvalidationNotice, RedisCache
from events.errors import DependencyUnavailable, RejectedByUpstream


class _Pipe:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def unlink(self, *_: Any) -> None: ...

    def srem(self, *_: Any) -> None: ...

    def smembers(self, *_: Any) -> None: ...

    def publish(self, *_: Any) -> None: ...

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        raise self.error


class _FailingRedis:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def pipeline(self, transaction: bool = True) -> _Pipe:
        return _Pipe(self.error)


def cache_failing_with(error: Exception) -> RedisCache:
    return RedisCache(_FailingRedis(error), channel="c", status_channel="s")  # type: ignore[arg-type]


def item(*keys: str, untrack: dict[str, list[str]] | None = None) -> Invalidation:
    return Invalidation(InvalidationNotice("e", "t", keys, "r"), untrack or {})


@pytest.mark.parametrize(
    "error", [rx.ConnectionError("refused"), rx.TimeoutError("slow"), rx.BusyLoadingError("loading"), OSError("x")]
)
async def test_unreachable_redis_is_retryable(error: Exception) -> None:
    cache = cache_failing_with(error)

    with pytest.raises(DependencyUnavailable) as caught:
        await cache.invalidate([item("k")])
    assert caught.value.retriable and caught.value.upstream == "redis"
    with pytest.raises(DependencyUnavailable):
        await cache.dependents("idx")


async def test_a_read_only_replica_is_retryable_and_a_wrong_type_is_not() -> None:
    with pytest.raises(DependencyUnavailable):
        await cache_failing_with(rx.ReadOnlyError("READONLY")).invalidate([item("k")])
    with pytest.raises(RejectedByUpstream) as caught:
        await cache_failing_with(rx.ResponseError("WRONGTYPE Operation against a key")).dependents("idx")
    assert not caught.value.retriable


async def test_nothing_to_do_makes_no_round_trip() -> None:
    cache = cache_failing_with(rx.ConnectionError("would fail"))

    assert await cache.invalidate([]) == []
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

    deleted = await cache.invalidate([item("a", untrack={"idx": ["a"]})])
    assert deleted == [1] and cache.sets["idx"] == {"b"}
    await cache.invalidate([item("b", untrack={"idx": ["b"]})])
    assert "idx" not in cache.sets and cache.values == {}
    assert [n.keys for n in cache.notices] == [("a",), ("b",)]


class _AnsweringPipe(_Pipe):
    """A pipeline whose replies are given (a refused command comes back as its error, in place)."""

    def __init__(self, answers: list[Any]) -> None:
        super().__init__(RuntimeError("unused"))
        self.answers = answers

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        assert raise_on_error is False, "per-item errors must come back as values"
        return self.answers


async def test_a_refused_command_fails_only_its_own_item() -> None:
    wrong = rx.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
    # item 1: UNLINK a, UNLINK b, PUBLISH; item 2: UNLINK c, SREM idx, PUBLISH; item 3: UNLINK d, PUBLISH
    answers = [1, 0, 1, 1, wrong, 1, 1, 1]
    redis = _FailingRedis(RuntimeError("unused"))
    redis.pipeline = lambda transaction=True: _AnsweringPipe(answers)  # type: ignore[method-assign]
    cache = RedisCache(redis, channel="c", status_channel="s")  # type: ignore[arg-type]

    results = await cache.invalidate([item("a", "b"), item("c", untrack={"idx": ["c"]}), item("d")])

    assert results[0] == 1 and results[2] == 1
    assert isinstance(results[1], RejectedByUpstream) and not results[1].retriable
