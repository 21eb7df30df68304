"""``HttpWhmcs``: the WhmcsPort over the WHMCS External API (POST /includes/api.php, form-encoded).

Receives its ``httpx.AsyncClient`` and plain credentials from the composition root; never
builds clients or reads settings. Every answer goes through ``_raise_for_result`` (the one place
that turns WHMCS messages into our error tree) and is parsed with ``schemas.whmcs_api``.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from adapters.http import send
from adapters.whmcs.port import (
    UPSTREAM,
    AddedOrder,
    OrderLine,
    PayMethod,
    WhmcsClient,
    WhmcsOrder,
    WhmcsService,
)
from events.errors import AuthenticationFailed, InvalidPayload, MappingMissing, RejectedByUpstream
from schemas import whmcs_api as api

M = TypeVar("M", bound=BaseModel)
PAGE = 100

#: (lower-case message fragment, error class, code) — first match wins. "Not found" errors are
#: ``MappingMissing``: the id came from our own mapping data (id_mappings, Product2.WH_Product_ID__c)
#: and is wrong until an operator fixes it; after that, replaying the message succeeds.
_MESSAGE_RULES: list[tuple[str, type[RejectedByUpstream | MappingMissing], str]] = [
    ("client id not found", MappingMissing, "WHMCS_CLIENT_NOT_FOUND"),
    ("client not found", MappingMissing, "WHMCS_CLIENT_NOT_FOUND"),
    ("product id", MappingMissing, "WHMCS_PRODUCT_NOT_FOUND"),
    ("service id not found", MappingMissing, "WHMCS_SERVICE_NOT_FOUND"),
    ("status not pending", RejectedByUpstream, "ORDER_NOT_PENDING"),
    ("invalid payment method", RejectedByUpstream, "INVALID_PAYMENT_METHOD"),
    ("client status is closed", RejectedByUpstream, "CLIENT_CLOSED"),
    ("no items added to cart", RejectedByUpstream, "NO_ITEMS"),
]
_AUTH_MESSAGES = ("authentication failed", "invalid ip", "invalid access key")


class HttpWhmcs:
    def __init__(self, client: httpx.AsyncClient, api_url: str, identifier: str, secret: str, access_key: str = ""):
        self._client = client
        self._api_url = api_url
        self._auth = {"identifier": identifier, "secret": secret}
        if access_key:
            self._auth["accesskey"] = access_key

    # --- port ----------------------------------------------------------------------------
    async def get_client(self, client_id: int) -> WhmcsClient:
        body = await self._call("GetClientsDetails", {"clientid": client_id, "stats": "false"})
        c = _parse(api.GetClientsDetailsResponse, body, "GetClientsDetails").client
        return WhmcsClient(c.id, c.status, c.email, f"{c.firstname} {c.lastname}".strip())

    async def list_pay_methods(self, client_id: int) -> list[PayMethod]:
        body = await self._call("GetPayMethods", {"clientid": client_id})
        parsed = _parse(api.GetPayMethodsResponse, body, "GetPayMethods")
        return [PayMethod(p.id, p.type, p.description) for p in parsed.paymethods]

    async def add_order(
        self, client_id: int, lines: list[OrderLine], notes: str, payment_method: str = "mailin"
    ) -> AddedOrder:
        params: dict[str, Any] = {
            "clientid": client_id,
            "paymentmethod": payment_method,
            "pid[]": [str(line.pid) for line in lines],
            "billingcycle[]": [line.billing_cycle for line in lines],
            "qty[]": [str(line.qty) for line in lines],
            "notes": notes,
            "noinvoice": "true",
            "noemail": "true",
        }
        parsed = _parse(api.AddOrderResponse, await self._call("AddOrder", params), "AddOrder")
        return AddedOrder(parsed.orderid, _csv_ints(parsed.serviceids), parsed.invoiceid)

    async def accept_order(self, order_id: int) -> None:
        try:
            await self._call("AcceptOrder", {"orderid": order_id, "autosetup": "true", "sendemail": "false"})
        except RejectedByUpstream as exc:
            if exc.code != "ORDER_NOT_PENDING" or await self._order_status(order_id) != "Active":
                raise

    async def find_orders(self, client_id: int, status: str | None = None) -> list[WhmcsOrder]:
        filters: dict[str, Any] = {"userid": client_id} | ({"status": status} if status else {})
        orders: list[WhmcsOrder] = []
        while True:
            body = await self._call("GetOrders", filters | {"limitstart": len(orders), "limitnum": PAGE})
            page = _parse(api.GetOrdersResponse, body, "GetOrders")
            orders.extend(_order(o) for o in page.orders.order)
            if not page.orders.order or len(orders) >= page.totalresults:
                return sorted(orders, key=lambda o: o.order_id)

    async def find_order_by_note(self, client_id: int, marker: str) -> WhmcsOrder | None:
        token = re.compile(re.escape(marker) + r"(?![A-Za-z0-9])")
        hits = [o for o in await self.find_orders(client_id) if token.search(o.notes)]
        return hits[-1] if hits else None

    async def cancel_order(self, order_id: int) -> None:
        try:
            await self._call("CancelOrder", {"orderid": order_id, "noemail": "true"})
        except RejectedByUpstream as exc:
            if exc.code != "ORDER_NOT_PENDING" or await self._order_status(order_id) != "Cancelled":
                raise

    async def list_services(self, client_id: int) -> list[WhmcsService]:
        services: list[WhmcsService] = []
        while True:
            params = {"clientid": client_id, "limitstart": len(services), "limitnum": PAGE}
            body = await self._call("GetClientsProducts", params)
            page = _parse(api.GetClientsProductsResponse, body, "GetClientsProducts")
            services.extend(_service(p) for p in page.products.product)
            if not page.products.product or len(services) >= page.totalresults:
                return services

    async def update_service_custom_fields(self, service_id: int, fields: dict[str, str]) -> None:
        ids = await self._custom_field_ids(service_id)
        missing = sorted(set(fields) - set(ids))
        if missing:
            message = f"service {service_id} has no custom field(s) {missing}"
            raise MappingMissing(message, upstream=UPSTREAM, code="WHMCS_CUSTOM_FIELD_MISSING")
        encoded = _php_serialize({ids[name]: value for name, value in fields.items()})
        params = {"serviceid": service_id, "customfields": base64.b64encode(encoded).decode("ascii")}
        _parse(api.UpdateClientProductResponse, await self._call("UpdateClientProduct", params), "UpdateClientProduct")

    # --- plumbing ------------------------------------------------------------------------
    async def _order_status(self, order_id: int) -> str | None:
        page = _parse(api.GetOrdersResponse, await self._call("GetOrders", {"id": order_id}), "GetOrders")
        return page.orders.order[0].status if page.orders.order else None

    async def _custom_field_ids(self, service_id: int) -> dict[str, int]:
        """WHMCS sets custom fields by field id, which differs per product: read them by name first."""
        body = await self._call("GetClientsProducts", {"serviceid": service_id})
        products = _parse(api.GetClientsProductsResponse, body, "GetClientsProducts").products.product
        if not products:
            raise MappingMissing(f"service {service_id} not found", upstream=UPSTREAM, code="WHMCS_SERVICE_NOT_FOUND")
        return {f.name: f.id for f in products[0].customfields.customfield}

    async def _call(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        data = {"action": action, "responsetype": "json", **self._auth, **params}
        operation = f"WHMCS {action}"
        response = await send(self._client, "POST", self._api_url, upstream=UPSTREAM, operation=operation, data=data)
        body = _decode(response, action)
        _raise_for_result(action, response.status_code, body)
        return body


def _decode(response: httpx.Response, action: str) -> dict[str, Any]:
    try:
        body = json.loads(response.content)
    except ValueError:
        if response.status_code in (401, 403):
            raise AuthenticationFailed(
                f"WHMCS {action} refused with HTTP {response.status_code}",
                upstream=UPSTREAM,
                status=response.status_code,
            ) from None
        raise _malformed(action, f"not JSON: {response.text[:120]!r}") from None
    if not isinstance(body, dict):
        raise _malformed(action, f"expected an object, got {type(body).__name__}")
    return body


def _raise_for_result(action: str, status: int, body: dict[str, Any]) -> None:
    """The one mapping from a decoded WHMCS answer to our error tree (transport and 5xx/429 are
    already handled by ``adapters.http``). WHMCS answers business errors with HTTP 200."""
    message = str(body.get("message") or "")
    lowered = message.lower()
    if status in (401, 403) or any(m in lowered for m in _AUTH_MESSAGES):
        raise AuthenticationFailed(
            f"WHMCS {action}: {message or 'HTTP ' + str(status)}", upstream=UPSTREAM, status=status
        )
    result = body.get("result")
    if result == "success" and status < 400:
        return
    if result not in ("success", "error"):
        raise _malformed(action, "no result field")
    for fragment, error, code in _MESSAGE_RULES:
        if fragment in lowered:
            raise error(f"WHMCS {action}: {message}", upstream=UPSTREAM, code=code, status=status)
    raise RejectedByUpstream(
        f"WHMCS {action}: {message or 'HTTP ' + str(status)}", upstream=UPSTREAM, code="WHMCS_ERROR", status=status
    )


def _parse(model: type[M], body: dict[str, Any], action: str) -> M:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _malformed(action, f"{exc.error_count()} field error(s): {exc.errors()[0]['loc']}") from None


def _malformed(action: str, detail: str) -> InvalidPayload:
    return InvalidPayload(
        f"WHMCS {action} returned a malformed body ({detail})", upstream=UPSTREAM, code="MALFORMED_RESPONSE"
    )


def _order(o: api.OrderRecord) -> WhmcsOrder:
    services = tuple(item.relid for item in o.lineitems.lineitem if item.type == "product")
    return WhmcsOrder(o.id, o.userid, o.status, o.notes, o.invoiceid or None, services)


def _service(p: api.ProductRecord) -> WhmcsService:
    fields = {f.name: f.value for f in p.customfields.customfield}
    return WhmcsService(p.id, p.clientid, p.orderid, p.pid, p.status, fields)


def _csv_ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def _php_serialize(values: dict[int, str]) -> bytes:
    """PHP ``serialize()`` of an int-keyed array of strings: the only shape WHMCS's custom-field
    parameter needs, so ten lines beat a dependency (phpserialize is unmaintained and untyped)."""
    parts = [b"a:%d:{" % len(values)]
    for key, value in values.items():
        raw = value.encode("utf-8")
        parts.append(b'i:%d;s:%d:"%s";' % (key, len(raw), raw))
    parts.append(b"}")
    return b"".join(parts)
