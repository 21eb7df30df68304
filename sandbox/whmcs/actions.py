"""The WHMCS API actions the fleet uses, as functions of (world, form) → response dict.

Request parameters, response shapes and error messages follow developers.whmcs.com/api-reference
(docs/sandboxes.md lists what is simplified). An action raises ``ApiError(message)``; the app
answers it the way WHMCS does: HTTP 200 with ``{"result": "error", "message": ...}``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from multidict import MultiDictProxy

from sandbox.whmcs.phpserial import PhpSerialError, decode_base64_serialized
from sandbox.whmcs.state import GATEWAYS, Client, Invoice, Order, Service, World, now_text

Form = MultiDictProxy[str]
TRUE = ("1", "true", "on", "yes")
CYCLES = ("free", "onetime", "monthly", "quarterly", "semiannually", "annually", "biennially", "triennially")


class ApiError(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def form_list(form: Form, name: str) -> list[str]:
    """A PHP-style array parameter: ``name[]`` repeated, ``name[0]``/``name[1]`` indexed, or plain ``name``."""
    if f"{name}[]" in form:
        return list(form.getall(f"{name}[]"))
    pattern = re.compile(rf"{re.escape(name)}\[(\d+)\]")
    indexed = sorted((int(m.group(1)), v) for k, v in form.items() if (m := pattern.fullmatch(k)))
    return [v for _, v in indexed] if indexed else list(form.getall(name, []))


def _int(form: Form, name: str) -> int | None:
    value = form.get(name, "").strip()
    return int(value) if value.isdigit() else None


def _client(world: World, form: Form, message: str = "Client Not Found") -> Client:
    client_id = _int(form, "clientid")
    if client_id is None or client_id not in world.clients:
        raise ApiError(message)
    return world.clients[client_id]


# --- clients -------------------------------------------------------------------------------
def get_clients_details(world: World, form: Form) -> dict[str, Any]:
    c = _client(world, form)
    record = {
        "id": c.id,
        "userid": c.id,
        "client_id": c.id,
        "firstname": c.firstname,
        "lastname": c.lastname,
        "fullname": f"{c.firstname} {c.lastname}".strip(),
        "email": c.email,
        "status": c.status,
    }
    return {"result": "success", **record, "client": record}


def get_pay_methods(world: World, form: Form) -> dict[str, Any]:
    if _int(form, "clientid") is None:
        raise ApiError("Client ID Is Required")
    client = _client(world, form)
    wanted_type, wanted_id = form.get("type"), _int(form, "paymethodid")
    if wanted_type not in (None, "", "BankAccount", "CreditCard"):
        raise ApiError("Invalid Pay Method Type. Should be 'BankAccount' or 'CreditCard'")
    methods = [
        p
        for p in client.paymethods
        if (not wanted_type or p["type"].endswith(wanted_type)) and wanted_id in (None, p["id"])
    ]
    return {"result": "success", "clientid": client.id, "paymethods": methods}


# --- orders --------------------------------------------------------------------------------
def add_order(world: World, form: Form) -> dict[str, Any]:
    client = _client(world, form, "Client ID Not Found")
    if client.status == "Closed":
        raise ApiError("Unable to add order when client status is Closed")
    gateway = form.get("paymentmethod", "")
    if gateway not in GATEWAYS:
        raise ApiError(f"Invalid Payment Method. Valid options include {','.join(GATEWAYS)}")
    lines = _order_lines(world, form)
    order_id = next(world.order_ids)
    # WHMCS's order number is a random 10-digit text; the sandbox's follows the id, so it never repeats either
    order = Order(order_id, f"{order_id:010d}", client.id, gateway, form.get("notes", ""), 0.0, [])
    for pid, cycle, qty, fields in lines:
        order.service_ids.append(_new_service(world, order, pid, cycle, qty, fields).id)
    order.amount = sum(world.services[s].amount for s in order.service_ids)
    if form.get("noinvoice", "").lower() not in TRUE:
        order.invoiceid = create_invoice(world, client.id, order.amount, order.id)
    world.orders[order.id] = order
    world.emit(
        "AfterShoppingCartCheckout",
        client_id=client.id,
        order_id=order.id,
        status=order.status,
        service_ids=order.service_ids,
        invoice_id=order.invoiceid or None,
    )
    return {
        "result": "success",
        "orderid": order.id,
        "serviceids": ",".join(map(str, order.service_ids)),
        "addonids": "",
        "domainids": "",
        "invoiceid": order.invoiceid,
    }


def _order_lines(world: World, form: Form) -> list[tuple[int, str, int, dict[int | str, str]]]:
    pids = form_list(form, "pid")
    if not pids:
        raise ApiError("No items added to cart so order cannot proceed")
    cycles, qtys, fields = form_list(form, "billingcycle"), form_list(form, "qty"), form_list(form, "customfields")
    lines = []
    for n, raw_pid in enumerate(pids):
        pid = int(raw_pid) if raw_pid.strip().isdigit() else -1
        if pid not in world.products:
            raise ApiError(f"Invalid Product ID: {raw_pid}")
        cycle = (cycles[n] if n < len(cycles) and cycles[n] else world.products[pid].billingcycle).lower()
        if cycle not in CYCLES:
            raise ApiError(f"Invalid Billing Cycle: {cycle}")
        qty = int(qtys[n]) if n < len(qtys) and qtys[n].isdigit() else 1
        lines.append((pid, cycle, max(qty, 1), _custom_fields(fields[n]) if n < len(fields) and fields[n] else {}))
    return lines


def _new_service(world: World, order: Order, pid: int, cycle: str, qty: int, fields: dict[int | str, str]) -> Service:
    product = world.products[pid]
    service = Service(
        next(world.service_ids),
        order.userid,
        order.id,
        pid,
        product.name,
        qty,
        cycle,
        product.price * qty,
        customfields=dict.fromkeys(product.custom_fields, ""),
    )
    _apply_custom_fields(world, service, fields)
    world.services[service.id] = service
    return service


def create_invoice(world: World, client_id: int, total: float, order_id: int | None = None) -> int:
    invoice = Invoice(next(world.invoice_ids), client_id, total, order_id or 0)
    world.invoices[invoice.id] = invoice
    world.emit(
        "InvoiceCreated",
        client_id=client_id,
        invoice_id=invoice.id,
        status=invoice.status,
        total=total,
        order_id=order_id,
    )
    return invoice.id


def _pending_order(world: World, form: Form) -> Order:
    order = world.orders.get(_int(form, "orderid") or -1)
    if order is None or order.status != "Pending":
        raise ApiError("Order ID not found or Status not Pending")
    return order


def _set_order_status(world: World, order: Order, status: str, hook: str) -> dict[str, Any]:
    order.status = status
    for service_id in order.service_ids:
        world.services[service_id].status = status
    world.emit(hook, client_id=order.userid, order_id=order.id, status=status, service_ids=order.service_ids)
    return {"result": "success"}


def accept_order(world: World, form: Form) -> dict[str, Any]:
    return _set_order_status(world, _pending_order(world, form), "Active", "AcceptOrder")


def cancel_order(world: World, form: Form) -> dict[str, Any]:
    return _set_order_status(world, _pending_order(world, form), "Cancelled", "CancelOrder")


def get_orders(world: World, form: Form) -> dict[str, Any]:
    order_id, user_id, status = _int(form, "id"), _int(form, "userid"), form.get("status") or None
    found = [
        o
        for o in sorted(world.orders.values(), key=lambda o: -o.id)
        if order_id in (None, o.id) and user_id in (None, o.userid) and status in (None, o.status)
    ]
    page, start = _page(found, form)
    return {
        "result": "success",
        "totalresults": len(found),
        "startnumber": start,
        "numreturned": len(page),
        "orders": {"order": [_order_record(world, o) for o in page]},
    }


def _order_record(world: World, o: Order) -> dict[str, Any]:
    items = [
        {
            "type": "product",
            "relid": s.id,
            "producttype": "Other",
            "product": s.name,
            "domain": "",
            "billingcycle": s.billingcycle.capitalize(),
            "amount": f"{s.amount:.2f}",
            "status": s.status,
        }
        for s in (world.services[i] for i in o.service_ids)
    ]
    client = world.clients[o.userid]
    return {
        "id": o.id,
        "ordernum": o.ordernum,
        "userid": o.userid,
        "contactid": 0,
        "date": o.date,
        "amount": f"{o.amount:.2f}",
        "paymentmethod": o.paymentmethod,
        "invoiceid": o.invoiceid,
        "status": o.status,
        "notes": o.notes,
        "name": f"{client.firstname} {client.lastname}".strip(),
        "paymentstatus": _payment_status(world, o),
        "lineitems": {"lineitem": items},
    }


def _payment_status(world: World, o: Order) -> str:
    invoice = world.invoices.get(o.invoiceid)
    return invoice.status if invoice else ""


def _page(rows: list[Any], form: Form) -> tuple[list[Any], int]:
    start = _int(form, "limitstart") or 0
    size = _int(form, "limitnum") or 25
    return rows[start : start + size], start


# --- services ------------------------------------------------------------------------------
def get_clients_products(world: World, form: Form) -> dict[str, Any]:
    client_id, service_id, pid = _int(form, "clientid"), _int(form, "serviceid"), _int(form, "pid")
    found = [
        s
        for s in world.services.values()
        if client_id in (None, s.clientid) and service_id in (None, s.id) and pid in (None, s.pid)
    ]
    page, start = _page(found, form)
    return {
        "result": "success",
        "clientid": client_id,
        "serviceid": service_id,
        "pid": pid,
        "totalresults": len(found),
        "startnumber": start,
        "numreturned": len(page),
        "products": {"product": [_product_record(world, s) for s in page]},
    }


def _product_record(world: World, s: Service) -> dict[str, Any]:
    names = world.products[s.pid].custom_fields
    fields = [
        {"id": fid, "name": name, "translated_name": name, "value": s.customfields.get(fid, "")}
        for fid, name in names.items()
    ]
    return {
        "id": s.id,
        "qty": s.qty,
        "clientid": s.clientid,
        "orderid": s.orderid,
        "pid": s.pid,
        "regdate": s.regdate,
        "name": s.name,
        "translated_name": s.name,
        "billingcycle": s.billingcycle,
        "recurringamount": f"{s.amount:.2f}",
        "status": s.status,
        "notes": s.notes,
        "customfields": {"customfield": fields},
        "configoptions": {"configoption": []},
    }


def update_client_product(world: World, form: Form) -> dict[str, Any]:
    service = world.services.get(_int(form, "serviceid") or -1)
    if service is None:
        raise ApiError("Service ID Not Found")
    if form.get("customfields"):
        _apply_custom_fields(world, service, _custom_fields(form["customfields"]))
    service.status = form.get("status") or service.status
    service.notes = form.get("notes", service.notes)
    world.emit("ServiceEdit", client_id=service.clientid, service_id=service.id, status=service.status)
    return {"result": "success", "serviceid": service.id}


def _custom_fields(encoded: str) -> dict[int | str, str]:
    try:
        decoded = decode_base64_serialized(encoded)
    except PhpSerialError as exc:
        raise ApiError(f"Invalid customfields: {exc}") from None
    return {k: "" if v is None else str(v) for k, v in decoded.items()}


def _apply_custom_fields(world: World, service: Service, values: dict[int | str, str]) -> None:
    """Keys are field ids (documented); a field *name* is accepted too. Unknown keys are ignored,
    as WHMCS ignores fields the product does not define."""
    by_name = {name: fid for fid, name in world.products[service.pid].custom_fields.items()}
    for key, value in values.items():
        fid = key if isinstance(key, int) else by_name.get(key)
        if fid in world.products[service.pid].custom_fields:
            service.customfields[fid] = value


ACTIONS: dict[str, Callable[[World, Form], dict[str, Any]]] = {
    "GetClientsDetails": get_clients_details,
    "GetPayMethods": get_pay_methods,
    "AddOrder": add_order,
    "AcceptOrder": accept_order,
    "CancelOrder": cancel_order,
    "GetOrders": get_orders,
    "GetClientsProducts": get_clients_products,
    "UpdateClientProduct": update_client_product,
}

__all__ = ["ACTIONS", "ApiError", "create_invoice", "form_list", "now_text"]
