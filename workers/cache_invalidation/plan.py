"""Which event busts which key: one pure planner per event type (the table docs/cache-keys.md mirrors).

Owns what one event makes stale (``Bust``: its keys, and the dependency SETs whose members go too)
and ``PLANNERS`` (event type → planner), the list of event types the route handles. Must not do I/O
(the users an event is about arrive in a ``Directory``) nor spell key strings (``workers.cache_keys``,
which raises ``InvalidKeyPart`` on an id that cannot be a key segment).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from events.base import DomainEvent
from events.billing import ClientChanged, InvoiceChanged, PaymentMethodChanged, ServiceChanged, WhmcsOrderChanged
from events.fulfillment import OrderActivationStarted, OrderFulfilled, OrderFulfillmentFailed, OrderParked
from events.salesforce import AccountEligibilityChanged, CatalogChanged, OrderChanged
from workers import cache_keys as ck
from workers.cache_invalidation.directory import BillingEvent, Directory, OrderOutcome
from workers.ingress.cdc_translate import customer_facing_item_fields, customer_facing_order_fields

#: a change of one of these may add a product to, or drop it from, a catalog list that does not
#: embed it yet (so its dependency SET cannot know): every list is busted
CATALOG_MEMBERSHIP_FIELDS = frozenset(
    {"IsActive", "Portal_Catalog__c", "Portal_Accessible__c", "Family", "Product2Categories1__c",
     "Item_Class__c", "Pricebook2Id", "Product2Id"}
)  # fmt: skip


@dataclass(frozen=True)
class Bust:
    """What one event makes stale: ``keys``, plus every member of the dependency SETs ``indexes``."""

    keys: Sequence[str]
    reason: str
    indexes: Sequence[str] = ()


# --- planners: one event → what it makes stale (pure; ``ck`` raises InvalidKeyPart on a bad id) --------
# WHMCS billing (keyed by client). A client without a portal user has no portal cache: no keys.
def plan_invoice(event: InvoiceChanged, who: Directory) -> Bust:
    keys = [k for u in who.users_of(event) for k in (ck.user_invoices(u), ck.user_invoice(u, event.invoice_id))]
    return Bust(keys, f"invoice {event.invoice_id} changed ({event.hook or 'webhook'}){_unmapped(keys, event)}")


def plan_service(event: ServiceChanged, who: Directory) -> Bust:
    users = who.users_of(event)
    keys = [k for u in users for k in (ck.user_subscriptions(u), ck.user_subscription(u, event.service_id))]
    return Bust(keys, f"service {event.service_id} changed ({event.hook or 'webhook'}){_unmapped(keys, event)}")


def plan_paymethods(event: PaymentMethodChanged, who: Directory) -> Bust:
    keys = [ck.user_paymethods(u) for u in who.users_of(event)]
    return Bust(keys, f"pay methods changed ({event.hook or 'webhook'}){_unmapped(keys, event)}")


def plan_client(event: ClientChanged, who: Directory) -> Bust:
    """Profile, plus what the portal shows next to it: pay methods (the client's default gateway is a
    client field, and production WHMCS has no pay-method hook) and the subscription list (the portal
    clears it on profile/address updates, domain-facts §5.2)."""
    users = who.users_of(event)
    keys = [k for u in users for k in (ck.user_profile(u), ck.user_paymethods(u), ck.user_subscriptions(u))]
    return Bust(keys, f"client changed ({event.hook or 'webhook'}){_unmapped(keys, event)}")


def plan_whmcs_order(event: WhmcsOrderChanged, who: Directory) -> Bust:
    """A WHMCS order accepted/paid/cancelled creates or changes services and invoices."""
    keys = [k for u in who.users_of(event) for k in (ck.user_subscriptions(u), ck.user_invoices(u))]
    order = event.whmcs_order_id
    return Bust(keys, f"WHMCS order {order} changed ({event.hook or 'webhook'}){_unmapped(keys, event)}")


# Salesforce (keyed by record)
def plan_order(event: OrderChanged, who: Directory) -> Bust:
    if not _customer_facing(event):
        # the CDC ingress filters already; this re-check keeps fulfillment's own write-backs
        # (Activation_Status__c, WHMCS_Order_ID__c...) from thrashing the portal's order caches
        return Bust((), f"order {event.sf_order_id}: internal fields only ({', '.join(event.changed_fields)})")
    reason = f"{event.entity} {event.record_id or event.sf_order_id} {event.change_type}"
    return _order_bust(event.sf_order_id, event.sf_account_id, reason)


def plan_outcome(event: OrderOutcome, who: Directory) -> Bust:
    rows = who.rows_for(event)
    account = event.sf_account_id or next((r.sf_account_id for r in rows), None)
    extra: list[str] = []
    if isinstance(event, OrderFulfilled):  # WHMCS now holds the order's services and its invoice
        extra = [k for r in rows for k in (ck.user_subscriptions(r.user_id), ck.user_invoices(r.user_id))]
    return _order_bust(event.sf_order_id, account, f"order {type(event).__name__}", extra)


def plan_started(event: OrderActivationStarted, who: Directory) -> Bust:
    """Nothing cached changes when the saga starts work (the portal caches Salesforce's order, which
    the saga has not written yet): no key, no invalidation notice. The event is here for its
    order-status notice (Activating, ``status.order_status``), which goes out all the same."""
    return Bust((), f"order {event.sf_order_id} activation started: nothing cached changes")


def plan_catalog(event: CatalogChanged, who: Directory) -> Bust:
    changed = set(event.changed_fields)
    membership = event.change_type != "UPDATE" or not changed or bool(changed & CATALOG_MEMBERSHIP_FIELDS)
    lists = ck.CATALOG_LISTS if membership or event.product2_id is None else ()
    indexes = (ck.product_deps(event.product2_id),) if event.product2_id else ()
    return Bust(lists, f"{event.entity} {event.record_id} {event.change_type}", indexes)


def plan_eligibility(event: AccountEligibilityChanged, who: Directory) -> Bust:
    return Bust([ck.eligibility(event.sf_account_id)], f"eligibility {event.eligibility or 'changed'}")


def _order_bust(order_id: str, account_id: str | None, reason: str, extra: Sequence[str] = ()) -> Bust:
    # the order's dependency SET covers what an account-less event (OrderItem lines) cannot name
    direct = ck.order_keys(account_id, order_id) if account_id else ()
    return Bust([*direct, *extra], reason, (ck.order_deps(order_id),))


def _unmapped(keys: Sequence[str], event: BillingEvent) -> str:
    return "" if keys else f"; WHMCS client {event.whmcs_client_id} has no portal user"


def _customer_facing(event: OrderChanged) -> bool:
    """Fields unknown (create, delete, gap, resync) → assume customer-facing; else at least one must be."""
    if not event.changed_fields or event.change_type != "UPDATE":
        return True
    changed = frozenset(event.changed_fields)
    if event.entity == "OrderItem":
        return bool(customer_facing_item_fields(changed))
    return bool(customer_facing_order_fields(changed))


Planner = Callable[[Any, Directory], Bust]

#: event type → planner; the dispatch table binds every one of them to the same batch handler.
#: Activation requests (``OrderActivationRequested``, ``SimActivationRequested``) are absent on
#: purpose: they change only fulfillment's own fields, and the ``OrderChanged`` the same CDC event
#: yields (when a customer-facing field moved) does the busting; the runtime skips them.
PLANNERS: dict[type[DomainEvent], Planner] = {
    InvoiceChanged: plan_invoice,
    ServiceChanged: plan_service,
    PaymentMethodChanged: plan_paymethods,
    ClientChanged: plan_client,
    WhmcsOrderChanged: plan_whmcs_order,
    OrderChanged: plan_order,
    OrderFulfilled: plan_outcome,
    OrderFulfillmentFailed: plan_outcome,
    OrderParked: plan_outcome,
    OrderActivationStarted: plan_started,
    CatalogChanged: plan_catalog,
    AccountEligibilityChanged: plan_eligibility,
}
