"""Webhook-id deduplication for the ingress receivers: port, Redis implementation, in-memory fake.

A webhook id moves through two marks: ``claim`` sets an *in-progress* mark atomically (only one
request may produce a given id at a time; it expires by itself if its owner dies), ``complete``
replaces it with a *done* mark that lives longer than the sender's signature tolerance (so a
replayed, still-valid request is recognised), ``release`` removes the in-progress mark after a
failed produce so the sender's retry is treated as new. Owns: those marks. Must not: decide what a
receiver answers, or read configuration.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from events.errors import DependencyUnavailable

DONE = "done"
_INFLIGHT = "inflight:"

# Compare-and-delete: never remove a mark we do not own (ours may have expired and been re-claimed).
# Only the failure path releases, so this script is not batched.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Claim(Enum):
    NEW = "new"  # the caller owns the id now: produce, then complete or release
    DUPLICATE = "done"  # produced before: answer 2xx without producing again
    IN_PROGRESS = "inflight"  # another request is producing it right now: ask the sender to retry


class DedupeStore(Protocol):
    async def claim(self, webhook_id: str, owner: str) -> Claim:
        """Atomically mark ``webhook_id`` in progress for ``owner`` unless a mark exists.
        Raises ``DependencyUnavailable`` when the store cannot answer."""
        ...

    async def complete(self, webhook_id: str) -> None:
        """Replace the in-progress mark by the long-lived done mark (idempotent).
        Raises ``DependencyUnavailable``."""
        ...

    async def release(self, webhook_id: str, owner: str) -> None:
        """Remove the in-progress mark if ``owner`` still holds it (idempotent).
        Raises ``DependencyUnavailable``."""
        ...


class RedisDedupeStore:
    """``DedupeStore`` over a ``redis.asyncio.Redis`` built by the composition root (Redis >= 7.0).

    ``claim`` is one atomic command, ``SET key inflight:<owner> NX PX <ttl> GET``: it sets the mark
    only if there is none and returns the mark that was there, so "won" and "who holds it" come in
    one round trip with no window between them. Claims and completions of concurrent requests go
    out together, one pipeline per event-loop turn (the idea of the Kafka producer's linger): the
    per-command cost of the client, not Redis, is what limits a receiver otherwise.
    """

    def __init__(self, redis: Redis, *, prefix: str, inflight_ttl_s: float, done_ttl_s: float) -> None:
        self._prefix = prefix
        self._inflight_ms = int(inflight_ttl_s * 1000)
        self._done_ms = int(done_ttl_s * 1000)
        self._batch = _Pipeliner(redis)
        self._release = redis.register_script(_RELEASE)

    async def claim(self, webhook_id: str, owner: str) -> Claim:
        key, mark, ttl = self._prefix + webhook_id, _INFLIGHT + owner, self._inflight_ms
        held = await self._batch.run(lambda pipe: pipe.set(key, mark, nx=True, px=ttl, get=True), "claim")
        if held is None:
            return Claim.NEW
        return Claim.DUPLICATE if held in (DONE, DONE.encode()) else Claim.IN_PROGRESS

    async def complete(self, webhook_id: str) -> None:
        key, ttl = self._prefix + webhook_id, self._done_ms
        await self._batch.run(lambda pipe: pipe.set(key, DONE, px=ttl), "complete")

    async def release(self, webhook_id: str, owner: str) -> None:
        try:
            await self._release(keys=[self._prefix + webhook_id], args=[_INFLIGHT + owner])
        except (RedisError, OSError) as exc:
            raise _unavailable("release", exc) from exc


class _Pipeliner:
    """Queues commands and sends everything queued during one event-loop turn as one pipeline."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._queued: list[tuple[Callable[[Pipeline], object], asyncio.Future[Any]]] = []

    async def run(self, command: Callable[[Pipeline], object], what: str) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append((command, future))
        if len(self._queued) == 1:  # the first of this turn schedules the send for the next turn
            asyncio.get_running_loop().call_soon(self._send_queued)
        try:
            return await future
        except (RedisError, OSError) as exc:
            raise _unavailable(what, exc) from exc

    def _send_queued(self) -> None:
        batch, self._queued = self._queued, []
        task = asyncio.ensure_future(self._send(batch))
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)

    async def _send(self, batch: list[tuple[Callable[[Pipeline], object], asyncio.Future[Any]]]) -> None:
        try:
            pipe = self._redis.pipeline(transaction=False)
            for command, _ in batch:
                command(pipe)
            results = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # one failure answers every request of the batch
            results = [exc] * len(batch)
        except BaseException:  # shutdown: nobody gets an answer
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # the waiting request was cancelled
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)


#: strong references to in-flight pipeline sends (the event loop keeps only weak ones)
_BACKGROUND: set[asyncio.Task[None]] = set()


def _unavailable(what: str, exc: BaseException) -> DependencyUnavailable:
    return DependencyUnavailable(f"webhook dedupe {what} failed: {exc!r}", upstream="redis")


@dataclass
class FakeDedupeStore:
    """In-memory ``DedupeStore`` with the same semantics and an injectable clock.

    ``down = True`` makes every call raise ``DependencyUnavailable``, as Redis being away would.
    """

    inflight_ttl_s: float = 30.0
    done_ttl_s: float = 86_400.0
    clock: Callable[[], float] = time.monotonic
    down: bool = False
    marks: dict[str, tuple[str, float]] = field(default_factory=dict)

    def _get(self, webhook_id: str) -> str | None:
        mark = self.marks.get(webhook_id)
        if mark is None or mark[1] <= self.clock():
            self.marks.pop(webhook_id, None)
            return None
        return mark[0]

    def _check(self) -> None:
        if self.down:
            raise DependencyUnavailable("fake dedupe store is down", upstream="redis")

    async def claim(self, webhook_id: str, owner: str) -> Claim:
        self._check()
        value = self._get(webhook_id)
        if value is None:
            self.marks[webhook_id] = (_INFLIGHT + owner, self.clock() + self.inflight_ttl_s)
            return Claim.NEW
        return Claim.DUPLICATE if value == DONE else Claim.IN_PROGRESS

    async def complete(self, webhook_id: str) -> None:
        self._check()
        self.marks[webhook_id] = (DONE, self.clock() + self.done_ttl_s)

    async def release(self, webhook_id: str, owner: str) -> None:
        self._check()
        if self._get(webhook_id) == _INFLIGHT + owner:
            del self.marks[webhook_id]
