"""The fleet on one screen: every worker, its consumer group, what it reads and what it handles.

Each ``RouteSpec`` is data, not code (karafka's ``routes.draw``): ``fleet run --list`` prints this
table, ``fleet run <name>`` starts the named worker, and ``deploy/`` refers to the same names. A
spec names its flow's ``bind``: a function of the flow's folder (``workers/<flow>/route.py``) that
takes the composition root's ``workers.bootstrap.Deps`` and returns the route's dispatch table
(event class → bound handler), written once, there. A spec also carries its delivery policy
(in-place attempts, retry-tier delays, keys at once per partition, dead letters on or off); None
means the runtime's default from ``RuntimeSettings``.

Owns the table and the names; must not hold handlers or business rules. The flows and the ingress
modules must not import this module (it imports them).

``INGRESS`` lists the two bridges from outside into Kafka (they produce; they consume nothing); each
names its entry point, a function, like a route's ``bind``. Every worker states what it ``needs``
(``workers.needs.Need``): the production profile (``workers.profile``) refuses to start one whose
needs are not configured, and the composition root (``workers.bootstrap``) builds only those.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from events.base import DomainEvent
from events.topics import GROUP_SOURCES, ConsumerGroup, Topic
from workers.cache_invalidation import route as cache_invalidation
from workers.config import Settings
from workers.fulfillment import route as fulfillment
from workers.ingress import sf_cdc, webhook_server
from workers.needs import Need
from workers.runtime.route import Handler, Route
from workers.sf_writer import route as sf_writer

if TYPE_CHECKING:
    from workers.bootstrap import Deps

#: a flow's ``bind``: the composition root's dependencies → the route's dispatch table
Binder = Callable[["Deps"], Mapping[type[DomainEvent], Handler]]
#: an ingress worker's entry point: runs until the event is set, building its clients through
#: ``workers.bootstrap``
IngressEntry = Callable[[Settings, asyncio.Event], Awaitable[None]]


#: every consumer worker: Kafka, and Postgres for the runtime's inbox and dead-letter bookkeeping
_CONSUMER = frozenset({Need.KAFKA, Need.POSTGRES})


@dataclass(frozen=True)
class RouteSpec:
    name: str
    group: ConsumerGroup
    topics: tuple[Topic, ...]
    #: the flow's ``bind(deps) -> {EventClass: handler}``
    bind: Binder
    #: ``ce_type`` → what its handler does, for the table (the flow's dispatch table is the truth at run time)
    handlers: Mapping[str, str] = field(default_factory=dict)
    dead_letter: bool = True
    description: str = ""
    needs: frozenset[Need] = _CONSUMER
    # Delivery policy; None = the runtime's default (``RuntimeSettings``), see ``workers.runtime.route.Route``.
    #: tries of a failing record before it leaves the partition for a retry tier or the DLQ
    in_place_attempts: int | None = None
    #: delay of each retry tier, in ms (at most as many tiers as the topic catalog creates)
    retry_delays_ms: tuple[int, ...] | None = None
    #: keys handled at once per partition for this route (None: RuntimeSettings.max_in_flight_per_partition)
    max_in_flight_per_partition: int | None = None

    def route(self, deps: Deps) -> Route:
        """The runnable route, its handlers bound to ``deps``, with this spec's delivery policy."""
        return self.with_handlers(self.bind(deps))

    def with_handlers(self, handlers: Mapping[type[DomainEvent], Handler]) -> Route:
        """The route with these handlers (``{}``: the policy alone, for the table)."""
        return Route(
            self.name,
            str(self.group),
            tuple(str(t) for t in self.topics),
            dict(handlers),
            in_place_attempts=self.in_place_attempts,
            retry_delays_ms=self.retry_delays_ms,
            dead_letter=self.dead_letter,
            max_in_flight_per_partition=self.max_in_flight_per_partition,
        )


ROUTES: dict[str, RouteSpec] = {
    spec.name: spec
    for spec in (
        RouteSpec(
            "fulfillment",
            ConsumerGroup.FULFILLMENT,
            GROUP_SOURCES[ConsumerGroup.FULFILLMENT],
            fulfillment.bind,
            handlers={
                "fleet.order.activation-requested.v2": "saga: run the order to its next wait or its end (v1 too)",
                "fleet.order.sim-activation-requested.v2": "saga: a SIM order's card and Freebit (Processed; v1 too)",
                "fleet.billing.payment-method-changed.v1": "saga: resume the client's parked orders",
                "fleet.order.changed.v1": "saga: a scheduled order's new date or type moves its timer",
            },
            needs=_CONSUMER | {Need.SALESFORCE, Need.WHMCS_API, Need.FREEBIT},
            # Orders of different Salesforce orders at once (the record key is the order id, so one
            # order's deliveries still run one after another, and its advisory lock guards the rest):
            # an order spends its time waiting on WHMCS, Freebit and Salesforce, not on the CPU.
            # A worker holds at most RuntimeSettings.max_in_flight keys over all its partitions
            # (clamped to its Postgres pool: each delivery holds one connection).
            max_in_flight_per_partition=16,
            description="order/SIM activation saga: WHMCS order, Freebit SIM, Salesforce write-back",
        ),
        RouteSpec(
            "sf-writer",
            ConsumerGroup.SF_WRITER,
            GROUP_SOURCES[ConsumerGroup.SF_WRITER],
            sf_writer.bind,
            handlers={"fleet.salesforce.update-record.v1": "coalesce, then PATCH /composite/sobjects (≤200)"},
            needs=_CONSUMER | {Need.SALESFORCE},
            description="batched Salesforce record updates (sObject Collections) under an API budget",
        ),
        RouteSpec(
            "cache-invalidator",
            ConsumerGroup.CACHE_INVALIDATOR,
            GROUP_SOURCES[ConsumerGroup.CACHE_INVALIDATOR],
            cache_invalidation.bind,
            handlers={
                "fleet.billing.*-changed.v1": "UNLINK the user's invoice/service/pay-method/profile keys",
                "fleet.order.changed.v1": "UNLINK the account's order keys (customer-facing fields only)",
                "fleet.fulfillment.*.v1": "UNLINK order keys (+ services/invoices if fulfilled); PUBLISH its status",
                "fleet.catalog.changed.v1": "UNLINK catalog entries that embed the product (dependency sets)",
                "fleet.account.eligibility-changed.v1": "UNLINK the account's eligibility key",
            },
            needs=_CONSUMER | {Need.REDIS},
            description="portal Redis cache busting on every customer-facing change (batched: a lookup and a pipeline)",
        ),
    )
}


@dataclass(frozen=True)
class IngressSpec:
    """An ingress worker: not a consumer group but a bridge from outside into Kafka."""

    name: str
    writes: tuple[Topic, ...]
    entry: IngressEntry
    description: str = ""
    needs: frozenset[Need] = frozenset({Need.KAFKA})


INGRESS: dict[str, IngressSpec] = {
    spec.name: spec
    for spec in (
        IngressSpec(
            "sf-cdc",
            (Topic.SF_ORDER, Topic.SF_CATALOG, Topic.SF_ACCOUNT, Topic.SF_RESYNC, Topic.INGRESS_DLQ),
            sf_cdc.serve,
            "Salesforce CDC (CometD) → domain events; replay id checkpointed after the Kafka ack",
            needs=frozenset({Need.KAFKA, Need.POSTGRES, Need.SALESFORCE}),
        ),
        IngressSpec(
            "whmcs-webhooks",
            (Topic.WHMCS_BILLING,),
            webhook_server.serve,
            "signed WHMCS webhooks (POST /webhooks/whmcs) → domain events; 2xx only after the Kafka ack",
            needs=frozenset({Need.KAFKA, Need.REDIS, Need.WEBHOOK_SECRETS}),
        ),
    )
}


def worker_needs() -> dict[str, frozenset[Need]]:
    """Every worker of the fleet (consumers and ingress) and what it needs."""
    return {**{n: s.needs for n, s in ROUTES.items()}, **{n: s.needs for n, s in INGRESS.items()}}
