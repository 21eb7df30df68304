"""``FakeLease``: the lease in memory; several on one ``FakeLockServer`` contend like sessions."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from adapters.leader_lease.port import UPSTREAM, LeaseLost, Term


@dataclass
class FakeLockServer:
    """What a Postgres server holds for ``FakeLease``: who holds each lease, and its last term."""

    holders: dict[str, FakeLease] = field(default_factory=dict)
    terms: dict[str, Term] = field(default_factory=dict)

    def current_term(self, lease: str) -> int | None:
        term = self.terms.get(lease)
        return term.number if term else None


class FakeLease:
    """In-memory ``LeaderLease``; several on one ``FakeLockServer`` contend like sessions.

    Records ``acquired`` (how many times it took the lease), ``checks`` and ``released`` (the
    ``clean`` flag of each release that let go of a held lease). ``sever(notice=...)`` is the
    server ending the session: the lease is free at once; with ``notice=True`` the holder sees it
    as asyncpg's termination listener would, otherwise only its next ``check``. ``fail_next_acquire``
    raises from the next ``try_acquire``; ``fail_checks`` makes checks fail while set.
    """

    def __init__(self, name: str, server: FakeLockServer | None = None) -> None:
        self._name = name
        self.server = server or FakeLockServer()
        self.acquired = 0
        self.checks = 0
        self.released: list[bool] = []
        self.fail_next_acquire: Exception | None = None
        self.fail_checks = False
        self._term: int | None = None
        self._lost = asyncio.Event()
        self._lost.set()

    @property
    def name(self) -> str:
        return self._name

    @property
    def held(self) -> bool:
        return self.server.holders.get(self._name) is self and not self._lost.is_set()

    async def try_acquire(self) -> bool:
        if self.fail_next_acquire is not None:
            exc, self.fail_next_acquire = self.fail_next_acquire, None
            raise exc
        if self.held:
            return True
        if self.server.holders.get(self._name) not in (None, self):
            return False
        self.server.holders[self._name] = self
        self._term = None
        self._lost.clear()
        self.acquired += 1
        return True

    async def check(self) -> bool:
        self.checks += 1
        if self.fail_checks or self.server.holders.get(self._name) is not self:
            self._let_go()
            return False
        return not self._lost.is_set()

    async def wait_lost(self) -> None:
        await self._lost.wait()

    async def previous_term(self) -> Term | None:
        self._require_held()
        return self.server.terms.get(self._name)

    async def begin_term(self, holder: str) -> int:
        self._require_held()
        number = (self.server.current_term(self._name) or 0) + 1
        self.server.terms[self._name] = Term(number, holder, released=False)
        self._term = number
        return number

    async def release(self, *, clean: bool) -> None:
        if self.held:
            self.released.append(clean)
            term = self.server.terms.get(self._name)
            if clean and term is not None and term.number == self._term:
                self.server.terms[self._name] = Term(term.number, term.holder, released=True)
        self._let_go()

    def sever(self, *, notice: bool) -> None:
        """The server ends this lease's session (the lock is free for others at once)."""
        if self.server.holders.get(self._name) is self:
            del self.server.holders[self._name]
        if notice:
            self._lost.set()

    def _require_held(self) -> None:
        if not self.held:
            raise LeaseLost(f"lease {self._name} is not held", upstream=UPSTREAM)

    def _let_go(self) -> None:
        if self.server.holders.get(self._name) is self:
            del self.server.holders[self._name]
        self._term = None
        self._lost.set()
