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
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
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

# Every completion and claim of one event-loop turn in one command. KEYS: the ids to complete, then
# the ids to claim. ARGV: the number of completions, the in-progress TTL, the done TTL, then one
# owner mark per claim. A claim is ``SET key inflight:<owner> NX PX ttl GET``: it sets the mark only
# if there is none and returns the mark that was there, so "won" and "who holds it" come in one step.
# Answers one integer per claim: 0 new, 1 done, 2 in progress. Completions run first, so a copy that
# arrives in the very turn its original completes is answered "duplicate" rather than "in progress".
_MARKS = """
local completes = tonumber(ARGV[1])
for i = 1, completes do
  redis.call('SET', KEYS[i], 'done', 'PX', ARGV[3])
end
local answers = {}
for i = completes + 1, #KEYS do
  local held = redis.call('SET', KEYS[i], ARGV[i - completes + 3], 'NX', 'PX', ARGV[2], 'GET')
  if not held then
    answers[#answers + 1] = 0
  elseif held == 'done' then
    answers[#answers + 1] = 1
  else
    answers[#answers + 1] = 2
  end
end
return answers
"""
#: marks per script call: one call holds Redis for a few microseconds per mark, so bound the batch
MAX_MARKS_PER_CALL = 500


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

    Claims and completions of concurrent requests go out together as one ``EVALSHA`` of ``_MARKS``:
    what is asked during one event-loop turn leaves at the next, and while a call is out, what is
    asked meanwhile waits for it and leaves as the next call. Not a pipeline of ``SET``s: redis-py
    packs and parses every pipelined command in Python, which cost more receiver CPU than the rest
    of the request; one script call is one command however many marks it carries. Each mark keeps
    its own atomic ``SET NX GET``, so the contract is that of one command per request. The script touches
    several keys, so it needs a standalone Redis (or keys in one hash slot): ``serve`` builds one.
    """

    def __init__(self, redis: Redis, *, prefix: str, inflight_ttl_s: float, done_ttl_s: float) -> None:
        self._prefix = prefix
        self._batch = _MarkBatcher(
            redis.register_script(_MARKS), inflight_ms=int(inflight_ttl_s * 1000), done_ms=int(done_ttl_s * 1000)
        )
        self._release = redis.register_script(_RELEASE)

    async def claim(self, webhook_id: str, owner: str) -> Claim:
        answer: Claim = await self._batch.ask(self._prefix + webhook_id, _INFLIGHT + owner, "claim")
        return answer

    async def complete(self, webhook_id: str) -> None:
        await self._batch.ask(self._prefix + webhook_id, None, "complete")

    async def release(self, webhook_id: str, owner: str) -> None:
        try:
            await self._release(keys=[self._prefix + webhook_id], args=[_INFLIGHT + owner])
        except (RedisError, OSError) as exc:
            raise _unavailable("release", exc) from exc


_ANSWERS = (Claim.NEW, Claim.DUPLICATE, Claim.IN_PROGRESS)  # the script's 0, 1, 2


class _MarkBatcher:
    """Queues marks and sends them as ``_MARKS`` calls, one call in flight at a time: what is asked
    while a call is out goes in the next one, so calls grow with the load instead of multiplying."""

    def __init__(self, script: AsyncScript, *, inflight_ms: int, done_ms: int) -> None:
        self._script, self._inflight_ms, self._done_ms = script, inflight_ms, done_ms
        self._completes: list[tuple[str, asyncio.Future[Any]]] = []
        self._claims: list[tuple[str, str, asyncio.Future[Any]]] = []
        self._scheduled = self._busy = False

    async def ask(self, key: str, owner_mark: str | None, what: str) -> Any:
        """Claim ``key`` for ``owner_mark`` (→ ``Claim``), or complete it (``owner_mark`` None → None)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if owner_mark is None:
            self._completes.append((key, future))
        else:
            self._claims.append((key, owner_mark, future))
        self._kick()
        try:
            return await future
        except (RedisError, OSError) as exc:
            raise _unavailable(what, exc) from exc

    def _kick(self) -> None:
        if not (self._scheduled or self._busy):  # sent at the next turn: collects the rest of this one
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._send_queued)

    def _send_queued(self) -> None:
        self._scheduled = False
        room = MAX_MARKS_PER_CALL
        completes, self._completes = self._completes[:room], self._completes[room:]
        room -= len(completes)
        claims, self._claims = self._claims[:room], self._claims[room:]
        if not (completes or claims):
            return
        self._busy = True
        task = asyncio.ensure_future(self._send(completes, claims))
        _BACKGROUND.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        _BACKGROUND.discard(task)
        self._busy = False
        if self._completes or self._claims:
            self._kick()

    async def _send(
        self, completes: list[tuple[str, asyncio.Future[Any]]], claims: list[tuple[str, str, asyncio.Future[Any]]]
    ) -> None:
        keys = [key for key, _ in completes] + [key for key, _, _ in claims]
        args: list[str | int] = [len(completes), self._inflight_ms, self._done_ms]
        args += [mark for _, mark, _ in claims]
        try:
            answers = await self._script(keys=keys, args=args)
        except Exception as exc:  # one failure answers every request of the batch
            for future in itertools.chain((f for _, f in completes), (f for _, _, f in claims)):
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # shutdown: nobody gets an answer
            for future in itertools.chain((f for _, f in completes), (f for _, _, f in claims)):
                future.cancel()
            raise
        for _, future in completes:
            if not future.done():  # the waiting request was cancelled
                future.set_result(None)
        for (_, _, future), answer in zip(claims, answers, strict=True):
            if not future.done():
                future.set_result(_ANSWERS[answer])


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
