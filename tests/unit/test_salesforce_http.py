"""``HttpSalesforce`` offline: recorded Salesforce answers through ``httpx.MockTransport``.

Pins the one error-mapping function (status + errorCode → ``events.errors``), the 401 → refresh
once → retry rule, the headers every request carries, and chunking of collection updates.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from adapters.salesforce import AccessToken, HttpSalesforce, RecordUpdate
from events.errors import (
    AuthenticationFailed,
    FleetError,
    InvalidPayload,
    RateLimited,
    RejectedByUpstream,
    UpstreamTimeout,
    UpstreamUnavailable,
)

ORDER_ID = "8015g00000001001AA"
INSTANCE = "https://fleet.my.salesforce.com"


class StubTokens:
    """A token source that hands out token-1, token-2... and counts refreshes."""

    def __init__(self) -> None:
        self.current = AccessToken("token-1", INSTANCE)
        self.refreshes: list[str | None] = []

    async def token(self) -> AccessToken:
        return self.current

    async def refresh(self, stale: str | None = None) -> AccessToken:
        self.refreshes.append(stale)
        self.current = AccessToken(f"token-{len(self.refreshes) + 1}", INSTANCE)
        return self.current


def errors(code: str, message: str = "m") -> list[dict[str, str]]:
    return [{"message": message, "errorCode": code}]


def make(handler: Callable[[httpx.Request], httpx.Response]) -> tuple[HttpSalesforce, StubTokens]:
    tokens = StubTokens()
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return HttpSalesforce(client, tokens, "60.0", "fleet-unit"), tokens


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
    content = b"" if body is None else json.dumps(body).encode()
    return httpx.Response(status, content=content, headers={"Sforce-Limit-Info": "api-usage=5/100", **(headers or {})})


@pytest.mark.parametrize(
    ("status", "body", "headers", "error", "code"),
    [
        (403, errors("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."), {}, RateLimited,
         "REQUEST_LIMIT_EXCEEDED"),
        (429, None, {"Retry-After": "12"}, RateLimited, "RATE_LIMITED"),
        (503, errors("SERVER_UNAVAILABLE"), {}, UpstreamUnavailable, "UPSTREAM_UNAVAILABLE"),
        (500, "<html>oops</html>", {}, UpstreamUnavailable, "UPSTREAM_UNAVAILABLE"),
        (400, errors("UNABLE_TO_LOCK_ROW"), {}, UpstreamUnavailable, "UNABLE_TO_LOCK_ROW"),
        (400, errors("INVALID_FIELD"), {}, RejectedByUpstream, "INVALID_FIELD"),
        (400, errors("FIELD_CUSTOM_VALIDATION_EXCEPTION"), {}, RejectedByUpstream,
         "FIELD_CUSTOM_VALIDATION_EXCEPTION"),
        (400, errors("MALFORMED_QUERY"), {}, RejectedByUpstream, "MALFORMED_QUERY"),
        (404, errors("NOT_FOUND"), {}, RejectedByUpstream, "NOT_FOUND"),
        (404, None, {}, RejectedByUpstream, "NOT_FOUND"),
        (403, errors("INSUFFICIENT_ACCESS"), {}, RejectedByUpstream, "INSUFFICIENT_ACCESS"),
        (418, "teapot", {}, RejectedByUpstream, "HTTP_418"),
    ],
    ids=["limit", "429", "503", "500-html", "lock", "field", "validation", "soql", "404", "404-empty", "403", "418"],
)  # fmt: skip
async def test_answers_map_onto_the_error_tree(
    status: int, body: Any, headers: dict[str, str], error: type[FleetError], code: str
) -> None:
    salesforce, _ = make(lambda request: answer(status, body, headers))

    with pytest.raises(error) as caught:
        await salesforce.update_record("Order", ORDER_ID, {"Status": "Approved"})

    assert type(caught.value) is error
    assert caught.value.code == code and caught.value.upstream == "salesforce"
    if status == 429:
        assert caught.value.retry_after == 12


async def test_a_401_refreshes_the_token_once_and_retries_with_the_new_one() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        if request.headers["Authorization"] == "Bearer token-1":
            return answer(401, errors("INVALID_SESSION_ID", "Session expired or invalid"))
        return answer(200, {"attributes": {"type": "Order"}, "Id": ORDER_ID, "Status": "Draft"})

    salesforce, tokens = make(handler)

    order = await salesforce.get_order(ORDER_ID)

    assert order.status == "Draft"
    assert seen == ["Bearer token-1", "Bearer token-2"]
    assert tokens.refreshes == ["token-1"]


async def test_a_401_after_the_refresh_is_an_authentication_failure() -> None:
    salesforce, tokens = make(lambda request: answer(401, errors("INVALID_SESSION_ID")))

    with pytest.raises(AuthenticationFailed) as caught:
        await salesforce.get_order(ORDER_ID)

    assert caught.value.code == "INVALID_SESSION_ID" and not caught.value.retriable
    assert len(tokens.refreshes) == 1


@pytest.mark.parametrize(
    ("exc", "error"),
    [(httpx.ReadTimeout("slow"), UpstreamTimeout), (httpx.ConnectError("refused"), UpstreamUnavailable),
     (httpx.RemoteProtocolError("peer closed"), UpstreamUnavailable)],
    ids=["timeout", "refused", "dropped"],
)  # fmt: skip
async def test_transport_failures_are_retryable(exc: Exception, error: type[FleetError]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    salesforce, _ = make(handler)

    with pytest.raises(error) as caught:
        await salesforce.get_order(ORDER_ID)

    assert caught.value.retriable


async def test_writes_carry_call_options_and_reads_do_not() -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if request.method == "PATCH":
            return answer(204)
        return answer(200, {"attributes": {"type": "Order"}, "Id": ORDER_ID})

    salesforce, _ = make(handler)

    await salesforce.get_order(ORDER_ID)
    await salesforce.update_record("Order", ORDER_ID, {"Status": "Approved"})

    read, write = requests
    assert str(read.url) == f"{INSTANCE}/services/data/v60.0/sobjects/Order/{ORDER_ID}"
    assert "Sforce-Call-Options" not in read.headers
    assert write.headers["Sforce-Call-Options"] == "client=fleet-unit"
    assert json.loads(write.content) == {"Status": "Approved"}
    assert salesforce.api_usage() == (5, 100)


async def test_collection_updates_are_chunked_and_results_kept_in_order() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        return answer(200, [{"id": r["id"], "success": True, "errors": []} for r in body["records"]])

    salesforce, _ = make(handler)
    updates = [RecordUpdate("OrderItem", f"8025g00000{n:06d}AA", {"WHMCS_Service_ID__c": str(n)}) for n in range(450)]

    results = await salesforce.update_records(updates, all_or_none=True)

    assert [len(b["records"]) for b in bodies] == [200, 200, 50]
    assert all(b["allOrNone"] is True for b in bodies)
    assert bodies[0]["records"][0] == {"attributes": {"type": "OrderItem"}, "id": "8025g00000000000AA",
                                       "WHMCS_Service_ID__c": "0"}  # fmt: skip
    assert [r.record_id for r in results] == [u.record_id for u in updates]


async def test_a_collection_answer_with_the_wrong_length_is_malformed() -> None:
    salesforce, _ = make(lambda request: answer(200, [{"id": ORDER_ID, "success": True}]))
    updates = [RecordUpdate("Order", ORDER_ID, {"Status": "x"}), RecordUpdate("Order", ORDER_ID, {"Status": "y"})]

    with pytest.raises(InvalidPayload, match="PATCH /composite/sobjects"):
        await salesforce.update_records(updates)


async def test_a_malformed_body_names_the_operation() -> None:
    salesforce, _ = make(lambda request: httpx.Response(200, content=b'{"totalSize": 1, "do'))

    with pytest.raises(InvalidPayload) as caught:
        await salesforce.query("SELECT Id FROM Order")

    assert caught.value.code == "MALFORMED_RESPONSE" and "GET /query" in caught.value.message


async def test_ids_and_names_are_checked_before_anything_is_sent() -> None:
    """Ids end up in URLs and SOQL literals; a bad one must never reach Salesforce."""
    salesforce, _ = make(lambda request: pytest.fail("nothing should be sent"))

    with pytest.raises(InvalidPayload):
        await salesforce.get_order("801' OR Id != '")
    with pytest.raises(ValueError, match="API name"):
        await salesforce.update_record("Order; DROP", ORDER_ID, {})


async def test_records_modified_between_builds_a_bounded_soql_query() -> None:
    from datetime import UTC, datetime

    queries: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        queries.append(request.url.params["q"])
        return answer(200, {"totalSize": 0, "done": True, "records": []})

    salesforce, _ = make(handler)
    since, until = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    await salesforce.records_modified_between("Order", since, until, ["Status", "Product2.Name"])

    assert queries == [
        "SELECT Id, LastModifiedDate, Status, Product2.Name FROM Order WHERE LastModifiedDate >= "
        "2026-01-01T00:00:00Z AND LastModifiedDate < 2026-01-02T03:04:05Z ORDER BY LastModifiedDate"
    ]
    with pytest.raises(ValueError, match="timezone-aware"):
        await salesforce.records_modified_between("Order", datetime(2026, 1, 1), until, [])  # noqa: DTZ001
