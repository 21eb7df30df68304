"""The fleet on one screen: every worker, its consumer group, what it reads and what it handles.

Each ``RouteSpec`` is data, not code (karafka's ``routes.draw``): ``fleet run --list`` prints this
table, ``fleet run <name>`` starts the named worker, and ``deploy/`` refers to the same names. A
spec names its handlers; the composition root binds them: ``bind`` is the ``"module:function"``
path of a function that takes the ``workers.bootstrap.Deps`` and returns the route's dispatch table
(event class → bound handler). The delivery policy (retry tiers, dead letters) is the runtime's,
from ``RuntimeSettings``, unless a spec overrides it.

Handler tables are filled by the issues that build each flow; a spec without ``bind`` is listed
but cannot run yet.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from events.base import DomainEvent
from events.topics import GROUP_SOURCES, ConsumerGroup, Topic
from workers.runtime.route import Handler, Route

Binder = Callable[[Any], Mapping[type[DomainEvent], Handler]]


@dataclass(frozen=True)
class RouteSpec:
    name: str
    group: ConsumerGroup
    topics: tuple[Topic, ...]
    #: ``ce_type`` → handler name, for the table (the binder's dispatch table is the truth at run time)
    handlers: Mapping[str, str] = field(default_factory=dict)
    #: ``"module:function"``: ``function(deps) -> {EventClass: handler}``; None = no handlers yet
    bind: str | None = None
    dead_letter: bool = True
    description: str = ""

    def route(self, deps: Any) -> Route:
        """The runnable route, its handlers bound to ``deps``."""
        if self.bind is None:
            raise LookupError(f"route {self.name} has no handlers yet")
        return Route(
            self.name,
            str(self.group),
            tuple(str(t) for t in self.topics),
            dict(import_binder(self.bind)(deps)),
            dead_letter=self.dead_letter,
        )


def import_binder(path: str) -> Binder:
    module, _, attr = path.partition(":")
    binder: Binder = getattr(importlib.import_module(module), attr)
    return binder


ROUTES: dict[str, RouteSpec] = {
    spec.name: spec
    for spec in (
        RouteSpec(
            "fulfillment",
            ConsumerGroup.FULFILLMENT,
            GROUP_SOURCES[ConsumerGroup.FULFILLMENT],
            description="order/SIM activation saga: WHMCS order, Freebit SIM, Salesforce write-back",
        ),
        RouteSpec(
            "sf-writer",
            ConsumerGroup.SF_WRITER,
            GROUP_SOURCES[ConsumerGroup.SF_WRITER],
            description="batched Salesforce record updates (sObject Collections)",
        ),
        RouteSpec(
            "cache-invalidator",
            ConsumerGroup.CACHE_INVALIDATOR,
            GROUP_SOURCES[ConsumerGroup.CACHE_INVALIDATOR],
            description="portal Redis cache busting on every customer-facing change",
        ),
    )
}
