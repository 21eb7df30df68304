"""Work a route's flow runs beside the consume loop for the worker's life: a handler's ``companion``.

A handler may carry ``companion``, an ``async def run(stop: asyncio.Event) -> None`` (the fulfillment
saga's durable timers, ``workers.fulfillment.timers``), the way it may carry a ``collector`` of its
own metrics. The worker starts each distinct one once its consumer is up and stops it (the event
set, then cancelled after ``grace_s``) before it leaves the group. A companion is expected to handle
its own transient errors; one that raises anyway crashes the worker (``on_crash``), so the process
exits and its supervisor restarts it, rather than running on without it. Must not touch offsets or
partitions: companions talk to Kafka only through their own producer calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import structlog

log = structlog.get_logger(__name__)

Companion = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


class Companions:
    def __init__(self, handlers: Iterable[Any], on_crash: Callable[[BaseException], None]) -> None:
        found = (getattr(h, "companion", None) for h in handlers)
        self._companions: list[Companion] = list({id(c): c for c in found if c is not None}.values())
        self._on_crash = on_crash
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for companion in self._companions:
            task = asyncio.create_task(
                companion(self._stop), name=f"companion {getattr(companion, '__qualname__', '')}"
            )
            task.add_done_callback(self._done)
            self._tasks.append(task)

    def _done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None and not self._stop.is_set():
            log.error("companion_crashed", task=task.get_name(), exc_info=task.exception())
            self._on_crash(task.exception())  # type: ignore[arg-type]

    async def stop(self, grace_s: float = 5.0) -> None:
        self._stop.set()
        if not self._tasks:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), grace_s)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
