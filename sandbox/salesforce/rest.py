"""The sandbox's REST API under ``/services/data/vXX.X/``: sObject read/update, SOQL query, sObject Collections.

Every call needs a live bearer token (else 401 ``INVALID_SESSION_ID``), spends one unit of the daily
API budget (past it: 403 ``REQUEST_LIMIT_EXCEEDED``) and answers with ``Sforce-Limit-Info:
api-usage=N/M``. Writes run in one org transaction whose ``changeOrigin`` carries the
``Sforce-Call-Options`` client. Per-record faults (``RecordFaults``) make chosen records fail the
way Salesforce's DML does. Bodies follow the REST API Developer Guide; this module holds no
event or session logic.
"""

from __future__ import annotations

import itertools
import json
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from sandbox.salesforce import soql
from sandbox.salesforce.oauth import TokenIssuer
from sandbox.salesforce.org import Org, RecordMissing, Transaction, api_actor
from sandbox.salesforce.store import FIELDS, FieldProblem, Store, all_fields

COLLECTION_LIMIT = 200
Handler = Callable[[web.Request], Awaitable[web.Response]]
_FAULT_MESSAGES = {
    "UNABLE_TO_LOCK_ROW": "unable to obtain exclusive access to this record or 1 records: {id}",
    "FIELD_CUSTOM_VALIDATION_EXCEPTION": "Validation rule failed for {id} (injected)",
}
_TOO_MANY = "record limit reached. cannot submit more than 200 records into this call"
_ROLLED_BACK = {
    "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    "message": "Record rolled back because not all records were valid and the request was using AllOrNone header",
    "fields": [],
}


def errors(status: int, code: str, message: str, fields: list[str] | None = None) -> web.Response:
    """Salesforce's REST error body: a JSON list of ``{"message", "errorCode"[, "fields"]}``."""
    entry: dict[str, Any] = {"message": message, "errorCode": code}
    if fields is not None:
        entry["fields"] = fields
    return web.json_response([entry], status=status)


@dataclass
class ApiLimits:
    used: int = 0
    limit: int = 15_000

    def spend(self) -> bool:
        """Count one call; False once the daily budget is exhausted."""
        self.used += 1
        return self.used <= self.limit

    def header(self) -> str:
        return f"api-usage={self.used}/{self.limit}"


@dataclass
class RecordFaults:
    """Injected per-record DML failures: ``record_id`` fails with ``statusCode`` the next ``times`` writes."""

    pending: dict[str, deque[dict[str, Any]]] = field(default_factory=dict)

    def add(self, record_id: str, status_code: str, *, message: str | None = None, times: int = 1,
            fields: list[str] | None = None) -> None:  # fmt: skip
        text = message or _FAULT_MESSAGES.get(status_code, f"{status_code} (injected)")
        entry = {"statusCode": status_code, "message": text.format(id=record_id), "fields": fields or []}
        self.pending.setdefault(record_id, deque()).extend([entry] * times)

    def take(self, record_id: str) -> dict[str, Any] | None:
        queue = self.pending.get(record_id)
        if not queue:
            return None
        entry = queue.popleft()
        if not queue:
            del self.pending[record_id]
        return entry


class RestApi:
    def __init__(self, org: Org, tokens: TokenIssuer, limits: ApiLimits, faults: RecordFaults,
                 *, query_batch_size: int = 2000) -> None:  # fmt: skip
        self.org = org
        self.tokens = tokens
        self.limits = limits
        self.faults = faults
        self.query_batch_size = query_batch_size
        self._cursors: dict[str, list[dict[str, Any]]] = {}
        self._locators = itertools.count(1)

    @property
    def store(self) -> Store:
        return self.org.store

    def add_routes(self, app: web.Application) -> None:
        base = r"/services/data/{version:v\d+\.\d}"
        app.router.add_get(base + "/sobjects/{sobject}/{record_id}", self._api(self.get_record))
        app.router.add_patch(base + "/sobjects/{sobject}/{record_id}", self._api(self.patch_record))
        app.router.add_get(base + "/query", self._api(self.query))
        app.router.add_get(base + "/query/{locator}", self._api(self.query_more))
        app.router.add_patch(base + "/composite/sobjects", self._api(self.update_collection))

    def _api(self, handler: Handler) -> Handler:
        """Token check, API budget and the Sforce-Limit-Info header around every REST handler."""

        async def guarded(request: web.Request) -> web.Response:
            issued, _ = self.tokens.check(request.headers.get("Authorization"))
            if issued is None:
                response = errors(401, "INVALID_SESSION_ID", "Session expired or invalid")
            elif not self.limits.spend():
                response = errors(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
            else:
                response = await handler(request)
            response.headers["Sforce-Limit-Info"] = self.limits.header()
            return response

        return guarded

    # --- sObject rows -------------------------------------------------------------------------
    async def get_record(self, request: web.Request) -> web.Response:
        sobject, record_id = request.match_info["sobject"], request.match_info["record_id"]
        record = self.store.get(sobject, record_id) if sobject in FIELDS else None
        if record is None:
            return errors(404, "NOT_FOUND", "The requested resource does not exist")
        wanted = [f.strip() for f in request.query.get("fields", "").split(",") if f.strip()]
        unknown = [f for f in wanted if f not in all_fields(sobject)]
        if unknown:
            return errors(400, "INVALID_FIELD", f"No such column '{unknown[0]}' on entity '{sobject}'.")
        shown = {k: record[k] for k in wanted} if wanted else dict(record)
        return web.json_response({"attributes": soql.attributes(sobject, record_id, _version(request)), **shown})

    async def patch_record(self, request: web.Request) -> web.Response:
        sobject, record_id = request.match_info["sobject"], request.match_info["record_id"]
        body = await _json_object(request)
        if isinstance(body, web.Response):
            return body
        if sobject not in FIELDS or self.store.get(sobject, record_id) is None:
            return errors(404, "NOT_FOUND", "The requested resource does not exist")
        try:
            Store.check_writable(sobject, body)
        except FieldProblem as problem:
            return web.json_response([problem.entry], status=400)
        fault = self.faults.take(record_id)
        if fault is not None:
            return errors(400, fault["statusCode"], fault["message"], fault["fields"])
        with self._transaction(request) as tx:
            tx.update(sobject, record_id, body)
        return web.Response(status=204)

    # --- SOQL ---------------------------------------------------------------------------------
    async def query(self, request: web.Request) -> web.Response:
        text = request.query.get("q", "").strip()
        if not text:
            return errors(400, "MALFORMED_QUERY", "A query string has to be specified")
        try:
            rows = soql.run(self.store, soql.parse(text), api_version=_version(request)[1:])
        except soql.SoqlError as problem:
            return web.json_response([problem.entry], status=400)
        return web.json_response(self._page(rows, 0, len(rows), None, _version(request)))

    async def query_more(self, request: web.Request) -> web.Response:
        locator, _, offset = request.match_info["locator"].rpartition("-")
        rows = self._cursors.get(locator)
        if rows is None or not offset.isdigit():
            return errors(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        return web.json_response(self._page(rows, int(offset), len(rows), locator, _version(request)))

    def _page(self, rows: list[dict[str, Any]], start: int, total: int, locator: str | None,
              version: str) -> dict[str, Any]:  # fmt: skip
        end = start + self.query_batch_size
        page: dict[str, Any] = {"totalSize": total, "done": end >= total, "records": rows[start:end]}
        if end >= total and locator is not None:
            self._cursors.pop(locator, None)  # the last page was read: the locator is spent
        elif end < total:
            locator = locator or f"01g5g0000{next(self._locators):09d}"
            self._cursors[locator] = rows
            page["nextRecordsUrl"] = f"/services/data/{version}/query/{locator}-{end}"
        return page

    # --- sObject Collections ------------------------------------------------------------------
    async def update_collection(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        if isinstance(body, web.Response):
            return body
        records = body.get("records")
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            return errors(400, "JSON_PARSER_ERROR", "records must be a list of sObjects")
        if len(records) > COLLECTION_LIMIT:
            return errors(400, "EXCEEDED_ID_LIMIT", _TOO_MANY)
        problem = _collection_problem(records)
        if problem is not None:
            return problem
        with self._transaction(request) as tx:
            results = [self._save(tx, record) for record in records]
            if body.get("allOrNone") is True and not all(r["success"] for r in results):
                tx.rollback()
                results = [{**r, "success": False, "errors": [_ROLLED_BACK]} if r["success"] else r for r in results]
        return web.json_response(results)

    def _save(self, tx: Transaction, record: dict[str, Any]) -> dict[str, Any]:
        sobject, record_id = record["attributes"]["type"], str(record["id"])
        fields = {k: v for k, v in record.items() if k not in ("attributes", "id", "Id")}
        try:
            Store.check_writable(sobject, fields)
        except FieldProblem as problem:
            return _failed(record_id, problem.code, str(problem), problem.fields)
        fault = self.faults.take(record_id)
        if fault is not None:
            return {"id": record_id, "success": False, "errors": [fault]}
        try:
            tx.update(sobject, record_id, fields)
        except RecordMissing:
            return _failed(record_id, "ENTITY_IS_DELETED", "entity is deleted", [])
        return {"id": record_id, "success": True, "errors": []}

    def _transaction(self, request: web.Request) -> Transaction:
        actor = api_actor(_version(request)[1:], request.headers.get("Sforce-Call-Options"))
        return self.org.transaction(actor)


def _collection_problem(records: list[dict[str, Any]]) -> web.Response | None:
    """Request-level 400s: a record without type or id, or a field the object does not have."""
    for record in records:
        sobject = (record.get("attributes") or {}).get("type")
        if sobject not in FIELDS or not record.get("id"):
            return errors(400, "INVALID_TYPE", "Each record requires attributes.type and an id")
        for name in record:
            if name not in ("attributes", "id") and name not in all_fields(sobject):
                return errors(400, "INVALID_FIELD", f"No such column '{name}' on sobject of type {sobject}")
    return None


def _failed(record_id: str, code: str, message: str, fields: list[str]) -> dict[str, Any]:
    return {"id": record_id, "success": False, "errors": [{"statusCode": code, "message": message, "fields": fields}]}


def _version(request: web.Request) -> str:
    return request.match_info["version"]


async def _json_object(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        body = json.loads(await request.text() or "null")
    except ValueError:
        return errors(400, "JSON_PARSER_ERROR", "The request body is not valid JSON")
    if not isinstance(body, dict):
        return errors(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
    return body
