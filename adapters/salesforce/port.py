"""The Salesforce port in the fleet's terms, and the small value types it speaks.

What the fleet needs from Salesforce (REST API v60.0): read an Order and its lines with their
WHMCS product mapping, find free cards in the SIM inventory, run the few SOQL queries
reconciliation needs, and write fields back (one record, or many through sObject Collections).
Must not know HTTP, tokens or JSON shapes: those live in ``http.py``; ``fake.py`` implements the
same Protocol in memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from schemas.salesforce_api import OrderItemRecord, OrderRecord, SimCardRecord

#: sObject Collections accepts at most this many records per request
COLLECTION_LIMIT = 200
#: Order ids per bulk read (one SOQL ``IN`` list; keeps the statement far below SOQL's length limit)
BULK_READ_LIMIT = 200

#: the SIM inventory object and the values of its ``SIM_Type__c`` / ``Status__c`` (our inference of the
#: portal's schema: only the ``Assigned_*`` and ``SIM_Type__c`` fields are known to exist)
SIM_INVENTORY = "SIM_Inventory__c"
SIM_TYPES = ("Physical", "eSIM")
SIM_AVAILABLE = "Available"
SIM_ASSIGNED = "Assigned"

#: per-record status codes after which the same update may succeed later: a lock held by another
#: transaction, or a record that was fine but rolled back because a sibling failed (all-or-none)
RETRYABLE_RECORD_CODES = frozenset({"UNABLE_TO_LOCK_ROW", "ALL_OR_NONE_OPERATION_ROLLED_BACK"})


@dataclass(frozen=True)
class RecordUpdate:
    """Set ``fields`` (API names) on one record; ``None`` clears a field."""

    sobject: str
    record_id: str
    fields: Mapping[str, Any]


@dataclass(frozen=True)
class OrderWithItems:
    """An Order and its lines (with their ``Product2`` mapping fields), read together."""

    order: OrderRecord
    items: list[OrderItemRecord]


@dataclass(frozen=True)
class RecordError:
    code: str
    message: str = ""
    fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class RecordResult:
    """The outcome of one record of a collection update, in request order."""

    record_id: str
    success: bool
    errors: tuple[RecordError, ...] = field(default_factory=tuple)

    @property
    def error_code(self) -> str | None:
        return self.errors[0].code if self.errors else None

    @property
    def retriable(self) -> bool:
        """True when every error is transient (a lock, or rolled back because of a sibling)."""
        return not self.success and all(e.code in RETRYABLE_RECORD_CODES for e in self.errors)


class SalesforcePort(Protocol):
    async def get_order(self, order_id: str) -> OrderRecord:
        """Read one Order with every field. Idempotent.

        Raises ``RejectedByUpstream(code="NOT_FOUND")`` for an unknown id, ``RateLimited`` when the
        org's daily API budget is spent, ``UpstreamUnavailable``/``UpstreamTimeout`` on 5xx,
        timeouts and dropped connections, ``AuthenticationFailed`` when a fresh login is refused,
        ``InvalidPayload(code="MALFORMED_RESPONSE")`` when the answer is not what Salesforce sends.
        """
        ...

    async def get_order_items(self, order_id: str) -> list[OrderItemRecord]:
        """Read the Order's lines with their ``Product2`` mapping fields (``WH_Product_ID__c``,
        ``Billing_Cycle__c``...), oldest first. Idempotent; an unknown order gives ``[]``.
        Raises as ``get_order``."""
        ...

    async def get_orders_with_items(self, order_ids: Sequence[str]) -> list[OrderWithItems]:
        """Read many Orders with their lines: one SOQL query per ``BULK_READ_LIMIT`` ids, the lines
        in a parent-to-child sub-query (``(SELECT ... FROM OrderItems)``), so n orders cost
        ceil(n / 200) API calls instead of 2n. Orders that do not exist are absent from the answer
        (no error); the order of the answer is unspecified. Idempotent. Raises as ``query``."""
        ...

    async def free_sim_cards(self, sim_type: str, *, after: str | None = None, limit: int = 50) -> list[SimCardRecord]:
        """Cards of ``SIM_Inventory__c`` with ``Status__c = 'Available'``, no ``Assigned_Order__c``
        and this ``SIM_Type__c`` (one of ``SIM_TYPES``), ordered by ``Name``; only those with
        ``Name > after`` when ``after`` is given (keyset paging: the caller pages on from the last
        Name of a page when every card of that page is taken), at most ``limit`` (1..2000). Reads
        only: taking a card is the caller's write (``Status__c``, ``Assigned_Order__c``,
        ``Assigned_Account__c``). An empty inventory gives ``[]``. Idempotent.

        Raises ``InvalidPayload(code="INVALID_SIM_TYPE")`` for a ``sim_type`` outside ``SIM_TYPES``
        (before any call), ``ValueError`` for a ``limit`` outside 1..2000 (one query page);
        otherwise raises as ``query`` (a row that is not a card: ``InvalidPayload(code="MALFORMED_RESPONSE")``)."""
        ...

    async def query(self, soql: str) -> list[dict[str, Any]]:
        """Run a SOQL query and return every record (all pages), as Salesforce sends them.

        Idempotent. ``RejectedByUpstream(code="MALFORMED_QUERY"|"INVALID_FIELD")`` for a bad query,
        otherwise raises as ``get_order``."""
        ...

    async def records_modified_between(
        self, sobject: str, since: datetime, until: datetime, fields: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Records of ``sobject`` with ``since <= LastModifiedDate < until`` (aware datetimes), oldest
        first, with ``Id``, ``LastModifiedDate`` and ``fields``. Idempotent; for reconciliation
        after a CDC gap. Raises as ``query``; ``ValueError`` for naive datetimes or odd names."""
        ...

    async def update_record(self, sobject: str, record_id: str, fields: Mapping[str, Any]) -> None:
        """Set fields on one record. Idempotent when the same values are written again (a
        no-op write still emits a change event with our client id in ``changeOrigin``).

        Raises ``RejectedByUpstream`` for validation failures (``INVALID_FIELD``,
        ``FIELD_CUSTOM_VALIDATION_EXCEPTION``...) and ``NOT_FOUND``; ``UpstreamUnavailable`` for
        ``UNABLE_TO_LOCK_ROW``; otherwise as ``get_order``."""
        ...

    async def update_records(self, updates: Sequence[RecordUpdate], all_or_none: bool = False) -> list[RecordResult]:
        """Update many records through sObject Collections, in chunks of 200 (one request each).

        Returns one result per update, in order; record-level failures are results, not
        exceptions. ``all_or_none`` rolls back a whole chunk when one record fails (it cannot
        span chunks). Request-level failures raise as ``update_record``; earlier chunks stay
        written, so callers retry with the same values (idempotent writes)."""
        ...

    def api_usage(self) -> tuple[int, int] | None:
        """The latest ``Sforce-Limit-Info: api-usage=used/limit`` seen, or None before any call."""
        ...
