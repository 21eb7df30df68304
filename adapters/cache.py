"""Redis (redis-py asyncio, RESP2/3) as the portal's cache: delete stale keys, tell portal instances.

Owns the Redis side of invalidation: ``UNLINK`` pipelined (one command per key, so it also works on a
Redis Cluster), reading the portal's dependency SETs, ``PUBLISH`` of the invalidation notice, and
the mapping of redis-py errors onto ``events.errors``. Must not build key names (``workers.cache_keys``
does), read configuration or build the client (the composition root passes a ``redis.asyncio.Redis``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from redis import exceptions as rx
from redis.asyncio import Redis

from events.errors import DependencyUnavailable, FleetError, RejectedByUpstream

UPSTREAM = "redis"


@dataclass(frozen=True)
class InvalidationNotice:
    """What portal instances receive on the invalidation channel (JSON, see docs/cache-keys.md)."""

    event_id: str
    event_type: str
    keys: tuple[str, ...]
    reason: str

    def to_json(self) -> str:
        body = {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "keys": list(self.keys),
            "reason": self.reason,
        }
        return json.dumps(body, separators=(",", ":"))


class CachePort(Protocol):
    async def dependents(self, *index_keys: str) -> dict[str, frozenset[str]]:
        """Members of each dependency SET (one pipelined round trip); a missing SET has none.

        Read-only and idempotent. Raises ``DependencyUnavailable`` when Redis cannot answer."""
        ...

    async def invalidate(self, keys: Iterable[str], *, untrack: Mapping[str, Iterable[str]] | None = None) -> int:
        """``UNLINK`` every key and ``SREM`` the ``untrack`` members from their SETs, pipelined in one
        round trip; returns how many keys existed. Idempotent: deleting a missing key is a no-op, so a
        retried invalidation deletes nothing twice. ``SREM`` rather than deleting a whole SET keeps
        members the portal added meanwhile, and a failure half-way leaves the SET for the retry.
        Raises ``DependencyUnavailable`` (retryable) when Redis is unreachable or times out."""
        ...

    async def publish(self, notice: InvalidationNotice) -> int:
        """``PUBLISH`` the notice on the invalidation channel; returns the receivers counted by Redis.

        Pub/sub is fire-and-forget: a portal instance that is not subscribed now misses it (its L1
        copies expire by TTL). Raises ``DependencyUnavailable`` as ``invalidate``."""
        ...


class RedisCache:
    """``CachePort`` over a ``redis.asyncio.Redis`` built by the composition root."""

    def __init__(self, redis: Redis, *, channel: str) -> None:
        self._redis = redis
        self._channel = channel

    async def dependents(self, *index_keys: str) -> dict[str, frozenset[str]]:
        if not index_keys:
            return {}
        with _mapped("SMEMBERS"):
            pipe = self._redis.pipeline(transaction=False)
            for index in index_keys:
                pipe.smembers(index)
            answers = await pipe.execute()
        return {index: frozenset(_text(m) for m in members) for index, members in zip(index_keys, answers, strict=True)}

    async def invalidate(self, keys: Iterable[str], *, untrack: Mapping[str, Iterable[str]] | None = None) -> int:
        keys = list(dict.fromkeys(keys))
        removals = {index: sorted(members) for index, members in (untrack or {}).items() if members}
        if not keys and not removals:
            return 0
        with _mapped("UNLINK"):
            pipe = self._redis.pipeline(transaction=False)
            for key in keys:
                pipe.unlink(key)
            for index, members in removals.items():
                pipe.srem(index, *members)
            answers = await pipe.execute()
        return sum(int(n) for n in answers[: len(keys)])

    async def publish(self, notice: InvalidationNotice) -> int:
        with _mapped("PUBLISH"):
            return int(await self._redis.publish(self._channel, notice.to_json()))


@contextmanager
def _mapped(operation: str) -> Iterator[None]:
    """The one place redis-py errors become ours: connection trouble is retryable, a refused
    command (``WRONGTYPE`` on a dependency SET the portal wrote wrongly) is not."""
    try:
        yield
    except FleetError:
        raise
    except rx.ResponseError as exc:
        if isinstance(exc, rx.ReadOnlyError):  # a failover in progress: the new primary will take it
            raise DependencyUnavailable(f"redis {operation} failed: {exc!r}", upstream=UPSTREAM) from exc
        raise RejectedByUpstream(
            f"redis {operation} refused: {exc!r}", upstream=UPSTREAM, code="REDIS_COMMAND_REFUSED"
        ) from exc
    except (rx.RedisError, OSError, TimeoutError) as exc:
        raise DependencyUnavailable(f"redis {operation} failed: {exc!r}", upstream=UPSTREAM) from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class FakeCache:
    """In-memory ``CachePort``: plain values in ``values``, dependency SETs in ``sets``.

    Records every key it was asked to delete (``invalidated_keys``, in order) and every notice
    (``notices``); ``fail_next_with`` makes the next call raise that error, before any effect.
    """

    values: dict[str, str] = field(default_factory=dict)
    sets: dict[str, set[str]] = field(default_factory=dict)
    invalidated_keys: list[str] = field(default_factory=list)
    notices: list[InvalidationNotice] = field(default_factory=list)
    fail_next_with: Exception | None = None

    def track(self, index: str, *keys: str) -> None:
        """Play the portal caching ``keys`` under a dependency index."""
        self.sets.setdefault(index, set()).update(keys)

    async def dependents(self, *index_keys: str) -> dict[str, frozenset[str]]:
        self._maybe_fail()
        return {index: frozenset(self.sets.get(index, ())) for index in index_keys}

    async def invalidate(self, keys: Iterable[str], *, untrack: Mapping[str, Iterable[str]] | None = None) -> int:
        self._maybe_fail()
        keys = list(dict.fromkeys(keys))
        self.invalidated_keys.extend(keys)
        existed = sum(1 for k in keys if self.values.pop(k, None) is not None or self.sets.pop(k, None) is not None)
        for index, members in (untrack or {}).items():
            remaining = self.sets.get(index, set()) - set(members)
            if remaining:
                self.sets[index] = remaining
            else:
                self.sets.pop(index, None)  # Redis deletes an emptied SET
        return existed

    async def publish(self, notice: InvalidationNotice) -> int:
        self._maybe_fail()
        self.notices.append(notice)
        return 1

    def _maybe_fail(self) -> None:
        if self.fail_next_with is not None:
            exc, self.fail_next_with = self.fail_next_with, None
            raise exc
