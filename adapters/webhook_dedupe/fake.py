"""``FakeDedupeStore``: the webhook dedupe store in memory, for unit tests and runs without Redis.

Same contract as ``RedisDedupeStore``, with an injectable clock; marks apply at once (nothing is
queued). Must not grow behaviour the real store lacks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from adapters.webhook_dedupe.port import DONE, INFLIGHT, Claim, ErrorListener
from events.errors import DependencyUnavailable


@dataclass
class FakeDedupeStore:
    """In-memory ``DedupeStore`` with the same semantics and an injectable clock; marks apply at once.

    ``down = True`` makes ``claim`` and ``release`` raise ``DependencyUnavailable``, as Redis being
    away would, and ``complete`` report it to ``on_error``.
    """

    inflight_ttl_s: float = 30.0
    done_ttl_s: float = 86_400.0
    clock: Callable[[], float] = time.monotonic
    down: bool = False
    on_error: ErrorListener | None = None
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

    def claim(self, webhook_id: str, owner: str) -> asyncio.Future[Claim]:
        future: asyncio.Future[Claim] = asyncio.get_running_loop().create_future()
        try:
            future.set_result(self._claim(webhook_id, owner))
        except DependencyUnavailable as exc:
            future.set_exception(exc)
        return future

    def _claim(self, webhook_id: str, owner: str) -> Claim:
        self._check()
        value = self._get(webhook_id)
        if value is None:
            self.marks[webhook_id] = (INFLIGHT + owner, self.clock() + self.inflight_ttl_s)
            return Claim.NEW
        return Claim.DUPLICATE if value == DONE else Claim.IN_PROGRESS

    def complete(self, webhook_id: str) -> None:
        try:
            self._check()
        except DependencyUnavailable as exc:
            if self.on_error is not None:
                self.on_error(exc)
            return
        self.marks[webhook_id] = (DONE, self.clock() + self.done_ttl_s)

    async def release(self, webhook_id: str, owner: str) -> None:
        self._check()
        if self._get(webhook_id) == INFLIGHT + owner:
            del self.marks[webhook_id]

    async def flush(self) -> None:
        pass
