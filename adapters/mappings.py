"""The portal's ``id_mappings`` table (PostgreSQL, asyncpg): which portal user a WHMCS client or a
Salesforce account belongs to.

Owns two read-only lookups and the mapping of asyncpg errors onto ``events.errors``. Must not
write the table (the portal owns it: signup and linking create the rows), read configuration or
build the pool (the composition root passes an ``asyncpg.Pool``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import asyncpg

from events.errors import DependencyUnavailable, FleetError

UPSTREAM = "postgres"
_SELECT = "SELECT user_id::text AS user_id, whmcs_client_id, sf_account_id FROM id_mappings"


@dataclass(frozen=True)
class IdMapping:
    """One row: portal user (UUID text) ↔ WHMCS client (int) ↔ Salesforce Account (18-char id)."""

    user_id: str
    whmcs_client_id: int
    sf_account_id: str


class IdMappingsPort(Protocol):
    async def for_whmcs_client(self, whmcs_client_id: int) -> Sequence[IdMapping]:
        """The rows of this WHMCS client: empty when the client has no portal user (not an error).

        A sequence although the fleet's schema makes the column unique: the portal's own table is
        the authority, and a caller that busts "every user of this client" stays right either way.
        Read-only, idempotent. Raises ``DependencyUnavailable`` when PostgreSQL cannot answer."""
        ...

    async def for_sf_account(self, sf_account_id: str) -> Sequence[IdMapping]:
        """The rows of this Salesforce Account (15- or 18-character id); as ``for_whmcs_client``."""
        ...


class PgIdMappings:
    """``IdMappingsPort`` over an ``asyncpg.Pool`` built by the composition root."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def for_whmcs_client(self, whmcs_client_id: int) -> Sequence[IdMapping]:
        with _mapped("by whmcs_client_id"):
            rows = await self._pool.fetch(f"{_SELECT} WHERE whmcs_client_id = $1", whmcs_client_id)
        return [_row(r) for r in rows]

    async def for_sf_account(self, sf_account_id: str) -> Sequence[IdMapping]:
        # a 15-character id is the case-sensitive prefix of its 18-character form; the common
        # 18-character lookup stays an equality the unique index answers
        where = "left(sf_account_id, 15) = $1" if len(sf_account_id) == 15 else "sf_account_id = $1"
        with _mapped("by sf_account_id"):
            rows = await self._pool.fetch(f"{_SELECT} WHERE {where}", sf_account_id)
        return [_row(r) for r in rows]


def _row(record: asyncpg.Record) -> IdMapping:
    return IdMapping(str(record["user_id"]), int(record["whmcs_client_id"]), str(record["sf_account_id"]))


@contextmanager
def _mapped(operation: str) -> Iterator[None]:
    """Every database failure here is infrastructure (the queries are fixed and read-only): retryable."""
    try:
        yield
    except FleetError:
        raise
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise DependencyUnavailable(f"id_mappings lookup {operation} failed: {exc!r}", upstream=UPSTREAM) from exc


@dataclass
class FakeIdMappings:
    """In-memory ``IdMappingsPort``; ``lookups`` records every call, ``fail_next_with`` fails the next one."""

    rows: list[IdMapping] = field(default_factory=list)
    lookups: list[tuple[str, object]] = field(default_factory=list)
    fail_next_with: Exception | None = None

    @classmethod
    def of(cls, rows: Sequence[dict[str, object]]) -> FakeIdMappings:
        """From ``sandbox.demo_data.id_mappings()``-shaped dicts."""
        return cls(
            [IdMapping(str(r["user_id"]), int(str(r["whmcs_client_id"])), str(r["sf_account_id"])) for r in rows]
        )

    async def for_whmcs_client(self, whmcs_client_id: int) -> Sequence[IdMapping]:
        self._enter("whmcs_client_id", whmcs_client_id)
        return [r for r in self.rows if r.whmcs_client_id == whmcs_client_id]

    async def for_sf_account(self, sf_account_id: str) -> Sequence[IdMapping]:
        self._enter("sf_account_id", sf_account_id)
        return [r for r in self.rows if sf_account_id in (r.sf_account_id, r.sf_account_id[:15])]

    def _enter(self, column: str, value: object) -> None:
        self.lookups.append((column, value))
        if self.fail_next_with is not None:
            exc, self.fail_next_with = self.fail_next_with, None
            raise exc
