"""The cache-invalidator with fakes: each event deletes exactly its keys (and no others), then notifies.

Contract: keys come only from ``workers.cache_keys``; users are resolved through ``id_mappings`` (a
client without a mapping busts nothing and is not an error); order caches are busted only for
customer-facing changes and on fulfillment outcomes; catalog changes bust what the product's
dependency SET lists (plus every list when list membership may change); Redis or Postgres down →
``DependencyUnavailable`` (retryable) and nothing is published. In a batch: one ``id_mappings`` lookup
per id kind and one Redis pipeline for every event, each event still with exactly its keys and its own
notice; a record-specific refusal fails that record alone, an outage fails the whole batch.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from adapters.cache import FakeCache
from adapters.mappings import FakeIdMappings
from events.base import DomainEvent
from events.billing import ClientChanged, InvoiceChanged, PaymentMethodChanged, ServiceChanged, WhmcsOrderChanged
from events.envelope import H_ID
from events.errors import DependencyUnavailable, InvalidPayload, RejectedByUpstream
from events.fulfillment import OrderActivationStarted, OrderFulfilled, OrderFulfillmentFailed, OrderParked
from events.salesforce import AccountEligibilityChanged, CatalogChanged, OrderActivationRequested, OrderChanged
from sandbox import demo_data
from workers import cache_keys as ck
from workers.cache_invalidation.route import bind_cache_invalidator
from workers.runtime.batch import BatchHandler, Outcome
from workers.runtime.message import Message

TANAKA, SUZUKI = demo_data.CUSTOMERS[0], demo_data.CUSTOMERS[1]
T_USER, T_CLIENT, T_ACCOUNT = TANAKA["user_id"], TANAKA["whmcs_client_id"], TANAKA["sf_account_id"]
S_USER, S_CLIENT, S_ACCOUNT = SUZUKI["user_id"], SUZUKI["whmcs_client_id"], SUZUKI["sf_account_id"]
ORDER = demo_data.sf_id("801", 77)
PRODUCT = demo_data.sf_id("01t", 1)


class World:
    def __init__(self) -> None:
        self.cache = FakeCache()
        self.mappings = FakeIdMappings.of(demo_data.id_mappings())
        self.handlers = bind_cache_invalidator(cache=self.cache, mappings=self.mappings)
        self.seed_everything()

    def seed_everything(self) -> None:
        """Every key family for two users, their accounts, the catalog and its dependency SETs."""
        for customer in (TANAKA, SUZUKI):
            user, account = customer["user_id"], customer["sf_account_id"]
            for key in (
                ck.user_invoices(user),
                ck.user_invoice(user, 5001),
                ck.user_subscriptions(user),
                ck.user_subscription(user, 9001),
                ck.user_paymethods(user),
                ck.user_profile(user),
                ck.account_orders(account),
                ck.account_order(account, ORDER),
                ck.eligibility(account),
            ):
                self.cache.values[key] = "{}"
        for key in (*ck.CATALOG_LISTS, ck.PAYMENT_GATEWAYS):
            self.cache.values[key] = "[]"
        self.cache.track(ck.product_deps(PRODUCT), "catalog:internet:plans")
        self.cache.track(ck.order_deps(ORDER), ck.account_orders(T_ACCOUNT), ck.account_order(T_ACCOUNT, ORDER))

    async def deliver(self, event: DomainEvent) -> Message:
        msg = message(event)
        await self.handlers[type(event)](event, msg)
        return msg

    def deleted(self) -> set[str]:
        return set(self.cache.invalidated_keys)

    async def deliver_batch(self, events: list[DomainEvent]) -> tuple[list[Message], list[Outcome]]:
        handler = self.handlers[type(events[0])]
        assert isinstance(handler, BatchHandler)
        msgs = [message(e) for e in events]
        return msgs, await handler.handle_batch(msgs)


def message(event: DomainEvent) -> Message:
    event_id = str(uuid.uuid4())
    return Message(
        event=event,
        group="fleet.cache-invalidator",
        topic="t",
        partition=0,
        offset=0,
        timestamp=0,
        key=event.key().encode(),
        value=None,
        headers=[(H_ID, event_id.encode())],
        header_map={H_ID: event_id.encode()},
        event_type=event.TYPE,
    )


@pytest.fixture
def world() -> World:
    return World()


BILLING_CASES: list[tuple[DomainEvent, set[str]]] = [
    (
        InvoiceChanged(whmcs_client_id=T_CLIENT, invoice_id=5001, hook="InvoicePaid"),
        {ck.user_invoices(T_USER), ck.user_invoice(T_USER, 5001)},
    ),
    (
        ServiceChanged(whmcs_client_id=T_CLIENT, service_id=9001, hook="ServiceEdit"),
        {ck.user_subscriptions(T_USER), ck.user_subscription(T_USER, 9001)},
    ),
    (PaymentMethodChanged(whmcs_client_id=T_CLIENT, paymethod_id=11), {ck.user_paymethods(T_USER)}),
    (
        ClientChanged(whmcs_client_id=T_CLIENT, hook="ClientEdit"),
        {ck.user_profile(T_USER), ck.user_paymethods(T_USER), ck.user_subscriptions(T_USER)},
    ),
    (
        WhmcsOrderChanged(whmcs_client_id=T_CLIENT, whmcs_order_id=3, hook="AcceptOrder"),
        {ck.user_subscriptions(T_USER), ck.user_invoices(T_USER)},
    ),
]


@pytest.mark.parametrize(("event", "expected"), BILLING_CASES, ids=lambda v: type(v).__name__)
async def test_billing_events_delete_exactly_that_users_keys(
    world: World, event: DomainEvent, expected: set[str]
) -> None:
    msg = await world.deliver(event)

    assert world.deleted() == expected
    assert not (expected & set(world.cache.values)), "deleted keys are gone"
    assert len(world.cache.values) == 2 * 9 + 4 - len(expected), "every other key remains"
    (notice,) = world.cache.notices
    assert notice.event_id == msg.event_id and set(notice.keys) == expected and notice.event_type == event.TYPE


async def test_a_whmcs_client_without_a_portal_user_busts_nothing(world: World) -> None:
    await world.deliver(InvoiceChanged(whmcs_client_id=424242, invoice_id=1))

    assert world.cache.invalidated_keys == [] and world.cache.notices == []
    assert world.mappings.lookups == [("whmcs_client_id", (424242,))]


async def test_a_customer_facing_order_change_busts_the_accounts_orders_and_the_order(world: World) -> None:
    await world.deliver(OrderChanged(sf_order_id=ORDER, sf_account_id=T_ACCOUNT, changed_fields=["Status"]))

    assert world.deleted() == {ck.account_orders(T_ACCOUNT), ck.account_order(T_ACCOUNT, ORDER)}
    assert ck.order_deps(ORDER) not in world.cache.sets, "the dependency SET is emptied of what was deleted"


async def test_an_order_change_of_internal_fields_only_busts_nothing(world: World) -> None:
    """Fulfillment's own write-backs must not thrash the portal's order caches."""
    event = OrderChanged(
        sf_order_id=ORDER, sf_account_id=T_ACCOUNT, changed_fields=["Activation_Status__c", "WHMCS_Order_ID__c"]
    )
    await world.deliver(event)

    assert world.cache.invalidated_keys == [] and world.cache.notices == []


async def test_an_order_item_change_without_account_uses_the_orders_dependency_set(world: World) -> None:
    event = OrderChanged(
        sf_order_id=ORDER, entity="OrderItem", record_id=demo_data.sf_id("802", 1), changed_fields=["Quantity"]
    )
    await world.deliver(event)

    assert world.deleted() == {ck.account_orders(T_ACCOUNT), ck.account_order(T_ACCOUNT, ORDER)}


async def test_an_order_delete_busts_even_without_changed_fields(world: World) -> None:
    await world.deliver(OrderChanged(sf_order_id=ORDER, sf_account_id=T_ACCOUNT, change_type="DELETE"))

    assert world.deleted() == {ck.account_orders(T_ACCOUNT), ck.account_order(T_ACCOUNT, ORDER)}


async def test_order_fulfilled_busts_orders_and_the_users_subscriptions_and_invoices(world: World) -> None:
    await world.deliver(OrderFulfilled(sf_order_id=ORDER, whmcs_client_id=T_CLIENT, whmcs_order_id=9))

    assert world.deleted() == {
        ck.account_orders(T_ACCOUNT),
        ck.account_order(T_ACCOUNT, ORDER),
        ck.user_subscriptions(T_USER),
        ck.user_invoices(T_USER),
    }


@pytest.mark.parametrize("outcome", [OrderFulfillmentFailed, OrderParked])
async def test_failed_and_parked_orders_bust_only_order_caches(world: World, outcome: Any) -> None:
    await world.deliver(outcome(sf_order_id=ORDER, sf_account_id=T_ACCOUNT, error_code="X", error_message="y"))

    assert world.deleted() == {ck.account_orders(T_ACCOUNT), ck.account_order(T_ACCOUNT, ORDER)}


async def test_a_price_change_busts_the_catalog_keys_that_embed_the_product(world: World) -> None:
    event = CatalogChanged(
        entity="PricebookEntry", record_id=demo_data.sf_id("01u", 1), product2_id=PRODUCT, changed_fields=["UnitPrice"]
    )
    await world.deliver(event)

    assert world.deleted() == {"catalog:internet:plans"}
    assert ck.product_deps(PRODUCT) not in world.cache.sets
    assert {"catalog:sim:plans", "catalog:vpn:plans"} <= set(world.cache.values)


async def test_a_product_of_no_cached_list_changing_price_busts_nothing(world: World) -> None:
    event = CatalogChanged(
        entity="Product2",
        record_id=demo_data.sf_id("01t", 99),
        product2_id=demo_data.sf_id("01t", 99),
        changed_fields=["Description"],
    )
    await world.deliver(event)

    assert world.cache.invalidated_keys == [] and world.cache.notices == []


@pytest.mark.parametrize(
    "change",
    [
        {"change_type": "CREATE", "changed_fields": []},
        {"change_type": "UPDATE", "changed_fields": ["IsActive"]},
        {"change_type": "UPDATE", "changed_fields": ["Portal_Catalog__c", "Name"]},
        {"change_type": "DELETE", "changed_fields": []},
    ],
)
async def test_a_change_that_may_move_a_product_in_or_out_of_a_list_busts_every_list(
    world: World, change: dict[str, Any]
) -> None:
    """A new or newly visible product is in no dependency SET yet, so only busting the lists shows it."""
    event = CatalogChanged(entity="Product2", record_id=PRODUCT, product2_id=PRODUCT, **change)
    await world.deliver(event)

    assert world.deleted() == set(ck.CATALOG_LISTS)


async def test_eligibility_busts_the_accounts_eligibility_only(world: World) -> None:
    await world.deliver(AccountEligibilityChanged(sf_account_id=T_ACCOUNT, eligibility="Eligible"))

    assert world.deleted() == {ck.eligibility(T_ACCOUNT)}


def test_activation_requests_have_no_handler_so_the_runtime_skips_them(world: World) -> None:
    assert OrderActivationRequested not in world.handlers


async def test_redelivery_deletes_nothing_twice_and_notifies_again(world: World) -> None:
    """At least once: a second run finds the keys gone (0 deleted) and is still a success."""
    event = InvoiceChanged(whmcs_client_id=T_CLIENT, invoice_id=5001)
    msg = message(event)
    handler = world.handlers[InvoiceChanged]
    await handler(event, msg)
    await handler(event, msg)

    assert len(world.cache.notices) == 2
    assert world.cache.notices[0].keys == world.cache.notices[1].keys


async def test_redis_down_is_retryable_and_publishes_nothing(world: World) -> None:
    world.cache.fail_next_with = DependencyUnavailable("redis down", upstream="redis")

    with pytest.raises(DependencyUnavailable):
        await world.deliver(InvoiceChanged(whmcs_client_id=T_CLIENT, invoice_id=5001))

    assert world.cache.notices == []
    assert ck.user_invoices(T_USER) in world.cache.values, "nothing deleted: the retry does it all"


async def test_postgres_down_is_retryable(world: World) -> None:
    world.mappings.fail_next_with = DependencyUnavailable("pg down", upstream="postgres")

    with pytest.raises(DependencyUnavailable):
        await world.deliver(ServiceChanged(whmcs_client_id=T_CLIENT, service_id=1))


async def test_an_id_that_cannot_be_a_key_segment_is_a_permanent_bad_payload(world: World) -> None:
    with pytest.raises(InvalidPayload):
        await world.deliver(AccountEligibilityChanged(sf_account_id="001:*"))


# --- batches -----------------------------------------------------------------------------------
async def test_a_mixed_batch_costs_one_lookup_and_one_pipeline_and_each_event_busts_exactly_its_keys(
    world: World,
) -> None:
    product_change = CatalogChanged(
        entity="PricebookEntry", record_id=demo_data.sf_id("01u", 1), product2_id=PRODUCT, changed_fields=["UnitPrice"]
    )
    cases: list[tuple[DomainEvent, set[str]]] = [
        (InvoiceChanged(whmcs_client_id=T_CLIENT, invoice_id=5001),
         {ck.user_invoices(T_USER), ck.user_invoice(T_USER, 5001)}),
        (ServiceChanged(whmcs_client_id=S_CLIENT, service_id=9001),
         {ck.user_subscriptions(S_USER), ck.user_subscription(S_USER, 9001)}),
        (InvoiceChanged(whmcs_client_id=424242, invoice_id=1), set()),  # no portal user: no notice
        (OrderChanged(sf_order_id=ORDER, sf_account_id=T_ACCOUNT, changed_fields=["Status"]),
         {ck.account_orders(T_ACCOUNT), ck.account_order(T_ACCOUNT, ORDER)}),
        (product_change, {"catalog:internet:plans"}),
        (AccountEligibilityChanged(sf_account_id=S_ACCOUNT), {ck.eligibility(S_ACCOUNT)}),
    ]  # fmt: skip

    msgs, outcomes = await world.deliver_batch([event for event, _ in cases])

    assert outcomes == [None] * len(cases)
    assert world.mappings.lookups == [("whmcs_client_id", tuple(sorted((T_CLIENT, S_CLIENT, 424242))))]
    assert world.cache.calls == ["dependents", "invalidate"], "one SMEMBERS pipeline, one UNLINK/PUBLISH pipeline"
    notices = {n.event_id: set(n.keys) for n in world.cache.notices}
    assert notices == {msg.event_id: keys for msg, (_, keys) in zip(msgs, cases, strict=True) if keys}
    assert world.deleted() == set().union(*(keys for _, keys in cases))


async def test_an_outcome_naming_only_its_account_is_resolved_by_account_in_the_same_batch(world: World) -> None:
    events: list[DomainEvent] = [
        OrderFulfilled(sf_order_id=ORDER, sf_account_id=S_ACCOUNT[:15], whmcs_order_id=9),
        PaymentMethodChanged(whmcs_client_id=S_CLIENT, paymethod_id=1),
    ]

    _, outcomes = await world.deliver_batch(events)

    assert outcomes == [None, None]
    assert sorted(world.mappings.lookups) == [("sf_account_id", (S_ACCOUNT[:15],)), ("whmcs_client_id", (S_CLIENT,))]
    assert {ck.user_subscriptions(S_USER), ck.user_invoices(S_USER), ck.user_paymethods(S_USER)} <= world.deleted()


async def test_a_bad_id_fails_only_its_record(world: World) -> None:
    _, outcomes = await world.deliver_batch(
        [AccountEligibilityChanged(sf_account_id="001:*"), InvoiceChanged(whmcs_client_id=T_CLIENT, invoice_id=5001)]
    )

    assert isinstance(outcomes[0], InvalidPayload) and outcomes[1] is None
    assert world.deleted() == {ck.user_invoices(T_USER), ck.user_invoice(T_USER, 5001)}


async def test_a_refused_dependency_set_fails_only_the_events_naming_it(world: World) -> None:
    """A SET of the wrong type is a portal bug (dead letter), not a reason to hold the other events."""
    world.cache.wrong_type.add(ck.product_deps(PRODUCT))
    events: list[DomainEvent] = [
        CatalogChanged(entity="Product2", record_id=PRODUCT, product2_id=PRODUCT, changed_fields=["Description"]),
        OrderChanged(sf_order_id=ORDER, sf_account_id=T_ACCOUNT, changed_fields=["Status"]),
        InvoiceChanged(whmcs_client_id=T_CLIENT, invoice_id=5001),
    ]

    _, outcomes = await world.deliver_batch(events)

    assert isinstance(outcomes[0], RejectedByUpstream) and not outcomes[0].retriable
    assert outcomes[1:] == [None, None]
    assert world.deleted() == {
        ck.account_orders(T_ACCOUNT), ck.account_order(T_ACCOUNT, ORDER), ck.user_invoices(T_USER),
        ck.user_invoice(T_USER, 5001),
    }  # fmt: skip


async def test_redis_down_fails_the_whole_batch_retryably_and_deletes_nothing(world: World) -> None:
    world.cache.fail_next_with = DependencyUnavailable("redis down", upstream="redis")
    events: list[DomainEvent] = [
        InvoiceChanged(whmcs_client_id=T_CLIENT, invoice_id=5001),
        ClientChanged(whmcs_client_id=S_CLIENT),
    ]

    _, outcomes = await world.deliver_batch(events)

    assert all(isinstance(o, DependencyUnavailable) and o.retriable for o in outcomes)
    assert world.cache.notices == [] and ck.user_invoices(T_USER) in world.cache.values


async def test_postgres_down_fails_the_whole_batch_retryably(world: World) -> None:
    world.mappings.fail_next_with = DependencyUnavailable("pg down", upstream="postgres")

    _, outcomes = await world.deliver_batch(
        [InvoiceChanged(whmcs_client_id=T_CLIENT, invoice_id=5001), AccountEligibilityChanged(sf_account_id=T_ACCOUNT)]
    )

    assert all(isinstance(o, DependencyUnavailable) for o in outcomes)
    assert world.cache.invalidated_keys == [] and world.cache.notices == []


def test_every_event_type_shares_one_batch_handler(world: World) -> None:
    """One object, so the runtime's batch runs on across event types instead of ending at each change."""
    (handler,) = set(world.handlers.values())
    assert isinstance(handler, BatchHandler)


def test_the_composition_root_binding_covers_every_busting_event_type() -> None:
    """``bind`` is what the cache-invalidator's ``RouteSpec`` names; it wires the real adapters."""
    from types import SimpleNamespace

    from workers.cache_invalidation.route import bind
    from workers.config import Settings

    deps = SimpleNamespace(redis=object(), pool=object(), settings=Settings())
    table = bind(deps)  # type: ignore[arg-type]

    assert set(table) == {InvoiceChanged, ServiceChanged, PaymentMethodChanged, ClientChanged, WhmcsOrderChanged,
                          OrderChanged, OrderFulfilled, OrderFulfillmentFailed, OrderParked, OrderActivationStarted,
                          CatalogChanged, AccountEligibilityChanged}  # fmt: skip


async def test_metrics_count_the_keys_each_event_type_busted(world: World) -> None:
    """``fleet_cache_keys_busted_total{event_type}``: keys UNLINK deleted; ``fleet_cache_invalidations_total``:
    the events that busted, as the worker's /metrics page shows them."""
    await world.deliver(InvoiceChanged(whmcs_client_id=T_CLIENT, invoice_id=5001, hook="InvoicePaid"))  # 2 keys
    await world.deliver(InvoiceChanged(whmcs_client_id=T_CLIENT, invoice_id=5001, hook="InvoicePaid"))  # gone: 0
    await world.deliver(PaymentMethodChanged(whmcs_client_id=T_CLIENT, paymethod_id=11))  # 1 key

    registry = CollectorRegistry()
    registry.register(world.handlers[InvoiceChanged].collector)  # type: ignore[attr-defined]
    shown = {
        (s.name, s.labels["event_type"]): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }
    assert shown[("fleet_cache_keys_busted_total", InvoiceChanged.TYPE)] == 2
    assert shown[("fleet_cache_invalidations_total", InvoiceChanged.TYPE)] == 2
    assert shown[("fleet_cache_keys_busted_total", PaymentMethodChanged.TYPE)] == 1
    assert shown[("fleet_cache_invalidations_total", PaymentMethodChanged.TYPE)] == 1
