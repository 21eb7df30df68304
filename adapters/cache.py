"""Redis (redis-py asyncio, RESP2/3) as the portal's cache: delete stale keys, tell portal instances.

Owns the Redis side of invalidation: reading the portal's dependency SETs, then for a whole batch
of events one pipelined round trip of ``UNLINK`` (one command per key, so it also works on a Redis
Cluster), ``SREM`` and ``PUBLISH`` of each event's notices (the invalidation notice, and the
order-status notice of a fulfillment outcome on its own channel); and the mapping of redis-py
errors onto ``events.errors``. Must not build key names (``workers.cache_keys`` does), read configuration or
build the client (the composition root passes a ``redis.asyncio.Redis``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
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


@dataclass(frozen=True)
class OrderStatusNotice:
    """What portal instances receive on the order-status channel (JSON, see docs/cache-keys.md): an
    order's new status for the live order view (SSE ``order.update``, subscribers keyed by
    ``sf_order_id``). ``at`` is the outcome's ``ce_time`` (ISO 8601, UTC), so a subscriber can drop
    a notice older than the status it already shows."""

    event_id: str
    sf_order_id: str
    sf_account_id: str | None
    status: str  # "Activating" | "Activated" | "Failed"
    error_code: str | None = None
    error_message: str | None = None
    at: str | None = None

    def to_json(self) -> str:
        body = {
            "event_id": self.event_id,
            "sf_order_id": self.sf_order_id,
            "sf_account_id": self.sf_account_id,
            "status": self.status,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "at": self.at,
        }
        return json.dumps(body, separators=(",", ":"))


@dataclass(frozen=True)
class Invalidation:
    """One event's share of ``CachePort.invalidate``: ``UNLINK`` the notice's keys, ``SREM`` the
    ``untrack`` members from their dependency SETs, then ``PUBLISH`` the notice, then ``PUBLISH`` the
    order-status notice. ``notice`` is None when the event made no key stale (then nothing is
    unlinked and no invalidation notice goes out); ``status`` is None for every event but an order
    outcome the portal's live view shows."""

    notice: InvalidationNotice | None
    untrack: Mapping[str, Iterable[str]] = field(default_factory=dict)
    status: OrderStatusNotice | None = None

    @property
    def keys(self) -> list[str]:
        """The keys to ``UNLINK``, each once, in order."""
        return list(dict.fromkeys(self.notice.keys)) if self.notice is not None else []


class CachePort(Protocol):
    async def dependents(self, *index_keys: str) -> dict[str, frozenset[str]]:
        """Members of each dependency SET (one pipelined round trip); a missing SET has none.

        Read-only and idempotent. Raises ``DependencyUnavailable`` when Redis cannot answer, and
        ``RejectedByUpstream`` (permanent) when one of the keys is not a SET (``WRONGTYPE``)."""
        ...

    async def invalidate(self, items: Sequence[Invalidation]) -> list[int | FleetError]:
        """For each item, in order: ``UNLINK`` its keys, ``SREM`` its untracked members, ``PUBLISH`` its
        notice on the invalidation channel, ``PUBLISH`` its order-status notice on the order-status
        channel (each notice only when the item has one); all items in one pipelined round trip.
        Returns, per item, how many of its keys existed, or the error of a command Redis refused for
        that item (the other items are unaffected).

        Order: Redis runs a pipeline in order, so no notice (of either kind) goes out before its own
        keys are gone.
        Idempotent: deleting a missing key is a no-op, so a retry deletes nothing twice (and repeats
        the notice, which subscribers treat as idempotent). ``SREM`` rather than deleting a whole SET
        keeps members the portal added meanwhile, and a failure half-way leaves the SET for the retry.
        Pub/sub is fire-and-forget: an instance not subscribed now misses the notice (its L1 copies
        expire by TTL). Raises ``DependencyUnavailable`` (retryable, for every item: any prefix of the
        pipeline may have run) when Redis is unreachable or times out."""
        ...


class RedisCache:
    """``CachePort`` over a ``redis.asyncio.Redis`` built by the composition root: invalidation
    notices on ``channel``, order-status notices on ``status_channel``."""

    def __init__(self, redis: Redis, *, channel: str, status_channel: str) -> None:
        self._redis = redis
        self._channel = channel
        self._status_channel = status_channel

    async def dependents(self, *index_keys: str) -> dict[str, frozenset[str]]:
        if not index_keys:
            return {}
        with _mapped("SMEMBERS"):
            pipe = self._redis.pipeline(transaction=False)
            for index in index_keys:
                pipe.smembers(index)
            answers = await pipe.execute()
        return {index: frozenset(_text(m) for m in members) for index, members in zip(index_keys, answers, strict=True)}

    async def invalidate(self, items: Sequence[Invalidation]) -> list[int | FleetError]:
        if not items:
            return []
        pipe = self._redis.pipeline(transaction=False)
        unlinks: list[int] = []  # per item: its UNLINK commands (they come first in its span)
        spans: list[int] = []  # per item: its commands
        for item in items:
            keys = item.keys
            removals = {index: sorted(members) for index, members in item.untrack.items() if members}
            for key in keys:
                pipe.unlink(key)
            for index, members in removals.items():
                pipe.srem(index, *members)
            published = 0
            if item.notice is not None:
                pipe.publish(self._channel, item.notice.to_json())
                published += 1
            if item.status is not None:  # last: after the keys and after the invalidation notice
                pipe.publish(self._status_channel, item.status.to_json())
                published += 1
            unlinks.append(len(keys))
            spans.append(len(keys) + len(removals) + published)
        with _mapped("UNLINK/SREM/PUBLISH"):
            # raise_on_error=False: a refused command comes back as its error, in its item's span
            answers = await pipe.execute(raise_on_error=False)
        results: list[int | FleetError] = []
        start = 0
        for n_unlink, span in zip(unlinks, spans, strict=True):
            part = answers[start : start + span]
            start += span
            refused = next((a for a in part if isinstance(a, Exception)), None)
            results.append(_error("UNLINK/SREM/PUBLISH", refused) if refused else sum(int(n) for n in part[:n_unlink]))
        return results


@contextmanager
def _mapped(operation: str) -> Iterator[None]:
    """redis-py errors raised by a call become ours (``_error``)."""
    try:
        yield
    except FleetError:
        raise
    except (rx.RedisError, OSError, TimeoutError) as exc:
        raise _error(operation, exc) from exc


def _error(operation: str, exc: Exception) -> FleetError:
    """The one place redis-py errors become ours: connection trouble is retryable, a refused command
    (``WRONGTYPE`` on a dependency SET the portal wrote wrongly) is not."""
    if isinstance(exc, rx.ResponseError) and not isinstance(exc, rx.ReadOnlyError):
        error: FleetError = RejectedByUpstream(
            f"redis {operation} refused: {exc!r}", upstream=UPSTREAM, code="REDIS_COMMAND_REFUSED"
        )
    else:  # unreachable, timed out, loading, or a read-only replica in a failover: the new primary will take it
        error = DependencyUnavailable(f"redis {operation} failed: {exc!r}", upstream=UPSTREAM)
    error.__cause__ = exc
    return error


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class FakeCache:
    """In-memory ``CachePort``: plain values in ``values``, dependency SETs in ``sets``.

    Records every key it was asked to delete (``invalidated_keys``, in order), every notice
    (``notices``), every order-status notice (``status_notices``) and every call (``calls``:
    ``"dependents"`` / ``"invalidate"``, one per round trip); ``fail_next_with`` makes the next call
    raise that error, before any effect; a key in ``wrong_type`` is refused like Redis refuses
    ``WRONGTYPE`` (``SMEMBERS`` raises, an item whose ``SREM`` names it reports the error after its
    ``UNLINK``s, as a pipeline would).
    """

    values: dict[str, str] = field(default_factory=dict)
    sets: dict[str, set[str]] = field(default_factory=dict)
    invalidated_keys: list[str] = field(default_factory=list)
    notices: list[InvalidationNotice] = field(default_factory=list)
    status_notices: list[OrderStatusNotice] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    wrong_type: set[str] = field(default_factory=set)
    fail_next_with: Exception | None = None

    def track(self, index: str, *keys: str) -> None:
        """Play the portal caching ``keys`` under a dependency index."""
        self.sets.setdefault(index, set()).update(keys)

    async def dependents(self, *index_keys: str) -> dict[str, frozenset[str]]:
        self._enter("dependents")
        refused = [index for index in index_keys if index in self.wrong_type]
        if refused:
            raise _error("SMEMBERS", rx.ResponseError(f"WRONGTYPE {refused[0]}"))
        return {index: frozenset(self.sets.get(index, ())) for index in index_keys}

    async def invalidate(self, items: Sequence[Invalidation]) -> list[int | FleetError]:
        self._enter("invalidate")
        return [self._invalidate_one(item) for item in items]

    def _invalidate_one(self, item: Invalidation) -> int | FleetError:
        keys = item.keys
        self.invalidated_keys.extend(keys)
        existed = sum(1 for k in keys if self.values.pop(k, None) is not None or self.sets.pop(k, None) is not None)
        refused: FleetError | None = None
        for index, members in item.untrack.items():
            if index in self.wrong_type:
                refused = refused or _error("SREM", rx.ResponseError(f"WRONGTYPE {index}"))
                continue
            remaining = self.sets.get(index, set()) - set(members)
            if remaining:
                self.sets[index] = remaining
            else:
                self.sets.pop(index, None)  # Redis deletes an emptied SET
        # the pipeline publishes after a refused SREM too, the order-status notice last
        if item.notice is not None:
            self.notices.append(item.notice)
        if item.status is not None:
            self.status_notices.append(item.status)
        return refused if refused is not None else existed

    def _enter(self, call: str) -> None:
        self.calls.append(call)
        if self.fail_next_with is not None:
            exc, self.fail_next_with = self.fail_next_with, None
            raise exc
