"""``HttpSalesforce``: the Salesforce port over the REST API (v60.0) with an injected httpx client.

Every request carries the bearer token of the shared ``TokenSource``; every write also carries
``Sforce-Call-Options: client=<id>``, which Salesforce copies into the CDC ``changeOrigin`` so the
fleet can recognise its own writes. A 401 replaces the token once (single flight in the token
source) and retries once. Every answer's ``Sforce-Limit-Info`` updates the API usage. Status and
``errorCode`` map onto ``events.errors`` in ``_raise_for_answer`` and nowhere else. Must not
build the client, read configuration, or decide retries (the runtime does).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from adapters.http import map_transport_error, parse_retry_after, raise_for_transient_status
from adapters.salesforce.auth import AccessToken, TokenSource
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
from events.errors import (
    AuthenticationFailed,
    InvalidPayload,
    RateLimited,
    RejectedByUpstream,
    UpstreamUnavailable,
)
from schemas.salesforce_api import (
    API_ERRORS,
    SAVE_RESULTS,
    ApiError,
    CollectionRecord,
    CollectionUpdateRequest,
    OrderItemRecord,
    OrderRecord,
    QueryPage,
    SaveResult,
    SimCardRecord,
)

UPSTREAM = "salesforce"
M = TypeVar("M", bound=BaseModel)

#: the lines of an order with the product fields the WHMCS mapping needs
ORDER_ITEMS_SOQL = (
    "SELECT Id, OrderId, PricebookEntryId, Product2Id, Quantity, UnitPrice, WHMCS_Service_ID__c, "
    "Billing_Cycle__c, Product2.Name, Product2.StockKeepingUnit, Product2.WH_Product_ID__c, "
    "Product2.Billing_Cycle__c, Product2.Item_Class__c FROM OrderItem WHERE OrderId = '{order_id}' ORDER BY Id"
)

#: what a bulk read selects of each Order: what the sf-cdc rules and the saga's plan read
ORDER_FIELDS = (
    "Id, AccountId, Status, Type, Order_Type__c, EffectiveDate, Pricebook2Id, OrderNumber, Activation_Type__c, "
    "Activation_Scheduled_At__c, "
    "Activation_Status__c, Activation_Error_Code__c, WHMCS_Order_ID__c, SIM_Type__c, EID__c, SIM_Voice_Mail__c, "
    "SIM_Call_Waiting__c, VPN_Region__c, OpportunityId, MNP_Reservation_Number__c, MNP_Expiry_Date__c, "
    "MNP_Phone_Number__c, LastModifiedDate"
)
#: the same line fields as ``ORDER_ITEMS_SOQL``, as a parent-to-child sub-query of Order
ORDER_ITEMS_SUBQUERY = (
    "(SELECT Id, OrderId, PricebookEntryId, Product2Id, Quantity, UnitPrice, WHMCS_Service_ID__c, "
    "Billing_Cycle__c, Product2.Name, Product2.StockKeepingUnit, Product2.WH_Product_ID__c, "
    "Product2.Billing_Cycle__c, Product2.Item_Class__c FROM OrderItems ORDER BY Id)"
)
ORDERS_WITH_ITEMS_SOQL = "SELECT " + ORDER_FIELDS + ", " + ORDER_ITEMS_SUBQUERY + " FROM Order WHERE Id IN ({ids})"

#: free cards of one type, by Name, from a Name on (keyset paging); literals via ``_soql_string``
FREE_SIM_CARDS_SOQL = (
    "SELECT Id, Name, Phone_Number__c, Serial_Number__c, SIM_Type__c, Status__c, Assigned_Order__c, "
    f"Assigned_Account__c FROM {SIM_INVENTORY} WHERE Status__c = '{SIM_AVAILABLE}' AND Assigned_Order__c = null "
    "AND SIM_Type__c = {sim_type}{after} ORDER BY Name LIMIT {limit}"
)
#: the most a query page holds: a larger ``limit`` would need a second call
FREE_SIM_CARDS_MAX = 2000

_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_FIELD_PATH = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z][A-Za-z0-9_]*)*$")
_SOQL_ESCAPES = str.maketrans({"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r"})
_USAGE = re.compile(r"api-usage=(\d+)/(\d+)")


class HttpSalesforce:
    """``SalesforcePort`` over REST; ``on_api_usage(used, limit)`` is called after every answer."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        auth: TokenSource,
        api_version: str = "60.0",
        call_options_client: str = "fulfillment-fleet",
        *,
        on_api_usage: Callable[[int, int], None] | None = None,
    ) -> None:
        self._client = client
        self._auth = auth
        self._base = f"/services/data/v{api_version}"
        self._call_options = f"client={call_options_client}"
        self._on_api_usage = on_api_usage
        self._usage: tuple[int, int] | None = None

    def api_usage(self) -> tuple[int, int] | None:
        return self._usage

    # --- reads --------------------------------------------------------------------------------
    async def get_order(self, order_id: str) -> OrderRecord:
        operation = "GET /sobjects/Order/{id}"
        response = await self._call("GET", f"{self._base}/sobjects/Order/{_checked_id(order_id)}", operation)
        return _parse(OrderRecord, response, operation)

    async def get_order_items(self, order_id: str) -> list[OrderItemRecord]:
        rows = await self.query(ORDER_ITEMS_SOQL.format(order_id=_checked_id(order_id)))
        try:
            return [OrderItemRecord.model_validate(row) for row in rows]
        except ValidationError as exc:
            raise _malformed("GET /query (OrderItem)", exc) from exc

    async def get_orders_with_items(self, order_ids: Sequence[str]) -> list[OrderWithItems]:
        wanted = list(dict.fromkeys(_checked_id(i) for i in order_ids))
        found: list[OrderWithItems] = []
        for start in range(0, len(wanted), BULK_READ_LIMIT):
            ids = ", ".join(f"'{i}'" for i in wanted[start : start + BULK_READ_LIMIT])
            for row in await self.query(ORDERS_WITH_ITEMS_SOQL.format(ids=ids)):
                found.append(await self._with_items(row))
        return found

    async def _with_items(self, row: dict[str, Any]) -> OrderWithItems:
        operation = "GET /query (Order with OrderItems)"
        try:
            order = OrderRecord.model_validate(row)
            lines = order.order_items
            rows = list(lines.records) if lines else []
            # a parent with many children may get its first batch only, plus a locator for the rest
            while lines is not None and not lines.done and lines.next_records_url:
                response = await self._call("GET", lines.next_records_url, operation + " next page")
                lines = _parse(QueryPage, response, operation)
                rows.extend(lines.records)
            return OrderWithItems(order, [OrderItemRecord.model_validate(r) for r in rows])
        except ValidationError as exc:
            raise _malformed(operation, exc) from exc

    async def free_sim_cards(self, sim_type: str, *, after: str | None = None, limit: int = 50) -> list[SimCardRecord]:
        if sim_type not in SIM_TYPES:
            raise InvalidPayload(f"not a SIM type of the inventory: {sim_type!r} (expected one of {SIM_TYPES})",
                                 upstream=UPSTREAM, code="INVALID_SIM_TYPE")  # fmt: skip
        if not 1 <= limit <= FREE_SIM_CARDS_MAX:
            raise ValueError(f"limit must be within 1..{FREE_SIM_CARDS_MAX}, not {limit}")
        soql = FREE_SIM_CARDS_SOQL.format(
            sim_type=_soql_string(sim_type),
            after="" if after is None else f" AND Name > {_soql_string(after)}",
            limit=limit,
        )
        rows = await self.query(soql)
        try:
            return [SimCardRecord.model_validate(row) for row in rows]
        except ValidationError as exc:
            raise _malformed(f"GET /query ({SIM_INVENTORY})", exc) from exc

    async def query(self, soql: str) -> list[dict[str, Any]]:
        operation = "GET /query"
        response = await self._call("GET", f"{self._base}/query", operation, params={"q": soql})
        page = _parse(QueryPage, response, operation)
        records = list(page.records)
        while not page.done and page.next_records_url:
            response = await self._call("GET", page.next_records_url, "GET /query (next page)")
            page = _parse(QueryPage, response, operation)
            records.extend(page.records)
        return records

    async def records_modified_between(
        self, sobject: str, since: datetime, until: datetime, fields: Sequence[str]
    ) -> list[dict[str, Any]]:
        _check_name(sobject, _NAME)
        for name in fields:
            _check_name(name, _FIELD_PATH)
        selected = ", ".join(dict.fromkeys(["Id", "LastModifiedDate", *fields]))
        soql = (
            f"SELECT {selected} FROM {sobject} WHERE LastModifiedDate >= {_soql_datetime(since)} "
            f"AND LastModifiedDate < {_soql_datetime(until)} ORDER BY LastModifiedDate"
        )
        return await self.query(soql)

    # --- writes -------------------------------------------------------------------------------
    async def update_record(self, sobject: str, record_id: str, fields: Mapping[str, Any]) -> None:
        _check_name(sobject, _NAME)
        path = f"{self._base}/sobjects/{sobject}/{_checked_id(record_id)}"
        body = {name: _wire_value(value) for name, value in fields.items()}
        await self._call("PATCH", path, f"PATCH /sobjects/{sobject}/{{id}}", json=body, write=True)

    async def update_records(self, updates: Sequence[RecordUpdate], all_or_none: bool = False) -> list[RecordResult]:
        results: list[RecordResult] = []
        for start in range(0, len(updates), COLLECTION_LIMIT):
            results.extend(await self._update_chunk(updates[start : start + COLLECTION_LIMIT], all_or_none))
        return results

    async def _update_chunk(self, chunk: Sequence[RecordUpdate], all_or_none: bool) -> list[RecordResult]:
        operation = "PATCH /composite/sobjects"
        request = CollectionUpdateRequest(
            all_or_none=all_or_none,
            records=[
                CollectionRecord(
                    attributes={"type": u.sobject},
                    id=_checked_id(u.record_id),
                    **{name: _wire_value(value) for name, value in u.fields.items()},
                )
                for u in chunk
            ],
        )
        body = request.model_dump(by_alias=True)
        response = await self._call("PATCH", f"{self._base}/composite/sobjects", operation, json=body, write=True)
        saved = _parse_list(SAVE_RESULTS, response, operation)
        if len(saved) != len(chunk):
            raise _malformed(operation, f"{len(saved)} results for {len(chunk)} records")
        return [_to_result(update, result) for update, result in zip(chunk, saved, strict=True)]

    # --- plumbing -----------------------------------------------------------------------------
    async def _call(
        self, method: str, path: str, operation: str, *, write: bool = False, **kwargs: Any
    ) -> httpx.Response:
        token = await self._auth.token()
        response = await self._send(method, path, token, operation, write, **kwargs)
        if response.status_code == 401:
            # sessions end silently (org timeout, revocation): replace the token once and retry
            # once; a 401 means nothing was executed, so repeating a write is safe
            token = await self._auth.refresh(token.access_token)
            response = await self._send(method, path, token, operation, write, **kwargs)
        _raise_for_answer(response, operation)
        return response

    async def _send(
        self, method: str, path: str, token: AccessToken, operation: str, write: bool, **kwargs: Any
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token.access_token}", "Accept": "application/json"}
        if write:
            headers["Sforce-Call-Options"] = self._call_options
        try:
            response = await self._client.request(method, token.instance_url + path, headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise map_transport_error(exc, upstream=UPSTREAM, operation=operation) from exc
        self._note_usage(response)
        return response

    def _note_usage(self, response: httpx.Response) -> None:
        match = _USAGE.search(response.headers.get("Sforce-Limit-Info", ""))
        if match is None:
            return
        self._usage = (int(match.group(1)), int(match.group(2)))
        if self._on_api_usage is not None:
            self._on_api_usage(*self._usage)


def _raise_for_answer(response: httpx.Response, operation: str) -> None:
    """The one place Salesforce answers become ``events.errors`` (checked in this order)."""
    status = response.status_code
    if status < 300:
        return
    first = _first_api_error(response)
    code = first.error_code if first else None
    message = f"{operation} answered {status}" + (f" {code}: {first.message}" if first else "")
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if code == "REQUEST_LIMIT_EXCEEDED":  # 403: the org's rolling 24 h API budget is spent
        raise RateLimited(message, upstream=UPSTREAM, code=code, status=status, retry_after=retry_after)
    raise_for_transient_status(response, upstream=UPSTREAM, operation=operation)  # 429, 5xx
    if code == "UNABLE_TO_LOCK_ROW":  # another transaction holds the record: the same write may pass later
        raise UpstreamUnavailable(message, upstream=UPSTREAM, code=code, status=status)
    if status == 401:  # still refused with a freshly granted token
        raise AuthenticationFailed(message, upstream=UPSTREAM, code=code or "INVALID_SESSION_ID", status=status)
    if status == 404:
        raise RejectedByUpstream(message, upstream=UPSTREAM, code="NOT_FOUND", status=status)
    # INVALID_FIELD, FIELD_CUSTOM_VALIDATION_EXCEPTION, MALFORMED_QUERY, INVALID_FIELD_FOR_INSERT_UPDATE...
    raise RejectedByUpstream(message, upstream=UPSTREAM, code=code or f"HTTP_{status}", status=status)


def _first_api_error(response: httpx.Response) -> ApiError | None:
    try:
        errors = API_ERRORS.validate_json(response.content)
    except ValidationError:
        return None
    return errors[0] if errors else None


def _parse(model: type[M], response: httpx.Response, operation: str) -> M:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise _malformed(operation, exc) from exc


def _parse_list(adapter: TypeAdapter[list[SaveResult]], response: httpx.Response, operation: str) -> list[SaveResult]:
    try:
        return adapter.validate_json(response.content)
    except ValidationError as exc:
        raise _malformed(operation, exc) from exc


def _malformed(operation: str, detail: ValidationError | str) -> InvalidPayload:
    """A 2xx whose body is not what Salesforce sends: permanent, and says which call it was."""
    if isinstance(detail, ValidationError):
        first = detail.errors()[0]
        detail = f"{first['msg']} at {'.'.join(str(p) for p in first['loc']) or 'body'}"
    return InvalidPayload(
        f"malformed answer from Salesforce {operation}: {detail}", upstream=UPSTREAM, code="MALFORMED_RESPONSE"
    )


def _to_result(update: RecordUpdate, saved: SaveResult) -> RecordResult:
    errors = tuple(RecordError(e.status_code, e.message, tuple(e.fields)) for e in saved.errors)
    return RecordResult(record_id=saved.id or update.record_id, success=saved.success, errors=errors)


def _checked_id(record_id: str) -> str:
    """Ids go into URLs and SOQL literals, so anything but a 15/18-char id is refused before sending."""
    if not _ID.match(record_id):
        raise InvalidPayload(f"not a Salesforce record id: {record_id!r}", upstream=UPSTREAM, code="INVALID_ID")
    return record_id


def _check_name(name: str, pattern: re.Pattern[str]) -> None:
    if not pattern.match(name):
        raise ValueError(f"not a Salesforce API name: {name!r}")


def _soql_string(value: str) -> str:
    """A SOQL string literal: quoted, with backslash, quote and line breaks escaped as SOQL requires."""
    return "'" + value.translate(_SOQL_ESCAPES) + "'"


def _soql_datetime(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("SOQL datetimes must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _wire_value(value: Any) -> Any:
    """JSON for a field value: dates as ISO strings, Decimals as numbers (Salesforce wants numbers)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value.tzinfo else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value
