"""The portal's ``id_mappings`` table (PostgreSQL, asyncpg): which portal user a WHMCS client or a
Salesforce account belongs to.

Owns the read-only lookups (one id, or many ids in one query for a consumer's batch) and the
mapping of asyncpg errors onto ``events.errors``. Must not cache rows (a link the portal made a
moment ago must count at once: a stale miss would leave a user's keys standing), write the table
(the portal owns it: signup and linking create the rows), read configuration or build the pool
(the composition root passes an ``asyncpg.Pool``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import asyncpg

from events.errors import DependencyUnavailable, FleetError

UPSTREAM = "postgres"
_INT4_MIN, _INT4_MAX = -(2**31), 2**31 - 1  # id_mappings.whmcs_client_id is an integer column
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

    async def for_whmcs_clients(self, whmcs_client_ids: Collection[int]) -> Mapping[int, Sequence[IdMapping]]:
        """``for_whmcs_client`` of every id in one query: each id maps to its rows (empty when unmapped).

        Read-only, idempotent. Raises ``DependencyUnavailable`` when PostgreSQL cannot answer."""
        ...

    async def for_sf_accounts(self, sf_account_ids: Collection[str]) -> Mapping[str, Sequence[IdMapping]]:
        """``for_sf_account`` of every id (15- or 18-character) in one query; as ``for_whmcs_clients``."""
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

    async def for_whmcs_clients(self, whmcs_client_ids: Collection[int]) -> Mapping[int, Sequence[IdMapping]]:
        found: dict[int, list[IdMapping]] = {client: [] for client in sorted(set(whmcs_client_ids))}
        # an id outside the column's range has no row (and would make asyncpg refuse the whole array)
        wanted = [client for client in found if _INT4_MIN <= client <= _INT4_MAX]
        if not wanted:
            return found
        with _mapped("by whmcs_client_id (batch)"):
            rows = await self._pool.fetch(f"{_SELECT} WHERE whmcs_client_id = ANY($1::integer[])", wanted)
        for row in map(_row, rows):
            found[row.whmcs_client_id].append(row)
        return found

    async def for_sf_accounts(self, sf_account_ids: Collection[str]) -> Mapping[str, Sequence[IdMapping]]:
        wanted = sorted(set(sf_account_ids))
        if not wanted:
            return {}
        full = [a for a in wanted if len(a) != 15]
        short = [a for a in wanted if len(a) == 15]
        # as for_sf_account: 18-character ids stay an equality the unique index answers
        where = "sf_account_id = ANY($1::text[])" + (" OR left(sf_account_id, 15) = ANY($2::text[])" if short else "")
        with _mapped("by sf_account_id (batch)"):
            rows = await self._pool.fetch(f"{_SELECT} WHERE {where}", full, *([short] if short else []))
        return _by_account(wanted, map(_row, rows))


def _by_account(wanted: Iterable[str], rows: Iterable[IdMapping]) -> dict[str, list[IdMapping]]:
    """Each requested account id → its rows (an 18-character row answers its 15-character prefix too)."""
    found: dict[str, list[IdMapping]] = {account: [] for account in wanted}
    for row in rows:
        for account in dict.fromkeys((row.sf_account_id, row.sf_account_id[:15])):
            if account in found:
                found[account].append(row)
    return found


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
    """In-memory ``IdMappingsPort``; ``lookups`` records every call (a batch call as one entry whose value
    is the tuple of ids), ``fail_next_with`` fails the next one."""

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

    async def for_whmcs_clients(self, whmcs_client_ids: Collection[int]) -> Mapping[int, Sequence[IdMapping]]:
        wanted = sorted(set(whmcs_client_ids))
        self._enter("whmcs_client_id", tuple(wanted))
        return {client: [r for r in self.rows if r.whmcs_client_id == client] for client in wanted}

    async def for_sf_accounts(self, sf_account_ids: Collection[str]) -> Mapping[str, Sequence[IdMapping]]:
        wanted = sorted(set(sf_account_ids))
        self._enter("sf_account_id", tuple(wanted))
        return _by_account(wanted, self.rows)

    def _enter(self, column: str, value: object) -> None:
        self.lookups.append((column, value))
        if self.fail_next_with is not None:
            exc, self.fail_next_with = self.fail_next_with, None
            raise exc
