"""The fulfillment route: its message handlers, the saga they drive, its dispatch table and ``bind(deps)``.

Owns what each message does to an order's saga (start, resume, poll, unpark), the steps bound to
their ports in plan order, and the dispatch table (event class → handler), written once, in
``bind_fulfillment``. ``workers.routes`` imports ``bind``. Must not build clients or read the
environment: the composition root passes ports, the pool and ``Settings`` in; nor import
``workers.routes`` or ``workers.bootstrap`` (they import this module).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING

import structlog

from adapters.mappings import IdMappingsPort, PgIdMappings
from adapters.saga_store import InboxClaim, PgSagaStore, SagaStore
from events.base import DomainEvent
from events.billing import PaymentMethodChanged
from events.salesforce import (
    ActivationRequest,
    OrderActivationRequested,
    OrderActivationRequestedV1,
    OrderChanged,
    SimActivationRequested,
    SimActivationRequestedV1,
)
from events.topics import ConsumerGroup, Topic
from workers import crashpoints
from workers.fulfillment.metrics import Collectors
from workers.fulfillment.model import TIMER_REASON, OrderState, Step
from workers.fulfillment.run import Clock, Publisher, StepFn, StepHook, Trigger, utcnow
from workers.fulfillment.saga import Saga
from workers.fulfillment.steps import (
    accept_whmcs_order,
    add_voice_options,
    assign_sim_card,
    await_processed,
    await_schedule,
    check_payment_method,
    confirm_sim,
    create_whmcs_order,
    link_opportunity,
    register_sim,
    resolve_whmcs_client,
    validate_order,
    write_back_to_salesforce,
    write_sim_fields,
)
from workers.fulfillment.timers import SWEEPER_LEASE, TimerLoop
from workers.fulfillment.wakeup import TIMER_SOURCE, WAKEUP_SOURCE, RetryTopicScheduler

if TYPE_CHECKING:
    import asyncpg

    from adapters.freebit.port import FreebitPort
    from adapters.kafka import ProducerPort
    from adapters.leader_lease import LeaderLease
    from adapters.salesforce.port import SalesforcePort
    from adapters.whmcs.port import WhmcsPort
    from workers.bootstrap import Deps
    from workers.config import Settings
    from workers.runtime.message import Message
    from workers.runtime.route import Handler

__all__ = ["FULFILLMENT_SOURCE", "bind", "bind_fulfillment", "build_saga", "fulfill_order", "resume_parked_orders"]

log = structlog.get_logger(__name__)

#: ``ce_source`` of everything the saga publishes
FULFILLMENT_SOURCE = "fleet/fulfillment"
#: the states a fired timer may resume
TIMED_STATES = frozenset({OrderState.PARKED, OrderState.SCHEDULED})
#: Order fields whose change moves a scheduled activation
SCHEDULE_FIELDS = frozenset({"Activation_Type__c", "Activation_Scheduled_At__c"})


# --- message handlers ----------------------------------------------------------------------------
async def fulfill_order(event: ActivationRequest, msg: Message, *, saga: Saga) -> None:
    """Start, resume or poll the order's saga: as far as it can go now. A fired timer's request runs
    only an order still parked or scheduled (the order may have moved on since it was armed)."""
    envelope = msg.envelope
    wakeup, timer = envelope.source == WAKEUP_SOURCE, envelope.source == TIMER_SOURCE
    snapshot = event.snapshot if isinstance(event, OrderActivationRequested | SimActivationRequested) else None
    trigger = Trigger(
        event.sf_order_id,
        reason="wakeup" if wakeup else TIMER_REASON if timer else event.TYPE,
        only_if=TIMED_STATES if timer else None,
        sf_account_id=event.sf_account_id,
        claim=inbox_claim(msg),
        cause=envelope,
        wakeup=wakeup,
        snapshot=None if wakeup else snapshot,
        status=None if wakeup else event.status,
    )
    result = await saga.handle(trigger)
    log.info("fulfillment_handled", sf_order_id=event.sf_order_id, state=result.state, step=result.step)


async def reschedule(event: OrderChanged, msg: Message, *, saga: Saga) -> None:
    """A scheduled order's type or date changed in Salesforce: its ``schedule`` step reads them again
    (the timer moves, or the order goes on at once). Other order changes are the cache's business."""
    if event.entity != "Order" or not SCHEDULE_FIELDS & set(event.changed_fields):
        return
    only_scheduled = frozenset({OrderState.SCHEDULED})
    await saga.handle(Trigger(event.sf_order_id, reason=event.TYPE, cause=msg.envelope, only_if=only_scheduled))


async def resume_parked_orders(event: PaymentMethodChanged, msg: Message, *, saga: Saga, store: SagaStore) -> None:
    """A pay method of this client changed: its parked orders try the payment gate again.

    No inbox row: a duplicate finds the orders no longer parked (or re-reads the gate), which is
    the idempotency this fan-out needs."""
    for sf_order_id in await store.parked_for_client(event.whmcs_client_id):
        only_parked = frozenset({OrderState.PARKED})
        await saga.handle(Trigger(sf_order_id, reason=event.TYPE, cause=msg.envelope, only_if=only_parked))


def inbox_claim(msg: Message) -> InboxClaim:
    return InboxClaim(
        msg.group, msg.event_id, msg.event_type, msg.source_topic, msg.source_partition, msg.source_offset
    )


# --- wiring --------------------------------------------------------------------------------------
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
    scheduler: RetryTopicScheduler | None = None,
) -> Saga:
    """The saga with every step bound to its ports; wake-ups go to ``group``'s retry tiers.

    The wake-up delays are ``settings.runtime.retry_tier_delays_ms``, the tiers' runtime default: a
    ``retry_delays_ms`` on the fulfillment ``RouteSpec`` would have to reach the scheduler too."""
    publisher = Publisher(producer, FULFILLMENT_SOURCE, output_topics)
    max_wait_s = float(settings.freebit.confirm_max_wait_s)
    steps: dict[Step, StepFn] = {
        Step.VALIDATE: partial(validate_order, salesforce=salesforce),
        Step.SCHEDULE: partial(await_schedule, salesforce=salesforce),
        Step.RESOLVE_CLIENT: partial(resolve_whmcs_client, mappings=mappings),
        Step.PAYMENT_GATE: partial(check_payment_method, whmcs=whmcs),
        Step.SIM_PROCESSED: partial(await_processed, salesforce=salesforce),
        Step.SIM_ASSIGN: partial(assign_sim_card, salesforce=salesforce, store=store),
        Step.SIM_REGISTER: partial(register_sim, freebit=freebit),
        Step.SIM_CONFIRM: partial(confirm_sim, freebit=freebit, max_wait_s=max_wait_s),
        Step.SIM_VOICE: partial(add_voice_options, freebit=freebit, max_wait_s=max_wait_s),
        Step.WHMCS_CREATE: partial(create_whmcs_order, whmcs=whmcs),
        Step.WHMCS_ACCEPT: partial(accept_whmcs_order, whmcs=whmcs),
        Step.WHMCS_LINKS: partial(link_opportunity, whmcs=whmcs),
        Step.WHMCS_SIM_FIELDS: partial(write_sim_fields, whmcs=whmcs),
        Step.SF_WRITEBACK: partial(write_back_to_salesforce, publisher=publisher),
    }
    scheduler = scheduler or wakeup_scheduler(producer, settings, group, clock)
    return Saga(
        store=store,
        steps=steps,
        publisher=publisher,
        schedule=scheduler.schedule,
        clock=clock,
        hook=hook,
        payment_recheck_s=settings.fulfillment.payment_recheck_s,
    )


def wakeup_scheduler(producer: ProducerPort, settings: Settings, group: str, clock: Clock) -> RetryTopicScheduler:
    """Wake-ups and fired timers travel on ``group``'s retry tiers."""
    delays = settings.runtime.retry_tier_delays_ms
    return RetryTopicScheduler(producer, group, delays, clock_ms=lambda: int(clock().timestamp() * 1000))


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
    sweeper_lease: LeaderLease | None = None,
) -> dict[type[DomainEvent], Handler]:
    """The fulfillment route's dispatch table, for ``Route(group=ConsumerGroup.FULFILLMENT, handlers=...)``.

    ``store`` and ``mappings`` default to their PostgreSQL implementations over ``pool``; ``group``
    must be the route's (wake-ups travel on its retry tiers). ``hook`` is test-only (the kill -9
    test's crash point); production passes nothing. ``sweeper_lease``: the Postgres lease whose holder
    alone sweeps and exports the order gauges (None: this instance always does)."""
    if store is None or mappings is None:
        if pool is None:
            raise ValueError("bind_fulfillment needs a pool unless both store and mappings are given")
        store = store or PgSagaStore(pool)
        mappings = mappings or PgIdMappings(pool)
    scheduler = wakeup_scheduler(producer, settings, group, clock)
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
        scheduler=scheduler,
    )
    fulfil = partial(fulfill_order, saga=saga)
    # the durable timers run beside the consume loop for the worker's life (``timers.py``); the
    # runtime starts a handler's ``companion`` and serves its ``collector`` on the worker's /metrics
    timers = TimerLoop(store, scheduler, settings.fulfillment, clock, sweeper_lease)
    fulfil.companion = timers.run  # type: ignore[attr-defined]
    fulfil.collector = Collectors(saga.ledger_checks, saga.step_duration, timers.gauges)  # type: ignore[attr-defined]
    return {
        OrderActivationRequested: fulfil,
        SimActivationRequested: fulfil,
        OrderActivationRequestedV1: fulfil,  # still on the topic, or replayed from a dead letter
        SimActivationRequestedV1: fulfil,
        PaymentMethodChanged: partial(resume_parked_orders, saga=saga, store=store),
        OrderChanged: partial(reschedule, saga=saga),
    }


def bind(deps: Deps) -> dict[type[DomainEvent], Handler]:
    """The route's handlers over the composition root's ports and pool (``workers.routes`` imports this)."""
    return bind_fulfillment(
        salesforce=deps.salesforce,
        whmcs=deps.whmcs,
        freebit=deps.freebit,
        producer=deps.producer,
        settings=deps.settings,
        pool=deps.pool,
        sweeper_lease=deps.lease(SWEEPER_LEASE),
        hook=crashpoints.saga_hook(),  # None unless a chaos run armed fulfillment.* crash points
    )
