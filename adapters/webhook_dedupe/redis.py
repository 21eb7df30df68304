"""``RedisDedupeStore``: the webhook-id marks in Redis, every claim and completion of one loop turn in one script call.

Owns the Lua scripts, the marks' script call (``adapters.coalescer`` gathers the marks) and the
mapping of Redis errors and timeouts onto ``DependencyUnavailable``. Receives its
``redis.asyncio.Redis`` client from the composition root; must not build it, read configuration
or decide what a receiver answers.

``complete`` is queued, not awaited: the done mark is written before any later claim of the same
store is answered (it rides with that claim). Only two things see the delay, bounded by
``COMPLETE_LINGER_S``: another process, which sees "in progress" (409, the sender retries), and a
crash inside the window, which leaves the in-progress mark to expire (a later replay is produced
again; the receiver's deterministic CloudEvent ids make that harmless downstream, exactly as for a
crash between the Kafka ack and the mark).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any, cast

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, RedisError

from adapters.coalescer import Coalescer, CoalescerClosed, Linger, own_exception
from adapters.webhook_dedupe.port import INFLIGHT, Claim, ErrorListener
from events.errors import DependencyUnavailable

#: ``hiredis.pack_command``, typed as it behaves (its stub declares a one-element tuple)
_pack = cast(Callable[[tuple[str | int | bytes, ...]], bytes], hiredis.pack_command)

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
# Answers one integer per claim: 0 new, 1 done, 2 in progress ('done' is ``port.DONE``). Completions
# run first, so a copy that arrives in the very turn its original completes is answered "duplicate"
# rather than "in progress".
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
#: how long a done mark may wait for a claim to ride with before it is sent on its own
COMPLETE_LINGER_S = 0.05


class RedisDedupeStore:
    """``DedupeStore`` over a ``redis.asyncio.Redis`` built by the composition root (Redis >= 7.0).

    Claims and completions of concurrent requests go out together as one ``EVALSHA`` of ``_MARKS``,
    gathered by an ``adapters.coalescer.Coalescer``: what is asked during one event-loop turn leaves
    at the next, and while a call is out, what is asked meanwhile waits for it and leaves as the next
    call. Completions are its riders: they start no call, they ride with the next claim, or leave
    on their own ``complete_linger_s`` after they were queued. ``claim_linger`` (none by default)
    lets a claim call wait a little for more claims under load (``ByRate``). That takes one Redis
    round trip off every request's path, and at low rates one call per webhook: each call to an idle
    Redis costs the receiver ~150 us of socket write, wake-up and redis-py work on the bench machine,
    more than a third of its CPU per webhook at 500/s. Not a pipeline of ``SET``s: redis-py
    packs and parses every pipelined command in Python, which cost more receiver CPU than the rest
    of the request; one script call is one command however many marks it carries. Each mark keeps
    its own atomic ``SET NX GET``, so the contract is that of one command per request. The script touches
    several keys, so it needs a standalone Redis (or keys in one hash slot): ``serve`` builds one.

    ``timeout_s`` bounds each call (connect, write and reply) here, with ``asyncio.timeout``; an expired
    call raises ``DependencyUnavailable`` like any Redis error. Give the client no ``socket_timeout``
    then: redis-py bounds each write with ``asyncio.wait_for``, which on Python 3.11 wraps the write
    in a task of its own, one more task and loop turn per call (~10-20 us, a sixth of the call's CPU).
    Cancelled mid-call, redis-py drops the connection, so a late reply is never read as another's.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str,
        inflight_ttl_s: float,
        done_ttl_s: float,
        complete_linger_s: float = COMPLETE_LINGER_S,
        claim_linger: Linger | None = None,
        on_error: ErrorListener | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self._prefix = prefix
        self._timeout_s = timeout_s
        self._script = _ScriptConnection(redis, _MARKS)
        self._inflight_ms, self._done_ms = int(inflight_ttl_s * 1000), int(done_ttl_s * 1000)
        self._complete_linger_s = complete_linger_s
        self._on_error = on_error or _ignore
        self._marks: Coalescer[_Mark, Claim | None] = Coalescer(
            self._send,
            max_items=MAX_MARKS_PER_CALL,
            linger=claim_linger,
            errors=_claim_failed,
            name="webhook-dedupe-marks",
        )
        self._release = redis.register_script(_RELEASE)

    def claim(self, webhook_id: str, owner: str) -> asyncio.Future[Claim]:
        # a claim's outcome is never None (only a completion's is)
        return cast("asyncio.Future[Claim]", self._marks.submit((self._prefix + webhook_id, INFLIGHT + owner)))

    def complete(self, webhook_id: str) -> None:
        # a rider: starts no call of its own, goes with the next claim or after its linger
        self._marks.push((self._prefix + webhook_id, None), within_s=self._complete_linger_s)

    async def release(self, webhook_id: str, owner: str) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._release(keys=[self._prefix + webhook_id], args=[INFLIGHT + owner])
        except (RedisError, OSError) as exc:  # OSError: TimeoutError too
            raise _unavailable("release", exc) from exc

    async def flush(self) -> None:
        await self._marks.drain()
        await self._script.close()

    async def _send(self, marks: list[_Mark]) -> list[Claim | None]:
        """One ``_MARKS`` call for the marks of a coalesced call: the completions first, then the
        claims; an answer per claim, ``None`` for a completion."""
        completes = [key for key, owner_mark in marks if owner_mark is None]
        claims = [(n, key, owner_mark) for n, (key, owner_mark) in enumerate(marks) if owner_mark is not None]
        keys = completes + [key for _, key, _ in claims]
        args: list[str | int] = [len(completes), self._inflight_ms, self._done_ms]
        args += [owner_mark for _, _, owner_mark in claims]
        try:
            async with asyncio.timeout(self._timeout_s):
                answers = await self._script.evalsha(keys, args)
        except Exception as exc:  # the claims' callers hear of it from the coalescer (``_claim_failed``)
            for _ in completes:  # nobody awaits these: the in-progress marks expire by themselves
                self._on_error(_unavailable("complete", exc))
            raise
        outcomes: list[Claim | None] = [None] * len(marks)
        for (n, _, _), answer in zip(claims, answers, strict=True):
            outcomes[n] = _ANSWERS[answer]
        return outcomes


_ANSWERS = (Claim.NEW, Claim.DUPLICATE, Claim.IN_PROGRESS)  # the script's 0, 1, 2
#: a queued mark: the key, and the owner's in-progress mark for a claim or None for a completion
_Mark = tuple[str, str | None]


class _ScriptConnection:
    """``EVALSHA`` of one script over one connection of the client's pool, held between calls.

    The coalescer sends one call at a time, so it needs no pool per call. This keeps redis-py's
    connection (connect, AUTH/SELECT from the URL, TLS, reconnect after an error, and dropping the
    connection when a call is cancelled mid-reply) and skips the client layers above it: the pool's
    lock, the retry wrapper, the observability hooks, and Python command packing (a string join per
    argument, quadratic in the command's size). ``hiredis`` (already redis-py's reply parser here)
    packs the command in C. On the bench machine a 22-claim call cost the receiver ~95 us of CPU
    through ``Redis.register_script``, ~47 us this way: ~2 us per webhook at full load.
    """

    def __init__(self, redis: Redis, script: str) -> None:
        self._redis, self._script = redis, script
        self._sha = hashlib.sha1(script.encode()).hexdigest().encode()  # what SCRIPT LOAD answers
        self._connection: AbstractConnection | None = None

    async def evalsha(self, keys: list[str], args: list[str | int]) -> Any:
        connection = self._connection
        if connection is None:
            connection = self._connection = await self._redis.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        command = _pack((b"EVALSHA", self._sha, len(keys), *keys, *args))
        try:
            await connection.send_packed_command(command)
            return await connection.read_response()
        except NoScriptError:  # a restarted Redis, or SCRIPT FLUSH: nothing ran, so load and send again
            await connection.send_packed_command(_pack((b"SCRIPT", b"LOAD", self._script)))
            await connection.read_response()
            await connection.send_packed_command(command)
            return await connection.read_response()

    async def close(self) -> None:
        """Back to the pool (whose ``aclose`` disconnects it); the next call takes one again."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await self._redis.connection_pool.release(connection)


def _ignore(_exc: DependencyUnavailable) -> None:
    pass


def _claim_failed(_mark: _Mark, exc: BaseException) -> BaseException:
    """What a claim's caller gets when its call failed: ``DependencyUnavailable`` (its own) for
    Redis errors, the call's timeout or a closed store; anything else is a bug, passed on."""
    if isinstance(exc, RedisError | OSError | CoalescerClosed):  # OSError: TimeoutError too
        return _unavailable("claim", exc)
    return own_exception(_mark, exc)


def _unavailable(what: str, exc: BaseException) -> DependencyUnavailable:
    return DependencyUnavailable(f"webhook dedupe {what} failed: {exc!r}", upstream="redis")
