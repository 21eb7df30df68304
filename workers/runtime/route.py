"""A route: one consumer group, the topics it reads and the handler for each event type it handles.

Owns the declarative delivery policy of one worker (in-place attempts, retry tiers, dead letters on
or off, keys in flight per partition) and the failure topics derived from it. Must not hold business
rules: handlers arrive already bound to their dependencies by the composition root, and the runtime
only calls them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from events.base import DomainEvent
from events.topics import RETRY_TIER_DELAYS_MS, dlq_topic, retry_topic
from workers.runtime.message import Message

#: ``async def handle(event, msg) -> None``; raise to fail (the error tree says retry or dead-letter).
#: The event parameter is ``Any`` rather than ``DomainEvent`` on purpose: a handler typed for its own
#: event class (``OrderChanged``) is not a ``Callable[[DomainEvent, ...]]`` (parameters are
#: contravariant), and the route dispatches by that very class, so the narrower type is the true one.
Handler = Callable[[Any, Message], Awaitable[None]]


@dataclass(frozen=True)
class Route:
    """One worker: ``group`` consumes ``topics`` plus its own retry tiers, dispatching by event class.

    ``in_place_attempts`` / ``retry_delays_ms`` default (None) to ``RuntimeSettings``. With
    ``dead_letter=False`` there are no failure topics at all: a transient failure is retried in
    place with capped back-off until it succeeds (Karafka's behaviour without a DLQ, never skipped),
    and a permanent one (undecodable, rejected) is logged at error level and acknowledged, since
    retrying the same input cannot help and there is nowhere to park it.
    """

    name: str
    group: str
    topics: tuple[str, ...]
    handlers: Mapping[type[DomainEvent], Handler] = field(default_factory=dict)
    in_place_attempts: int | None = None
    retry_delays_ms: tuple[int, ...] | None = None
    dead_letter: bool = True
    #: keys handled at once per partition (None: ``RuntimeSettings.max_in_flight_per_partition``);
    #: records of one key always run one after another (``workers.runtime.dispatch``)
    max_in_flight_per_partition: int | None = None

    def __post_init__(self) -> None:
        if not self.topics:
            raise ValueError(f"route {self.name}: no topics")
        if self.max_in_flight_per_partition is not None and self.max_in_flight_per_partition < 1:
            raise ValueError(f"route {self.name}: max_in_flight_per_partition must be at least 1")
        if self.retry_delays_ms is not None and len(self.retry_delays_ms) > len(RETRY_TIER_DELAYS_MS):
            # the topic catalog (events.topics.group_topics) creates exactly this many tiers
            raise ValueError(f"route {self.name}: at most {len(RETRY_TIER_DELAYS_MS)} retry tiers exist")
        for event_type in self.handlers:
            if not getattr(event_type, "TYPE", None):
                raise ValueError(f"route {self.name}: {event_type!r} is not a registered event type")

    def tier_delays_ms(self, default: tuple[int, ...] | list[int]) -> tuple[int, ...]:
        delays = tuple(self.retry_delays_ms if self.retry_delays_ms is not None else default)
        return delays[: len(RETRY_TIER_DELAYS_MS)] if self.dead_letter else ()

    def retry_topics(self, default_delays: tuple[int, ...] | list[int] = RETRY_TIER_DELAYS_MS) -> tuple[str, ...]:
        return tuple(retry_topic(self.group, i + 1) for i in range(len(self.tier_delays_ms(default_delays))))

    def consumed_topics(self, default_delays: tuple[int, ...] | list[int] = RETRY_TIER_DELAYS_MS) -> tuple[str, ...]:
        """The source topics and the group's own retry tiers: the worker subscribes to all of them."""
        return self.topics + self.retry_topics(default_delays)

    @property
    def dlq(self) -> str:
        return dlq_topic(self.group)

    @property
    def handled_types(self) -> dict[str, tuple[type[DomainEvent], Handler]]:
        """``ce_type`` → (model, handler): the dispatch table the loop looks up once per record."""
        return {event_type.TYPE: (event_type, handler) for event_type, handler in self.handlers.items()}
