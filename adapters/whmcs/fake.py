"""``FakeWhmcs``: an in-memory WhmcsPort with the same semantics and errors as ``HttpWhmcs``.

Starts empty; ``add_client``/``add_product`` build its world (tests seed it from
``sandbox.demo_data``; this module may not import the sandbox). Records every call in
``calls`` and raises ``fail_next_with`` once when set. The shared contract suite in
``tests/contracts/whmcs.py`` keeps it honest against the real adapter and the sandbox.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field, replace
from typing import Any

from adapters.whmcs.port import UPSTREAM, AddedOrder, OrderLine, PayMethod, WhmcsClient, WhmcsOrder, WhmcsService
from events.errors import FleetError, MappingMissing, RejectedByUpstream

PAYMENT_METHODS = ("mailin", "banktransfer", "stripe")


@dataclass
class _Product:
    pid: int
    name: str
    custom_fields: tuple[str, ...]


@dataclass
class FakeWhmcs:
    clients: dict[int, WhmcsClient] = field(default_factory=dict)
    pay_methods: dict[int, list[PayMethod]] = field(default_factory=dict)
    products: dict[int, _Product] = field(default_factory=dict)
    orders: dict[int, WhmcsOrder] = field(default_factory=dict)
    services: dict[int, WhmcsService] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    fail_next_with: FleetError | None = None
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # --- world building ------------------------------------------------------------------
    def add_client(
        self,
        client_id: int,
        *,
        name: str = "",
        email: str = "",
        status: str = "Active",
        pay_methods: list[PayMethod] | None = None,
    ) -> None:
        self.clients[client_id] = WhmcsClient(client_id, status, email, name)
        self.pay_methods[client_id] = list(pay_methods or [])

    def add_product(self, pid: int, name: str = "", custom_fields: tuple[str, ...] = ("OpportunityId",)) -> None:
        self.products[pid] = _Product(pid, name or f"product {pid}", custom_fields)

    # --- port ----------------------------------------------------------------------------
    async def get_client(self, client_id: int) -> WhmcsClient:
        self._record("get_client", client_id=client_id)
        return self._client(client_id)

    async def list_pay_methods(self, client_id: int) -> list[PayMethod]:
        self._record("list_pay_methods", client_id=client_id)
        self._client(client_id)
        return list(self.pay_methods[client_id])

    async def add_order(
        self, client_id: int, lines: list[OrderLine], notes: str, payment_method: str = "mailin"
    ) -> AddedOrder:
        self._record("add_order", client_id=client_id, lines=lines, notes=notes, payment_method=payment_method)
        client = self._client(client_id)
        self._check_order(client, lines, payment_method)
        order_id = next(self._ids)
        service_ids = tuple(self._new_service(client_id, order_id, line.pid) for line in lines)
        self.orders[order_id] = WhmcsOrder(order_id, client_id, "Pending", notes, None, service_ids)
        return AddedOrder(order_id, service_ids, None)

    async def accept_order(self, order_id: int) -> None:
        self._record("accept_order", order_id=order_id)
        self._transition(order_id, "Active", already="Active")

    async def find_orders(self, client_id: int, status: str | None = None) -> list[WhmcsOrder]:
        self._record("find_orders", client_id=client_id, status=status)
        found = [o for o in self.orders.values() if o.client_id == client_id and status in (None, o.status)]
        return sorted(found, key=lambda o: o.order_id)

    async def find_order_by_note(self, client_id: int, marker: str) -> WhmcsOrder | None:
        self._record("find_order_by_note", client_id=client_id, marker=marker)
        token = re.compile(re.escape(marker) + r"(?![A-Za-z0-9])")
        hits = [
            o
            for o in sorted(self.orders.values(), key=lambda o: o.order_id)
            if o.client_id == client_id and token.search(o.notes)
        ]
        return hits[-1] if hits else None

    async def cancel_order(self, order_id: int) -> None:
        self._record("cancel_order", order_id=order_id)
        self._transition(order_id, "Cancelled", already="Cancelled")

    async def list_services(self, client_id: int) -> list[WhmcsService]:
        self._record("list_services", client_id=client_id)
        return [s for s in self.services.values() if s.client_id == client_id]

    async def update_service_custom_fields(self, service_id: int, fields: dict[str, str]) -> None:
        self._record("update_service_custom_fields", service_id=service_id, fields=fields)
        service = self.services.get(service_id)
        if service is None:
            raise MappingMissing(f"service {service_id} not found", upstream=UPSTREAM, code="WHMCS_SERVICE_NOT_FOUND")
        missing = sorted(set(fields) - set(service.custom_fields))
        if missing:
            raise MappingMissing(
                f"service {service_id} has no custom field(s) {missing}",
                upstream=UPSTREAM,
                code="WHMCS_CUSTOM_FIELD_MISSING",
            )
        self.services[service_id] = replace(service, custom_fields={**service.custom_fields, **fields})

    # --- helpers -------------------------------------------------------------------------
    def _record(self, name: str, **kwargs: Any) -> None:
        self.calls.append((name, kwargs))
        if self.fail_next_with is not None:
            error, self.fail_next_with = self.fail_next_with, None
            raise error

    def _client(self, client_id: int) -> WhmcsClient:
        if client_id not in self.clients:
            raise MappingMissing("WHMCS: Client ID Not Found", upstream=UPSTREAM, code="WHMCS_CLIENT_NOT_FOUND")
        return self.clients[client_id]

    def _check_order(self, client: WhmcsClient, lines: list[OrderLine], payment_method: str) -> None:
        if client.status == "Closed":
            raise RejectedByUpstream(
                "WHMCS: Unable to add order when client status is Closed", upstream=UPSTREAM, code="CLIENT_CLOSED"
            )
        if payment_method not in PAYMENT_METHODS:
            raise RejectedByUpstream("WHMCS: Invalid Payment Method", upstream=UPSTREAM, code="INVALID_PAYMENT_METHOD")
        if not lines:
            raise RejectedByUpstream(
                "WHMCS: No items added to cart so order cannot proceed", upstream=UPSTREAM, code="NO_ITEMS"
            )
        unknown = [line.pid for line in lines if line.pid not in self.products]
        if unknown:
            raise MappingMissing(
                f"WHMCS: Invalid Product ID {unknown[0]}", upstream=UPSTREAM, code="WHMCS_PRODUCT_NOT_FOUND"
            )

    def _new_service(self, client_id: int, order_id: int, pid: int) -> int:
        service_id = next(self._ids)
        names = self.products[pid].custom_fields
        self.services[service_id] = WhmcsService(
            service_id, client_id, order_id, pid, "Pending", dict.fromkeys(names, "")
        )
        return service_id

    def _transition(self, order_id: int, to: str, *, already: str) -> None:
        order = self.orders.get(order_id)
        if order is not None and order.status == already:
            return
        if order is None or order.status != "Pending":
            raise RejectedByUpstream(
                "WHMCS: Order ID not found or Status not Pending", upstream=UPSTREAM, code="ORDER_NOT_PENDING"
            )
        self.orders[order_id] = replace(order, status=to)
        for service_id in order.service_ids:
            self.services[service_id] = replace(self.services[service_id], status=to)
