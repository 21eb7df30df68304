"""The WHMCS sandbox's in-memory world: clients, pay methods, products, orders, services, invoices.

Seeded from ``sandbox.demo_data`` (clients with WHMCS ids and pay methods; products with pids).
Records are plain dataclasses rendered into WHMCS's response shapes by ``sandbox.whmcs.actions``.
Every change that WHMCS would fire a hook for appends to ``outbox``; the app drains it into the
webhook emitter. Ids of new orders, services, invoices and pay methods never repeat an id an
earlier sandbox process handed out (``clock_ids``). No HTTP here.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sandbox import demo_data

GATEWAYS = ("mailin", "banktransfer", "stripe")
BASE_FIELDS = ("OpportunityId",)
SIM_FIELDS = ("SIM Number", "Serial Number", "EID")


#: WHMCS ids are MySQL ``int(10)`` auto-increments, and the fleet keeps WHMCS order ids in
#: ``integer`` columns (``fulfillment_orders.whmcs_order_id``), so the sandbox's ids stay below 2**31:
#: a process numbers from the wall clock at its start, counted from this epoch at ``per_second`` ids
#: per second of wall time (see ``clock_ids``).
ID_EPOCH = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
ORDER_IDS_PER_SECOND = 10  # orders (and invoices, pay methods): the base passes 2**31 in late 2032
SERVICE_IDS_PER_SECOND = 40  # one service per order line


def clock_ids(per_second: int, now_s: float | None = None) -> Iterator[int]:
    """Ids from ``per_second`` x (seconds since ``ID_EPOCH``) at the start, counting up.

    WHMCS never reuses an id; the sandbox keeps its world in memory, so a new process starts above
    everything an earlier one handed out, unless that one averaged more than ``per_second`` ids per
    second of its life (``make bench-e2e`` creates about 1,200 orders in 3-4 minutes: 6 a second)."""
    now_s = time.time() if now_s is None else now_s
    return itertools.count(max(int((now_s - ID_EPOCH) * per_second), 1))


#: one numbering per kind for every world of this process (``reset`` and a second sandbox continue it)
ORDER_IDS = clock_ids(ORDER_IDS_PER_SECOND)
SERVICE_IDS = clock_ids(SERVICE_IDS_PER_SECOND)
INVOICE_IDS = clock_ids(ORDER_IDS_PER_SECOND)
PAYMETHOD_IDS = clock_ids(ORDER_IDS_PER_SECOND)


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")


@dataclass
class Client:
    id: int
    firstname: str
    lastname: str
    email: str
    status: str = "Active"
    paymethods: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Product:
    pid: int
    name: str
    price: float
    billingcycle: str
    #: custom field id → name; ids are unique per product, as in WHMCS
    custom_fields: dict[int, str] = field(default_factory=dict)


@dataclass
class Service:
    id: int
    clientid: int
    orderid: int
    pid: int
    name: str
    qty: int
    billingcycle: str
    amount: float
    status: str = "Pending"
    regdate: str = field(default_factory=lambda: now_text()[:10])
    notes: str = ""
    customfields: dict[int, str] = field(default_factory=dict)


@dataclass
class Order:
    id: int
    ordernum: str
    userid: int
    paymentmethod: str
    notes: str
    amount: float
    service_ids: list[int]
    invoiceid: int = 0
    status: str = "Pending"
    date: str = field(default_factory=now_text)


@dataclass
class Invoice:
    id: int
    userid: int
    total: float
    orderid: int = 0
    status: str = "Unpaid"
    date: str = field(default_factory=now_text)
    datepaid: str = ""


@dataclass
class World:
    clients: dict[int, Client] = field(default_factory=dict)
    products: dict[int, Product] = field(default_factory=dict)
    orders: dict[int, Order] = field(default_factory=dict)
    services: dict[int, Service] = field(default_factory=dict)
    invoices: dict[int, Invoice] = field(default_factory=dict)
    outbox: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    order_ids: Iterator[int] = field(default_factory=lambda: ORDER_IDS)
    service_ids: Iterator[int] = field(default_factory=lambda: SERVICE_IDS)
    invoice_ids: Iterator[int] = field(default_factory=lambda: INVOICE_IDS)
    paymethod_ids: Iterator[int] = field(default_factory=lambda: PAYMETHOD_IDS)

    def emit(self, event: str, **data: Any) -> None:
        self.outbox.append((event, data))

    def drain(self) -> list[tuple[str, dict[str, Any]]]:
        events, self.outbox = self.outbox, []
        return events

    def add_client(self, record: dict[str, Any]) -> Client:
        client = Client(
            id=int(record["id"]),
            firstname=record.get("firstname", ""),
            lastname=record.get("lastname", ""),
            email=record.get("email", ""),
            status=record.get("status", "Active"),
            paymethods=[_paymethod(int(record["id"]), p) for p in record.get("paymethods", [])],
        )
        self.clients[client.id] = client
        return client

    def add_product(self, record: dict[str, Any]) -> Product:
        pid = int(record["pid"])
        names = record.get("custom_fields", BASE_FIELDS)
        fields = {pid * 10 + n: name for n, name in enumerate(names, start=1)}
        product = Product(
            pid,
            record.get("name", f"Product {pid}"),
            float(record.get("price", 0)),
            record.get("billingcycle", "monthly"),
            fields,
        )
        self.products[pid] = product
        return product

    def add_paymethod(self, client: Client, record: dict[str, Any]) -> dict[str, Any]:
        method = _paymethod(client.id, {"id": next(self.paymethod_ids), **record})
        client.paymethods.append(method)
        return method

    def snapshot(self) -> dict[str, Any]:
        return {
            "clients": [asdict(c) for c in self.clients.values()],
            "products": [asdict(p) for p in self.products.values()],
            "orders": [asdict(o) for o in self.orders.values()],
            "services": [asdict(s) for s in self.services.values()],
            "invoices": [asdict(i) for i in self.invoices.values()],
        }


def _paymethod(client_id: int, record: dict[str, Any]) -> dict[str, Any]:
    """A pay method in GetPayMethods' shape (defaults for the fields the demo data leaves out)."""
    return {
        "id": int(record["id"]),
        "type": record.get("type", "CreditCard"),
        "description": record.get("description", ""),
        "gateway_name": record.get("gateway_name", "stripe" if "Card" in record.get("type", "") else ""),
        "contact_type": "Client",
        "contact_id": client_id,
        "card_last_four": record.get("card_last_four", ""),
        "last_updated": now_text(),
    }


def demo_world() -> World:
    """The demo customers that have a WHMCS client, and every product mapped to a pid."""
    world = World()
    for customer in demo_data.CUSTOMERS:
        if customer["whmcs_client_id"] is None:
            continue
        lastname, _, firstname = customer["name"].partition(" ")  # Japanese order: family name first
        world.add_client(
            {
                "id": customer["whmcs_client_id"],
                "firstname": firstname,
                "lastname": lastname,
                "email": customer["email"],
                "paymethods": customer["paymethods"],
            }
        )
    for product in demo_data.PRODUCTS:
        if product["WH_Product_ID__c"] is None:
            continue
        sim_service = product["Family"] == "SIM" and product["Item_Class__c"] == "Service"
        world.add_product(
            {
                "pid": product["WH_Product_ID__c"],
                "name": product["Name"],
                "price": product["UnitPrice"],
                "billingcycle": (product["Billing_Cycle__c"] or "monthly").lower(),
                "custom_fields": BASE_FIELDS + (SIM_FIELDS if sim_service else ()),
            }
        )
    world.outbox.clear()
    return world
