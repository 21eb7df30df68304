"""The leader lease's port: ``LeaderLease``, the ``Term`` it counts, ``LeaseLost``, and the lock key.

Owns the contract of every method and the key derivation (stable across processes and versions).
Must not know SQL: ``pg.py`` implements the port over asyncpg, ``fake.py`` in memory.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from events.errors import RetryableError

UPSTREAM = "postgres"


class LeaseLost(RetryableError):
    """The lease is no longer ours (its connection died, a check failed, or a newer term began)."""

    default_code = "LEASE_LOST"


def lease_key(name: str) -> int:
    """The advisory lock key of ``name``: BLAKE2b-64 of its UTF-8 bytes, as a signed int64."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


def lock_parts(key: int) -> tuple[int, int]:
    """``(classid, objid)`` under which ``pg_locks`` shows the bigint advisory lock ``key``."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


@dataclass(frozen=True)
class Term:
    """The last term begun on a lease: its number, who held it, and whether it ended cleanly."""

    number: int
    holder: str
    released: bool


class LeaderLease(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def held(self) -> bool:
        """True from a successful ``try_acquire`` until a failed ``check``, a seen loss or ``release``."""
        ...

    async def try_acquire(self) -> bool:
        """Take the lease if nobody holds it, without waiting; True when held (also if already
        ours). Idempotent. Raises ``DependencyUnavailable`` when the database cannot be reached
        (nothing is held then)."""
        ...

    async def check(self) -> bool:
        """Whether the lease is still ours, answered within the check timeout. Never raises: any
        failure (connection gone, timeout, lock not held by our session) means False, and the
        lease is then dropped on our side too (its connection closed)."""
        ...

    async def wait_lost(self) -> None:
        """Return as soon as the held lease is seen lost without asking (its connection closed
        under us: server restart, ``pg_terminate_backend``); at once when not held."""
        ...

    async def previous_term(self) -> Term | None:
        """The lease's last term (None: never held). Only while held. Raises ``LeaseLost``."""
        ...

    async def begin_term(self, holder: str) -> int:
        """Start a new term (the previous term + 1) and return its number: the fencing token.
        Waits for writes fenced under the old term that are in flight. Only while held. Raises
        ``LeaseLost`` (the lease is dropped then)."""
        ...

    async def release(self, *, clean: bool) -> None:
        """Let go. ``clean``: whatever ran under the current term has stopped, so a successor may
        start without a grace period (recorded in ``leader_terms``). Never raises; idempotent."""
        ...
