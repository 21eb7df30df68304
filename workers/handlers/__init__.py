"""Business handlers, one module per flow; each module ends with a ``bind_*`` function the composition root calls.

This module also binds the fulfillment saga (``bind_fulfillment``): its routing table ``HANDLERS``
on one screen, its steps in plan order, and the ports each step gets. Must not build clients or
read the environment: the composition root passes ports, the pool and ``Settings`` in.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from adapters.mappings import IdMappingsPort, PgIdMappings
from adapters.saga_store import PgSagaStore, SagaStore
from events.base import DomainEvent
from events.billing import PaymentMethodChanged
from events.salesforce import (
    OrderActivationRequested,
    OrderActivationRequestedV1,
    SimActivationRequested,
    SimActivationRequestedV1,
)
from events.topics import ConsumerGroup, Topic
from workers import crashpoints
from workers.fulfillment.model import Step
from workers.fulfillment.run import Clock, Publisher, StepFn, StepHook, utcnow
from workers.fulfillment.saga import Saga
from workers.fulfillment.wakeup import RetryTopicScheduler
from workers.handlers.fulfillment import (
    accept_whmcs_order,
    add_voice_options,
    check_payment_method,
    confirm_sim,
    create_whmcs_order,
    fulfill_order,
    register_sim,
    resolve_whmcs_client,
    resume_parked_orders,
    validate_order,
    write_back_to_salesforce,
    write_sim_fields,
)

if TYPE_CHECKING:
    import asyncpg

    from adapters.freebit.port import FreebitPort
    from adapters.kafka import ProducerPort
    from adapters.salesforce.port import SalesforcePort
    from adapters.whmcs.port import WhmcsPort
    from workers.config import Settings
    from workers.runtime.route import Handler

__all__ = ["FULFILLMENT_SOURCE", "HANDLERS", "FulfillmentDeps", "bind_fulfillment", "build_saga", "fulfillment_route"]

#: ``ce_source`` of everything the saga publishes
FULFILLMENT_SOURCE = "fleet/fulfillment"

#: the fulfillment route's dispatch table (unbound; ``bind_fulfillment`` injects the dependencies)
HANDLERS: Mapping[type[DomainEvent], Any] = {
    OrderActivationRequested: fulfill_order,
    SimActivationRequested: fulfill_order,
    OrderActivationRequestedV1: fulfill_order,  # still on the topic, or replayed from a dead letter
    SimActivationRequestedV1: fulfill_order,
    PaymentMethodChanged: resume_parked_orders,
}


def build_saga(
    *,
    salesforce: SalesforcePort,
    whmcs: WhmcsPort,
    freebit: FreebitPort,
    mappings: IdMappingsPort,
    store: SagaStore,
    producer: ProducerPort,
    settings: Settings,
    group: str = ConsumerGroup.FULFILLMENT,
    clock: Clock = utcnow,
    hook: StepHook | None = None,
    output_topics: Mapping[Topic, str] | None = None,
) -> Saga:
    """The saga with every step bound to its ports; wake-ups go to ``group``'s retry tiers."""
    publisher = Publisher(producer, FULFILLMENT_SOURCE, output_topics)
    max_wait_s = float(settings.freebit.confirm_max_wait_s)
    steps: dict[Step, StepFn] = {
        Step.VALIDATE: partial(validate_order, salesforce=salesforce),
        Step.RESOLVE_CLIENT: partial(resolve_whmcs_client, mappings=mappings),
        Step.PAYMENT_GATE: partial(check_payment_method, whmcs=whmcs),
        Step.SIM_REGISTER: partial(register_sim, freebit=freebit, store=store),
        Step.SIM_CONFIRM: partial(confirm_sim, freebit=freebit, max_wait_s=max_wait_s),
        Step.SIM_VOICE: partial(add_voice_options, freebit=freebit, max_wait_s=max_wait_s),
        Step.WHMCS_CREATE: partial(create_whmcs_order, whmcs=whmcs),
        Step.WHMCS_ACCEPT: partial(accept_whmcs_order, whmcs=whmcs),
        Step.WHMCS_SIM_FIELDS: partial(write_sim_fields, whmcs=whmcs),
        Step.SF_WRITEBACK: partial(write_back_to_salesforce, publisher=publisher),
    }
    scheduler = RetryTopicScheduler(
        producer,
        group,
        settings.runtime.retry_tier_delays_ms,
        clock_ms=lambda: int(clock().timestamp() * 1000),
    )
    return Saga(store=store, steps=steps, publisher=publisher, schedule=scheduler.schedule, clock=clock, hook=hook)


def bind_fulfillment(
    *,
    salesforce: SalesforcePort,
    whmcs: WhmcsPort,
    freebit: FreebitPort,
    producer: ProducerPort,
    settings: Settings,
    pool: asyncpg.Pool | None = None,
    store: SagaStore | None = None,
    mappings: IdMappingsPort | None = None,
    group: str = ConsumerGroup.FULFILLMENT,
    clock: Clock = utcnow,
    hook: StepHook | None = None,
    output_topics: Mapping[Topic, str] | None = None,
) -> dict[type[DomainEvent], Handler]:
    """The fulfillment route's handlers, for ``Route(group=ConsumerGroup.FULFILLMENT, handlers=...)``.

    ``store`` and ``mappings`` default to their PostgreSQL implementations over ``pool``; ``group``
    must be the route's (wake-ups travel on its retry tiers). ``hook`` is test-only (the kill -9
    test's crash point); production passes nothing."""
    if store is None or mappings is None:
        if pool is None:
            raise ValueError("bind_fulfillment needs a pool unless both store and mappings are given")
        store = store or PgSagaStore(pool)
        mappings = mappings or PgIdMappings(pool)
    saga = build_saga(
        salesforce=salesforce,
        whmcs=whmcs,
        freebit=freebit,
        mappings=mappings,
        store=store,
        producer=producer,
        settings=settings,
        group=group,
        clock=clock,
        hook=hook,
        output_topics=output_topics,
    )
    fulfil = partial(fulfill_order, saga=saga)
    fulfil.collector = saga.ledger_checks  # type: ignore[attr-defined]  # served on the worker's /metrics
    return {
        OrderActivationRequested: fulfil,
        SimActivationRequested: fulfil,
        OrderActivationRequestedV1: fulfil,
        SimActivationRequestedV1: fulfil,
        PaymentMethodChanged: partial(resume_parked_orders, saga=saga, store=store),
    }


class FulfillmentDeps(Protocol):
    """What ``fulfillment_route`` needs of the composition root's ``workers.bootstrap.Deps``."""

    settings: Settings
    producer: ProducerPort
    pool: asyncpg.Pool
    salesforce: SalesforcePort
    whmcs: WhmcsPort
    freebit: FreebitPort


def fulfillment_route(deps: FulfillmentDeps) -> dict[type[DomainEvent], Handler]:
    """The ``RouteSpec.bind`` entry point: ``bind="workers.handlers:fulfillment_route"`` in ``workers/routes.py``."""
    return bind_fulfillment(
        salesforce=deps.salesforce,
        whmcs=deps.whmcs,
        freebit=deps.freebit,
        producer=deps.producer,
        settings=deps.settings,
        pool=deps.pool,
        hook=crashpoints.saga_hook(),  # None unless a chaos run armed fulfillment.* crash points
    )
