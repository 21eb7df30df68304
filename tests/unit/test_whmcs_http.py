"""``HttpWhmcs``'s mapping of WHMCS answers onto the error tree, offline through httpx.MockTransport,
plus the shared helpers of ``adapters.http`` and the wire encodings (PHP serialize, array params).

Contract: every documented WHMCS error message lands in one stable (class, code); HTTP 403 and
"Authentication Failed" are ``AuthenticationFailed``; non-JSON or shape-breaking bodies are
``InvalidPayload`` naming the action; WHMCS's number-as-string and empty-list quirks parse.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from multidict import MultiDict, MultiDictProxy

from adapters.http import build_client, map_transport_error, parse_retry_after
from adapters.whmcs import HttpWhmcs, OrderLine
from adapters.whmcs.http import _php_serialize
from events.errors import (
    AuthenticationFailed,
    FleetError,
    InvalidPayload,
    MappingMissing,
    RejectedByUpstream,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from sandbox.whmcs.actions import form_list
from sandbox.whmcs.phpserial import PhpSerialError, decode_base64_serialized, unserialize
from schemas.whmcs_api import GetOrdersResponse

API = "https://billing.example.jp/includes/api.php"
Handler = Callable[[httpx.Request], httpx.Response]


def whmcs_answering(handler: Handler) -> HttpWhmcs:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return HttpWhmcs(client, API, "id", "secret", access_key="key")


def answer(body: Any, status: int = 200) -> Handler:
    return lambda request: httpx.Response(status, json=body)


@pytest.mark.parametrize(
    ("message", "error", "code"),
    [
        ("Client ID Not Found", MappingMissing, "WHMCS_CLIENT_NOT_FOUND"),
        ("Client Not Found", MappingMissing, "WHMCS_CLIENT_NOT_FOUND"),
        ("Invalid Product ID: 999", MappingMissing, "WHMCS_PRODUCT_NOT_FOUND"),
        ("Service ID Not Found", MappingMissing, "WHMCS_SERVICE_NOT_FOUND"),
        ("Unable to add order when client status is Closed", RejectedByUpstream, "CLIENT_CLOSED"),
        ("Invalid Payment Method. Valid options include mailin", RejectedByUpstream, "INVALID_PAYMENT_METHOD"),
        ("No items added to cart so order cannot proceed", RejectedByUpstream, "NO_ITEMS"),
        ("Domain not owned by Client ID provided", RejectedByUpstream, "WHMCS_ERROR"),
    ],
)
async def test_documented_add_order_errors_map_to_one_class_and_code(
    message: str, error: type[FleetError], code: str
) -> None:
    whmcs = whmcs_answering(answer({"result": "error", "message": message}))
    with pytest.raises(error) as caught:
        await whmcs.add_order(1, [OrderLine(1, "monthly")], notes="n")
    assert (type(caught.value), caught.value.code, caught.value.upstream) == (error, code, "whmcs")
    assert message in caught.value.message


@pytest.mark.parametrize(
    ("body", "status"),
    [({"result": "error", "message": "Authentication Failed"}, 403), ({"result": "error", "message": "x"}, 401)],
)
async def test_refused_credentials_are_authentication_failed(body: dict[str, str], status: int) -> None:
    with pytest.raises(AuthenticationFailed):
        await whmcs_answering(answer(body, status)).get_client(1)


async def test_a_403_html_page_is_authentication_failed_too() -> None:
    whmcs = whmcs_answering(lambda request: httpx.Response(403, text="<html>Forbidden</html>"))
    with pytest.raises(AuthenticationFailed):
        await whmcs.get_client(1)


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text='{"result": "succ'),
        httpx.Response(200, json=["not", "an", "object"]),
        httpx.Response(200, json={"no": "result"}),
        httpx.Response(200, json={"result": "success", "orderid": "not-a-number"}),
    ],
)
async def test_malformed_bodies_are_invalid_payload_naming_the_action(response: httpx.Response) -> None:
    whmcs = whmcs_answering(lambda request: response)
    with pytest.raises(InvalidPayload) as caught:
        await whmcs.add_order(1, [OrderLine(1, "monthly")], notes="n")
    assert caught.value.code == "MALFORMED_RESPONSE" and "AddOrder" in caught.value.message


async def test_add_order_sends_arrays_credentials_and_parses_string_numbers() -> None:
    seen: list[dict[str, list[str]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(parse_qs(request.content.decode()))
        return httpx.Response(200, json={"result": "success", "orderid": "12", "serviceids": "3,4", "invoiceid": "0"})

    added = await whmcs_answering(handler).add_order(7, [OrderLine(181, "monthly"), OrderLine(242, "onetime", 2)], "m")
    assert (added.order_id, added.service_ids, added.invoice_id) == (12, (3, 4), None)
    (form,) = seen
    assert form["pid[]"] == ["181", "242"] and form["qty[]"] == ["1", "2"]
    assert (form["identifier"], form["secret"], form["accesskey"], form["responsetype"]) == (
        ["id"],
        ["secret"],
        ["key"],
        ["json"],
    )


async def test_accept_order_of_an_already_active_order_succeeds() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        action = parse_qs(request.content.decode())["action"][0]
        if action == "AcceptOrder":
            return httpx.Response(200, json={"result": "error", "message": "Order ID not found or Status not Pending"})
        order = {"id": 5, "userid": 1, "status": "Active"}
        return httpx.Response(200, json={"result": "success", "totalresults": 1, "orders": {"order": [order]}})

    await whmcs_answering(handler).accept_order(5)


def test_get_orders_tolerates_empty_lists_and_extra_fields() -> None:
    empty = GetOrdersResponse.model_validate({"result": "success", "totalresults": "0", "orders": []})
    assert empty.orders.order == []
    extra = {"result": "success", "orders": {"order": [{"id": "1", "userid": "2", "status": "Pending", "new": 1}]}}
    assert GetOrdersResponse.model_validate(extra).orders.order[0].id == 1


# --- adapters.http ---------------------------------------------------------------------------
def test_retry_after_accepts_seconds_and_http_dates_and_clamps() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("86400") == 300.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_transport_errors_are_retryable_and_timeouts_are_told_apart() -> None:
    timeout = map_transport_error(httpx.ReadTimeout("slow"), upstream="whmcs", operation="WHMCS AddOrder")
    dropped = map_transport_error(httpx.RemoteProtocolError("gone"), upstream="whmcs", operation="WHMCS AddOrder")
    assert isinstance(timeout, UpstreamTimeout) and isinstance(dropped, UpstreamUnavailable)
    assert timeout.retriable and dropped.retriable and "AddOrder" in str(timeout)


async def test_build_client_sets_explicit_timeouts_and_limits() -> None:
    async with build_client(1.5, 9.0, 7) as client:
        assert (client.timeout.connect, client.timeout.read, client.timeout.pool) == (1.5, 9.0, 9.0)
        assert client.follow_redirects is False


# --- wire encodings --------------------------------------------------------------------------
def test_php_serialize_round_trips_through_the_sandbox_decoder() -> None:
    values = {11: "08012345678", 12: "", 13: "エイド"}
    encoded = base64.b64encode(_php_serialize(values)).decode()
    assert decode_base64_serialized(encoded) == values
    assert _php_serialize({1: "Google"}) == b'a:1:{i:1;s:6:"Google";}'  # PHP's own output


def test_the_decoder_reads_what_php_writes_and_refuses_garbage() -> None:
    assert unserialize(b'a:2:{s:4:"name";s:1:"x";i:0;b:1;}') == {"name": "x", 0: True}
    assert unserialize(b"a:1:{i:0;N;}") == {0: None}
    for bad in (b'a:1:{i:1;s:9:"short";}', b'O:8:"stdClass":0:{}', b"i:1"):
        with pytest.raises(PhpSerialError):
            unserialize(bad)
    with pytest.raises(PhpSerialError):
        decode_base64_serialized(base64.b64encode(b"i:1;").decode())  # not an array


@pytest.mark.parametrize(
    "pairs",
    [
        [("pid[]", "181"), ("pid[]", "242")],
        [("pid[1]", "242"), ("pid[0]", "181")],
        [("pid", "181"), ("pid", "242")],
    ],
)
def test_array_parameters_are_read_in_every_php_spelling(pairs: list[tuple[str, str]]) -> None:
    assert form_list(MultiDictProxy(MultiDict(pairs)), "pid") == ["181", "242"]
