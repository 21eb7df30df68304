"""``FakeSalesforce``: the Salesforce port in memory, for unit tests and ``make run-local``.

Holds records by type and id, records every applied update in ``.updates`` (and every collection
request in ``.collection_calls``), can be told to fail the next call (``fail_next_with``) or a
given record of collection updates (``fail_record``). Its SOQL is a deliberate sliver: ``SELECT
fields FROM Type [WHERE field = 'v' | field IN ('a','b')]`` with dotted relationship fields;
richer queries belong to the sandbox. ``free_sim_cards`` reads ``records["SIM_Inventory__c"]``
directly (arrange it with ``add_sim_cards``), so updates of those records change what it returns.
Must not grow business rules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from adapters.salesforce.port import (
    BULK_READ_LIMIT,
    COLLECTION_LIMIT,
    SIM_AVAILABLE,
    SIM_INVENTORY,
    SIM_TYPES,
    OrderWithItems,
    RecordError,
    RecordResult,
    RecordUpdate,
)
from events.errors import FleetError, InvalidPayload, RateLimited, RejectedByUpstream
from schemas.salesforce_api import OrderItemRecord, OrderRecord, SimCardRecord

_QUERY = re.compile(
    r"^\s*SELECT\s+(?P<fields>.+?)\s+FROM\s+(?P<type>\w+)"
    r"(?:\s+WHERE\s+(?P<field>\w+)\s*(?P<op>=|IN)\s*(?P<value>'[^']*'|\([^)]*\)))?"
    r"(?:\s+ORDER\s+BY\s+\w+(?:\s+(?:ASC|DESC))?)?\s*$",
    re.IGNORECASE,
)
_ROLLED_BACK = RecordError(
    "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    "Record rolled back because not all records were valid and the request was using AllOrNone header",
)


class FakeSalesforce:
    def __init__(self, *, api_limit: int = 15_000) -> None:
        self.records: dict[str, dict[str, dict[str, Any]]] = {}
        self.updates: list[RecordUpdate] = []
        self.collection_calls: list[list[RecordUpdate]] = []
        self.queries: list[str] = []
        #: the id lists of every ``get_orders_with_items`` call (one entry per 200-id chunk)
        self.bulk_reads: list[list[str]] = []
        self._fail_next: list[FleetError] = []
        self._record_failures: dict[str, list[RecordError]] = {}
        self._used = 0
        self._limit = api_limit

    # --- arranging ----------------------------------------------------------------------------
    def add_record(self, sobject: str, record: Mapping[str, Any]) -> dict[str, Any]:
        stored = {"LastModifiedDate": _now(), **record}
        self.records.setdefault(sobject, {})[str(record["Id"])] = stored
        return stored

    def add_sim_cards(self, n: int, sim_type: str = "Physical", start: int = 1) -> list[dict[str, Any]]:
        """Add ``n`` Available cards numbered from ``start``, shaped as the sandbox's demo inventory:
        physical ``SIM-000001`` / ``080`` + 8 digits / serial ``AX`` + 13 digits, eSIM
        ``ESIM-000001`` / ``070`` + 8 digits / no serial. Returns the stored records."""
        physical = sim_type == "Physical"
        cards = []
        for number in range(start, start + n):
            card = {
                "Id": f"a0S5g0{'P' if physical else 'E'}{number:09d}AA",
                "Name": f"{'SIM' if physical else 'ESIM'}-{number:06d}",
                "Phone_Number__c": f"{'080' if physical else '070'}{number:08d}",
                "Serial_Number__c": f"AX{number:013d}" if physical else None,
                "SIM_Type__c": sim_type,
                "Status__c": SIM_AVAILABLE,
                "Assigned_Order__c": None,
                "Assigned_Account__c": None,
            }
            cards.append(self.add_record(SIM_INVENTORY, card))
        return cards

    def fail_next_with(self, *errors: FleetError) -> None:
        """The next call(s) raise these errors, one per call, before touching any record."""
        self._fail_next.extend(errors)

    def fail_record(self, record_id: str, code: str, message: str = "", times: int = 1) -> None:
        """Collection updates of ``record_id`` fail with ``code`` the next ``times`` times."""
        self._record_failures.setdefault(record_id, []).extend([RecordError(code, message)] * times)

    def spend_api_budget(self) -> None:
        """Every later call raises ``RateLimited`` as Salesforce's REQUEST_LIMIT_EXCEEDED does."""
        self._used = self._limit

    # --- the port -----------------------------------------------------------------------------
    def api_usage(self) -> tuple[int, int] | None:
        return (self._used, self._limit) if self._used else None

    async def get_order(self, order_id: str) -> OrderRecord:
        self._enter()
        return OrderRecord.model_validate(self._get("Order", order_id))

    async def get_order_items(self, order_id: str) -> list[OrderItemRecord]:
        self._enter()
        return self._items_of(order_id)

    async def get_orders_with_items(self, order_ids: Sequence[str]) -> list[OrderWithItems]:
        wanted = list(dict.fromkeys(order_ids))
        found: list[OrderWithItems] = []
        for start in range(0, len(wanted), BULK_READ_LIMIT):
            self._enter()
            chunk = wanted[start : start + BULK_READ_LIMIT]
            self.bulk_reads.append(chunk)
            for order_id in chunk:
                row = self.records.get("Order", {}).get(order_id)
                if row is not None:
                    found.append(OrderWithItems(OrderRecord.model_validate(row), self._items_of(order_id)))
        return found

    async def free_sim_cards(self, sim_type: str, *, after: str | None = None, limit: int = 50) -> list[SimCardRecord]:
        if sim_type not in SIM_TYPES:
            raise InvalidPayload(f"not a SIM type of the inventory: {sim_type!r}", upstream="salesforce",
                                 code="INVALID_SIM_TYPE")  # fmt: skip
        if not 1 <= limit <= 2000:
            raise ValueError(f"limit must be within 1..2000, not {limit}")
        self._enter()
        free = [
            card
            for card in self.records.get(SIM_INVENTORY, {}).values()
            if card.get("Status__c") == SIM_AVAILABLE
            and card.get("Assigned_Order__c") is None
            and card.get("SIM_Type__c") == sim_type
            and (after is None or str(card.get("Name")) > after)
        ]
        free.sort(key=lambda card: str(card.get("Name")))
        return [SimCardRecord.model_validate(card) for card in free[:limit]]

    async def query(self, soql: str) -> list[dict[str, Any]]:
        self._enter()
        self.queries.append(soql)
        match = _QUERY.match(soql)
        if match is None:
            raise RejectedByUpstream(f"fake SOQL cannot run {soql!r}", upstream="salesforce", code="MALFORMED_QUERY")
        rows = [r for r in self.records.get(match["type"], {}).values() if _where(r, match)]
        fields = [f.strip() for f in match["fields"].split(",")]
        return [_select(self._with_product(r), fields) for r in sorted(rows, key=lambda r: r["Id"])]

    async def records_modified_between(
        self, sobject: str, since: datetime, until: datetime, fields: Sequence[str]
    ) -> list[dict[str, Any]]:
        self._enter()
        rows = [r for r in self.records.get(sobject, {}).values() if since <= _parse_dt(r["LastModifiedDate"]) < until]
        rows.sort(key=lambda r: _parse_dt(r["LastModifiedDate"]))
        return [_select(r, ["Id", "LastModifiedDate", *fields]) for r in rows]

    async def update_record(self, sobject: str, record_id: str, fields: Mapping[str, Any]) -> None:
        self._enter()
        self._apply(RecordUpdate(sobject, record_id, dict(fields)))

    async def update_records(self, updates: Sequence[RecordUpdate], all_or_none: bool = False) -> list[RecordResult]:
        results: list[RecordResult] = []
        for start in range(0, len(updates), COLLECTION_LIMIT):
            self._enter()
            chunk = list(updates[start : start + COLLECTION_LIMIT])
            self.collection_calls.append(chunk)
            results.extend(self._update_chunk(chunk, all_or_none))
        return results

    # --- internals ----------------------------------------------------------------------------
    def _enter(self) -> None:
        if self._fail_next:
            raise self._fail_next.pop(0)
        if self._used >= self._limit:
            raise RateLimited("TotalRequests Limit exceeded.", upstream="salesforce", code="REQUEST_LIMIT_EXCEEDED")
        self._used += 1

    def _get(self, sobject: str, record_id: str) -> dict[str, Any]:
        record = self.records.get(sobject, {}).get(record_id)
        if record is None:
            raise RejectedByUpstream(f"{sobject} {record_id} not found", upstream="salesforce", code="NOT_FOUND")
        return record

    def _apply(self, update: RecordUpdate) -> None:
        record = self._get(update.sobject, update.record_id)
        record.update(update.fields)
        record["LastModifiedDate"] = _now()
        self.updates.append(update)

    def _update_chunk(self, chunk: list[RecordUpdate], all_or_none: bool) -> list[RecordResult]:
        failures = {u.record_id: err for u in chunk if (err := self._failure_for(u)) is not None}
        if all_or_none and failures:
            return [RecordResult(u.record_id, False, (failures.get(u.record_id, _ROLLED_BACK),)) for u in chunk]
        results = []
        for update in chunk:
            if update.record_id in failures:
                results.append(RecordResult(update.record_id, False, (failures[update.record_id],)))
                continue
            self._apply(update)
            results.append(RecordResult(update.record_id, True))
        return results

    def _failure_for(self, update: RecordUpdate) -> RecordError | None:
        if update.record_id not in self.records.get(update.sobject, {}):
            return RecordError("ENTITY_IS_DELETED", "entity is deleted")
        queued = self._record_failures.get(update.record_id)
        return queued.pop(0) if queued else None

    def _items_of(self, order_id: str) -> list[OrderItemRecord]:
        rows = [r for r in self.records.get("OrderItem", {}).values() if r.get("OrderId") == order_id]
        return [OrderItemRecord.model_validate(self._with_product(r)) for r in sorted(rows, key=lambda r: r["Id"])]

    def _with_product(self, row: dict[str, Any]) -> dict[str, Any]:
        product = self.records.get("Product2", {}).get(str(row.get("Product2Id")))
        return {**row, "Product2": product} if product else dict(row)


def _where(row: dict[str, Any], match: re.Match[str]) -> bool:
    if match["field"] is None:
        return True
    value = match["value"]
    if match["op"].upper() == "IN":
        wanted = {v.strip().strip("'") for v in value.strip("()").split(",")}
        return str(row.get(match["field"])) in wanted
    return str(row.get(match["field"])) == value.strip("'")


def _select(row: dict[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    selected: dict[str, Any] = {}
    for path in fields:
        head, _, rest = path.partition(".")
        if rest:
            related = row.get(head)
            selected[head] = _select(related, [rest]) | selected.get(head, {}) if related else None
        else:
            selected[path] = row.get(path)
    return selected


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0000"


def _parse_dt(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z")
