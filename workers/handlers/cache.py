"""The cache-invalidator's handler: domain events → the exact portal keys they make stale → UNLINK + notice.

Owns which event busts which key (the table in docs/cache-keys.md mirrors this module) and the
resolution of WHMCS client / Salesforce account ids to portal users through ``id_mappings``. Must
not spell key strings (``workers.cache_keys``) nor talk to Redis or Postgres directly (the ports).

Shape: one ``BatchHandler`` for every event type (``workers.runtime.batch``), so a batch runs on
across types. Per batch: one ``id_mappings`` query per id kind (``Directory``), one ``SMEMBERS``
pipeline when some event names a dependency SET, and one pipeline of every event's ``UNLINK``s and
its notice (``CachePort.invalidate``). What an event makes stale is decided per event by a pure
planner (``PLANNERS``: event → ``Bust``), so the rules read one event at a time; a call with one
record (in-place retries, tests) is a batch of one.

Delivery semantics: at least once. Deleting a key twice is harmless and a repeated notice costs a
portal instance one extra read, so no inbox ledger is kept: a redelivered event simply runs again.
Keys are deleted before the notice is published (one pipeline, which Redis runs in order), so an
instance reacting to the notice re-reads Redis and misses. The runtime commits a record only after
its outcome here is ``None``. Redis or Postgres down → ``DependencyUnavailable`` for every record of
the batch, and the runtime retries each (as a batch of one), then dead-letters; an invalidation is
never dropped silently. A record-specific refusal (an id that cannot be a key segment, a dependency
SET of the wrong type) fails that record alone, never its neighbours.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog

from adapters.cache import CachePort, Invalidation, InvalidationNotice, RedisCache
from adapters.mappings import IdMapping, IdMappingsPort, PgIdMappings
from events.base import DomainEvent
from events.billing import ClientChanged, InvoiceChanged, PaymentMethodChanged, ServiceChanged, WhmcsOrderChanged
from events.errors import FleetError, InvalidPayload
from events.fulfillment import OrderFulfilled, OrderFulfillmentFailed, OrderParked
from events.salesforce import AccountEligibilityChanged, CatalogChanged, OrderChanged
from workers import cache_keys as ck
from workers.ingress.cdc_translate import customer_facing_item_fields, customer_facing_order_fields
from workers.runtime.batch import BatchHandler, Outcome
from workers.runtime.message import Message
from workers.runtime.route import Handler

if TYPE_CHECKING:
    from workers.bootstrap import Deps

log = structlog.get_logger(__name__)

#: records per batch call: at most this many ids in one ``= ANY`` query and a few hundred commands
#: in one pipeline (~1 ms each side); larger batches add latency to the batch's first record
MAX_BATCH = 200

#: a change of one of these may add a product to, or drop it from, a catalog list that does not
#: embed it yet (so its dependency SET cannot know): every list is busted
CATALOG_MEMBERSHIP_FIELDS = frozenset(
    {"IsActive", "Portal_Catalog__c", "Portal_Accessible__c", "Family", "Product2Categories1__c",
     "Item_Class__c", "Pricebook2Id", "Product2Id"}
)  # fmt: skip

BillingEvent = InvoiceChanged | ServiceChanged | PaymentMethodChanged | ClientChanged | WhmcsOrderChanged
OrderOutcome = OrderFulfilled | OrderFulfillmentFailed | OrderParked
_BILLING = (InvoiceChanged, ServiceChanged, PaymentMethodChanged, ClientChanged, WhmcsOrderChanged)
_OUTCOMES = (OrderFulfilled, OrderFulfillmentFailed, OrderParked)


@dataclass(frozen=True)
class CacheDeps:
    cache: CachePort
    mappings: IdMappingsPort


@dataclass(frozen=True)
class Bust:
    """What one event makes stale: ``keys``, plus every member of the dependency SETs ``indexes``."""

    keys: Sequence[str]
    reason: str
    indexes: Sequence[str] = ()


def lookup_of(event: DomainEvent) -> int | str | None:
    """The ``id_mappings`` lookup an event's keys need: a WHMCS client id, a Salesforce account id, or none.

    Billing events name their client; an outcome names its client when fulfillment got that far,
    else only the account (a failed or parked order may have neither)."""
    if isinstance(event, _BILLING):
        return event.whmcs_client_id
    if isinstance(event, _OUTCOMES):
        return event.whmcs_client_id if event.whmcs_client_id is not None else event.sf_account_id or None
    return None


class Directory:
    """The ``id_mappings`` rows one batch needs, read in one query per id kind. Per batch, never kept:
    a link the portal made a moment ago must count (a stale "no user" would leave keys standing)."""

    def __init__(
        self, by_client: Mapping[int, Sequence[IdMapping]], by_account: Mapping[str, Sequence[IdMapping]]
    ) -> None:
        self._by_client, self._by_account = by_client, by_account

    @classmethod
    async def load(cls, mappings: IdMappingsPort, events: Sequence[DomainEvent]) -> Directory:
        wanted = [lookup_of(e) for e in events]
        clients = {w for w in wanted if isinstance(w, int)}
        accounts = {w for w in wanted if isinstance(w, str)}
        by_client = await mappings.for_whmcs_clients(clients) if clients else {}
        by_account = await mappings.for_sf_accounts(accounts) if accounts else {}
        return cls(by_client, by_account)

    def rows_for(self, event: DomainEvent) -> Sequence[IdMapping]:
        lookup = lookup_of(event)
        if isinstance(lookup, int):
            return self._by_client.get(lookup, ())
        return self._by_account.get(lookup, ()) if lookup is not None else ()

    def users_of(self, event: DomainEvent) -> list[str]:
        return [row.user_id for row in self.rows_for(event)]


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
    CatalogChanged: plan_catalog,
    AccountEligibilityChanged: plan_eligibility,
}


# --- the batch ----------------------------------------------------------------------------------
async def invalidate_batch(msgs: Sequence[Message], *, deps: CacheDeps) -> list[Outcome]:
    """Every record's keys gone and its notice published, in three round trips at most; one outcome
    per record (``None`` = done). A failure of a shared step fails every record still open."""
    outcomes: list[Outcome] = [None] * len(msgs)
    try:
        who = await Directory.load(deps.mappings, [m.event for m in msgs])
        busts = _plan(msgs, who, outcomes)
        members = await _members(deps.cache, busts, outcomes)
        items = _invalidations(msgs, busts, members, outcomes)
        results = await deps.cache.invalidate([item for _, item in items]) if items else []
    except FleetError as exc:  # Postgres or Redis unavailable: nothing of the batch is done
        return [exc if outcome is None else outcome for outcome in outcomes]
    _settle(msgs, items, results, outcomes)
    return outcomes


def _settle(
    msgs: Sequence[Message],
    items: Sequence[tuple[int, Invalidation]],
    results: Sequence[int | FleetError],
    outcomes: list[Outcome],
) -> None:
    """Each pipelined item's result becomes its record's outcome (a refused command fails it alone)."""
    busted = deleted = 0
    for (i, item), result in zip(items, results, strict=True):
        if isinstance(result, FleetError):
            outcomes[i] = result
            continue
        busted, deleted = busted + 1, deleted + result
        notice = item.notice
        log.debug("cache_event_invalidated", event_id=notice.event_id, offset=msgs[i].offset, keys=len(notice.keys),
                  deleted=result, reason=notice.reason)  # fmt: skip
    # One line per batch (under the batch's log context: topic, partition, first offset): at
    # thousands of events a second a line per event cost a fifth of the worker's CPU. Per-event
    # lines are DEBUG; a failed record is logged by the runtime under its own context.
    log.info("cache_invalidated", events=len(msgs), busted=busted, deleted=deleted,
             failed=sum(o is not None for o in outcomes))  # fmt: skip


def _plan(msgs: Sequence[Message], who: Directory, outcomes: list[Outcome]) -> dict[int, Bust]:
    busts: dict[int, Bust] = {}
    for i, msg in enumerate(msgs):
        try:
            busts[i] = PLANNERS[type(msg.event)](msg.event, who)
        except ck.InvalidKeyPart as exc:  # a bad payload: dead-letter it, retrying cannot help
            outcomes[i] = InvalidPayload(f"{msg.event_type}: {exc}")
    return busts


async def _members(cache: CachePort, busts: Mapping[int, Bust], outcomes: list[Outcome]) -> dict[str, frozenset[str]]:
    """The members of every dependency SET the batch names, in one round trip. A refused SET (a
    permanent error: wrong type) is then read per event, so it fails only the events naming it."""
    indexes = list(dict.fromkeys(ix for bust in busts.values() for ix in bust.indexes))
    if not indexes:
        return {}
    try:
        return await cache.dependents(*indexes)
    except FleetError as exc:
        if exc.retriable:
            raise
    members: dict[str, frozenset[str]] = {}  # rare: some SET was refused; find whose
    for i, bust in busts.items():
        try:
            members.update(await cache.dependents(*bust.indexes) if bust.indexes else {})
        except FleetError as exc:
            if exc.retriable:
                raise
            outcomes[i] = exc
    return members


def _invalidations(
    msgs: Sequence[Message],
    busts: Mapping[int, Bust],
    members: Mapping[str, frozenset[str]],
    outcomes: list[Outcome],
) -> list[tuple[int, Invalidation]]:
    """Each still-open event's stale keys (its own, then its SETs' members) with its notice; an event
    with none is done (no notice: nothing was stale)."""
    items: list[tuple[int, Invalidation]] = []
    for i, bust in busts.items():
        if outcomes[i] is not None:
            continue
        msg = msgs[i]
        found = {ix: members.get(ix, frozenset()) for ix in bust.indexes}
        stale = tuple(dict.fromkeys([*bust.keys, *sorted(m for s in found.values() for m in s)]))
        if not stale:
            log.debug("cache_nothing_to_invalidate", event_id=msg.event_id, offset=msg.offset, reason=bust.reason)
            continue
        notice = InvalidationNotice(msg.event_id, msg.event_type, stale, bust.reason)
        items.append((i, Invalidation(notice, {ix: sorted(m) for ix, m in found.items() if m})))
    return items


# --- wiring -----------------------------------------------------------------------------------
def bind_cache_invalidator(
    *, cache: CachePort, mappings: IdMappingsPort, max_batch: int = MAX_BATCH
) -> dict[type[DomainEvent], Handler]:
    """The cache-invalidator's dispatch table, for ``Route(handlers=...)``: every type of ``PLANNERS``
    → one shared ``BatchHandler`` (one object, so a batch is not cut where the event type changes)."""
    handler = BatchHandler(partial(invalidate_batch, deps=CacheDeps(cache, mappings)), max_batch=max_batch)
    return dict.fromkeys(PLANNERS, handler)


def bind_from_deps(deps: Deps) -> dict[type[DomainEvent], Handler]:
    """``RouteSpec(bind="workers.handlers.cache:bind_from_deps")``: the real adapters over the root's
    Redis client (notices on ``RedisSettings.invalidation_channel``) and PostgreSQL pool."""
    cache = RedisCache(deps.redis, channel=deps.settings.redis.invalidation_channel)
    return bind_cache_invalidator(cache=cache, mappings=PgIdMappings(deps.pool))
