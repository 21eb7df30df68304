"""``Coalescer``: the gathering, the call tasks and the answers (the promises: ``adapters.coalescer``).

Must not know what an item means (the call does) or decide when to linger (``policy`` does).
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from adapters.coalescer.policy import ArrivalRate, Linger, Load

T = TypeVar("T")
R = TypeVar("R")

#: the call: the items taken, oldest first → one outcome per item (a value, or an exception for that item)
Call = Callable[[list[T]], Awaitable[Sequence[R | BaseException]]]


class CoalescerClosed(Exception):
    """The coalescer was closed (or its call task cancelled) before this item was answered."""


def own_exception(_item: object, exc: BaseException) -> BaseException:
    """The default ``errors``: a copy of ``exc`` for one caller, caused by the original (which keeps
    the traceback of the failed call). An exception that cannot be copied is shared."""
    try:
        own = copy.copy(exc)
    except Exception:  # an __init__ that its args cannot rebuild
        return exc
    own.__cause__ = exc
    return own


#: a queued item: (the item, its caller's future or None for a rider, when it arrived, its weight)
_Entry = tuple[T, asyncio.Future[R] | None, float, int]


class Coalescer(Generic[T, R]):
    """Gathers items into calls of ``call``; the module docstring says what it promises.

    ``calls`` and ``items`` count what was sent (for metrics and tests); ``rate()`` is the weight per
    second taken over the last second plus what is queued (what ``ByRate`` reads)."""

    def __init__(
        self,
        call: Call[T, R],
        *,
        max_items: int | None = 500,
        weight: Callable[[T], int] | None = None,
        max_in_flight: int = 1,
        linger: Linger | None = None,
        timeout_s: float | None = None,
        errors: Callable[[T, BaseException], BaseException] = own_exception,
        clock: Callable[[], float] = time.monotonic,
        name: str = "coalescer",
    ) -> None:
        self._call = call
        self._max = max_items
        self._weight = weight
        self._slots = max(1, max_in_flight)
        self._linger = linger
        self._timeout_s = timeout_s
        self._errors = errors
        self._name = name
        self._queue: deque[_Entry[T, R]] = deque()
        self._queued = 0  # weight in the queue
        self._awaited = 0  # items in the queue with a caller (riders are not)
        self._riders = 0
        self._riders_due = False
        self._rider_timer: asyncio.TimerHandle | None = None
        self._forming = False  # a task is forming the next call (at most one is)
        self._in_flight = 0
        self._wake: asyncio.Future[None] | None = None  # set to end a linger early
        self._fill = 0  # ... once this much weight is queued
        self._draining = False
        self._last, self._last_end = 0, 0.0
        self._taken = ArrivalRate(clock=clock)
        self._tasks: set[asyncio.Task[None]] = set()  # strong references to the call tasks
        self._loop: asyncio.AbstractEventLoop | None = None  # while a task runs: no getpid() per submit
        self.calls = 0
        self.items = 0

    # --- callers ----------------------------------------------------------------------------------
    def submit(self, item: T) -> asyncio.Future[R]:
        """Queue ``item``; the future settles with its outcome (or the exception ``errors`` made)."""
        loop = self._loop if self._tasks else asyncio.get_running_loop()
        assert loop is not None
        future: asyncio.Future[R] = loop.create_future()
        weight = 1 if self._weight is None else self._weight(item)
        self._queue.append((item, future, loop.time(), weight))
        self._queued += weight
        self._awaited += 1
        if self._forming:
            if self._wake is not None and self._queued >= self._fill:
                _wake(self._wake)
        elif self._in_flight < self._slots:
            self._start(loop)
        return future

    def push(self, item: T, *, within_s: float) -> None:
        """Queue ``item`` without a caller: it rides with the next call, or starts one ``within_s``
        from now if none came (counted from the first of the riders queued together)."""
        loop = asyncio.get_running_loop()
        weight = 1 if self._weight is None else self._weight(item)
        self._queue.append((item, None, loop.time(), weight))
        self._queued += weight
        self._riders += 1
        if self._rider_timer is None and not self._riders_due:
            self._rider_timer = loop.call_later(within_s, self._riders_ready)

    def rate(self) -> float:
        """Weight per second taken by calls over the last second, plus the weight queued now."""
        return self._taken.per_second() + self._queued

    async def drain(self) -> None:
        """Send everything queued now (riders too, without lingering); return once no call is in
        flight, those started meanwhile by others included."""
        self._draining = True
        try:
            while self._queue or self._tasks:
                if self._wake is not None:
                    _wake(self._wake)
                if self._queue and not self._forming and self._in_flight < self._slots:
                    self._start(asyncio.get_running_loop())
                await asyncio.wait(list(self._tasks))
        finally:
            self._draining = False

    async def aclose(self) -> None:
        """Cancel the calls in flight and answer every caller still waiting with
        ``errors(item, CoalescerClosed())``; riders still queued are dropped (their call never ran)."""
        if self._rider_timer is not None:
            self._rider_timer.cancel()
            self._rider_timer = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._fail_queued()

    # --- the call tasks ---------------------------------------------------------------------------
    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._forming = True
        self._loop = loop
        task = loop.create_task(self._run(), name=self._name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _riders_ready(self) -> None:
        self._rider_timer = None
        if not self._riders:
            return
        self._riders_due = True
        if self._wake is not None:
            _wake(self._wake)
        elif not self._forming and self._in_flight < self._slots:
            self._start(asyncio.get_running_loop())

    def _wanted(self) -> bool:
        """Should a call take the queue now (a caller waits, riders are due, a drain runs)?"""
        return bool(self._awaited or (self._riders and (self._riders_due or self._draining)))

    async def _run(self) -> None:
        """Form a call and make it; then form the next one here while something waits and a slot is
        free (no task per call under load). Starts with ``_forming`` set by ``_start``."""
        try:
            while True:
                taken = await self._form() if self._wanted() else []
                self._forming = False
                if taken:
                    self._in_flight += 1
                    if self._wanted() and self._in_flight < self._slots:
                        self._start(asyncio.get_running_loop())  # more than one call's worth waits
                    try:
                        await self._make(taken)
                    finally:
                        self._in_flight -= 1
                        self._last_end = asyncio.get_running_loop().time()
                if self._forming or self._in_flight >= self._slots or not self._wanted():
                    return
                self._forming = True
        except asyncio.CancelledError:
            self._forming = False
            self._fail_queued()  # shut down under us: whoever still waits is told, never dropped silently
            raise

    async def _form(self) -> list[_Entry[T, R]]:
        """Linger if the policy says so, then take the call's items."""
        if self._linger is not None and not (self._draining or self._riders_due) and self._queue:
            loop = asyncio.get_running_loop()
            now = loop.time()
            load = Load(now, self._queue[0][2], self._queued, self._last, self._last_end, self.rate())
            plan = self._linger.plan(load)
            if plan is not None:
                deadline, fill = plan
                if fill is None or (self._max is not None and fill > self._max):
                    fill = self._max
                if deadline > now and (fill is None or self._queued < fill):
                    await self._linger_until(loop, deadline, fill)
        return self._take()

    async def _linger_until(self, loop: asyncio.AbstractEventLoop, deadline: float, fill: int | None) -> None:
        self._fill = (1 << 62) if fill is None else fill
        wake = self._wake = loop.create_future()
        timer = loop.call_at(deadline, _wake, wake)  # cancelled when filled first: no wake-up then
        try:
            await wake
        finally:
            timer.cancel()
            self._wake = None

    def _take(self) -> list[_Entry[T, R]]:
        """The call's items, oldest first, up to ``max_items``; callers gone or past their deadline
        are left out (the latter answered here)."""
        taken: list[_Entry[T, R]] = []
        weight, limit, queue, riders = 0, self._max, self._queue, 0
        expired = None if self._timeout_s is None else asyncio.get_running_loop().time() - self._timeout_s
        while queue:
            entry = queue[0]
            if limit is not None and taken and weight + entry[3] > limit:
                break
            queue.popleft()
            self._queued -= entry[3]
            future = entry[1]
            if future is None:
                riders += 1
            else:
                self._awaited -= 1
                if future.done():  # the caller stopped waiting
                    continue
                if expired is not None and entry[2] <= expired:
                    future.set_exception(self._errors(entry[0], TimeoutError(self._late())))
                    continue
            taken.append(entry)
            weight += entry[3]
        if riders:
            self._riders -= riders
            if not self._riders:
                self._riders_due = False
                if self._rider_timer is not None:
                    self._rider_timer.cancel()
                    self._rider_timer = None
        if taken:
            self._taken.note(weight)
            self._last = weight
        return taken

    async def _make(self, taken: list[_Entry[T, R]]) -> None:
        self.calls += 1
        self.items += len(taken)
        items = [entry[0] for entry in taken]
        bound: asyncio.Timeout | None = None
        try:
            if self._timeout_s is None:
                outcomes = await self._call(items)
            else:
                async with asyncio.timeout_at(taken[0][2] + self._timeout_s) as bound:
                    outcomes = await self._call(items)
        except asyncio.CancelledError:
            self._fail(taken, CoalescerClosed(f"{self._name}: the call was cancelled"))
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise
            return  # the call cancelled something of its own, not us: its callers are told, we go on
        except TimeoutError as exc:
            self._fail(taken, TimeoutError(self._late()) if bound is not None and bound.expired() else exc)
            return
        except Exception as exc:
            self._fail(taken, exc)
            return
        if len(outcomes) != len(taken):
            self._fail(taken, RuntimeError(f"{self._name}: {len(outcomes)} outcomes for {len(taken)} items"))
            return
        for (_, future, _, _), outcome in zip(taken, outcomes, strict=True):
            if future is None or future.done():  # a rider, or a caller that stopped waiting
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def _fail(self, entries: Sequence[_Entry[T, R]], exc: BaseException) -> None:
        for item, future, _, _ in entries:
            if future is not None and not future.done():
                future.set_exception(self._errors(item, exc))  # one exception per caller

    def _fail_queued(self) -> None:
        queued, self._queue = list(self._queue), deque()
        self._queued = self._awaited = self._riders = 0
        self._riders_due = False
        self._fail(queued, CoalescerClosed(f"{self._name} closed before this item was sent"))

    def _late(self) -> str:
        return f"{self._name}: no answer within {self._timeout_s:g} s"


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
