"""The cache-invalidator's handlers: one domain event → the exact portal keys it makes stale → UNLINK + notice.

Owns which event busts which key (the table in docs/cache-keys.md mirrors this module) and the
resolution of WHMCS client / Salesforce account ids to portal users through ``id_mappings``. Must
not spell key strings (``workers.cache_keys``) nor talk to Redis or Postgres directly (the ports).

Delivery semantics: at least once. Deleting a key twice is harmless and a repeated notice costs a
portal instance one extra read, so no inbox ledger is kept: a redelivered event simply runs again.
Keys are deleted before the notice is published, so an instance reacting to the notice re-reads
Redis and misses. Redis or Postgres down → ``DependencyUnavailable`` propagates and the runtime
retries, then dead-letters; an invalidation is never dropped silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import structlog

from adapters.cache import CachePort, InvalidationNotice, RedisCache
from adapters.mappings import IdMapping, IdMappingsPort, PgIdMappings
from events.base import DomainEvent
from events.billing import ClientChanged, InvoiceChanged, PaymentMethodChanged, ServiceChanged, WhmcsOrderChanged
from events.errors import InvalidPayload
from events.fulfillment import OrderFulfilled, OrderFulfillmentFailed, OrderParked
from events.salesforce import AccountEligibilityChanged, CatalogChanged, OrderChanged
from workers import cache_keys as ck
from workers.ingress.cdc_translate import customer_facing_item_fields, customer_facing_order_fields
from workers.runtime.message import Message
from workers.runtime.route import Handler

if TYPE_CHECKING:
    from workers.bootstrap import Deps

log = structlog.get_logger(__name__)

#: a change of one of these may add a product to, or drop it from, a catalog list that does not
#: embed it yet (so its dependency SET cannot know): every list is busted
CATALOG_MEMBERSHIP_FIELDS = frozenset(
    {"IsActive", "Portal_Catalog__c", "Portal_Accessible__c", "Family", "Product2Categories1__c",
     "Item_Class__c", "Pricebook2Id", "Product2Id"}
)  # fmt: skip


@dataclass(frozen=True)
class CacheDeps:
    cache: CachePort
    mappings: IdMappingsPort


# --- WHMCS billing (keyed by client) ----------------------------------------------------------
async def invalidate_invoice(event: InvoiceChanged, msg: Message, *, deps: CacheDeps) -> None:
    users = await _users_of_client(deps, event.whmcs_client_id)
    keys = [k for u in users for k in (ck.user_invoices(u), ck.user_invoice(u, event.invoice_id))]
    await _bust(deps, msg, keys, f"invoice {event.invoice_id} changed ({event.hook or 'webhook'})")


async def invalidate_service(event: ServiceChanged, msg: Message, *, deps: CacheDeps) -> None:
    users = await _users_of_client(deps, event.whmcs_client_id)
    keys = [k for u in users for k in (ck.user_subscriptions(u), ck.user_subscription(u, event.service_id))]
    await _bust(deps, msg, keys, f"service {event.service_id} changed ({event.hook or 'webhook'})")


async def invalidate_paymethods(event: PaymentMethodChanged, msg: Message, *, deps: CacheDeps) -> None:
    users = await _users_of_client(deps, event.whmcs_client_id)
    await _bust(deps, msg, [ck.user_paymethods(u) for u in users], f"pay methods changed ({event.hook or 'webhook'})")


async def invalidate_client(event: ClientChanged, msg: Message, *, deps: CacheDeps) -> None:
    """Profile, plus what the portal shows next to it: pay methods (the client's default gateway is a
    client field, and production WHMCS has no pay-method hook) and the subscription list (the portal
    clears it on profile/address updates, domain-facts §5.2)."""
    users = await _users_of_client(deps, event.whmcs_client_id)
    keys = [k for u in users for k in (ck.user_profile(u), ck.user_paymethods(u), ck.user_subscriptions(u))]
    await _bust(deps, msg, keys, f"client changed ({event.hook or 'webhook'})")


async def invalidate_whmcs_order(event: WhmcsOrderChanged, msg: Message, *, deps: CacheDeps) -> None:
    """A WHMCS order accepted/paid/cancelled creates or changes services and invoices."""
    users = await _users_of_client(deps, event.whmcs_client_id)
    keys = [k for u in users for k in (ck.user_subscriptions(u), ck.user_invoices(u))]
    await _bust(deps, msg, keys, f"WHMCS order {event.whmcs_order_id} changed ({event.hook or 'webhook'})")


# --- Salesforce (keyed by record) --------------------------------------------------------------
async def invalidate_order(event: OrderChanged, msg: Message, *, deps: CacheDeps) -> None:
    if not _customer_facing(event):
        # the CDC ingress filters already; this re-check keeps fulfillment's own write-backs
        # (Activation_Status__c, WHMCS_Order_ID__c...) from thrashing the portal's order caches
        log.info("cache_order_change_internal_only", sf_order_id=event.sf_order_id, fields=event.changed_fields)
        return
    reason = f"{event.entity} {event.record_id or event.sf_order_id} {event.change_type}"
    await _bust_order(deps, msg, event.sf_order_id, event.sf_account_id, reason)


async def invalidate_after_outcome(
    event: OrderFulfilled | OrderFulfillmentFailed | OrderParked, msg: Message, *, deps: CacheDeps
) -> None:
    users = await _users_of_outcome(deps, event.whmcs_client_id, event.sf_account_id)
    account = event.sf_account_id or next((u.sf_account_id for u in users), None)
    extra: list[str] = []
    if isinstance(event, OrderFulfilled):  # WHMCS now holds the order's services and its invoice
        extra = [k for u in users for k in (ck.user_subscriptions(u.user_id), ck.user_invoices(u.user_id))]
    await _bust_order(deps, msg, event.sf_order_id, account, f"order {type(event).__name__}", extra)


async def invalidate_catalog(event: CatalogChanged, msg: Message, *, deps: CacheDeps) -> None:
    changed = set(event.changed_fields)
    membership = event.change_type != "UPDATE" or not changed or bool(changed & CATALOG_MEMBERSHIP_FIELDS)
    lists = ck.CATALOG_LISTS if membership or event.product2_id is None else ()
    indexes = (ck.product_deps(event.product2_id),) if event.product2_id else ()
    await _bust(deps, msg, lists, f"{event.entity} {event.record_id} {event.change_type}", indexes=indexes)


async def invalidate_eligibility(event: AccountEligibilityChanged, msg: Message, *, deps: CacheDeps) -> None:
    await _bust(deps, msg, [ck.eligibility(event.sf_account_id)], f"eligibility {event.eligibility or 'changed'}")


# --- shared steps -------------------------------------------------------------------------------
async def _users_of_client(deps: CacheDeps, whmcs_client_id: int) -> list[str]:
    rows = await deps.mappings.for_whmcs_client(whmcs_client_id)
    if not rows:  # a WHMCS client without a portal login has no portal cache: nothing to do
        log.info("cache_client_unmapped", whmcs_client_id=whmcs_client_id)
    return [r.user_id for r in rows]


async def _users_of_outcome(deps: CacheDeps, whmcs_client_id: int | None, sf_account_id: str | None) -> list[IdMapping]:
    if whmcs_client_id is not None:
        return list(await deps.mappings.for_whmcs_client(whmcs_client_id))
    return list(await deps.mappings.for_sf_account(sf_account_id)) if sf_account_id else []


async def _bust_order(
    deps: CacheDeps, msg: Message, order_id: str, account_id: str | None, reason: str, extra: Sequence[str] = ()
) -> None:
    # the order's dependency SET covers what an account-less event (OrderItem lines) cannot name
    direct = ck.order_keys(account_id, order_id) if account_id else ()
    await _bust(deps, msg, [*direct, *extra], reason, indexes=(ck.order_deps(order_id),))


async def _bust(
    deps: CacheDeps, msg: Message, keys: Iterable[str], reason: str, *, indexes: Sequence[str] = ()
) -> None:
    """Delete ``keys`` and every member of the dependency ``indexes``; then tell portal instances."""
    members: Mapping[str, frozenset[str]] = await deps.cache.dependents(*indexes) if indexes else {}
    stale = tuple(dict.fromkeys([*keys, *sorted(m for found in members.values() for m in found)]))
    if not stale:
        log.info("cache_nothing_to_invalidate", event_type=msg.event_type, reason=reason)
        return
    deleted = await deps.cache.invalidate(stale, untrack=members)
    await deps.cache.publish(InvalidationNotice(msg.event_id, msg.event_type, stale, reason))
    log.info("cache_invalidated", event_type=msg.event_type, keys=len(stale), deleted=deleted, reason=reason)


def _customer_facing(event: OrderChanged) -> bool:
    """Fields unknown (create, delete, gap, resync) → assume customer-facing; else at least one must be."""
    if not event.changed_fields or event.change_type != "UPDATE":
        return True
    changed = frozenset(event.changed_fields)
    if event.entity == "OrderItem":
        return bool(customer_facing_item_fields(changed))
    return bool(customer_facing_order_fields(changed))


def _guarded(handler: Handler) -> Handler:
    """An id that cannot be a key segment is a bad payload: dead-letter it, retrying cannot help."""

    async def run(event: DomainEvent, msg: Message) -> None:
        try:
            await handler(event, msg)
        except ck.InvalidKeyPart as exc:
            raise InvalidPayload(f"{msg.event_type}: {exc}") from exc

    return run


# --- wiring -----------------------------------------------------------------------------------
def bind_cache_invalidator(*, cache: CachePort, mappings: IdMappingsPort) -> dict[type[DomainEvent], Handler]:
    """The cache-invalidator's dispatch table, for ``Route(handlers=...)``.

    Activation requests (``OrderActivationRequested``, ``SimActivationRequested``) are absent on
    purpose: they change only fulfillment's own fields, and the ``OrderChanged`` the same CDC event
    yields (when a customer-facing field moved) does the busting; the runtime skips them."""
    deps = CacheDeps(cache, mappings)
    table: dict[type[DomainEvent], Handler] = {
        InvoiceChanged: partial(invalidate_invoice, deps=deps),
        ServiceChanged: partial(invalidate_service, deps=deps),
        PaymentMethodChanged: partial(invalidate_paymethods, deps=deps),
        ClientChanged: partial(invalidate_client, deps=deps),
        WhmcsOrderChanged: partial(invalidate_whmcs_order, deps=deps),
        OrderChanged: partial(invalidate_order, deps=deps),
        OrderFulfilled: partial(invalidate_after_outcome, deps=deps),
        OrderFulfillmentFailed: partial(invalidate_after_outcome, deps=deps),
        OrderParked: partial(invalidate_after_outcome, deps=deps),
        CatalogChanged: partial(invalidate_catalog, deps=deps),
        AccountEligibilityChanged: partial(invalidate_eligibility, deps=deps),
    }
    return {event_type: _guarded(handler) for event_type, handler in table.items()}


def bind_from_deps(deps: Deps) -> dict[type[DomainEvent], Handler]:
    """``RouteSpec(bind="workers.handlers.cache:bind_from_deps")``: the real adapters over the root's
    Redis client (notices on ``RedisSettings.invalidation_channel``) and PostgreSQL pool."""
    cache = RedisCache(deps.redis, channel=deps.settings.redis.invalidation_channel)
    return bind_cache_invalidator(cache=cache, mappings=PgIdMappings(deps.pool))
